"""AF_XDP sockets: created here (privileged), used by the consumer (not).

The helper's half of the AF_XDP split: socket(AF_XDP) needs CAP_NET_RAW and
an XSKMAP update needs the map, so the helper creates one socket per queue
inside the consumer's netns and stores it at key start_queue + i. The
consumer registers its UMEM on the fd, sets up the rings and binds.
XDP_STATISTICS can be read from the helper's copy of each socket.
"""

from __future__ import annotations

import errno
import os
import socket

from ..errors import from_oserror
from ..xdp_abi import AF_XDP, read_statistics
from . import libbpf


def create_xsk_sockets(map_fd: int, keys: list[int]) -> list[socket.socket]:
    """One unbound AF_XDP socket per key, stored in the XSK map at that key.

    Call inside the consumer's netns: the socket binds to ifindexes of the
    netns it was created in.
    """
    socks: list[socket.socket] = []
    try:
        for key in keys:
            try:
                s = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
            except OSError as exc:
                raise from_oserror(exc, "cannot create an AF_XDP socket",
                                   fix="AF_XDP needs CONFIG_XDP_SOCKETS and CAP_NET_RAW") from None
            socks.append(s)
            try:
                libbpf.map_update_u32(map_fd, key, s.fileno())
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # seen on Linux 7.3: the map takes only sockets that already have an RX
                    # ring, and the consumer (QEMU) sets up the rings itself, after the hand-off
                    raise from_oserror(
                        exc, f"this kernel refuses the AF_XDP socket at key {key} of the XSK map "
                             "until it has an RX ring, and vmnet stores the sockets before the "
                             "consumer sets up its rings",
                        fix="use a kernel that accepts them (6.12 to 6.18 do; 7.3 does not)") from None
                raise from_oserror(exc, f"cannot store the AF_XDP socket at key {key} of the XSK map") from None
        return socks
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
