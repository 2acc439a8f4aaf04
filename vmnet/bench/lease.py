"""netkit-lease port create/delete latency against its own floor (`vmnet bench --lease-from NIC`).

Only where the kernel has queue-create and NIC can lend queues (netdevsim
in the 7.3 kernel-matrix guest, or a real NIC). It runs in the caller's
netns, where the NIC is, through the library (vmnet.priv.ports) with a
held shared program, as the helper holds it. The floor is the same netlink
requests done directly: a netkit single device, one queue-create per
queue, the move into the consumer's netns, and one AF_XDP socket stored
in an XSK map — against a program already on the NIC, since ports that
lease from one NIC share one attachment.
"""

from __future__ import annotations

import statistics
import time
import uuid

from ..model import PortSpec
from ..priv import links, netdev_genl, netkit, netns, ports, xsk, xskprog
from ..priv.instance import Instance
from .stats import summary


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1000


def measure(nic: str, iterations: int, progress=lambda *_: None) -> dict:
    netdev_genl.require_queue_create()
    nic_ifindex = links.require_link(nic)["ifindex"]
    zero_copy = netdev_genl.has_zero_copy(nic_ifindex)
    instance = Instance("benchlease-" + uuid.uuid4().hex[:4])
    pod = "vmnet-benchlease-" + uuid.uuid4().hex[:4]
    netns.create_named(pod)
    program = xskprog.XskProgram.ensure(instance.pin_root)
    program.hold_in_dispatcher()
    # a port that stays, so that the NIC's attachment is there for every measured create,
    # as it is on a node whose NIC already lends queues to a VM
    anchor = ports.create_port(PortSpec(name="lanchor", backend="netkit-lease", lease_from=nic, netns=pod,
                                        receive_only=not zero_copy), instance, program=program)
    samples = {"library": ([], []), "floor": ([], [])}
    try:
        for i in range(iterations):
            t0 = time.perf_counter()
            c = ports.create_port(PortSpec(name="lbench", backend="netkit-lease", lease_from=nic, netns=pod,
                                           receive_only=not zero_copy), instance, program=program)
            t1 = time.perf_counter()
            c.close()
            t2 = time.perf_counter()
            ports.delete_port("lbench", instance, record=c.port.to_dict(), program=program)
            t3 = time.perf_counter()
            samples["library"][0].append(_ms(t0, t1))
            samples["library"][1].append(_ms(t2, t3))
            queue = c.port.extra["nic_queues"][0]
            create, delete = _floor(nic_ifindex, queue, pod, program)
            samples["floor"][0].append(create)
            samples["floor"][1].append(delete)
            progress("lease", i + 1, iterations)
    finally:
        anchor.close()
        ports.delete_port("lanchor", instance, record=anchor.port.to_dict(), program=program)
        program.unpin_if_unused()
        program.close()
        netns.remove_named(pod)
    lib, floor = samples["library"], samples["floor"]
    return {"nic": nic, "zero_copy": zero_copy, "iterations": iterations,
            "create": summary(lib[0]), "delete": summary(lib[1]),
            "floor_create": summary(floor[0]), "floor_delete": summary(floor[1]),
            "create_p50_ratio_to_floor": round(statistics.median(lib[0]) / statistics.median(floor[0]), 3)}


def _floor(nic_ifindex: int, queue: int, pod: str, program) -> tuple[float, float]:
    spec = PortSpec(name="lfloor", backend="netkit-lease", lease_from="x", receive_only=True)
    slot = program.claim("lfloor", 1)[0]
    try:
        t0 = time.perf_counter()
        netkit.create_single(spec)
        device = links.require_link(spec.consumer_ifname)
        netdev_genl.lease_queue(device["ifindex"], nic_ifindex, queue)
        netkit.move_to_netns(spec.consumer_ifname, pod)
        program.assign(slot, "lfloor", nic_ifindex, queue)
        with netns.entered(pod):
            sock = xsk.new_socket()
            program.store(slot, sock)
        t1 = time.perf_counter()
        sock.close()
        t2 = time.perf_counter()
        with netns.entered(pod):
            links.delete_link(spec.consumer_ifname)
        t3 = time.perf_counter()
        return _ms(t0, t1), _ms(t2, t3)
    finally:
        program.release([slot])
        links.delete_link(spec.consumer_ifname)     # when the move did not happen
