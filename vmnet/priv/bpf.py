"""A port's XDP attachment on bpffs: attach by bpf_link, pin, remove.

A port's device carries the instance's shared XSK program
(vmnet.priv.xskprog) through a bpf_link pinned at <root>/<port>/link, so
the attachment outlives the process that made it (a helper restart keeps
traffic flowing) and removing the pin is what detaches it. Ports made by
the first program version have their own program instance and XSK map
(the map pinned at .../xsks): they are still opened, served and removed
here until deleted. <root> is the helper instance's pin root
(vmnet.priv.instance): /sys/fs/bpf/vmnet for the default instance. The
pin-directory and attach-with-fallback rules here serve the shared
program and the bind guard too.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from importlib import resources

from ..errors import AlreadyExists, InvalidInput, KernelError, NotSupported
from . import libbpf

PIN_ROOT = "/sys/fs/bpf/vmnet"          # the default instance's root
PROGRAM_NAME = "vmnet_xsk_v1"      # the version tag; matches bpf/xsk_redirect.c
MAP_NAME = "vmnet_xsks"
BPF_FS_MAGIC = 0xCAFE4A11
PORT_PINS = ("link", "filter", "xsks", "prog")   # a port's pins (xsks: first-version ports only; prog: a NIC's component)
MODE_FLAGS = {"native": libbpf.XDP_FLAGS_DRV_MODE, "skb": libbpf.XDP_FLAGS_SKB_MODE}


def object_path() -> str:
    return str(resources.files("vmnet.bpf") / "xsk_redirect.o")


def bpffs_mounted(root: str = "/sys/fs/bpf") -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == root and line.split()[2] == "bpf" for line in f)


_bpffs_seen: set[int] = set()      # mount namespaces (their inodes) where it was found


def require_bpffs():
    """Mount bpffs at /sys/fs/bpf when nothing is there, as systemd does at boot. Looked up
    once per mount namespace (the mount table is read on every create otherwise): a bpffs
    unmounted under a running helper makes its next pin fail, with the kernel's error."""
    mntns = os.stat("/proc/self/ns/mnt").st_ino
    if mntns in _bpffs_seen or bpffs_mounted():
        _bpffs_seen.add(mntns)
        return
    # In a private mount namespace (e.g. under 'ip netns exec', which remounts
    # /sys) this instance is private too, and its pins die with the namespace.
    logging.getLogger("vmnet").warning("mounting a BPF filesystem at /sys/fs/bpf")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", b"/sys/fs/bpf", b"bpf", 0, b"mode=0700") != 0:
        raise NotSupported("no BPF filesystem is mounted at /sys/fs/bpf and vmnet cannot mount one",
                           errno=ctypes.get_errno(), fix="mount -t bpf bpf /sys/fs/bpf")


def pin_dir(port: str, root: str = PIN_ROOT) -> str:
    return os.path.join(root, port)


class Attached:
    """The kernel objects of one port's program, held by fds until pinned or closed."""

    def __init__(self, link_fd: int, map_fd: int, mode: str):
        self.link_fd, self.map_fd, self.mode = link_fd, map_fd, mode

    @property
    def ids(self) -> dict:
        link = libbpf.link_info(self.link_fd)
        return {"link_id": link.id, "prog_id": link.prog_id,
                "map_id": libbpf.map_info(self.map_fd).id, "ifindex": link.xdp_ifindex}

    def close(self):
        for fd in (self.link_fd, self.map_fd):
            if fd >= 0:
                os.close(fd)
        self.link_fd = self.map_fd = -1


def load_and_attach(ifindex: int, ifname: str, map_entries: int, mode: str) -> Attached:
    """Load the XSK program and attach it to `ifindex` (in the current netns).

    mode "auto" tries native first and falls back to skb; the mode that
    took is recorded, because QEMU must be told the same one.
    """
    if mode not in ("auto", "native", "skb"):
        raise InvalidInput(f"XDP mode {mode!r} is not known", fix="use auto, native or skb")
    try:
        obj = libbpf.BpfObject(object_path())
    except OSError as exc:
        raise KernelError(f"cannot open the XSK program {object_path()}", errno=exc.errno,
                          fix="reinstall vmnet; the object is built by 'make -C bpf'") from None
    with obj:
        try:
            obj.resize_map(MAP_NAME, map_entries)
            obj.load()
        except OSError as exc:
            raise KernelError("the kernel refused to load the XSK program", errno=exc.errno,
                              fix="run 'vmnet doctor': loading needs CAP_BPF and a kernel with BTF and AF_XDP") from None
        map_fd = os.dup(obj.map_fd(MAP_NAME))
        try:
            link_fd, taken = attach_xdp(obj.program_fd(PROGRAM_NAME), ifindex, ifname, mode)
        except BaseException:
            os.close(map_fd)
            raise
        return Attached(link_fd, map_fd, taken)


