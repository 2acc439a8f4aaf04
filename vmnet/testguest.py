"""A tiny test guest for the VM path, built from Debian packages on this machine.

A Debian kernel from /boot (linux-image-*) and an initramfs holding
busybox-static, the virtio-net module and its dependencies (decompressed:
busybox's insmod reads plain .ko), and an /init that brings eth0 up with a
given address, starts a TCP sink, prints a marker on the serial console and
waits. Ping then proves the guest's NIC works end to end; the sink (every
connection to TCP_SINK_PORT is read to its end and discarded, then closed)
gives the benchmark a bulk transfer whose end the sender can see. Used by
the VM tests and the benchmark when a QEMU with af-xdp is given
(VMNET_TEST_QEMU).
"""

from __future__ import annotations

import glob
import gzip
import io
import lzma
import os
import shutil
import stat

READY = "VMNET-GUEST-READY"
DHCP = "dhcp"               # an address that asks the guest to take its own by DHCP (busybox udhcpc)
LEASE = "VMNET-GUEST-LEASE"  # the serial line that tells what udhcpc was given
PINGED = "VMNET-GUEST-PINGED"
NIC = "VMNET-GUEST-NIC"   # the serial line that tells eth0's MAC and PCI address, as the guest sees them
MODULES = ("virtio_net",)
TCP_SINK_PORT = 5001
# Debian's busybox nc has no -k: "-ll -e" forks PROG per connection and keeps
# listening. dd reads 64 KiB at a time (cat's buffer is 4 KiB: more syscalls
# in a guest whose every instruction is emulated) and closes the connection
# at EOF, which is how the sender knows that every byte arrived.
_SINK = (f"/bin/busybox nc -ll -p {TCP_SINK_PORT} -e /bin/busybox sh -c "
         "'exec /bin/busybox dd of=/dev/null bs=65536 2>/dev/null' &")


def find_kernel() -> tuple[str, str] | None:
    """(vmlinuz, modules dir) of the newest Debian kernel in /boot that has virtio_net."""
    for vmlinuz in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True):
        release = vmlinuz.split("vmlinuz-", 1)[1]
        moddir = f"/lib/modules/{release}"
        if os.path.exists(os.path.join(moddir, "modules.dep")):
            return vmlinuz, moddir
    return None


def _deps(moddir: str, name: str) -> list[str]:
    """Module paths for `name`, dependencies first."""
    table = {}
    with open(os.path.join(moddir, "modules.dep")) as f:
        for line in f:
            path, _, deps = line.partition(":")
            table[os.path.basename(path).split(".ko")[0].replace("-", "_")] = (path, deps.split())
    out: list[str] = []

    def visit(path, deps):
        for d in deps:
            visit(*table[os.path.basename(d).split(".ko")[0].replace("-", "_")])
        if path not in out:
            out.append(path)
    if name not in table:            # built in
        return []
    visit(*table[name])
    return out


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (name, mode, data)."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], 1):
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        out.write(hdr.encode() + nb)
        out.write(b"\0" * (-(110 + len(nb)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))
    return out.getvalue()


def _with_libraries(binary: str) -> list[tuple[str, bytes]]:
    """A dynamically linked binary and every library it loads, by their paths (ldd)."""
    import subprocess
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    paths = [binary]
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) > parts.index("=>") + 1 and parts[parts.index("=>") + 1].startswith("/"):
            paths.append(parts[parts.index("=>") + 1])
        elif parts and parts[0].startswith("/"):
            paths.append(parts[0])              # the dynamic loader
    files = []
    for p in paths:
        with open(p, "rb") as f:
            files.append((p, f.read()))
    return files


WAITING = "VMNET-GUEST-WAITING-FOR-ITS-NIC"


