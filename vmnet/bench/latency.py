"""Port create/delete latency through the helper, against the floor, in one loop.

Each iteration creates and deletes one port three ways: through the helper
(client-side wall time: connect, request, reply, as every vmnet client
does it), through the library the helper uses (vmnet.priv.ports, in this
process: what the helper costs on top of it), and as the floor
(vmnet.bench.floor: the same kernel work, done directly — with the
anti-spoofing classifier and rules where the helper's port has them, as a
port does by default). Besides wall
time it records the CPU time each create used (the helper's, read from
/proc/<pid>/schedstat; this thread's for the other two): CPU time hardly
moves with a busy machine, and it is what a busy machine multiplies into
wall time at the tail. The order
rotates every iteration, so that all three see the same machine: a noisy
neighbour slows all of them, not one.
"""

from __future__ import annotations

import statistics
import time

from ..fields import default_mac
from ..model import PortSpec
from ..priv import netns, ports
from . import floor
from .stats import summary

WARMUP = 3      # first requests pay the helper's lazy imports and libbpf's first open
WAYS = ("helper", "library", "floor")


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1000


def _through_helper(helper, name, q, consumer_uid):
    c0, t0 = helper.cpu_ns(), time.perf_counter()
    record = helper.call("port-create", name=name, queues=q, backend="veth", consumer_uid=consumer_uid)
    t1, c1 = time.perf_counter(), helper.cpu_ns()
    helper.call("port-delete", name=name)
    t2 = time.perf_counter()
    return _ms(t0, t1), _ms(t1, t2), {"mtu": record["mtu"], "filtered": bool(record.get("filter")),
                                      "cpu": (c1 - c0) / 1e6}


def _through_library(helper, name, q, consumer_uid, program, host_filter):
    with netns.entered(helper.netns):
        c0, t0 = time.thread_time(), time.perf_counter()
        created = ports.create_port(PortSpec(name=name, queues=q, backend="veth", consumer_uid=consumer_uid),
                                    helper.library_instance, program=program, host_filter=host_filter)
        t1, c1 = time.perf_counter(), time.thread_time()
        created.close()         # the helper keeps its copies until the delete: not timed here
        t2 = time.perf_counter()
        ports.delete_port(name, helper.library_instance, program=program, host_filter=host_filter)
        t3 = time.perf_counter()
    return _ms(t0, t1), _ms(t2, t3), {"cpu": _ms(c0, c1)}


def _floor(helper, name, q, mtu, filter_fds):
    with netns.entered(helper.netns):
        c0, t0 = time.thread_time(), time.perf_counter()
        port = floor.create(name, q, mtu, default_mac(name), filter_fds)
        t1, c1 = time.perf_counter(), time.thread_time()
        port.remove()
        t2 = time.perf_counter()
    return _ms(t0, t1), _ms(t1, t2), dict(port.steps, cpu=_ms(c0, c1))


def measure(helper, queue_counts, iterations: int, tag: str, consumer_uid: int, progress) -> dict:
    # the library way holds its shared program and host filter for the whole run, as the helper
    # does (without them each create would load the objects again)
    from ..priv import bpf, hostfilter, xskprog
    with netns.entered(helper.netns):
        program = xskprog.XskProgram.ensure(helper.library_instance.pin_root)
        program.hold_in_dispatcher()
        host_filter = hostfilter.HostFilter.ensure(helper.library_instance.pin_root)
    floor_filter = None
    try:
        # the floor's own copy of the filter, loaded once (never pinned): its classifiers and rules
        floor_filter = floor.load_filter()
        return _measure(helper, queue_counts, iterations, tag, consumer_uid, progress, program, host_filter,
                        floor_filter)
    finally:
        if floor_filter is not None:
            bpf.close_fds(floor_filter)
        program.unpin_if_unused()
        program.close()
        host_filter.unpin_if_unused()
        host_filter.close()


def _measure(helper, queue_counts, iterations, tag, consumer_uid, progress, program, host_filter,
             floor_filter) -> dict:
    out = {}
    for q in queue_counts:
        names = {"helper": f"{tag}h{q}", "library": f"{tag}p{q}", "floor": f"{tag}f{q}"}
        samples = {way: ([], []) for way in WAYS}
        cpu = {way: [] for way in WAYS}
        floor_steps: dict[str, list] = {}
        mtu, filtered = None, False
        for i in range(-WARMUP, iterations):
            shift = i % len(WAYS)
            for way in WAYS[shift:] + WAYS[:shift]:
                if way == "helper":
                    create, delete, extra = _through_helper(helper, names[way], q, consumer_uid)
                    mtu, filtered = extra.pop("mtu"), extra.pop("filtered")
                elif mtu is None:           # the floor uses the MTU vmnet chose: helper first
                    continue
                elif way == "library":
                    create, delete, extra = _through_library(helper, names[way], q, consumer_uid, program,
                                                             host_filter)
                else:
                    create, delete, extra = _floor(helper, names[way], q, mtu, floor_filter if filtered else None)
                if i >= 0:
                    samples[way][0].append(create)
                    samples[way][1].append(delete)
                    cpu[way].append(extra.pop("cpu"))
                    if way == "floor":
                        for step, ms in extra.items():
                            floor_steps.setdefault(step, []).append(ms)
            progress(f"latency {q}q", i + 1, iterations)
        out[str(q)] = {"mtu": mtu, "anti_spoofing": filtered, "floor_steps_p50_ms": {
            step: round(statistics.median(v), 3) for step, v in floor_steps.items()}}
        for way, (create, delete) in samples.items():
            prefix = "" if way == "helper" else way + "_"
            out[str(q)][prefix + "create"] = summary(create)
            out[str(q)][prefix + "delete"] = summary(delete)
            out[str(q)][prefix + "create_cpu"] = summary(cpu[way])
    return out
