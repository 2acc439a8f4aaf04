"""A stand-in guest behind a real port, for the network tests that run without a VM.

QEMU passes frames between a port's AF_XDP sockets and its guest's
virtio-net; here vmnet's responder, started unprivileged through `vmnet
exec` exactly as QEMU would be, passes them between the sockets and a tap
device in a network namespace of its own (`respond --tap-fd`). That
namespace's kernel stack plays the guest: its interface has the port's MAC
and MTU, and real tools run there — ping, TCP and UDP sockets, busybox's
DHCP client, VLAN devices.

The tests also build the "other side": peers in namespaces of their own,
joined to the host (the test's netns, where the helper runs) by veth pairs.
Everything made here is removed by close(), which the fixtures call.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import sys
import time
import uuid

from pyroute2 import IPRoute

from vmnet.priv import netns

TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000
NOBODY = 65534
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


def ensure_tun() -> None:
    """/dev/net/tun, which a booted system has from its static device nodes; a kernel-matrix guest
    (virtme-ng) has only what devtmpfs makes once the module is loaded."""
    if os.path.exists("/dev/net/tun"):
        return
    subprocess.run(["modprobe", "tun"], capture_output=True)
    if not os.path.exists("/dev/net/tun"):
        os.makedirs("/dev/net", exist_ok=True)
        os.mknod("/dev/net/tun", 0o666 | 0o020000, os.makedev(10, 200))


class Guest:
    """A guest namespace behind port `port` of helper `helper` (its consumer end in
    consumer_ns): tap g0 with the port's MAC and MTU, relayed to the sockets."""

    def __init__(self, helper, port: str, consumer_ns: str, spaces: Namespaces):
        self.helper, self.port, self.consumer_ns = helper, port, consumer_ns
        self.ns = spaces.new("vmnet-g")
        self.record = helper.vmnet_json("port", "show", port)
        self.tap_fd = self._tap()
        self.proc = None

    def _tap(self) -> int:
        ensure_tun()
        with netns.entered(self.ns):
            # a tap is made in the netns its /dev/net/tun file was opened in
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"g0", IFF_TAP | IFF_NO_PI))
            with IPRoute() as ip:
                idx = ip.link_lookup(ifname="g0")[0]
                ip.link("set", index=idx, address=self.record["mac"], mtu=self.record["mtu"])
                ip.link("set", index=idx, state="up")
        return fd

    def start(self) -> "Guest":
        p = self.port
        netdev = (f"af-xdp,id=n0,ifname=vmnet:{p},queues=vmnet:{p},start-queue=vmnet:{p},mode=vmnet:{p},"
                  f"inhibit=on,sock-fds=vmnet:{p}")
        device = f"virtio-net-pci,netdev=n0,mac=vmnet:{p},host_mtu=vmnet:{p}"
        os.set_inheritable(self.tap_fd, True)
        consumer = netns.open_netns(self.consumer_ns)

        def enter():
            netns._setns(consumer)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-m", "vmnet", "exec", "--user", str(NOBODY), "--group", str(NOBODY),
                 "--allow-ipc-lock", "--keep-fds", "--", sys.executable, "-I", "-m", "vmnet", "respond",
                 "--netdev", netdev, "--device", device, "--ip", "0.0.0.0", "--tap-fd", str(self.tap_fd)],
                env=self.helper.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, cwd="/", pass_fds=(self.tap_fd,), preexec_fn=enter)
        finally:
            os.close(consumer)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("{") and json.loads(line).get("event") == "ready":
                return self
        self.proc.kill()
        raise AssertionError(f"the guest's relay did not start: {self.proc.stderr.read()}")

    def address(self, cidr: str, gateway: str | None = None) -> None:
        six = ["-6"] if ":" in cidr else []
        run_in(self.ns, "ip", *six, "addr", "add", cidr, "dev", "g0", *(["nodad"] if six else []))
        if gateway:
            run_in(self.ns, "ip", *six, "route", "add", "default", "via", gateway, "dev", "g0", "onlink")

    def run(self, *argv, **kw):
        return run_in(self.ns, *argv, **kw)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.proc.stdout.close()
            self.proc.stderr.close()
        os.close(self.tap_fd)
