"""The bind guard: the kernel lets a socket vmnet made bind only to its own port's queue.

An AF_XDP socket that is open but not bound can be bound by whoever holds
it, with no capability, to any device and queue of the netns it was made
in, and then sends raw frames there, past netfilter. vmnet hands such
sockets to QEMU. So for every socket it makes, the helper stores in the
socket-local storage of a BPF LSM program (bpf/bind_guard.c) the one
(netns cookie, ifindex, queue id) it may be bound to, and the kernel
refuses every other bind of that socket with EPERM.

The program and its map are host-wide: every helper instance's sockets go
through the same ones. They are attached by a bpf_link pinned in
/sys/fs/bpf/vmnet-guard/<version>/, so they outlive any helper (a consumer
keeps its sockets across a helper restart, and they must stay confined). A
newer program version gets a directory of its own; an older one stays
attached for the sockets it already confines.

Where the kernel cannot run the guard (no `bpf` in its LSM list, or it
refuses to load BPF LSM programs), ensure() raises GuardUnavailable saying
why, and the helper falls back to the netns rule (unsafe_devices): a port's
consumer netns may then hold no device but the port's own and lo.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from importlib import resources

from ..errors import KernelError, NotSupported, PermissionDenied, VmnetError
from ..xdp_abi import AF_XDP
from . import bpf, libbpf

GUARD_ROOT = "/sys/fs/bpf/vmnet-guard"
PROGRAM = "vmnet_bind_v1"              # the version tag; matches bpf/bind_guard.c
VERSION_DIR = os.path.join(GUARD_ROOT, "v1")
RULES_MAP, REFUSED_MAP = "vmnet_bind_rules", "vmnet_bind_refused"
PINS = ("link", "rules", "refused")
RULE = struct.Struct("QII")            # struct vmnet_bind_rule: netns cookie, ifindex, queue id
SO_NETNS_COOKIE = 71
LSM_LIST = "/sys/kernel/security/lsm"
FIX = ("boot a kernel that runs BPF LSM programs, as Debian's do: CONFIG_BPF_LSM=y, 'bpf' in its LSM "
       "list (CONFIG_LSM, or lsm=...,bpf on its command line), and 'bpftool feature probe kernel' "
       "listing program_type lsm as available")

_libc = ctypes.CDLL(None, use_errno=True)


class GuardUnavailable(NotSupported):
    """This kernel cannot confine binds; `why` is one line for status and doctor."""

    def __init__(self, why: str, fix: str = FIX):
        super().__init__(f"the kernel cannot confine AF_XDP binds: {why}", fix=fix)
        self.why = why


def lsm_names() -> list[str] | None:
    """The kernel's active LSMs (mounting securityfs when nothing is there), or None."""
    if not os.path.exists(LSM_LIST) and os.path.isdir("/sys/kernel/security"):
        _libc.mount(b"securityfs", b"/sys/kernel/security", b"securityfs", 0, None)
    try:
        with open(LSM_LIST) as f:
            return f.read().strip().split(",")
    except OSError:
        return None


def netns_cookie(sock: socket.socket) -> int:
    return struct.unpack("Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]


def _bind(sock: socket.socket, ifindex: int, queue: int) -> int:
    """bind() an AF_XDP socket; the errno (0 when it bound)."""
    sa = struct.pack("HHIII", AF_XDP, 0, ifindex, queue, 0)
    return 0 if _libc.bind(sock.fileno(), sa, len(sa)) == 0 else ctypes.get_errno()


class Guard:
    """The attached guard, held by fds of its pins."""

    def __init__(self, fds: dict[str, int]):
        self.fds = fds

    @property
    def link_id(self) -> int:
        return libbpf.link_info(self.fds["link"]).id

    def confine(self, sock: socket.socket, ifindex: int, queue_id: int) -> None:
        """From now on `sock` binds to (its netns, ifindex, queue_id) or not at all."""
        key = struct.pack("i", sock.fileno())
        try:
            libbpf.map_update(self.fds["rules"], key, RULE.pack(netns_cookie(sock), ifindex, queue_id))
        except OSError as exc:
            raise KernelError(f"cannot confine an AF_XDP socket to ifindex {ifindex} queue {queue_id}",
                              errno=exc.errno, fix="check 'vmnet doctor' (bind-guard)") from None

    def rule(self, sock: socket.socket) -> tuple[int, int, int] | None:
        """(netns cookie, ifindex, queue id) `sock` is confined to, or None."""
        raw = libbpf.map_lookup(self.fds["rules"], struct.pack("i", sock.fileno()), RULE.size)
        return RULE.unpack(raw) if raw is not None else None

    def refused(self) -> int:
        """Binds the guard refused since it was attached (all CPUs)."""
        cpus = libbpf.possible_cpus()
        raw = libbpf.map_lookup(self.fds["refused"], struct.pack("I", 0), 8 * cpus)
        return sum(struct.unpack(f"{cpus}Q", raw)) if raw else 0

    def describe(self) -> dict:
        return {"mechanism": "bpf-lsm", "program": PROGRAM, "pins": VERSION_DIR,
                "link_id": self.link_id, "refused_binds": self.refused()}

    def close(self):
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}


