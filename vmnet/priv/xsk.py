"""AF_XDP sockets: created here (privileged), used by the consumer (not).

The helper's half of the AF_XDP split: socket(AF_XDP) needs CAP_NET_RAW and
an XSKMAP update needs the map, so the helper creates one socket per queue
inside the consumer's netns and stores it in the map (at its slot in the
shared program, vmnet.priv.xskprog; at key start_queue + i in the map of a
port made with a program of its own, store). The
consumer registers its UMEM on the fd, sets up the rings and binds.
XDP_STATISTICS can be read from the helper's copy of each socket.
"""

from __future__ import annotations

import errno
import mmap
import os
import socket
import struct

from ..errors import from_oserror
from ..xdp_abi import (AF_XDP, MMAP_OFFSETS, SOL_XDP, TX_PRODUCER, XDP_MMAP_OFFSETS, XDP_PGOFF_TX_RING,
                       read_statistics)
from . import libbpf


def store(map_fd: int, key: int, sock: socket.socket) -> bool:
    """Store sock at key of the XSK map; False when this kernel takes it only once it
    has an RX ring (Linux 7.x answers ENOBUFS; 6.12 to 6.18 take an unbound socket)."""
    try:
        libbpf.map_update_u32(map_fd, key, sock.fileno())
        return True
    except OSError as exc:
        if exc.errno == errno.ENOBUFS:
            return False
        raise from_oserror(exc, f"cannot store the AF_XDP socket at key {key} of the XSK map") from None


def new_socket() -> socket.socket:
    """One AF_XDP socket in the current netns (where it will be bound)."""
    try:
        return socket.socket(AF_XDP, socket.SOCK_RAW, 0)
    except OSError as exc:
        raise from_oserror(exc, "cannot create an AF_XDP socket",
                           fix="AF_XDP needs CONFIG_XDP_SOCKETS and CAP_NET_RAW") from None


def create_xsk_sockets(keys: list[int], store_at, guard=None,
                       binds: list[tuple[int, int]] | None = None) -> tuple[list[socket.socket], list[int]]:
    """One unbound AF_XDP socket per key, stored with store_at(key, socket) -> bool (the
    shared program's XskProgram.store at its slots, or store() into a port's own map).

    With a guard (vmnet.priv.bindguard), socket i may afterwards be bound to
    binds[i] = (ifindex, queue id) of this netns and nowhere else.

    Returns the sockets and the keys whose socket the kernel would not take
    yet: the consumer (QEMU) sets up the rings after the hand-off, and
    whoever holds the sockets stores those later (ports.store_pending).
    Call inside the consumer's netns: the socket binds to ifindexes of the
    netns it was created in.
    """
    socks: list[socket.socket] = []
    pending: list[int] = []
    try:
        for i, key in enumerate(keys):
            s = new_socket()
            socks.append(s)
            if guard is not None:
                guard.confine(s, *binds[i])
            if not store_at(key, s):
                pending.append(key)
        return socks, pending
    except BaseException:
        for s in socks:
            s.close()
        raise


def statistics(fd: int) -> dict:
    """The kernel's XDP_STATISTICS of a socket fd (zeros before it is bound)."""
    s = socket.socket(AF_XDP, socket.SOCK_RAW, 0, fileno=os.dup(fd))
    try:
        return read_statistics(s)
    finally:
        s.close()


def tx_produced(sock: socket.socket) -> int:
    """How many frames the socket's holder has put on its TX ring so far (the ring's producer
    index, read through the helper's copy of the socket); 0 while it has no TX ring.

    What tells the helper that a VM migrated here is running: the destination's QEMU sends
    nothing until the guest runs, and then announces it at once (docs/migration.md)."""
    try:
        raw = sock.getsockopt(SOL_XDP, XDP_MMAP_OFFSETS, MMAP_OFFSETS.size)
        offset = MMAP_OFFSETS.unpack(raw.ljust(MMAP_OFFSETS.size, b"\0"))[TX_PRODUCER]
        with mmap.mmap(sock.fileno(), mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ,
                       offset=XDP_PGOFF_TX_RING) as ring:
            return struct.unpack_from("=I", ring, offset)[0]
    except (OSError, ValueError):
        return 0
