"""Open vSwitch attachments against a real ovsdb-server and ovs-vswitchd (tests/ovs_env.py:
started by the test, userspace datapath), through a real helper: the port's row with its VLAN
and external_ids, traffic through OVS to a peer, anti-spoofing where OVS reads its ports with
packet sockets (XDP), unplug, and what a helper killed mid-plug leaves — collected at its next
start, never anyone else's row."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from guest_env import Guest, ping, run_in, veth_to
from helpers import HelperProcess
from ovs_env import Ovs, missing

from vmnet.priv import links

pytestmark = pytest.mark.netns
NOBODY = 65534


@pytest.fixture
def ovs(test_netns):
    reason = missing()
    if reason:
        pytest.skip(reason)
    o = Ovs(test_netns).start()
    try:
        yield o
    finally:
        o.stop()


@pytest.fixture
def ovs_helper(ovs):
    h = HelperProcess(f'ovsdb = "{ovs.endpoint}"\n')
    try:
        yield h.start()
    finally:
        h.cleanup()


def test_an_ovs_port_has_its_tag_and_external_ids_and_carries_traffic(ovs, ovs_helper, consumer_netns,
                                                                       port_name, spaces):
    h = ovs_helper
    ovs.add_bridge("br-t")
    peer = spaces.new("vmnet-p")
    veth_to(peer, "pb0")
    run_in(peer, "ethtool", "-K", "eth0", "tx", "off")      # the userspace datapath finishes no checksum
    ovs.vsctl("add-port", "br-t", "pb0", "tag=10")
    run_in(peer, "ip", "addr", "add", "10.60.0.1/24", "dev", "eth0")
    record = h.vmnet_json("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", str(NOBODY),
                          "--ovs", "br-t", "--vlan", "10", "--iface-id", "lsp-web1", "--vm-uuid", "u-1")
    assert record["attached"] == {"bridge": "br-t", "iface_id": "lsp-web1", "datapath": "netdev", "tag": 10}
    assert record["filter"] == {"hook": "xdp"}           # OVS reads it with a packet socket: before tc
    host = "vmn-" + port_name
    assert ovs.column("Port", host, "tag") == "10"
    ids = ovs.column("Interface", host, "external_ids")
    for pair in ('attached-mac="%s"' % record["mac"], "iface-id=lsp-web1", "iface-status=active",
                 f"vmnet-port={port_name}", "vm-uuid=u-1"):
        assert pair in ids, ids
    g = Guest(h, port_name, consumer_netns, spaces)
    try:
        g.start()
        g.address("10.60.0.5/24")
        assert ping(g.ns, "10.60.0.1") == 3
        assert ping(peer, "10.60.0.5") == 3
        shown = h.vmnet_json("port", "show", port_name)["network"]
        assert shown["plugged"] and shown["ofport"] and shown["spoofed"]["mac"] == 0
        # a frame from another MAC never reaches OVS (XDP drops it before its packet socket)
        from test_networks import raw_send
        raw_send(g.ns, "g0", [b"\xff" * 6 + bytes.fromhex("020000abcdef") + b"\x08\x06" + bytes(28)])
        assert h.vmnet_json("port", "show", port_name)["network"]["spoofed"]["mac"] >= 1
    finally:
        g.close()
    assert h.vmnet("port", "del", port_name).returncode == 0
    assert host not in ovs.ports()


def test_a_trunk_port(ovs, ovs_helper, consumer_netns, port_name):
    ovs.add_bridge("br-t")
    h = ovs_helper
    h.vmnet_json("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", str(NOBODY),
                 "--ovs", "br-t", "--trunk", "20-22,30", "--vlan", "5")
    host = "vmn-" + port_name
    assert ovs.column("Port", host, "trunks") == "[20, 21, 22, 30]"
    assert ovs.column("Port", host, "vlan_mode") == "native-untagged"
    assert ovs.column("Port", host, "tag") == "5"


def test_a_missing_bridge_or_database_is_refused_with_the_fix_and_nothing_made(ovs, ovs_helper, consumer_netns,
                                                                              port_name, test_netns):
    h = ovs_helper
    out = h.vmnet("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", str(NOBODY),
                  "--ovs", "br-none")
    assert out.returncode == 3 and "Open vSwitch bridge br-none does not exist" in out.stderr
    assert "ovs-vsctl add-br br-none" in out.stderr and links.link_state("vmn-" + port_name) is None
    h2 = HelperProcess('ovsdb = "unix:/nonexistent/db.sock"\n').start()
    try:
        out = h2.vmnet("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", str(NOBODY),
                       "--ovs", "br-t")
        assert out.returncode == 3 and "no OVSDB at unix:/nonexistent/db.sock" in out.stderr
    finally:
        h2.cleanup()


def test_a_helper_start_collects_its_own_rows_left_by_a_crash_and_no_one_elses(ovs, ovs_helper, consumer_netns,
                                                                             port_name, test_netns):
    """What a helper killed between plugging and recording leaves: a row marked with its instance
    and a port name it has no record of. A row of another instance and an unmarked one stay."""
    h = ovs_helper
    ovs.add_bridge("br-t")
    instance = h.instance.name
    for name, ids in (("vmn-lost1", {"vmnet-port": "lost1", "vmnet-instance": instance}),
                      ("vmn-other", {"vmnet-port": "other", "vmnet-instance": "someone-else"}),
                      ("tap-nova", {"iface-id": "x"})):
        ovs.vsctl("add-port", "br-t", name, "--", "set", "Interface", name, "type=internal", "--", "set",
                  "Interface", name, "external_ids=" + "{" + ",".join(f'"{k}"="{v}"' for k, v in ids.items()) + "}")
    h.kill(signal.SIGKILL)
    h.start()
    assert "removed what a crash left plugged of port(s) lost1" in h.read_log()
    assert ovs.ports() == ["br-t", "tap-nova", "vmn-other"]
    for name in ("vmn-other", "tap-nova"):
        ovs.vsctl("del-port", name)


def test_a_helper_killed_while_plugging_leaves_a_consistent_state(ovs, ovs_helper, consumer_netns, port_name):
    """SIGKILL as soon as the port's row exists: after the restart the port is either complete
    (kept, with its row) or gone (no row, no device)."""
    h = ovs_helper
    ovs.add_bridge("br-t")
    host = "vmn-" + port_name
    add = subprocess.Popen([sys.executable, "-I", "-m", "vmnet", "--json", "port", "add", port_name, "--netns",
                            consumer_netns, "--consumer-user", str(NOBODY), "--ovs", "br-t"],
                           env=h.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    deadline = time.monotonic() + 30
    while host not in ovs.ports() and time.monotonic() < deadline:
        time.sleep(0.005)
    h.kill(signal.SIGKILL)
    add.communicate(timeout=30)
    h.start()
    kept = [p["name"] for p in h.vmnet_json("port", "list")["ports"]]
    if kept:
        assert kept == [port_name] and host in ovs.ports()
        assert h.vmnet_json("port", "show", port_name)["network"]["plugged"]
    else:
        assert host not in ovs.ports() and links.link_state(host) is None
    assert json.loads(h.vmnet("--json", "status").stdout)["helper"]["ports"] == len(kept)