def build_initramfs(path: str, moddir: str, address: str, prefix: int = 24, queues: int = 1,
                    wait_for_nic: bool = False, ping: str | None = None, control: bool = False) -> str:
    """address DHCP: the guest asks for its address with busybox udhcpc (address, netmask,
    router, classless routes, MTU), writes what it got on the serial console (LEASE), and,
    given `ping`, pings that address and writes how many answered (PINGED). queues > 1: the guest enables that many queue pairs (ethtool -L combined, Debian's ethtool
    and its libraries in the initramfs): Linux enables only as many as it has CPUs. control: a
    shell on the second serial port (qemu_boot_args' control socket; ethtool is there too), for
    tests that change the guest while it runs (Control)."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    with open(busybox, "rb") as f:
        bb = f.read()
    d, f_, x = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFREG | 0o755
    entries = [(n, d, b"") for n in ("bin", "dev", "proc", "sys", "lib", "lib/modules")]
    base_dirs = len(entries)
    entries.append(("bin/busybox", x, bb))
    if queues > 1 or control:
        ethtool = shutil.which("ethtool") or "/usr/sbin/ethtool"
        dirs = set()
        for p, data in _with_libraries(ethtool):
            parent = os.path.dirname(p.lstrip("/"))
            while parent and parent not in dirs:
                dirs.add(parent)
                parent = os.path.dirname(parent)
            entries.append((p.lstrip("/"), x, data))
        # parents before children, after the base directories and before any file
        entries[base_dirs:base_dirs] = [(n, d, b"") for n in sorted(dirs, key=lambda n: (n.count("/"), n))
                                        if n not in ("bin", "lib")]
    inserts = []
    for name in MODULES:
        for rel in _deps(moddir, name):
            with open(os.path.join(moddir, rel), "rb") as fh:
                data = fh.read()
            if rel.endswith(".xz"):
                data = lzma.decompress(data)
            elif rel.endswith(".gz"):
                data = gzip.decompress(data)
            base = os.path.basename(rel).split(".ko")[0] + ".ko"
            entries.append((f"lib/modules/{base}", f_, data))
            inserts.append(f"/bin/busybox insmod /lib/modules/{base}")
    if address == DHCP:
        entries.append(("bin/lease", x, LEASE_SCRIPT.encode()))
    entries.append(("init", x, init_script(inserts, address, prefix, queues, wait_for_nic, ping,
                                           control).encode()))
    with open(path, "wb") as fh:
        fh.write(_cpio(entries))
    return path


# udhcpc's script: apply the lease as a distribution's would (RFC 3442 routes replace the
# router option), then tell the console what was given, one line.
LEASE_SCRIPT = f"""#!/bin/busybox sh
[ "$1" = bound ] || exit 0
/bin/busybox ip addr add "$ip/$mask" dev "$interface"
[ -n "$mtu" ] && /bin/busybox ip link set dev "$interface" mtu "$mtu"
set -- $staticroutes
while [ $# -ge 2 ]; do
    if [ "$2" = 0.0.0.0 ]; then /bin/busybox ip route add "$1" dev "$interface"
    else /bin/busybox ip route add "$1" via "$2" dev "$interface"; fi
    shift 2
done
[ -z "$staticroutes" ] && [ -n "$router" ] && /bin/busybox ip route add default via "$router" dev "$interface"
echo "{LEASE} ip=$ip mask=$mask router=$router mtu=$mtu staticroutes=$staticroutes dns=$dns" > /dev/ttyS0
"""


def init_script(inserts: list[str], address: str, prefix: int = 24, queues: int = 1,
                wait_for_nic: bool = False, ping: str | None = None, control: bool = False) -> str:
    """The guest's /init: modules, eth0 with `address` (and `queues` queue pairs), the TCP
    sink, READY. wait_for_nic: say WAITING and wait for eth0 to be hot-plugged first. Pure."""
    ethtool = shutil.which("ethtool") or "/usr/sbin/ethtool"
    wait = [f"echo {WAITING} > /dev/ttyS0",
            "while [ ! -e /sys/class/net/eth0 ]; do /bin/busybox sleep 0.2; done"] if wait_for_nic else []
    return "\n".join([
        "#!/bin/busybox sh",
        "/bin/busybox mount -t proc proc /proc",
        "/bin/busybox mount -t sysfs sys /sys",
        "/bin/busybox mount -t devtmpfs dev /dev",
        *inserts,
        *wait,
        *([f"{ethtool} -L eth0 combined {queues} > /dev/ttyS0 2>&1"] if queues > 1 else []),
        "/bin/busybox ip link set lo up",
        "/bin/busybox ip link set eth0 up",
        f"echo {NIC} mac=$(/bin/busybox cat /sys/class/net/eth0/address)"
        " pci=$(/bin/busybox basename $(/bin/busybox readlink -f /sys/class/net/eth0/device/..)) > /dev/ttyS0",
        *([f"/bin/busybox ip addr add {address}/{prefix} dev eth0"] if address != DHCP else
          ["/bin/busybox udhcpc -i eth0 -n -q -t 20 -T 2 -O mtu -O staticroutes -s /bin/lease > /dev/ttyS0 2>&1"]),
        *([f"echo {PINGED} $(/bin/busybox ping -c 3 -W 2 {ping} | /bin/busybox grep -c 'bytes from') > /dev/ttyS0"]
          if ping else []),
        _SINK,
        *([_CONTROL] if control else []),
        f"echo {READY} > /dev/ttyS0",
        "while true; do /bin/busybox sleep 3600; done",
    ]) + "\n"


# the control shell: commands from the second serial port, run one line at a time, their
# output back on it (no echo, so a test reads only what the commands print)
_CONTROL = ("(/bin/busybox stty -F /dev/ttyS1 -echo; "
            "while true; do /bin/busybox sh < /dev/ttyS1 > /dev/ttyS1 2>&1; done) &")


def connect_unix(path: str, timeout: float):
    """A stream connection to a unix socket QEMU listens on, retried until QEMU has made it
    (or `timeout` passed); the socket has `timeout` set."""
    import socket
    import time
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            break
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    sock.settimeout(timeout)
    return sock


class Control:
    """The test's end of a guest's control shell (build_initramfs(control=True)), through the
    unix socket QEMU listens on (qemu_boot_args(control=...))."""

    def __init__(self, path: str, timeout: float = 60.0):
        self.sock = connect_unix(path, timeout)
        self.n = 0

    def run(self, command: str) -> str:
        """Run `command` in the guest; what it printed."""
        self.n += 1
        end = f"VMNET-CONTROL-DONE-{self.n}\n"
        # the marker is typed split by quotes: a terminal echoing the command line back
        # (the serial line's echo is not always off yet) must not end the read early
        self.sock.sendall(f"{command}; echo VMNET-CONTROL-''DONE-{self.n}\n".encode())
        out = b""
        while end.encode() not in out.replace(b"\r\n", b"\n"):
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"the guest's control shell went away: {out!r}")
            out += chunk
        return out.decode(errors="replace").replace("\r\n", "\n").split(end)[0]

    def close(self):
        self.sock.close()


def firmware_args() -> list[str]:
    """Debian's firmware directories, for a QEMU built without its own blobs."""
    return [a for d in ("/usr/share/seabios", "/usr/lib/ipxe/qemu", "/usr/share/qemu")
            if os.path.isdir(d) for a in ("-L", d)]


def qemu_boot_args(vmlinuz: str, initramfs: str, serial_log: str, cpus: int = 1,
                   control: str | None = None) -> list[str]:
    """control: a unix socket path QEMU listens on for the guest's second serial port."""
    return firmware_args() + ["-machine", "pc,accel=tcg", "-m", "256", "-nodefaults", "-display", "none",
            *(["-smp", str(cpus)] if cpus > 1 else []),
            "-kernel", vmlinuz, "-initrd", initramfs,
            "-append", "console=ttyS0 panic=-1 quiet",
            "-serial", f"file:{serial_log}", "-no-reboot",
            *(["-chardev", f"socket,id=vmnetctl,path={control},server=on,wait=off",
               "-serial", "chardev:vmnetctl"] if control else [])]
