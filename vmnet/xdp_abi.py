"""The AF_XDP socket ABI numbers both sides of the split share (linux/if_xdp.h).

Pure constants and the XDP_STATISTICS layout: the privileged helper reads
statistics from its copy of a socket, the consumer from its own.
"""

import struct

AF_XDP = 44
SOL_XDP = 283
XDP_STATISTICS = 7
STATISTICS = struct.Struct("6Q")
XDP_MMAP_OFFSETS = 1
XDP_PGOFF_TX_RING = 0x80000000
# struct xdp_mmap_offsets: rx, tx, fill, completion rings, each {producer, consumer, desc, flags}
MMAP_OFFSETS = struct.Struct("16Q")
TX_PRODUCER = 4                     # index of tx.producer in MMAP_OFFSETS
STAT_NAMES = ("rx_dropped", "rx_invalid_descs", "tx_invalid_descs",
              "rx_ring_full", "rx_fill_ring_empty_descs", "tx_ring_empty_descs")


def read_statistics(sock) -> dict:
    """XDP_STATISTICS of a socket object (zeros before it is bound)."""
    raw = sock.getsockopt(SOL_XDP, XDP_STATISTICS, STATISTICS.size)
    return dict(zip(STAT_NAMES, STATISTICS.unpack(raw.ljust(STATISTICS.size, b"\0"))))
