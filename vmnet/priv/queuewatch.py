"""Multi-queue ports whose consumer reads only some queues: the host end sends only to those.

A guest's virtio-net enables min(queue pairs, vCPUs) of a NIC's queue pairs
by default, and `ethtool -L` changes that while it runs. QEMU stops reading
the AF_XDP sockets of the queues the guest disabled (virtio_net_can_receive
says no), so whatever the host end sends to those queues waits in their RX
rings and is never delivered: a 4-queue port behind a 2-vCPU guest loses
every flow hashed onto queues 2-3, ARP included. With tap, QEMU detaches the
disabled queues and the kernel stops using them; AF_XDP gives no such signal.

So the helper reads it from the rings. Through its own copy of each socket
it maps the RX ring's first page read-only and looks at the producer and
consumer indexes every TICK seconds while a consumer holds the sockets. A
queue whose ring holds frames its consumer has not taken for STALL seconds
is not being read. Guests enable queue pairs as a prefix (virtio-net's
curr_queue_pairs), so the port serves its queues up to the first one not
read; the host end's transmit queues are steered to those with XPS (every
CPU maps to the transmit queues that reach served queues), the kernel's own
transmit-queue choice. When the guest enables a queue again, QEMU drains the
frames left on its ring: the consumer index moves and the queue serves again.
When queue 0 is not read either, the consumer reads nothing at all (a guest
booting or paused, a migration's source) and the steering is left as it is.

What a queue's reader cannot change: a socket of the host that has already
sent a flow through a queue keeps it until the kernel may reorder (TCP does
at its next idle moment or retransmission). The veth backend only: a netkit
pair and leased NIC queues choose their receive queue elsewhere.
docs/datapath.md has the measurements.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
import subprocess

from ..errors import KernelError
from ..xdp_abi import MMAP_OFFSETS, SOL_XDP, XDP_MMAP_OFFSETS

TICK = 0.1          # how often the rings are read
STALL = 0.25        # a ring that holds frames no one took for this long is not being read
# at most one steering change per port this often: a guest flipping its queue count, or a QEMU
# writing its rings' consumer indexes at will, costs the helper (and its log) little
MIN_INTERVAL = 1.0
RX_PRODUCER, RX_CONSUMER = 0, 1     # indexes of rx.producer / rx.consumer in MMAP_OFFSETS
XDP_PGOFF_RX_RING = 0


def applies(record: dict) -> bool:
    """Whether a port's queues are steered: more than one, on a veth pair."""
    return record.get("queues", 1) > 1 and record.get("backend") == "veth"


# ---- pure ------------------------------------------------------------------

def served_count(stalled: list[bool], current: int) -> int:
    """How many queues (a prefix) the consumer serves, given which are stalled now: up to the
    first stalled queue; unchanged when the first queue is stalled too (nothing is read)."""
    if not stalled or stalled[0]:
        return current
    return stalled.index(True) if True in stalled else len(stalled)


def receive_queue(tx: int, mode: str) -> int:
    """The consumer end's queue that the host end's transmit queue `tx` reaches: the same one
    in native mode; in skb mode generic XDP reads transmit queue k as queue k - 1
    (docs/datapath.md, veth in skb mode)."""
    return tx if mode == "native" else max(tx - 1, 0)


def tx_queues(record: dict) -> int:
    """How many transmit queues the port's host end has (vmnet.priv.links.create_veth)."""
    return record["start_queue"] + record["queues"] + (1 if record.get("mode_requested") == "skb" else 0)


def xps_masks(record: dict, served: int, cpus: int) -> list[str] | None:
    """Each transmit queue's xps_cpus mask (hex) that keeps the host end to the first `served`
    of the port's queues; None when every queue serves (XPS off, the kernel's hash)."""
    keys = record.get("map_keys") or list(range(record["start_queue"], record["start_queue"] + record["queues"]))
    if served >= len(keys):
        return None
    wanted = set(keys[:served])
    every = (1 << cpus) - 1
    return [_bitmap(every if receive_queue(k, record.get("mode", "native")) in wanted else 0)
            for k in range(tx_queues(record))]


def _bitmap(value: int) -> str:
    """A CPU mask as sysfs takes it: comma-separated 32-bit hex words."""
    words = []
    while True:
        words.append(f"{value & 0xffffffff:08x}")
        value >>= 32
        if not value:
            break
    return ",".join(reversed(words))


