"""Sharing a NIC's XDP hook: vmnet's XSK program as one component of libxdp's dispatcher.

A device runs one XDP program; the kernel has no multi-attach for XDP. A
NIC whose queues vmnet leases is the node's uplink, where other software
runs XDP too (a DDoS filter, a load balancer, xdp-tools). They share the
hook through libxdp's dispatcher protocol (xdp-tools lib/libxdp/protocol.org,
version 2): a dispatcher program with ten slots, each component an
freplace program pinned under <bpffs>/xdp/dispatch-IFINDEX-DID/, ordered by
run priority, continuing to the next on its chain-call actions, every
change made under the lock of <bpffs>/xdp and swapped in atomically.

vmnet does not re-implement the protocol: it calls the system's libxdp
(Debian's libxdp1), the protocol's reference implementation, which is
also what xdp-loader uses, so the two agree by construction. vmnet's
component is its instance's shared XSK program (bpf/xsk_shared.c) loaded
again as freplace with the instance's maps reused, so every port's slot
works on the NIC exactly as elsewhere; it chain-calls on XDP_PASS, so a
frame that is not for a leased queue goes on to the next program.

What vmnet will not share, refused before anything is made: a program
attached without a dispatcher (someone else's; named, with its id and the
processes holding it), a dispatcher libxdp did not pin (bpfman keeps its
own, which does not interoperate with libxdp), a full dispatcher.

Components are told apart by program name and maps: vmnet's are named
vmnet_xsk_v2, and the one of an instance uses that instance's XSK map.
A vmnet component whose maps no pinned instance holds is dead (its helper
crashed between attaching it and recording it); recovery removes it and
never another owner's. libxdp reads LIBXDP_BPFFS (default /sys/fs/bpf)
for where to pin; the tests give it a private directory.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import threading

from ..errors import AlreadyExists, KernelError, NotSupported
from . import libbpf

DISPATCHER = "xdp_dispatcher"
SLOTS = 10                       # libxdp's MAX_DISPATCHER_ACTIONS
DEFAULT_PRIORITY = 20            # where libxdp's own AF_XDP program (xsk_def_prog) runs
XDP_PASS = 2
ACTIONS = ("XDP_ABORTED", "XDP_DROP", "XDP_PASS", "XDP_TX", "XDP_REDIRECT")
MODES = {"native": 1, "skb": 2}  # enum xdp_attach_mode
MODE_NAMES = {1: "native", 2: "skb", 3: "hw"}
LIBXDP_FIX = "apt-get install libxdp1 (Debian's libxdp, the protocol's reference implementation)"

_lib = None
_lock = threading.Lock()         # libxdp keeps process-wide state (its print hook, the bpffs path)
_said: list[str] = []

_PRINT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


@_PRINT
def _collect(level, fmt, args):
    """libxdp's messages become part of vmnet's errors instead of lines on stderr."""
    if level <= 1:                   # LIBXDP_WARN, LIBXDP_INFO
        buf = ctypes.create_string_buffer(512)
        _libc.vsnprintf(buf, len(buf), fmt, ctypes.c_void_p(args))
        _said.append(buf.value.decode(errors="replace").strip())
    return 0


_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        libbpf.lib()                 # the same libbpf.so.1 libxdp links to, declared
        try:
            lx = ctypes.CDLL("libxdp.so.1", use_errno=True)
        except OSError as exc:
            raise NotSupported("the system libxdp (libxdp.so.1) cannot be loaded: vmnet needs it to "
                               "share a NIC's XDP hook with other programs", fix=LIBXDP_FIX) from exc
        p, i, u32, c, b = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_char_p, ctypes.c_bool
        for name, (res, args) in {
            "libxdp_set_print": (p, [p]),
            "libxdp_get_error": (ctypes.c_long, [p]),
            "libxdp_clean_references": (i, [i]),
            "xdp_program__open_file": (p, [c, c, p]),
            "xdp_program__from_id": (p, [u32]),
            "xdp_program__bpf_obj": (p, [p]),
            "xdp_program__set_run_prio": (i, [p, ctypes.c_uint]),
            "xdp_program__set_chain_call_enabled": (i, [p, ctypes.c_uint, b]),
            "xdp_program__chain_call_enabled": (b, [p, i]),
            "xdp_program__run_prio": (ctypes.c_uint, [p]),
            "xdp_program__attach": (i, [p, i, i, ctypes.c_uint]),
            "xdp_program__detach": (i, [p, i, i, ctypes.c_uint]),
            "xdp_program__close": (None, [p]),
            "xdp_program__id": (u32, [p]),
            "xdp_program__name": (c, [p]),
            "xdp_multiprog__get_from_ifindex": (p, [i]),
            "xdp_multiprog__next_prog": (p, [p, p]),
            "xdp_multiprog__main_prog": (p, [p]),
            "xdp_multiprog__is_legacy": (b, [p]),
            "xdp_multiprog__attach_mode": (i, [p]),
            "xdp_multiprog__close": (None, [p]),
        }.items():
            fn = getattr(lx, name)
            fn.restype, fn.argtypes = res, args
        lx.libxdp_set_print(ctypes.cast(_collect, ctypes.c_void_p))
        _lib = lx
    return _lib


class _NoLeaks:
    """Close the BPF fds a libxdp call left open once its objects are closed.

    Debian's libxdp 1.3.1 leaks two program fds each time it reads a
    device's dispatcher (xdp_multiprog__get_from_ifindex, also inside
    attach and detach): in a helper that runs for months that is an fd per
    lease. Used under _lock, after every libxdp object of the call is
    closed: a BPF fd that appeared meanwhile is libxdp's, and nobody's now
    (the helper's other threads open no BPF fds)."""

    BPF = ("anon_inode:bpf-prog", "anon_inode:bpf-map", "anon_inode:bpf_link")

    @staticmethod
    def _bpf_fds() -> set[int]:
        # by number and what it is: listing /proc/self/fd opens an fd of its own, which a
        # leaked fd may take the number of later
        out = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}") in _NoLeaks.BPF:
                    out.add(int(fd))
            except OSError:
                pass
        return out

    def __enter__(self):
        self.before = self._bpf_fds()
        return self

    def __exit__(self, *exc):
        for fd in self._bpf_fds() - self.before:
            os.close(fd)


