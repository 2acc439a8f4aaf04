"""A stand-in guest behind a real port, for the network tests that run without a VM.

vmnet.bench.relay plays the guest: vmnet's responder, run as QEMU would be, relays the port's
sockets to a tap in a netns of its own, where real tools run (ping, TCP and UDP sockets,
busybox's DHCP client, VLAN devices).

The tests also build the "other side": peers in namespaces of their own,
joined to the host (the test's netns, where the helper runs) by veth pairs.
Everything made here is removed by close(), which the fixtures call.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from pyroute2 import IPRoute

from vmnet.bench.relay import RelayGuest
from vmnet.priv import netns

BUSYBOX = "/bin/busybox"


def run_in(ns: str, *argv, check=True, timeout=60, **kw) -> subprocess.CompletedProcess:
    """Run a command in netns `ns` (nsenter: /sys stays the host's, unlike `ip netns exec`)."""
    out = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *argv], capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL, **kw)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} in {ns} failed ({out.returncode}): {out.stdout}{out.stderr}")
    return out


def py_in(ns: str, code: str, timeout=60, check=True) -> subprocess.CompletedProcess:
    return run_in(ns, sys.executable, "-c", code, timeout=timeout, check=check)


def ping(ns: str, address: str, count: int = 3, extra=()) -> int:
    """Echo replies received."""
    six = ["-6"] if ":" in address else []
    out = run_in(ns, "ping", *six, "-c", str(count), "-i", "0.2", "-W", "2", *extra, address, check=False)
    for line in out.stdout.splitlines():
        if "received" in line:
            return int(line.split(",")[1].split()[0])
    return 0


class Namespaces:
    """Network namespaces the test made; removed at close()."""

    def __init__(self):
        self.made: list[str] = []

    def new(self, prefix: str) -> str:
        name = f"{prefix}{uuid.uuid4().hex[:6]}"
        netns.create_named(name)
        self.made.append(name)
        with netns.entered(name), IPRoute() as ip:
            ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")
        return name

    def close(self):
        for name in reversed(self.made):
            netns.remove_named(name)
        self.made = []


def veth_to(peer_ns: str, host_name: str, peer_name: str = "eth0", master: str | None = None) -> None:
    """A veth pair from the current netns (host_name) to netns peer_ns (peer_name), both up."""
    fd = netns.open_netns(peer_ns)
    try:
        with IPRoute() as ip:
            ip.link("add", ifname=host_name, kind="veth", peer={"ifname": peer_name, "net_ns_fd": fd})
            idx = ip.link_lookup(ifname=host_name)[0]
            if master:
                ip.link("set", index=idx, master=ip.link_lookup(ifname=master)[0])
            ip.link("set", index=idx, state="up")
    finally:
        os.close(fd)
    with netns.entered(peer_ns), IPRoute() as ip:
        ip.link("set", index=ip.link_lookup(ifname=peer_name)[0], state="up")


def make_bridge(name: str, mtu: int = 1500, vlan_filtering: bool = False) -> None:
    with IPRoute() as ip:
        kw = {"br_vlan_filtering": 1} if vlan_filtering else {}
        ip.link("add", ifname=name, kind="bridge", **kw)
        ip.link("set", ifname=name, mtu=mtu, state="up")


class Guest:
    """A guest namespace behind port `port` of helper `helper` (its consumer end in
    consumer_ns): tap g0 with the port's MAC and MTU, relayed to the sockets
    (vmnet.bench.relay)."""

    def __init__(self, helper, port: str, consumer_ns: str, spaces: Namespaces, ns: str | None = None):
        """ns: the guest's netns, made by the caller (default: a new one)."""
        self.helper, self.port, self.consumer_ns = helper, port, consumer_ns
        self.ns = ns or spaces.new("vmnet-g")
        self.record = helper.vmnet_json("port", "show", port)
        self.relay = RelayGuest(helper.env, self.record, consumer_ns, self.ns)

    def start(self) -> "Guest":
        self.relay.start()
        return self

    def address(self, cidr: str, gateway: str | None = None) -> None:
        six = ["-6"] if ":" in cidr else []
        run_in(self.ns, "ip", *six, "addr", "add", cidr, "dev", "g0", *(["nodad"] if six else []))
        if gateway:
            run_in(self.ns, "ip", *six, "route", "add", "default", "via", gateway, "dev", "g0", "onlink")

    def run(self, *argv, **kw):
        return run_in(self.ns, *argv, **kw)

    def close(self):
        self.relay.close()
