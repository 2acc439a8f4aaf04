"""Who may do what: every request is judged on the peer's SO_PEERCRED.

Port creation and deletion: root or members of the configured admin group.
A port's fds (and its memlock raise): its declared consumer uid — and, when
the port names one, only from inside the consumer cgroup — or an admin.
Listing and status: admins see every port, others only their own.
"""

from __future__ import annotations

import dataclasses
import socket
import struct

from ..errors import PermissionDenied

SO_PEERGROUPS = 59


@dataclasses.dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def describe(self) -> str:
        return f"pid {self.pid} uid {self.uid} gid {self.gid}"

    def cgroup(self) -> str | None:
        """The peer's cgroup v2 path, e.g. /machine.slice/machine-qemu...scope."""
        try:
            with open(f"/proc/{self.pid}/cgroup") as f:
                for line in f:
                    if line.startswith("0::"):
                        return line[3:].strip()
        except OSError:
            return None
        return None


def peer_of(conn: socket.socket) -> Peer:
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * 256)
        groups = struct.unpack(f"{len(raw) // 4}I", raw)
    except OSError:
        groups = ()
    return Peer(pid, uid, gid, tuple(groups))


class Policy:
    def __init__(self, admin_gid: int | None = None):
        self.admin_gid = admin_gid

    def is_admin(self, peer: Peer) -> bool:
        return peer.uid == 0 or (self.admin_gid is not None and
                                 (peer.gid == self.admin_gid or self.admin_gid in peer.groups))

    def require_admin(self, peer: Peer, action: str):
        if not self.is_admin(peer):
            raise PermissionDenied(
                f"{peer.describe()} may not {action}",
                fix="run as root, or as a member of the helper's admin_group")

    def is_consumer(self, peer: Peer, record: dict) -> bool:
        if peer.uid != record.get("consumer_uid"):
            return False
        cgroup = record.get("consumer_cgroup")
        if cgroup:
            mine = peer.cgroup()
            return mine is not None and (mine == cgroup or mine.startswith(cgroup.rstrip("/") + "/"))
        return True

    def require_consumer(self, peer: Peer, record: dict):
        if self.is_admin(peer) or self.is_consumer(peer, record):
            return
        want = f"uid {record.get('consumer_uid')}"
        if record.get("consumer_cgroup"):
            want += f" in cgroup {record['consumer_cgroup']}"
        raise PermissionDenied(
            f"{peer.describe()} is not the consumer of port {record.get('name')} ({want})",
            fix="run the consumer as the uid the port was created for, or re-create the port "
                "with --consumer-uid set to this uid")

    def visible(self, peer: Peer, record: dict) -> bool:
        """Admins see every port, a uid the ports it consumes (wherever it runs)."""
        return self.is_admin(peer) or peer.uid == record.get("consumer_uid")