def _said_since(mark: int) -> str:
    out = "; ".join(dict.fromkeys(m for m in _said[mark:] if m))
    del _said[:]
    return out


def _error(ptr) -> int:
    """libxdp's error of a returned pointer (0: a valid one); NULL is an error too."""
    if not ptr:
        return ctypes.get_errno() or errno.ENOENT
    return -lib().libxdp_get_error(ptr)


def bpffs() -> str:
    """Where libxdp pins (its LIBXDP_BPFFS, default /sys/fs/bpf), with its xdp/ subdirectory."""
    return os.path.join(os.environ.get("LIBXDP_BPFFS") or "/sys/fs/bpf", "xdp")


@dataclasses.dataclass
class Component:
    id: int
    name: str
    priority: int
    chain_call: list[str]
    vmnet: bool = False              # named like vmnet's XSK program
    map_ids: list[int] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "priority": self.priority,
                "chain_call_actions": self.chain_call, "vmnet": self.vmnet}


@dataclasses.dataclass
class Hook:
    """What runs on a device's XDP hook."""

    ifname: str
    ifindex: int
    kind: str                        # none | dispatcher | program | foreign-dispatcher
    mode: str | None = None
    prog_id: int = 0
    prog_name: str = ""
    components: list[Component] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return {"device": self.ifname, "ifindex": self.ifindex, "kind": self.kind, "mode": self.mode,
                "program": {"id": self.prog_id, "name": self.prog_name} if self.prog_id else None,
                "components": [c.to_dict() for c in self.components]}

    def component(self, prog_id: int) -> Component | None:
        return next((c for c in self.components if c.id == prog_id), None)


