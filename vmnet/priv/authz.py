"""Who may do what: every request is judged on credentials the kernel vouches for.

A connection's peer is what SO_PEERCRED said at connect() plus a pidfd of
that process (SO_PEERPIDFD, Linux >= 6.5). Every message must also carry
the same credentials in SCM_CREDENTIALS (SO_PASSCRED): a process handed a
connection that another one opened (root's, say) cannot use it. Facts about
the peer read from /proc go through a /proc/<pid> directory checked against
the pidfd, so a pid reused by another process never answers for it.

Port creation and deletion: root or members of the configured admin group.
A port's fds (and its memlock raise): its declared consumer uid, and only
from where the port says its consumer runs (a cgroup, the cgroup libvirt
gives the domain's QEMU; for a pod's port, that pod's network namespace and
cgroup, and the consumer's gid too) — or an admin. Listing and status:
admins see every port, others only the ports they consume.

The consumer socket (what is mounted into pods) makes nobody an admin: a
peer that came through it is judged as a consumer even when it is root —
root in some other container is no reason to hand it a pod's sockets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import signal
import socket
import struct

from ..errors import PermissionDenied
from ..pod import in_pod, pod_uids

SO_PEERGROUPS = 59
SO_PEERPIDFD = 77


@dataclasses.dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    pidfd: int | None = None        # owned by the connection; None: a process described by hand
    consumer_only: bool = False     # came through the consumer socket: never an admin

    def describe(self) -> str:
        return f"pid {self.pid} uid {self.uid} gid {self.gid}"

    @contextlib.contextmanager
    def proc(self):
        """A directory fd of /proc/<pid> that is this peer's, not a later process's."""
        fd = os.open(f"/proc/{self.pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if self.pidfd is not None and not pidfd_alive(self.pidfd):
                raise ProcessLookupError(errno.ESRCH, f"process {self.pid} has exited")
            yield fd
        finally:
            os.close(fd)

    def read(self, name: str) -> str:
        """/proc/<pid>/<name> of this peer ('' when it has exited)."""
        try:
            with self.proc() as d:
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=d)
                try:
                    chunks = []
                    while chunk := os.read(fd, 65536):
                        chunks.append(chunk)
                    return b"".join(chunks).decode(errors="replace")
                finally:
                    os.close(fd)
        except OSError:
            return ""

    def cgroups(self) -> list[str]:
        """The peer's cgroup path in every hierarchy (v1 controllers and v2)."""
        return [line.split(":", 2)[2] for line in self.read("cgroup").splitlines() if line.count(":") >= 2]

    def netns_id(self) -> str | None:
        """dev:inode of the peer's network namespace (None when it has exited or cannot be read)."""
        try:
            with self.proc() as d:
                st = os.stat("ns/net", dir_fd=d)
        except OSError:
            return None
        return f"{st.st_dev}:{st.st_ino}"

    def cgroup(self) -> str | None:
        """The cgroup v2 path, e.g. /machine.slice/machine-qemu...scope."""
        for line in self.read("cgroup").splitlines():
            if line.startswith("0::"):
                return line[3:].strip()
        return None


def pidfd_alive(pidfd: int) -> bool:
    try:
        signal.pidfd_send_signal(pidfd, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True             # it exists; we may just not signal it


def netns_id_of_fd(fd: int) -> str:
    """dev:inode of an open network namespace (what a pod's port records)."""
    st = os.fstat(fd)
    return f"{st.st_dev}:{st.st_ino}"


def peer_of(conn: socket.socket, consumer_only: bool = False) -> Peer:
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * 256)
        groups = struct.unpack(f"{len(raw) // 4}I", raw)
    except OSError:
        groups = ()
    try:
        pidfd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError:             # Linux < 6.5: the next best thing, opened right away
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = None
    if pidfd is not None:
        os.set_inheritable(pidfd, False)
    return Peer(pid, uid, gid, tuple(groups), pidfd, consumer_only)