def _open_pinned() -> Guard | None:
    fds = bpf.open_pins(VERSION_DIR, PINS)
    if fds is None:
        return None
    guard = Guard(fds)
    prog = libbpf.prog_fd_by_id(libbpf.link_info(fds["link"]).prog_id)
    try:
        name = libbpf.prog_info(prog).name.decode()
    finally:
        os.close(prog)
    if name != PROGRAM:
        guard.close()
        raise KernelError(f"{VERSION_DIR} holds program {name!r}, not vmnet's {PROGRAM}",
                          fix=f"remove what is pinned there (rm -r {VERSION_DIR}) and restart the helper")
    return guard


def _self_test(guard: Guard) -> None:
    """Prove the program runs: a confined socket must be refused a bind elsewhere."""
    s = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
    try:
        lo = socket.if_nametoindex("lo")
        guard.confine(s, lo, 0)
        other = _bind(s, lo, 1)
        if other != errno.EPERM:
            raise GuardUnavailable(
                "the bpf LSM program is attached but did not refuse a bind it must refuse "
                f"(bind answered {errno.errorcode.get(other, other)}, not EPERM)")
    finally:
        s.close()


def _lsm_problem() -> str | None:
    """Why the bpf LSM cannot run the guard here, or None when it is active."""
    lsms = lsm_names()
    if lsms is None:
        return f"{LSM_LIST} cannot be read, so whether the bpf LSM runs is unknown"
    if "bpf" not in lsms:
        return f"the bpf LSM is not active (active LSMs: {','.join(lsms)})"
    return None


def _object_path() -> str:
    return str(resources.files("vmnet.bpf") / "bind_guard.o")


def ensure() -> Guard:
    """The host's guard: reopened from its pins, or loaded, attached, tested and pinned."""
    problem = _lsm_problem()
    if problem:
        raise GuardUnavailable(problem)
    bpf.require_bpffs()
    guard = _open_pinned()
    if guard is not None:
        return guard
    try:
        with libbpf.BpfObject(_object_path()) as obj:
            obj.load()
            fds = {"rules": os.dup(obj.map_fd(RULES_MAP)), "refused": os.dup(obj.map_fd(REFUSED_MAP))}
            try:
                fds["link"] = libbpf.link_create_lsm(obj.program_fd(PROGRAM))
            except OSError:
                for fd in fds.values():
                    os.close(fd)
                raise
    except OSError as exc:
        raise GuardUnavailable(
            f"this kernel refuses to load or attach BPF LSM programs "
            f"({errno.errorcode.get(exc.errno, exc.errno)}), although its LSM list names bpf") from None
    guard = Guard(fds)
    try:
        _self_test(guard)
        return _pin(guard)
    except BaseException:
        guard.close()
        raise


def _pin(guard: Guard) -> Guard:
    """Pins appear complete or not at all; a helper that loses the race uses the winner's."""
    bpf.require_bpffs()
    os.makedirs(GUARD_ROOT, mode=0o700, exist_ok=True)
    tmp = os.path.join(GUARD_ROOT, f"_v1-{os.getpid()}")
    if bpf.pin_atomically(VERSION_DIR, tmp, {name: guard.fds[name] for name in PINS}):
        return guard
    guard.close()           # another helper pinned its guard first: that one is the host's
    winner = _open_pinned()
    if winner is None:
        raise KernelError(f"{VERSION_DIR} appeared but cannot be opened") from None
    return winner


def installed() -> bool:
    return os.path.isdir(VERSION_DIR)


def probe() -> tuple[bool, str]:
    """(can confine, why) without changing anything: the installed guard, or whether this
    kernel would load it (the program is loaded and dropped, never attached)."""
    try:
        guard = _open_pinned()
    except KernelError as exc:
        return False, exc.message
    if guard is not None:
        try:
            d = guard.describe()
            return True, (f"installed: {PROGRAM} attached (link id {d['link_id']}, pins in "
                          f"{VERSION_DIR}), {d['refused_binds']} bind(s) refused so far")
        finally:
            guard.close()
    problem = _lsm_problem()
    if problem:
        return False, problem
    try:
        with libbpf.BpfObject(_object_path()) as obj:
            obj.load()
    except OSError as exc:
        return False, (f"this kernel refuses to load BPF LSM programs "
                       f"({errno.errorcode.get(exc.errno, exc.errno)}), although its LSM list names bpf")
    return True, f"the bpf LSM is active and loads {PROGRAM}; the helper attaches it at its first start"


def remove() -> bool:
    """Detach the guard (its pins). Every socket it confines becomes free to bind
    anywhere: only for whoever installed it and knows none of them is left (tests)."""
    found = bpf.remove_pin_dir(VERSION_DIR, PINS)
    try:
        os.rmdir(GUARD_ROOT)
    except OSError:
        pass
    return found