def _prog_map_ids(prog_id: int) -> list[int]:
    try:
        fd = libbpf.prog_fd_by_id(prog_id)
    except OSError:
        return []
    try:
        return libbpf.prog_map_ids(fd)
    finally:
        os.close(fd)


def inspect(ifindex: int, ifname: str, prog_id: int, mode: str | None, vmnet_name: str) -> Hook:
    """What runs on a device of the current netns whose XDP program (from its link state) is
    prog_id (0: none)."""
    if not prog_id:
        return Hook(ifname, ifindex, "none")
    try:
        name = _prog_name(prog_id)
    except OSError:
        name = "?"
    hook = Hook(ifname, ifindex, "program", mode, prog_id, name)
    if name != DISPATCHER:
        return hook
    if not os.path.isdir(os.path.join(bpffs(), f"dispatch-{ifindex}-{prog_id}")):
        hook.kind = "foreign-dispatcher"
        return hook
    with _lock, _NoLeaks():
        lx = lib()
        mark = len(_said)
        mp = lx.xdp_multiprog__get_from_ifindex(ifindex)
        err = _error(mp)
        if err:
            raise KernelError(f"cannot read the XDP dispatcher on {ifname}"
                              + (f" ({_said_since(mark)})" if _said[mark:] else ""), errno=err)
        try:
            if lx.xdp_multiprog__is_legacy(mp):
                return hook
            hook.kind = "dispatcher"
            hook.mode = MODE_NAMES.get(lx.xdp_multiprog__attach_mode(mp), mode)
            prog = lx.xdp_multiprog__next_prog(None, mp)
            while prog:
                cid = lx.xdp_program__id(prog)
                cname = (lx.xdp_program__name(prog) or b"?").decode()
                chain = [a for n, a in enumerate(ACTIONS) if lx.xdp_program__chain_call_enabled(prog, n)]
                hook.components.append(Component(cid, cname, lx.xdp_program__run_prio(prog), chain,
                                                 vmnet=cname == vmnet_name, map_ids=_prog_map_ids(cid)))
                prog = lx.xdp_multiprog__next_prog(prog, mp)
            return hook
        finally:
            lx.xdp_multiprog__close(mp)


def _prog_name(prog_id: int) -> str:
    fd = libbpf.prog_fd_by_id(prog_id)
    try:
        return libbpf.prog_info(fd).name.decode(errors="replace")
    finally:
        os.close(fd)