def _pod_name(pod: dict) -> str:
    named = "/".join(p for p in (pod.get("namespace"), pod.get("name")) if p)
    return f"{named} ({pod['uid']})" if named else pod["uid"]


def in_cgroup(paths: list[str], prefix: str) -> bool:
    """Whether any hierarchy path is prefix or below it."""
    prefix = prefix.rstrip("/") or "/"
    return any(p == prefix or p.startswith(prefix.rstrip("/") + "/") for p in paths)


def has_component(paths: list[str], names: list[str]) -> bool:
    """Whether any hierarchy path has one of names as a component (libvirt's per-domain cgroup)."""
    wanted = set(names)
    return any(part in wanted for p in paths for part in p.split("/"))


class Policy:
    def __init__(self, admin_gid: int | None = None):
        self.admin_gid = admin_gid

    def is_admin(self, peer: Peer) -> bool:
        if peer.consumer_only:
            return False
        return peer.uid == 0 or (self.admin_gid is not None and
                                 (peer.gid == self.admin_gid or self.admin_gid in peer.groups))

    def require_admin(self, peer: Peer, action: str):
        if not self.is_admin(peer):
            raise PermissionDenied(
                f"{peer.describe()} may not {action}",
                fix="run as root, or as a member of the helper's admin_group")

    def consumer_mismatch(self, peer: Peer, record: dict) -> str | None:
        """Why peer is not the consumer the port names, or None when it is."""
        if peer.uid != record.get("consumer_uid"):
            return f"it runs as uid {peer.uid}, the port's consumer is uid {record.get('consumer_uid')}"
        pod = record.get("consumer_pod")
        if pod:
            return self._pod_mismatch(peer, record, pod)
        if record.get("consumer_cgroup") or record.get("consumer_scope"):
            paths = peer.cgroups()
            if record.get("consumer_cgroup") and not in_cgroup(paths, record["consumer_cgroup"]):
                return f"it is not inside cgroup {record['consumer_cgroup']}"
            if record.get("consumer_scope") and not has_component(paths, record["consumer_scope"]):
                return (f"it is not in the cgroup of {record.get('owner') or 'the port owner'} "
                        f"({' or '.join(record['consumer_scope'])})")
        return None

    @staticmethod
    def _pod_mismatch(peer: Peer, record: dict, pod: dict) -> str | None:
        """A pod's port: the consumer's gid, the pod's netns, the pod's cgroup — all three."""
        gid = record.get("consumer_gid")
        if gid is not None and peer.gid != gid:
            return f"it runs as gid {peer.gid}, the port's consumer is gid {gid}"
        where = peer.netns_id()
        if where is None or where != record.get("consumer_netns_id"):
            return (f"it is not in the network namespace of pod {_pod_name(pod)} "
                    f"(its netns is {where or 'unreadable'}, the pod's {record.get('consumer_netns_id')})")
        paths = peer.cgroups()
        if not in_pod(paths, pod["uid"]):
            found = sorted(pod_uids(paths))
            return (f"it is not in the cgroup of pod {_pod_name(pod)} "
                    f"({'it is in pod ' + ', '.join(found) if found else 'its cgroup names no pod'})")
        return None

    def require_consumer(self, peer: Peer, record: dict):
        if self.is_admin(peer):
            return
        why = self.consumer_mismatch(peer, record)
        if why is None:
            return
        raise PermissionDenied(
            f"{peer.describe()} is not the consumer of port {record.get('name')}: {why}",
            fix="start the consumer the way the port was created for (its uid; for a libvirt "
                "domain's port, as that domain's QEMU; for a pod's port, inside that pod), or re-create "
                "the port for this consumer")

    def visible(self, peer: Peer, record: dict) -> bool:
        """Admins see every port, a uid the ports it consumes (wherever it runs)."""
        return self.is_admin(peer) or peer.uid == record.get("consumer_uid")