# ---- the rings --------------------------------------------------------------

class Ring:
    """The RX ring indexes of one AF_XDP socket, read through a read-only map of its first page."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.map: mmap.mmap | None = None
        self.offsets = (0, 0)

    def indexes(self) -> tuple[int, int] | None:
        """(producer, consumer), or None while the consumer has not set the ring up."""
        if self.map is None:
            try:
                raw = self.sock.getsockopt(SOL_XDP, XDP_MMAP_OFFSETS, MMAP_OFFSETS.size)
                offs = MMAP_OFFSETS.unpack(raw.ljust(MMAP_OFFSETS.size, b"\0"))
                self.map = mmap.mmap(self.sock.fileno(), mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ,
                                     offset=XDP_PGOFF_RX_RING)
                self.offsets = (offs[RX_PRODUCER], offs[RX_CONSUMER])
            except (OSError, ValueError):
                return None
        return (struct.unpack_from("=I", self.map, self.offsets[0])[0],
                struct.unpack_from("=I", self.map, self.offsets[1])[0])

    def close(self):
        if self.map is not None:
            self.map.close()
            self.map = None


class QueueWatch:
    """One port's queues while a consumer holds its sockets: which are read, how many serve."""

    def __init__(self, sockets: list[socket.socket], rings: list | None = None):
        self.rings = rings if rings is not None else [Ring(s) for s in sockets]
        self.served = len(self.rings)
        self.last = [None] * len(self.rings)         # (consumer index, since when it has not moved)
        self.stalled = [False] * len(self.rings)
        self.changed_at = float("-inf")

    def tick(self, now: float) -> int | None:
        """Look at the rings; the new number of served queues when it changed, else None."""
        for i, ring in enumerate(self.rings):
            idx = ring.indexes()
            if idx is None:
                self.stalled[i] = False
                continue
            producer, consumer = idx
            if producer == consumer:
                self.last[i] = (consumer, now)
                self.stalled[i] = False
                continue
            if self.last[i] is None or self.last[i][0] != consumer:
                self.last[i] = (consumer, now)
                self.stalled[i] = False
            elif now - self.last[i][1] >= STALL:
                self.stalled[i] = True
        served = served_count(self.stalled, self.served)
        if served == self.served or now - self.changed_at < MIN_INTERVAL:
            return None         # unchanged, or changed too recently: looked at again next tick
        self.served, self.changed_at = served, now
        return served

    def close(self):
        for ring in self.rings:
            ring.close()


# ---- steering ---------------------------------------------------------------

def steer(record: dict, served: int | None) -> None:
    """Point the host end's transmit queues at the first `served` queues (XPS), or give the
    choice back to the kernel's hash when every queue serves (None)."""
    masks = xps_masks(record, served, os.cpu_count() or 1) if served is not None else None
    if masks is None:
        masks = [_bitmap(0)] * tx_queues(record)
    write_xps(record["host_ifname"], record.get("host_ifindex") or 0, masks)


def write_xps(ifname: str, ifindex: int, masks: list[str]) -> None:
    """Write each transmit queue's xps_cpus. Straight into /sys when it shows this netns's
    device (the helper in the host's netns, as deployed); otherwise through a child with a
    mount namespace and a sysfs of its own (a helper started into a netns by nsenter, whose
    /sys is still another netns's)."""
    base = f"/sys/class/net/{ifname}"
    try:
        with open(f"{base}/ifindex") as f:
            here = int(f.read()) == ifindex
    except (OSError, ValueError):
        here = False
    try:
        if here:
            for q, mask in enumerate(masks):
                with open(f"{base}/queues/tx-{q}/xps_cpus", "w") as f:
                    f.write(mask)
            return
        script = ('mount -t sysfs vmnet /sys && d=$1 && shift && q=0 && for m in "$@"; do '
                  'printf %s "$m" > "/sys/class/net/$d/queues/tx-$q/xps_cpus" || exit 1; q=$((q + 1)); done')
        out = subprocess.run(["unshare", "--mount", "--", "sh", "-c", script, "sh", ifname, *masks],
                             capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise OSError(0, out.stderr.strip() or f"exit status {out.returncode}")
    except (OSError, subprocess.SubprocessError) as exc:
        raise KernelError(f"cannot steer the transmit queues of {ifname} (XPS): {exc}",
                          fix="the kernel needs CONFIG_XPS and a writable /sys") from None
