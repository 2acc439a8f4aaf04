"""The OVS tier's private Open vSwitch (vmnet.bench.ovs): Debian's ovsdb-server and ovs-vswitchd,
started by the test in a run directory of its own, ovs-vswitchd inside the test's netns."""

from vmnet.bench.ovs import SCHEMA, Ovs, missing  # noqa: F401
