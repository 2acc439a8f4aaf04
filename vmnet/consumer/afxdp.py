"""QEMU's half of the AF_XDP contract, for an unprivileged process.

Given an open, unbound AF_XDP socket fd (already in the XSK map), do what
QEMU's net/af-xdp.c does through libxdp: register a UMEM of
(2048 + 2048) * 2 frames of 4 KiB on the fd (xsk_umem__create_with_fd),
set up fill/completion (2048 each) and RX/TX (2048 each) rings, map them,
and bind to queue start_queue + i of the interface with
XDP_USE_NEED_WAKEUP (plus XDP_COPY for force-copy=on). None of this needs a
capability; the UMEM is charged to the caller's RLIMIT_MEMLOCK unless it
has CAP_IPC_LOCK.

The rings are shared with the kernel: producers publish descriptors and then
the producer index; on x86 stores are not reordered with stores, and every
access here goes through the interpreter, so no explicit barrier is needed.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import socket
import struct

from ..xdp_abi import AF_XDP, SOL_XDP, read_statistics

XDP_MMAP_OFFSETS, XDP_RX_RING, XDP_TX_RING, XDP_UMEM_REG = 1, 2, 3, 4
XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING = 5, 6
XDP_PGOFF_RX_RING, XDP_PGOFF_TX_RING = 0, 0x80000000
XDP_UMEM_PGOFF_FILL_RING, XDP_UMEM_PGOFF_COMPLETION_RING = 0x100000000, 0x180000000
XDP_COPY, XDP_USE_NEED_WAKEUP = 1 << 1, 1 << 3
XDP_RING_NEED_WAKEUP = 1

FRAME_SIZE = 4096
RING_SIZE = 2048                                  # libxdp's default for all four rings
NUM_FRAMES = (RING_SIZE + RING_SIZE) * 2          # as QEMU: all four rings full
UMEM_BYTES = NUM_FRAMES * FRAME_SIZE              # 32 MiB per queue

_U32 = struct.Struct("I")
_ADDR = struct.Struct("Q")
_DESC = struct.Struct("QII")
_OFFSETS = struct.Struct("16Q")                   # rx, tx, fr, cr x (producer, consumer, desc, flags)
_UMEM_REG = struct.Struct("QQIIII")
_SOCKADDR_XDP = struct.Struct("HHIII")

_libc = ctypes.CDLL(None, use_errno=True)


class Ring:
    """A single-producer/single-consumer ring mapped from the socket."""

    def __init__(self, fd: int, pgoff: int, offsets: tuple, entry: struct.Struct):
        producer, consumer, desc, flags = offsets
        self.size, self.mask, self.entry = RING_SIZE, RING_SIZE - 1, entry
        length = desc + RING_SIZE * entry.size
        self.map = mmap.mmap(fd, length, mmap.MAP_SHARED | mmap.MAP_POPULATE,
                             mmap.PROT_READ | mmap.PROT_WRITE, offset=pgoff)
        self.buf = memoryview(self.map)
        self.p_off, self.c_off, self.d_off, self.f_off = producer, consumer, desc, flags

    def producer(self) -> int:
        return _U32.unpack_from(self.buf, self.p_off)[0]

    def consumer(self) -> int:
        return _U32.unpack_from(self.buf, self.c_off)[0]

    def set_producer(self, v: int):
        _U32.pack_into(self.buf, self.p_off, v & 0xFFFFFFFF)

    def set_consumer(self, v: int):
        _U32.pack_into(self.buf, self.c_off, v & 0xFFFFFFFF)

    def needs_wakeup(self) -> bool:
        return bool(_U32.unpack_from(self.buf, self.f_off)[0] & XDP_RING_NEED_WAKEUP)

    def read(self, idx: int):
        return self.entry.unpack_from(self.buf, self.d_off + (idx & self.mask) * self.entry.size)

    def write(self, idx: int, *values):
        self.entry.pack_into(self.buf, self.d_off + (idx & self.mask) * self.entry.size, *values)

    def close(self):
        self.buf.release()
        self.map.close()


class XskQueue:
    """One bound AF_XDP socket with its own UMEM, as QEMU sets up per queue."""

    def __init__(self, fd: int, ifindex: int, queue_id: int, force_copy: bool = False,
                 bind: bool = True):
        self.fd, self.queue_id = fd, queue_id
        self.sock = socket.socket(AF_XDP, socket.SOCK_RAW, 0, fileno=fd)
        self.umem = mmap.mmap(-1, UMEM_BYTES, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.umem_view = memoryview(self.umem)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(self.umem))
        self.sock.setsockopt(SOL_XDP, XDP_UMEM_REG, _UMEM_REG.pack(addr, UMEM_BYTES, FRAME_SIZE, 0, 0, 0))
        for opt in (XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_RX_RING, XDP_TX_RING):
            self.sock.setsockopt(SOL_XDP, opt, _U32.pack(RING_SIZE))
        off = _OFFSETS.unpack(self.sock.getsockopt(SOL_XDP, XDP_MMAP_OFFSETS, _OFFSETS.size))
        self.rx = Ring(fd, XDP_PGOFF_RX_RING, off[0:4], _DESC)
        self.tx = Ring(fd, XDP_PGOFF_TX_RING, off[4:8], _DESC)
        self.fill = Ring(fd, XDP_UMEM_PGOFF_FILL_RING, off[8:12], _ADDR)
        self.comp = Ring(fd, XDP_UMEM_PGOFF_COMPLETION_RING, off[12:16], _ADDR)
        # Frames not in the fill ring wait here for TX (LIFO, like QEMU's pool).
        self.pool = [i * FRAME_SIZE for i in range(NUM_FRAMES - 1, -1, -1)]
        self.refill(RING_SIZE)
        self.force_copy = force_copy
        if bind:
            self.bind(ifindex, queue_id)

    def bind(self, ifindex: int, queue_id: int):
        """Bind to a device queue; raises OSError (EPERM where vmnet's bind guard refuses it)."""
        flags = XDP_USE_NEED_WAKEUP | (XDP_COPY if self.force_copy else 0)
        sa = _SOCKADDR_XDP.pack(AF_XDP, flags, ifindex, queue_id, 0)
        if _libc.bind(self.fd, sa, len(sa)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"bind AF_XDP socket to ifindex {ifindex} queue {queue_id}: {os.strerror(err)}")
        self.queue_id = queue_id

    def refill(self, n: int):
        prod, cons = self.fill.producer(), self.fill.consumer()
        n = min(n, self.fill.size - (prod - cons) % 2**32, len(self.pool))
        for i in range(n):
            self.fill.write(prod + i, self.pool.pop())
        self.fill.set_producer(prod + n)

    def receive(self, limit: int = 64) -> list[tuple[int, bytes]]:
        """Take up to `limit` frames off the RX ring; their frames go back to the pool."""
        cons, prod = self.rx.consumer(), self.rx.producer()
        n = min((prod - cons) % 2**32, limit)
        frames = []
        for i in range(n):
            addr, length, _ = self.rx.read(cons + i)
            frames.append((addr, bytes(self.umem_view[addr:addr + length])))
            self.pool.append(addr - addr % FRAME_SIZE)
        self.rx.set_consumer(cons + n)
        if n or self.fill.needs_wakeup():
            self.refill(RING_SIZE)
        return frames

    def reclaim(self):
        cons, prod = self.comp.consumer(), self.comp.producer()
        n = (prod - cons) % 2**32
        for i in range(n):
            self.pool.append(self.comp.read(cons + i)[0])
        self.comp.set_consumer(cons + n)

    def transmit(self, frames: list[bytes]) -> int:
        self.reclaim()
        prod, cons = self.tx.producer(), self.tx.consumer()
        room = self.tx.size - (prod - cons) % 2**32
        sent = 0
        for frame in frames[:room]:
            if not self.pool or len(frame) > FRAME_SIZE:
                break
            addr = self.pool.pop()
            self.umem_view[addr:addr + len(frame)] = frame
            self.tx.write(prod + sent, addr, len(frame), 0)
            sent += 1
        self.tx.set_producer(prod + sent)
        if sent:
            # copy mode always transmits from sendmsg(); a wakeup is cheap
            try:
                self.sock.send(b"", socket.MSG_DONTWAIT)
            except (BlockingIOError, OSError):
                pass
        return sent

    def statistics(self) -> dict:
        return read_statistics(self.sock)

    def close(self):
        for ring in (self.rx, self.tx, self.fill, self.comp):
            ring.close()
        self.sock.close()
        self.umem_view.release()
        self.umem.close()