def attach_xdp(prog_fd: int, ifindex: int, ifname: str, mode: str) -> tuple[int, str]:
    """A bpf_link of program `prog_fd` on a device of the current netns: (link fd, mode taken).
    mode "auto" tries native first and falls back to skb."""
    failures = []
    for m in ["native", "skb"] if mode == "auto" else [mode]:
        try:
            return libbpf.link_create_xdp(prog_fd, ifindex, MODE_FLAGS[m]), m
        except OSError as exc:
            failures.append((m, exc.errno))
    if any(e == errno.EBUSY for _, e in failures):
        raise AlreadyExists(f"{ifname} already has an XDP program attached",
                            fix=f"detach it first ('ip link set dev {ifname} xdp off')")
    tried = ", ".join(f"{m}: {os.strerror(e)}" for m, e in failures)
    raise KernelError(f"cannot attach the XSK program to {ifname} ({tried})",
                      errno=failures[-1][1], fix="try --mode skb, or check 'vmnet doctor'")


def pin_atomically(final: str, tmp: str, pins: dict[str, int]) -> bool:
    """Pin each fd of `pins` under its name in `tmp`, then rename `tmp` to `final`: the
    directory appears complete or not at all (a helper starting meanwhile never mistakes
    one being made for a half-made one). False, with nothing left, when `final` appeared
    first (another process won). bpffs allows no dots in names."""
    try:
        os.rmdir(tmp)           # one a helper of this pid left: gone if empty, else emptied
    except FileNotFoundError:
        pass                    # the usual case: one syscall, not one per pin
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY:
            raise
        remove_pin_dir(tmp, pins)
    os.mkdir(tmp, 0o700)
    renamed = False
    try:
        for name, fd in pins.items():
            libbpf.obj_pin(fd, os.path.join(tmp, name))
        try:
            os.rename(tmp, final)
            renamed = True
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return False
            raise
        return True
    finally:
        if not renamed:
            remove_pin_dir(tmp, pins)


def open_pins(d: str, names) -> dict[str, int] | None:
    """fds of every pin `names` in `d`, or None (and nothing left open) when one is missing."""
    fds: dict[str, int] = {}
    try:
        for name in names:
            fds[name] = libbpf.obj_get(os.path.join(d, name))
    except OSError:
        for fd in fds.values():
            os.close(fd)
        return None
    return fds


def remove_pin_dir(d: str, names=PORT_PINS) -> bool:
    """Unlink the pins `names` in `d`, then `d`; whether anything was there."""
    found = False
    for name in names:
        try:
            os.unlink(os.path.join(d, name))
            found = True
        except FileNotFoundError:
            pass
    try:
        os.rmdir(d)
        found = True
    except FileNotFoundError:
        pass
    return found


def pin(port: str, attached: Attached, root: str = PIN_ROOT):
    """Pin link and map of a port with a program of its own, complete or not at all; in a
    directory named "_<port>-<pid>" first (no port name starts with "_")."""
    _pin_port(port, {"link": attached.link_fd, "xsks": attached.map_fd}, root)


def pin_link(port: str, link_fd: int, root: str = PIN_ROOT) -> None:
    """Pin a port's own bpf_link (the shared program on its device) at <root>/<port>/link;
    complete or not at all, as pin() does."""
    _pin_port(port, {"link": link_fd}, root)


def pin_port_links(port: str, links: dict[str, int], root: str = PIN_ROOT) -> None:
    """Pin a port's bpf_links at once: its XSK link ("link") and its host end's filter
    ("filter"), complete or not at all."""
    _pin_port(port, links, root)


def _pin_port(port: str, pins: dict[str, int], root: str) -> None:
    require_bpffs()
    os.makedirs(root, mode=0o700, exist_ok=True)
    d = pin_dir(port, root)
    if os.path.exists(d) or not pin_atomically(d, os.path.join(root, f"_{port}-{os.getpid()}"), pins):
        raise AlreadyExists(f"port {port} already has pins in {d}",
                            fix=f"delete the port with 'vmnet port del {port}'")


# ---- objects one helper instance shares: <root>/+<name>/ ----------------------

def load_object(path: str, programs: dict[str, str], maps: dict[str, str], what: str) -> dict[str, int]:
    """Load a BPF object; fds of the named programs and maps, under the keys given."""
    try:
        with libbpf.BpfObject(path) as obj:
            obj.load()
            fds = {key: os.dup(obj.program_fd(name)) for key, name in programs.items()}
            fds.update({key: os.dup(obj.map_fd(name)) for key, name in maps.items()})
            return fds
    except OSError as exc:
        raise KernelError(f"the kernel refused to load {what}", errno=exc.errno,
                          fix="run 'vmnet doctor': loading needs CAP_BPF and a kernel with BTF") from None


