"""Two linked netdevsim devices: a NIC with queue-management ops, and the wire's other end.

netdevsim (built from Debian's linux-source by scripts/fetch-kernel and
loaded in the kernel-matrix entry 7.3-netdevsim) has the queue ops that
leasing needs, native XDP and real NAPI RX queues, but no AF_XDP zero-copy.
Linked to a peer, a frame the peer sends on its TX queue k arrives on the
NIC's RX queue k-1 (netdevsim records no RX queue; 0 for k = 0), so a
frame meant for NIC queue P leaves the peer on TX queue P+1 (chosen with
that queue's xps_cpus, the sender pinned to CPU 0); the peer gets one queue
more than the NIC.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest
from helpers import required_or_skip

from vmnet.priv import netdev_genl

BUS = "/sys/bus/netdevsim"

SENDER = r"""
import os, socket, sys
dev, txq, n, count, frame = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), bytes.fromhex(sys.argv[5])
for q in range(n):
    with open(f"/sys/class/net/{dev}/queues/tx-{q}/xps_cpus", "w") as f:
        f.write("1" if q == txq else "0")
os.sched_setaffinity(0, {0})
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((dev, 0))
for _ in range(count):
    s.send(frame)
"""


def netdevsim_available() -> tuple[bool, str]:
    if not os.path.isdir(BUS):
        subprocess.run(["modprobe", "netdevsim"], capture_output=True)
    if not os.path.isdir(BUS):
        return False, "netdevsim is not loaded (scripts/fetch-kernel builds it; the 7.3-netdevsim entry loads it)"
    ok, why = netdev_genl.queue_create_supported()
    if not ok:
        return False, why
    return True, ""


def require_netdevsim():
    ok, why = netdevsim_available()
    if ok:
        return
    required_or_skip("VMNET_REQUIRE_LEASE", why,
                     f"no NIC to lease queues from here: {why} (the kernel-matrix entry 7.3-netdevsim runs this)")


def _write(path: str, text: str):
    with open(path, "w") as f:
        f.write(text)


class NetdevsimPair:
    """A netdevsim NIC in the calling thread's netns (the helper's), linked to a peer in netns
    `peer_ns`. netdevsim makes its devices in the netns of whoever writes new_device."""

    def __init__(self, nic_queues: int, peer_ns: str):
        self.ids = []
        self.nic_queues, self.peer_ns = nic_queues, peer_ns
        base = random.randrange(1000, 60000)
        try:
            before = _links()
            _write(f"{BUS}/new_device", f"{base} 1 {nic_queues}")
            self.ids.append(base)
            self.nic, self.nic_ifindex = _new_link(before)
            before = _links()
            _write(f"{BUS}/new_device", f"{base + 1} 1 {nic_queues + 1}")
            self.ids.append(base + 1)
            self.peer, _ = _new_link(before)
            subprocess.run(["ip", "link", "set", self.peer, "netns", peer_ns], check=True)
            self.peer_ifindex = int(subprocess.check_output(
                ["ip", "netns", "exec", peer_ns, "cat", f"/sys/class/net/{self.peer}/ifindex"]))
            me = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            peer_fd = os.open(f"/run/netns/{peer_ns}", os.O_RDONLY)
            try:
                _write(f"{BUS}/link_device", f"{me}:{self.nic_ifindex} {peer_fd}:{self.peer_ifindex}")
            finally:
                os.close(me)
                os.close(peer_fd)
            # no IPv6 on either end: its router solicitations and MLD reports would land on the
            # NIC's queues among the frames the tests count
            with open(f"/proc/sys/net/ipv6/conf/{self.nic}/disable_ipv6", "w") as f:
                f.write("1")
            subprocess.run(["ip", "netns", "exec", peer_ns, "sysctl", "-q", "-w",
                            f"net.ipv6.conf.{self.peer}.disable_ipv6=1"], check=True)
            subprocess.run(["ip", "link", "set", self.nic, "up"], check=True)
            subprocess.run(["ip", "netns", "exec", peer_ns, "ip", "link", "set", self.peer, "up"], check=True)
        except BaseException:
            self.remove()
            raise

    def send(self, nic_queue: int, frame: bytes, count: int = 5):
        """Send `count` frames from the peer so that they arrive on `nic_queue` of the NIC."""
        subprocess.run(["ip", "netns", "exec", self.peer_ns, sys.executable, "-I", "-c", SENDER, self.peer,
                        str(nic_queue + 1), str(self.nic_queues + 1), str(count), frame.hex()], check=True)

    def remove(self):
        for dev_id in self.ids:
            try:
                _write(f"{BUS}/del_device", str(dev_id))
            except OSError:
                pass
        self.ids = []


def _links() -> dict[str, int]:
    from pyroute2 import IPRoute
    with IPRoute() as ip:
        return {m.get("IFLA_IFNAME"): m["index"] for m in ip.get_links()}


def _new_link(before: dict) -> tuple[str, int]:
    for _ in range(50):
        new = {n: i for n, i in _links().items() if n not in before}
        if new:
            return next(iter(new.items()))
        time.sleep(0.05)
    raise RuntimeError("netdevsim made no device in this netns")


