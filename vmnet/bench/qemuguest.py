"""QEMU test guests for the data-path benchmark: behind a vmnet port, or on a tap device.

Everything but the NIC's backend is the same for every guest: the QEMU
binary (VMNET_TEST_QEMU), the kernel and initramfs (vmnet.testguest; each
guest gets its own copy for its address), the machine options, a one-queue
virtio-net device with the same MTU, and the user QEMU runs as, with no
capabilities. A vmnet guest is started as an operator starts one: `vmnet
exec --user U --allow-ipc-lock --port P` in the port's consumer netns. A tap
guest gets a tap device made here as root and owned by U, in a netns of its
own so that nothing touches the host's network; QEMU opens the device
itself (-netdev tap,ifname=...,script=no,downscript=no,vhost=off), confined
as vmnet confines every consumer (vmnet.priv.launch.spawn_consumer).
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import signal
import struct
import subprocess
import sys
import time

from .. import testguest
from ..errors import CheckFailed, from_oserror
from ..priv import netns

# <linux/if_tun.h>
TUNSETIFF, TUNSETPERSIST, TUNSETOWNER, TUNSETGROUP = 0x400454CA, 0x400454CB, 0x400454CC, 0x400454CE
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


def qemu_problem(qemu: str | None) -> str | None:
    """Why the guest comparison cannot run with this QEMU, or None when it can."""
    if not qemu:
        return ("VMNET_TEST_QEMU is not set: no QEMU with af-xdp to boot a guest with (Debian's QEMU "
                "is built without af-xdp); set it to a qemu-system-x86_64 built with --enable-af-xdp")
    if not os.access(qemu, os.X_OK):
        return f"VMNET_TEST_QEMU={qemu} is not an executable file"
    try:
        help_text = subprocess.run([qemu, "-netdev", "help"], capture_output=True, text=True,
                                   timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"VMNET_TEST_QEMU={qemu} does not run: {exc}"
    for netdev in ("af-xdp", "tap"):
        if netdev not in help_text.split():
            return f"VMNET_TEST_QEMU={qemu} has no {netdev} netdev (QEMU's configure: --enable-af-xdp)"
    if testguest.find_kernel() is None:
        return "no Debian kernel in /boot to boot the test guest with (apt-get install linux-image-amd64)"
    return None


def tap_netdev_arg(netdev_id: str, ifname: str, vnet_hdr: bool = True) -> str:
    """QEMU's tap backend on an existing tap device, no scripts, no vhost. Pure."""
    arg = f"tap,id={netdev_id},ifname={ifname},script=no,downscript=no,vhost=off"
    return arg if vnet_hdr else arg + ",vnet_hdr=off"


def tap_device_arg(netdev_id: str, mac: str, mtu: int) -> str:
    """The same device vmnet.qemu_args.device_arg gives a one-queue port. Pure."""
    return f"virtio-net-pci,netdev={netdev_id},mac={mac},host_mtu={mtu}"


def create_tap(ifname: str, uid: int, gid: int) -> None:
    """A persistent tap device in this thread's netns, owned by uid/gid (`ip tuntap add ... user U`)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI))
        fcntl.ioctl(fd, TUNSETOWNER, uid)
        fcntl.ioctl(fd, TUNSETGROUP, gid)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError as exc:
        raise from_oserror(exc, f"cannot create tap device {ifname}",
                           fix="is the tun module loaded (modprobe tun)?") from None
    finally:
        os.close(fd)          # before TUNSETPERSIST this also removes the device again


@dataclasses.dataclass
class Guest:
    """One booted test guest and where the host reaches it from."""

    key: str                # "afxdp", "afxdp_skb", "tap", ...
    backend: str            # for people: what the NIC's backend is
    address: str            # the guest's IPv4 address
    host_netns: str         # the netns holding the host's end of the guest's link
    host_ifname: str
    serial: str
    log: str
    proc: subprocess.Popen | None = None
    port: str | None = None  # the vmnet port, for af-xdp guests

    def wait_ready(self, deadline: float):
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CheckFailed(f"QEMU of the {self.key} guest exited with {self.proc.returncode}: "
                                  f"{self.log_tail()}")
            with open(self.serial, errors="replace") as f:
                if testguest.READY in f.read():
                    return
            time.sleep(0.25)
        raise CheckFailed(f"the {self.key} guest did not come up in time; serial console: "
                          f"{self.serial_tail()}; QEMU: {self.log_tail()}")

    def log_tail(self, chars: int = 600) -> str:
        return _tail(self.log, chars)

    def serial_tail(self, chars: int = 600) -> str:
        return _tail(self.serial, chars)

    def stop(self):
        """SIGTERM (QEMU quits), then SIGKILL. Idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def kill_stragglers(marker: str) -> list[int]:
    """SIGKILL and reap every process whose command line mentions `marker` (the guests'
    directory, which every QEMU's -serial and -initrd name): a Ctrl-C between fork and
    Popen's return leaves a QEMU no Guest knows of."""
    killed = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle not in f.read():
                    continue
            os.kill(int(entry), signal.SIGKILL)
            killed.append(int(entry))
        except (OSError, ProcessLookupError):
            continue
    for pid in killed:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:        # not ours to reap
            pass
    return killed


def _tail(path: str, chars: int) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-chars:].strip() or "(empty)"
    except OSError:
        return "(none)"


def prepare_files(guest: Guest, workdir: str, moddir: str, uid: int, gid: int) -> str:
    """The guest's initramfs (readable by QEMU's user) and a serial log it may write."""
    initrd = testguest.build_initramfs(os.path.join(workdir, guest.key + ".cpio"), moddir, guest.address)
    os.chmod(initrd, 0o644)
    for path in (guest.serial, guest.log):
        open(path, "w").close()
    os.chown(guest.serial, uid, gid)
    return initrd


def start_vmnet_guest(guest: Guest, *, qemu: str, boot_args: list[str], helper_env: dict,
                      consumer_netns: str, user: str):
    """`vmnet exec --user U --allow-ipc-lock --port P -- QEMU ...` in the port's consumer netns."""
    argv = [sys.executable, "-I", "-m", "vmnet", "exec", "--user", user, "--allow-ipc-lock",
            "--port", guest.port, "--", qemu, *boot_args]
    target = netns.open_netns(consumer_netns)
    try:
        with open(guest.log, "a") as log:
            guest.proc = subprocess.Popen(argv, env=helper_env, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=log, cwd="/", preexec_fn=lambda: netns._setns(target))
    finally:
        os.close(target)


def start_tap_guest(guest: Guest, *, qemu: str, boot_args: list[str], netdev: str, device: str,
                    uid: int, gid: int):
    """QEMU on the tap device in guest.host_netns, confined as vmnet confines a consumer."""
    from ..priv.launch import spawn_consumer
    with open(guest.log, "a") as log:
        guest.proc = spawn_consumer([qemu, *boot_args, "-netdev", netdev, "-device", device], [],
                                    uid=uid, gid=gid, netns_ref=guest.host_netns, plan=None,
                                    stdout=log, stderr=log)