def open_shared(d: str, pins, tag_key: str, tag: str) -> dict[str, int] | None:
    """fds of a shared object's pins in `d`, or None when it is not (completely) pinned;
    refused when its program `tag_key` is not named `tag` (the version tag)."""
    fds = open_pins(d, pins)
    if fds is None:
        return None
    name = libbpf.prog_info(fds[tag_key]).name.decode()
    if name != tag:
        close_fds(fds)
        raise KernelError(f"{d} holds program {name!r}, not vmnet's {tag}",
                          fix=f"delete the instance's ports and remove {d}")
    return fds


def pin_shared(root: str, d: str, fds: dict[str, int], tag_key: str, tag: str) -> dict[str, int]:
    """Pin a shared object's fds in `d`, complete or not at all; the fds to use from now on:
    these, or, when another process pinned its own first, that one's (these are closed)."""
    if os.path.isdir(d):
        return fds
    os.makedirs(root, mode=0o700, exist_ok=True)
    tmp = os.path.join(root, f"_{os.path.basename(d)}-{os.getpid()}")
    if pin_atomically(d, tmp, fds):
        return fds
    other = open_shared(d, list(fds), tag_key, tag)
    if other is None:
        raise KernelError(f"{d} appeared but cannot be opened")
    close_fds(fds)
    return other


def unpin_shared(root: str, d: str, pins) -> None:
    """Remove a shared object's pins (and the instance's root when that was its last entry)."""
    remove_pin_dir(d, pins)
    if root != PIN_ROOT:
        try:
            os.rmdir(root)
        except OSError:
            pass


def close_fds(fds: dict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)


def pinned_link_info(port: str, root: str = PIN_ROOT):
    """The kernel's bpf_link_info of a port's pinned link, or None without a pin."""
    try:
        fd = libbpf.obj_get(os.path.join(pin_dir(port, root), "link"))
    except OSError:
        return None
    try:
        return libbpf.link_info(fd)
    finally:
        os.close(fd)


def link_ifindex(port: str, root: str = PIN_ROOT) -> int | None:
    """The ifindex a port's pinned link is attached to (0: its device went), or None without a pin."""
    info = pinned_link_info(port, root)
    return None if info is None else info.xdp_ifindex


def remove_abandoned_pins(root: str = PIN_ROOT) -> list[str]:
    """Temporary pin directories of processes that died while pinning (a port's link, or the
    shared program: whatever pins they hold)."""
    removed = []
    for entry in entries(root):
        if entry.startswith("_"):
            pid = entry.rsplit("-", 1)[-1]
            if pid.isascii() and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                d = os.path.join(root, entry)
                remove_pin_dir(d, entries(d))
                removed.append(entry)
    return removed


def entries(root: str = PIN_ROOT) -> list[str]:
    try:
        return os.listdir(root)
    except FileNotFoundError:
        return []


def pinned(port: str, root: str = PIN_ROOT) -> bool:
    return os.path.isdir(pin_dir(port, root))


def open_pinned(port: str, root: str = PIN_ROOT) -> Attached | None:
    """Reopen a port's link and map from its pins, or None when not there."""
    d = pin_dir(port, root)
    try:
        link_fd = libbpf.obj_get(os.path.join(d, "link"))
    except OSError:
        return None
    try:
        map_fd = libbpf.obj_get(os.path.join(d, "xsks"))
    except OSError:
        os.close(link_fd)
        return None
    return Attached(link_fd, map_fd, mode="unknown")


def is_vmnet_program(prog_id: int) -> bool:
    """True when the program with this id is one of vmnet's XSK programs (by its version tag:
    a port's own, vmnet_xsk_v1, or the shared one, vmnet_xsk_v2)."""
    from .xskprog import PROGRAM as SHARED
    try:
        fd = libbpf.prog_fd_by_id(prog_id)
    except OSError:
        return False
    try:
        return libbpf.prog_info(fd).name.decode() in (PROGRAM_NAME, SHARED)
    finally:
        os.close(fd)


def unpin(port: str, root: str = PIN_ROOT) -> bool:
    """Remove a port's pins (which detaches its program); True if any existed."""
    found = remove_pin_dir(pin_dir(port, root))
    if root != PIN_ROOT:            # an instance's root goes with its last port
        try:
            os.rmdir(root)
        except OSError:
            pass
    return found


def pinned_ports(root: str = PIN_ROOT) -> list[str]:
    """Port directories under root: not temporaries ("_"), instances ("@") or shared objects ("+")."""
    return sorted(e for e in entries(root) if not e.startswith(("_", "@", "+")))


def instance_roots() -> list[str]:
    """Pin roots of every helper instance that has pins, the default one first."""
    return [PIN_ROOT] + sorted(os.path.join(PIN_ROOT, e) for e in entries(PIN_ROOT) if e.startswith("@"))