def holders(prog_id: int) -> list[str]:
    """'comm(pid)' of the processes holding a program (or a link to it) open: who to ask."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fdinfo")
        except OSError:
            continue
        for fd in fds:
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    held = f"prog_id:\t{prog_id}\n" in f.read()
                if held:
                    with open(f"/proc/{pid}/comm") as c:
                        out.append(f"{c.read().strip()}({pid})")
                    break
            except OSError:
                continue            # an fd closed meanwhile (the listing's own, for one)
    return out


def refuse_unshareable(hook: Hook, what: str) -> None:
    """A clear refusal for a hook vmnet cannot join; nothing when it can."""
    dev = hook.ifname
    if hook.kind == "program":
        who = holders(hook.prog_id)
        held = f", held open by {', '.join(who)}" if who else ", held by no process (pinned, or attached by netlink)"
        raise AlreadyExists(
            f"{dev} runs XDP program {hook.prog_name!r} (id {hook.prog_id}{held}) attached without a "
            f"dispatcher, so {what} cannot join it",
            fix=f"ask its owner to load it with libxdp ('xdp-loader load {dev} PROG.o' puts it in a "
                f"dispatcher vmnet can join), or detach it ('ip link set dev {dev} xdp off'), or use another NIC")
    if hook.kind == "foreign-dispatcher":
        raise NotSupported(
            f"{dev} runs an XDP dispatcher (id {hook.prog_id}) that libxdp did not pin under {bpffs()}: "
            "bpfman's (it keeps its own under /run/bpfman), whose dispatcher does not interoperate with "
            f"libxdp, so {what} cannot join it",
            fix=f"unload bpfman's XDP programs from {dev} ('bpfman unload ...'), or use another NIC")
    if hook.kind == "dispatcher" and len(hook.components) >= SLOTS:
        raise NotSupported(
            f"the XDP dispatcher on {dev} is full: its {SLOTS} slots hold "
            + ", ".join(f"{c.name} (id {c.id})" for c in hook.components),
            fix=f"unload a program you no longer need ('xdp-loader unload {dev} -i ID'), or use another NIC")


def join(ifindex: int, ifname: str, object_path: str, section: str, maps: dict[str, int],
         priority: int, mode: str) -> tuple[int, str]:
    """Add vmnet's component to the device's dispatcher (or make one): (program id, mode).
    `maps` are the instance's map fds by name, reused so every slot works here too."""
    with _lock, _NoLeaks():
        lx = lib()
        mark = len(_said)
        prog = lx.xdp_program__open_file(object_path.encode(), section.encode(), None)
        err = _error(prog)
        if err:
            raise KernelError(f"libxdp cannot open {object_path}", errno=err)
        try:
            obj = lx.xdp_program__bpf_obj(prog)
            for name, fd in maps.items():
                libbpf.map_reuse_fd(obj, name, fd)
            lx.xdp_program__set_run_prio(prog, priority)
            lx.xdp_program__set_chain_call_enabled(prog, XDP_PASS, True)
            ret = lx.xdp_program__attach(prog, ifindex, MODES[mode], 0)
            if ret:
                said = _said_since(mark)
                raise KernelError(f"libxdp could not add vmnet's XSK program to {ifname}'s XDP hook"
                                  + (f": {said}" if said else ""), errno=-ret,
                                  fix="run 'xdp-loader status' and 'vmnet doctor'")
            _said_since(mark)
            return lx.xdp_program__id(prog), mode
        finally:
            lx.xdp_program__close(prog)


def leave(ifindex: int, ifname: str, prog_id: int, mode: str | None) -> bool:
    """Remove vmnet's component (by program id) from the device's hook; the others stay, and
    libxdp removes the dispatcher with its last component. False when it is not there."""
    with _lock, _NoLeaks():
        lx = lib()
        mark = len(_said)
        mp = lx.xdp_multiprog__get_from_ifindex(ifindex)
        if _error(mp):
            _said_since(mark)
            return False
        try:
            found = None
            legacy = lx.xdp_multiprog__is_legacy(mp)
            if legacy:
                main = lx.xdp_multiprog__main_prog(mp)
                found = main if main and lx.xdp_program__id(main) == prog_id else None
            else:
                prog = lx.xdp_multiprog__next_prog(None, mp)
                while prog and found is None:
                    if lx.xdp_program__id(prog) == prog_id:
                        found = prog
                    prog = lx.xdp_multiprog__next_prog(prog, mp)
            if found is None:
                _said_since(mark)
                return False
            how = lx.xdp_multiprog__attach_mode(mp) or MODES.get(mode or "native", 1)
            ret = lx.xdp_program__detach(found, ifindex, how, 0)
            said = _said_since(mark)
            if ret:
                raise KernelError(f"libxdp could not remove vmnet's XSK program (id {prog_id}) from {ifname}"
                                  + (f": {said}" if said else ""), errno=-ret)
            return True
        finally:
            lx.xdp_multiprog__close(mp)


def clean_references(ifindex: int) -> None:
    """Pin directories of dispatchers no longer attached to the device (what a crash in the
    middle of a change left); libxdp's own clean-up, under its lock."""
    with _lock, _NoLeaks():
        mark = len(_said)
        lib().libxdp_clean_references(ifindex)
        _said_since(mark)
