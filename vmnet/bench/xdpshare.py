"""What sharing a NIC's XDP hook costs (vmnet bench's xdp-sharing part).

Per create: the first port leasing from a NIC adds vmnet's component to the
NIC's libxdp dispatcher (vmnet.priv.nichook), making the dispatcher when
there is none; veth and netkit ports attach the shared program by
bpf_link. Timed on a veth end in a throwaway netns, alternating, N times
each: bpf_link attach, join making the dispatcher, join into a dispatcher
that already runs another program (a second instance's component), and the
removals. Only the first port on a NIC pays it; the rest find the component.

Per packet: BPF_PROG_TEST_RUN runs one 64-byte frame a million times
through vmnet's program alone and through the dispatcher holding vmnet's
component, in the same run, with the kernel's own timing (as its
selftests measure XDP programs): for a frame of a queue vmnet does not
serve (what every other frame of the NIC pays) and one of a queue it does.

Needs a kernel that runs freplace programs; elsewhere it says so.
"""

from __future__ import annotations

import os
import statistics
import struct
import time
import uuid

from ..priv import libbpf, links, netns, nichook, xskprog
from ..priv.instance import Instance
from .stats import summary

FRAME = bytes.fromhex("020000000001" "020000000002") + b"\x08\x00" + bytes(50)
RUNS = 1_000_000


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1000


def _ctx(ifindex: int, queue: int) -> bytes:
    return struct.pack("6I", 0, 0, 0, ifindex, queue, 0)      # struct xdp_md


def _per_packet(prog_fd: int, ctx_miss: bytes, ctx_hit: bytes) -> dict:
    out = {}
    for label, ctx in (("other_queue", ctx_miss), ("served_queue", ctx_hit)):
        runs = [libbpf.test_run(prog_fd, FRAME, RUNS, ctx)[1] for _ in range(3)]
        out[label] = statistics.median(runs)
    return out


def measure(iterations: int, progress=lambda *_: None) -> dict:
    ns = "vmnet-benchxdp-" + uuid.uuid4().hex[:4]
    a, b = Instance("benchxdp-" + uuid.uuid4().hex[:4]), Instance("benchxdq-" + uuid.uuid4().hex[:4])
    netns.create_named(ns)
    progs, slots = [], []
    try:
        with netns.entered(ns):
            from pyroute2 import IPRoute
            with IPRoute() as ip:
                ip.link("add", ifname="vmnet-bx0", kind="veth", num_rx_queues=2, num_tx_queues=2,
                        peer={"ifname": "vmnet-bx1", "num_rx_queues": 2, "num_tx_queues": 2})
                for dev in ("vmnet-bx0", "vmnet-bx1"):
                    ip.link("set", index=ip.link_lookup(ifname=dev)[0], state="up")
            ifindex = links.require_link("vmnet-bx0")["ifindex"]
            xdp = {"ifindex": ifindex, "ifname": "vmnet-bx0", "mode": "skb"}
            pa, pb = xskprog.XskProgram.ensure(a.pin_root), xskprog.XskProgram.ensure(b.pin_root)
            progs = [pa, pb]
            slots = pa.claim("bench", 1)
            slot = slots[0]
            pa.assign(slot, "bench", ifindex, 0)
            probe = nichook.ensure(pa, a, xdp, 20)
            hook = nichook.hook_of(links.require_link("vmnet-bx0"))
            nichook.release(a, ifindex)
            if hook.kind != "dispatcher":
                return {"skipped": "this kernel refuses the freplace programs libxdp's dispatcher is made "
                                   f"of (libxdp put vmnet's program alone: {hook.kind}, mode {probe[0]})"}
            t = {k: [] for k in ("link_attach", "link_detach", "join_new", "leave_last",
                                 "join_existing", "leave_one")}
            for i in range(iterations):
                t0 = time.perf_counter()
                fd, _ = pa.attach(ifindex, "vmnet-bx0", "skb")
                t1 = time.perf_counter()
                os.close(fd)
                t2 = time.perf_counter()
                t["link_attach"].append(_ms(t0, t1))
                t["link_detach"].append(_ms(t1, t2))
                t0 = time.perf_counter()
                nichook.ensure(pa, a, xdp, 20)
                t1 = time.perf_counter()
                nichook.release(a, ifindex)
                t2 = time.perf_counter()
                t["join_new"].append(_ms(t0, t1))
                t["leave_last"].append(_ms(t1, t2))
                nichook.ensure(pb, b, xdp, 30)          # another program already runs there
                t0 = time.perf_counter()
                nichook.ensure(pa, a, xdp, 20)
                t1 = time.perf_counter()
                nichook.release(a, ifindex)
                t2 = time.perf_counter()
                nichook.release(b, ifindex)
                t["join_existing"].append(_ms(t0, t1))
                t["leave_one"].append(_ms(t1, t2))
                progress("xdp-sharing", i + 1, iterations)
            # per packet: vmnet's program alone, then in a dispatcher, on the same device
            miss, hit = _ctx(ifindex, 1), _ctx(ifindex, 0)
            fd, _ = pa.attach(ifindex, "vmnet-bx0", "skb")
            try:
                alone = _per_packet(pa.fds["prog"], miss, hit)
            finally:
                os.close(fd)
            nichook.ensure(pa, a, xdp, 20)
            try:
                state = links.require_link("vmnet-bx0")
                disp = libbpf.prog_fd_by_id(state["xdp_prog_id"] or state["xdp_skb_prog_id"])
                try:
                    shared = _per_packet(disp, miss, hit)
                finally:
                    os.close(disp)
            finally:
                nichook.release(a, ifindex)
        return {
            "iterations": iterations,
            "create_ms": {k: summary(v) for k, v in t.items()},
            "join_new_over_link_p50_ms": round(summary(t["join_new"])["p50"] - summary(t["link_attach"])["p50"], 2),
            "ns_per_packet": {"alone": alone, "dispatcher": shared,
                              "added": {k: round(shared[k] - alone[k], 1) for k in alone}},
        }
    finally:
        if slots:
            progs[0].release(slots)
        for p in progs:
            p.unpin_if_unused()
            p.close()
        netns.remove_named(ns)
