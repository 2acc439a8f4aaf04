"""The shared XSK program of a helper instance: one program on every port's device.

One program instance (bpf/xsk_shared.c) and its maps serve every port of
a helper instance: each port's device gets a bpf_link to the same program,
and each of its queues a slot — its socket's key in the XSK map and its
counters' index. A new port then costs no program load: the kernel adds a
program to its XDP dispatcher, and waits an RCU grace period, only when
that program is new to it (docs/performance.md). The helper keeps one more
attachment for its whole life (the anchor: lo of a network namespace only
it holds, which no traffic ever reaches), so that even the first port after
the last one went costs none.

Keys are (ingress ifindex, queue). ifindexes are per netns, so vmnet gives
the consumer end of every veth and netkit pair the ifindex IFINDEX_BASE +
its port's first slot: unique within the instance, whatever netns the
device lives in; a NIC whose queues are leased keeps its own (host netns)
ifindex, far below that range.

Pins: <instance root>/+xsk/{prog,slots,xsks,stats,claims}, made complete or
not at all, present while the instance has ports (the helper re-pins the
program it holds when the next port comes). vmnet_claims says which port
owns which slot: slots are taken with BPF_NOEXIST, so two processes of one
instance never take the same one, and what a crash left claimed is found
by port name at the helper's next start.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from importlib import resources

from ..errors import KernelError, NotSupported
from . import bpf, libbpf

PROGRAM = "vmnet_xsk_v2"            # the version tag; matches bpf/xsk_shared.c
SLOTS = 16384
IFINDEX_BASE = 0x56000000           # 'V' << 24; + 2 * SLOTS stays below 2**31
MAPS = {"slots": "vmnet_slots", "xsks": "vmnet_xsks", "stats": "vmnet_stats", "claims": "vmnet_claims"}
PINS = ("prog",) + tuple(MAPS)
KEY = struct.Struct("II")           # struct vmnet_queue_key
SLOT = struct.Struct("I")
CLAIM = struct.Struct("16sII")      # struct vmnet_claim
STATS = struct.Struct("QQ")         # struct vmnet_queue_stats
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def pin_dir(root: str) -> str:
    return os.path.join(root, "+xsk")


def object_path() -> str:
    return str(resources.files("vmnet.bpf") / "xsk_shared.o")


def consumer_ifindex(first_slot: int) -> int:
    """The ifindex vmnet gives the consumer end of the port whose first slot this is."""
    return IFINDEX_BASE + first_slot


def host_ifindex(first_slot: int) -> int:
    """... and its host end: the kernel honours a chosen peer ifindex only beside a chosen one."""
    return IFINDEX_BASE + SLOTS + first_slot


class XskProgram:
    """The program and its maps, held by fds (and pinned while the instance has ports)."""

    def __init__(self, root: str, fds: dict[str, int]):
        self.root, self.fds = root, fds
        self.anchor_fds: list[int] = []
        self._hint = 0

    # ---- life ----------------------------------------------------------

    @classmethod
    def ensure(cls, root: str) -> "XskProgram":
        """The instance's program, reopened from its pins or loaded and pinned."""
        bpf.require_bpffs()
        found = cls._open_pinned(root)
        if found is not None:
            return found
        prog = cls(root, bpf.load_object(object_path(), {"prog": PROGRAM}, MAPS, "vmnet's shared XSK program"))
        try:
            return prog.pin()
        except BaseException:
            prog.close()
            raise

    @classmethod
    def _open_pinned(cls, root: str) -> "XskProgram | None":
        fds = bpf.open_shared(pin_dir(root), PINS, "prog", PROGRAM)
        return None if fds is None else cls(root, fds)

    def pin(self) -> "XskProgram":
        """Pin program and maps (again, after the last port took the pins along).

        A process that finds the instance's pins made by another meanwhile
        uses those, and drops its own program."""
        self.fds = bpf.pin_shared(self.root, pin_dir(self.root), self.fds, "prog", PROGRAM)
        return self

    def unpin_if_unused(self) -> bool:
        """Remove the pins when no slot is claimed any more (the last port went)."""
        if self.any_claimed():
            return False
        bpf.unpin_shared(self.root, pin_dir(self.root), PINS)
        return True

    def hold_in_dispatcher(self) -> None:
        """Attach the program to lo of a netns only this process holds (the anchor).

        The kernel's XDP dispatcher then knows the program for as long as the
        process lives, and attaching it to a port's device never makes it wait
        for an RCU grace period. Both the netns and the link die with the
        process: nothing outlives it."""
        if self.anchor_fds:
            return
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.unshare(CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
            try:
                netns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                link = libbpf.link_create_xdp(self.fds["prog"], socket.if_nametoindex("lo"),
                                              libbpf.XDP_FLAGS_SKB_MODE)
                self.anchor_fds = [netns_fd, link]
            finally:
                if _libc.setns(home, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to the helper's netns")
        finally:
            os.close(home)

    def close(self):
        for fd in list(self.fds.values()) + self.anchor_fds:
            os.close(fd)
        self.fds, self.anchor_fds = {}, []

    # ---- attachments ---------------------------------------------------

    def attach(self, ifindex: int, ifname: str, mode: str) -> tuple[int, str]:
        """A bpf_link of the program on a device of the current netns: (link fd, mode taken).
        mode "auto" tries native, then skb."""
        return bpf.attach_xdp(self.fds["prog"], ifindex, ifname, mode)

    def join(self, ifindex: int, ifname: str, mode: str, priority: int) -> tuple[int, str]:
        """The program as a component of the device's libxdp dispatcher, with this instance's
        maps (vmnet.priv.xdpshare): (its program id, mode)."""
        from . import xdpshare
        maps = {MAPS[k]: self.fds[k] for k in MAPS}
        return xdpshare.join(ifindex, ifname, object_path(), "xdp", maps, priority, mode)

    # ---- slots ---------------------------------------------------------

    def claim_of(self, slot: int) -> tuple[str, int, int] | None:
        """(port, ifindex, queue) of a claimed slot, or None."""
        raw = libbpf.map_lookup(self.fds["claims"], SLOT.pack(slot), CLAIM.size)
        if raw is None:
            return None
        port, ifindex, queue = CLAIM.unpack(raw)
        return port.rstrip(b"\0").decode(), ifindex, queue

    def any_claimed(self) -> bool:
        """Whether any slot is claimed (one key looked for, not every claim read)."""
        return libbpf.map_any_key(self.fds["claims"], SLOT.size)

    def claims(self) -> dict[int, tuple[str, int, int]]:
        """slot -> (port, ifindex, queue) of every claimed slot."""
        slots = (SLOT.unpack(key)[0] for key in libbpf.map_keys(self.fds["claims"], SLOT.size))
        return {slot: claim for slot in slots if (claim := self.claim_of(slot)) is not None}

    def claim(self, port: str, count: int) -> list[int]:
        """Take `count` free slots for `port` (atomically: BPF_NOEXIST)."""
        taken: list[int] = []
        slot = self._hint
        tries = 0
        try:
            while len(taken) < count:
                if tries >= SLOTS:
                    raise NotSupported(f"no free XSK slot for port {port}: all {SLOTS} are taken",
                                       fix="delete ports you no longer need")
                tries += 1
                try:
                    libbpf.map_update(self.fds["claims"], SLOT.pack(slot), CLAIM.pack(port.encode(), 0, 0),
                                      libbpf.BPF_NOEXIST)
                    taken.append(slot)
                except OSError as exc:
                    if exc.errno != errno.EEXIST:
                        raise KernelError("cannot claim an XSK slot", errno=exc.errno) from None
                slot = (slot + 1) % SLOTS
            self._hint = slot
            return taken
        except BaseException:
            self.release(taken)
            raise

    def assign(self, slot: int, port: str, ifindex: int, queue: int) -> None:
        """Frames of (ifindex, queue) now go to slot's socket; its counters start at 0."""
        cpus = libbpf.possible_cpus()
        libbpf.map_update(self.fds["stats"], SLOT.pack(slot), STATS.pack(0, 0) * cpus)
        libbpf.map_update(self.fds["claims"], SLOT.pack(slot), CLAIM.pack(port.encode(), ifindex, queue))
        libbpf.map_update(self.fds["slots"], KEY.pack(ifindex, queue), SLOT.pack(slot), libbpf.BPF_NOEXIST)

    def release(self, slots: list[int]) -> None:
        """Give slots back: their keys, sockets and claims go. Idempotent."""
        for slot in slots:
            raw = libbpf.map_lookup(self.fds["claims"], SLOT.pack(slot), CLAIM.size)
            if raw is not None:
                _, ifindex, queue = CLAIM.unpack(raw)
                if ifindex:
                    current = libbpf.map_lookup(self.fds["slots"], KEY.pack(ifindex, queue), SLOT.size)
                    if current is not None and SLOT.unpack(current)[0] == slot:
                        libbpf.map_delete_key(self.fds["slots"], KEY.pack(ifindex, queue))
            libbpf.map_delete_key(self.fds["xsks"], SLOT.pack(slot))
            libbpf.map_delete_key(self.fds["claims"], SLOT.pack(slot))

    def store(self, slot: int, sock: socket.socket) -> bool:
        """Put a socket at its slot; False when this kernel takes it only once it has an RX
        ring (Linux 7.x answers ENOBUFS)."""
        try:
            libbpf.map_update(self.fds["xsks"], SLOT.pack(slot), struct.pack("I", sock.fileno()))
            return True
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                return False
            raise KernelError(f"cannot store the AF_XDP socket at slot {slot} of the XSK map",
                              errno=exc.errno) from None

    def stats(self, slot: int) -> dict:
        """Frames of this slot's queue redirected to its socket, and passed for want of one."""
        cpus = libbpf.possible_cpus()
        raw = libbpf.map_lookup(self.fds["stats"], SLOT.pack(slot), STATS.size * cpus)
        red = passed = 0
        if raw:
            for i in range(cpus):
                r, p = STATS.unpack_from(raw, i * STATS.size)
                red, passed = red + r, passed + p
        return {"redirected": red, "passed_no_socket": passed}

    @property
    def prog_id(self) -> int:
        return libbpf.prog_info(self.fds["prog"]).id


def opened(root: str) -> XskProgram | None:
    """The instance's program if it is pinned (for status and teardown), else None."""
    return XskProgram._open_pinned(root)
