"""The one live process that holds a port's sockets, watched through a pidfd.

A port's sockets go to exactly one live consumer at a time: under libvirt
every QEMU runs as the same uid, so "any process of the consumer uid" would
let one domain's QEMU take another's sockets. The helper keeps a pidfd of
the holder; it becomes readable when the process exits, and the helper
then puts fresh, unbound sockets into the port's map, so the next start of
the VM works with nothing deleted by hand.

A port's record keeps the holder's pid and start time (field 22 of
/proc/<pid>/stat, clock ticks since boot): a restarted helper reopens a
pidfd for that pid and keeps it only if the start time is the same, so a
recycled pid is never taken for the holder.
"""

from __future__ import annotations

import os

from ..errors import InvalidInput, NotFound
from .authz import Peer, pidfd_alive


def start_time(stat: str) -> int | None:
    """Field 22 of a /proc/<pid>/stat line (the command may hold spaces and parentheses)."""
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


class Holder:
    __slots__ = ("pid", "start_time", "pidfd")

    def __init__(self, pid: int, start_time: int, pidfd: int):
        self.pid, self.start_time, self.pidfd = pid, start_time, pidfd

    @classmethod
    def of_peer(cls, peer: Peer) -> "Holder":
        """The peer of a connection (its pidfd is the connection's: keep a copy)."""
        if peer.pidfd is None:
            raise NotFound(f"pid {peer.pid} cannot be watched (no pidfd)",
                           fix="vmnet needs Linux >= 5.3 (pidfd_open)")
        started = start_time(peer.read("stat"))
        if started is None:
            raise NotFound(f"pid {peer.pid} exited before it got its sockets")
        return cls(peer.pid, started, os.dup(peer.pidfd))

    @classmethod
    def of_pid(cls, pid: int) -> "Holder":
        """A process named by an admin (live attach hands the sockets to a running QEMU)."""
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise InvalidInput(f"holder pid {pid!r} is not a process id")
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise NotFound(f"process {pid} does not exist", fix="give the pid of the running QEMU") from None
        os.set_inheritable(pidfd, False)
        holder = cls.reopen_fd(pid, pidfd)
        if holder is None:
            os.close(pidfd)
            raise NotFound(f"process {pid} exited before it got its sockets")
        return holder

    @classmethod
    def reopen_fd(cls, pid: int, pidfd: int, expect: int | None = None) -> "Holder | None":
        started = start_time(Peer(pid, 0, 0, (), pidfd).read("stat"))
        if started is None or (expect is not None and started != expect):
            return None
        return cls(pid, started, pidfd)

    @classmethod
    def from_record(cls, data) -> "Holder | None":
        """The holder a record names, if that very process still runs."""
        if not isinstance(data, dict):
            return None
        pid, started = data.get("pid"), data.get("start_time")
        if not isinstance(pid, int) or not isinstance(started, int) or pid <= 0:
            return None
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return None
        os.set_inheritable(pidfd, False)
        holder = cls.reopen_fd(pid, pidfd, expect=started)
        if holder is None:
            os.close(pidfd)
        return holder

    def alive(self) -> bool:
        return self.pidfd >= 0 and pidfd_alive(self.pidfd)

    def to_dict(self) -> dict:
        return {"pid": self.pid, "start_time": self.start_time}

    def close(self):
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def __repr__(self):
        return f"Holder(pid={self.pid}, start_time={self.start_time})"