def unsafe_devices(devices: list[str], own: set[str]) -> list[str]:
    """Devices of a consumer netns a socket could be bound to without the guard.

    Pure. lo is not counted: frames sent on it stay inside the same netns,
    which the consumer already reaches with ordinary sockets.
    """
    return sorted(d for d in devices if d != "lo" and d not in own)


def _netns_id(ref: str | None) -> str | None:
    """dev:inode of a netns reference (None: the helper's own); None when it is gone."""
    from ..fields import netns_id
    from . import netns
    if ref is None:
        return netns_id("/proc/thread-self/ns/net")
    try:
        fd = netns.open_netns(ref)        # checked to be a netns, never blocking
    except (OSError, VmnetError):
        return None
    try:
        return netns_id(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


class Protection:
    """What keeps a consumer's sockets on its own port, as the helper applies it.

    With the guard, the kernel does. Without it, a port is refused when its
    consumer netns holds a device a socket could be bound to instead of the
    port's own, unless the operator set allow_unconfined (then it is made,
    and status says its sockets are unconfined).
    """

    def __init__(self, guard: Guard | None, why: str | None, allow_unconfined: bool):
        self.guard, self.why, self.allow_unconfined = guard, why, allow_unconfined

    @classmethod
    def detect(cls, allow_unconfined: bool) -> "Protection":
        try:
            return cls(ensure(), None, allow_unconfined)
        except GuardUnavailable as exc:
            return cls(None, exc.why, allow_unconfined)

    @property
    def mode(self) -> str:
        if self.guard is not None:
            return "kernel"
        return "unconfined-allowed" if self.allow_unconfined else "netns"

    def summary(self) -> str:
        if self.guard is not None:
            return f"the kernel confines every socket to its port's queue (bpf LSM, {PROGRAM})"
        if self.allow_unconfined:
            return (f"none: {self.why}; allow_unconfined is set, so ports are made even where their "
                    "consumer could bind its sockets to other devices")
        return (f"netns rule only: {self.why}; a port's consumer netns may hold no device but the "
                "port's own and lo")

    def describe(self) -> dict:
        out = {"mode": self.mode, "summary": self.summary()}
        if self.guard is not None:
            out.update(self.guard.describe())
        else:
            out["why"] = self.why
        return out

    def check(self, spec) -> None:
        """Refuse a port whose sockets nothing could keep on it (before anything is made)."""
        self._check(spec.name, spec.netns, {spec.host_ifname, spec.consumer_ifname, spec.placeholder_tap})

    def check_neighbours(self, spec, records) -> None:
        """The netns rule for the sockets' whole life: vmnet never puts a device of its own where
        the consumer of a port it made unconfined holds its sockets (they are bound only when the
        consumer binds them, to whatever device the netns then holds). Devices that others put
        there later are the residual risk docs/helper.md names."""
        if self.guard is not None or self.allow_unconfined:
            return
        here = _netns_id(None)
        going = {here: "its host end"}
        mine = _netns_id(spec.netns)
        if mine is not None:
            going.setdefault(mine, "its consumer end")
        for record in records:
            if record.get("confined", True):
                continue
            where = _netns_id(record.get("netns"))
            if where in going:
                what = record.get("netns") or "the helper's netns"
                raise PermissionDenied(
                    f"port {spec.name}: {going[where]} would go into {what}, where port {record['name']}'s "
                    "consumer holds AF_XDP sockets nothing confines to their port: it could bind them to "
                    f"the new device ({self.why})",
                    fix=f"give port {record['name']}'s consumer a network namespace of its own (re-create it "
                        "with --netns), or boot a kernel that runs the bpf LSM so vmnet can confine the "
                        "sockets")

    def check_record(self, record: dict) -> None:
        """The same at handoff: devices may have appeared in the netns since."""
        self._check(record["name"], record.get("netns"),
                    {record["host_ifname"], record["consumer_ifname"], record.get("placeholder_tap")})

    def _check(self, name: str, netns_ref: str | None, own: set[str]) -> None:
        if self.guard is not None or self.allow_unconfined:
            return
        from pyroute2 import IPRoute
        from . import netns
        with netns.entered(netns_ref), IPRoute() as ip:
            names = [m.get("IFLA_IFNAME") for m in ip.get_links()]
        unsafe = unsafe_devices([n for n in names if n], own)
        if unsafe:
            where = f"netns {netns_ref}" if netns_ref else "the helper's netns"
            raise PermissionDenied(
                f"port {name}: its consumer could bind its AF_XDP sockets to {', '.join(unsafe[:8])}"
                f"{' ...' if len(unsafe) > 8 else ''} in {where} and send raw frames there, and "
                f"nothing here would stop it ({self.why})",
                fix="put the consumer in a network namespace of its own (--netns), or boot a kernel "
                    "that runs the bpf LSM so vmnet can confine the sockets, or accept the risk with "
                    "allow_unconfined = true in vmnet.toml")
