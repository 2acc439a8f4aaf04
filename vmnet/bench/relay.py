"""A stand-in guest behind a real port, without a VM: for the network tests and `vmnet bench`.

QEMU passes frames between a port's AF_XDP sockets and its guest's
virtio-net; here vmnet's responder, started unprivileged through `vmnet
exec` exactly as QEMU would be, passes them between the sockets and a tap
device in a network namespace of its own (`respond --tap-fd`). That
namespace's kernel stack plays the guest: its interface, g0, has the port's
MAC and MTU, and real tools run there (ping, TCP and UDP sockets, DHCP
clients, VLAN devices).
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import subprocess
import sys
import time

from pyroute2 import IPRoute

from ..argv import placeholder_netdev
from ..priv import netns

TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000
NOBODY = 65534
TAP = "g0"


def ensure_tun() -> None:
    """/dev/net/tun, which a booted system has from its static device nodes; a kernel-matrix guest
    (virtme-ng) has only what devtmpfs makes once the module is loaded."""
    if os.path.exists("/dev/net/tun"):
        return
    subprocess.run(["modprobe", "tun"], capture_output=True)
    if not os.path.exists("/dev/net/tun"):
        os.makedirs("/dev/net", exist_ok=True)
        os.mknod("/dev/net/tun", 0o666 | 0o020000, os.makedev(10, 200))


class RelayGuest:
    """Tap g0 in netns `guest_ns`, with the MAC and MTU of port record `record`, relayed to the
    port's sockets by the responder running as nobody in `consumer_ns`. `env`: the environment
    that points vmnet's clients at the helper (VMNET_CONFIG)."""

    def __init__(self, env: dict, record: dict, consumer_ns: str, guest_ns: str):
        self.env, self.record, self.consumer_ns, self.ns = env, record, consumer_ns, guest_ns
        self.proc: subprocess.Popen | None = None
        self.tap_fd = self._tap()

    def _tap(self) -> int:
        ensure_tun()
        with netns.entered(self.ns):
            # a tap is made in the netns its /dev/net/tun file was opened in
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", TAP.encode(), IFF_TAP | IFF_NO_PI))
                with IPRoute() as ip:
                    idx = ip.link_lookup(ifname=TAP)[0]
                    ip.link("set", index=idx, address=self.record["mac"], mtu=self.record["mtu"])
                    ip.link("set", index=idx, state="up")
            except BaseException:
                os.close(fd)
                raise
        return fd

    def start(self, timeout: float = 30.0) -> "RelayGuest":
        netdev, device = placeholder_netdev(self.record["name"])
        os.set_inheritable(self.tap_fd, True)
        consumer = netns.open_netns(self.consumer_ns)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-m", "vmnet", "exec", "--user", str(NOBODY), "--group", str(NOBODY),
                 "--allow-ipc-lock", "--keep-fds", "--", sys.executable, "-I", "-m", "vmnet", "respond",
                 "--netdev", netdev, "--device", device, "--ip", "0.0.0.0", "--tap-fd", str(self.tap_fd)],
                env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, cwd="/", pass_fds=(self.tap_fd,), preexec_fn=lambda: netns._setns(consumer))
        finally:
            os.close(consumer)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("{") and json.loads(line).get("event") == "ready":
                return self
        self.proc.kill()
        self.proc.wait()
        raise RuntimeError(f"the guest's relay did not start: {self.proc.stderr.read()}")

    def close(self):
        """Stop the relay and close the tap (which removes it). Idempotent."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc.stdout.close()
            self.proc.stderr.close()
            self.proc = None
        if self.tap_fd >= 0:
            os.close(self.tap_fd)
            self.tap_fd = -1
