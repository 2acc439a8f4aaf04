"""The netkit-lease backend: queues of a physical NIC, leased into a netkit device in the VM's netns.

A netkit device in `single` mode (L2, one TX queue, room for the leases)
is made in the helper's netns; one netdev `queue-create` per queue leases
a NIC RX queue to it (Linux >= 7.1; before the move, so no netns id is
needed), and it is moved into the consumer's netns. QEMU there binds its
sockets to the netkit's leased queue ids (1, 2, ...): the kernel proxies
the AF_XDP pool to the NIC's queue, zero-copy when the NIC can. netkit
refuses XDP programs, so the shared XSK program runs on the NIC itself,
keyed by the NIC's (ifindex, queue), and every port leasing from that NIC
shares one attachment (ports.py keeps it while any has a slot there).

Refusals, before anything exists where possible: a kernel without
queue-create, a NIC that is not there, already carries an XDP program that
is not this helper's, has fewer queues than asked for, or whose asked-for
queues are leased or in use; a NIC without queue-management ops answers
the first queue-create (EOPNOTSUPP) and what was made is removed. Without
XSK zero-copy on the NIC a leased queue receives but cannot send — copy-mode
TX from a leased queue never leaves the device (the kernel's generic xmit
skips queue ids past netkit's single TX queue) — so such a port is made
only when the operator asks for a receive-only port.

Steering (an RSS context over the leased queues and an ntuple rule for the
VM's MAC) follows vmnet.priv.steering; where the NIC has no RSS contexts,
the port says so and is made without it.
"""

from __future__ import annotations

import errno

from ...errors import AlreadyExists, InvalidInput, KernelError, NotFound, NotSupported, VmnetError
from ...fields import MTU_FRAME_MAX, parse_lease_from
from .. import links, netdev_genl, netkit, netns, nichook, steering
from . import Backend, Configured, Plugged

RESERVED_QUEUES = 1          # queue 0 stays with the host unless the configuration says otherwise
ZC_FIX = ("use a NIC with AF_XDP zero-copy on leased queues (mlx5, bnxt_en; `vmnet doctor` "
          "and the NIC's xdp-features tell), or, where the consumer only receives (not QEMU), "
          "ask for --receive-only")


def _leased_free(queues: dict[int, dict], reserved: int, count: int, nic: str) -> list[int]:
    free = netdev_genl.free_queues(queues, reserved)
    if len(free) < count:
        raise NotSupported(
            f"{nic} has {len(free)} free queue(s) above the {reserved} the host keeps, "
            f"and the port needs {count}",
            fix=f"use fewer queues, free some (delete ports leasing from {nic}), or lower "
                "lease_reserved_queues in vmnet.toml")
    return free[:count]


def choose_queues(queues: dict[int, dict], asked: list[int] | None, reserved: int, count: int,
                  nic: str) -> list[int]:
    """Pure: the NIC queues a port leases (explicit, or the next free above the host's)."""
    if asked is None:
        return _leased_free(queues, reserved, count, nic)
    for q in asked:
        if q not in queues:
            raise InvalidInput(f"{nic} has no RX queue {q} (it has {len(queues)})",
                               fix=f"name queues from 0 to {len(queues) - 1}")
        if queues[q]["leased"]:
            raise AlreadyExists(f"queue {q} of {nic} is already leased",
                                fix="pick another queue, or delete the port that leases it")
        if queues[q]["xsk"]:
            raise AlreadyExists(f"queue {q} of {nic} has an AF_XDP socket bound",
                                fix="pick another queue, or stop what uses it")
    return asked


def _host_table(nic: str, queue_count: int, leased: list[int]) -> str:
    """Keep the NIC's default RSS table off every queue leased now; say what happened."""
    try:
        return steering.keep_host_off(nic, queue_count, leased)
    except VmnetError as exc:
        return f"not kept off the leased queues: {exc.message}"


class NetkitLease(Backend):
    name = "netkit-lease"

    def plug(self, spec, ctx):
        with netdev_genl.Session() as nd:
            return self._plug(spec, ctx, nd)

    def _plug(self, spec, ctx, nd):
        netdev_genl.require_queue_create()
        nic, asked = parse_lease_from(spec.lease_from, spec.queues)
        state = links.link_state(nic, ctx.host_ip)
        if state is None:
            raise NotFound(f"NIC {nic}, whose queues the port would lease, does not exist here",
                           fix="name a NIC of the helper's netns with --lease-from")
        nic_ifindex = state["ifindex"]
        hook = nichook.check(state, ctx.instance)          # a hook vmnet cannot share: refused here
        queues = netdev_genl.rx_queues(nic_ifindex, nd)
        if not queues:
            raise NotSupported(f"{nic} reports no RX queues through netdev queue-get",
                               fix=netdev_genl.NIC_REQUIREMENT)
        reserved = ctx.config.lease_reserved_queues if ctx.config is not None else RESERVED_QUEUES
        nic_queues = choose_queues(queues, asked, reserved, spec.queues, nic)
        zero_copy = netdev_genl.has_zero_copy(nic_ifindex, nd)
        if not zero_copy and not spec.receive_only:
            raise NotSupported(
                f"{nic} has no AF_XDP zero-copy: a queue leased from it receives, but nothing the "
                "consumer sends there ever leaves (copy-mode transmit on a leased queue is dropped), "
                "so a VM behind it could not send", fix=ZC_FIX)
        # the netkit device gets the ifindex vmnet chose: no lookup to learn it, and a move
        # keeps it unless the consumer's netns has a device with it (checked after the move)
        netkit.create_single(spec, ctx.host_ip, index=ctx.ifindex)
        try:
            bind = [self._lease(ctx.ifindex, nic_ifindex, q, nic, nd) for q in nic_queues]
            if spec.netns:
                netkit.move_to_netns("vmc-" + spec.name, spec.netns, ctx.host_ip, spec.consumer_ifname)
                consumer = links.require_link(spec.consumer_ifname, ctx.cons_ip)["ifindex"]
            else:
                consumer = ctx.ifindex
        except BaseException:
            self.unplug(spec.name, {"netns": spec.netns, "consumer_ifname": spec.consumer_ifname}, ctx.instance)
            raise
        leased_now = sorted({q for q, v in queues.items() if v["leased"]} | set(nic_queues))
        return Plugged(
            spec=spec, reason="asked for", consumer_ifindex=consumer, bind_queues=bind,
            keys=[(nic_ifindex, q) for q in nic_queues],
            xdp={"ifindex": nic_ifindex, "ifname": nic, "netns": None,
                 "mode": hook.mode or state["xdp_mode"] or "native", "shared": nichook.shared_name(nic_ifindex)},
            extra={"nic": nic, "nic_ifindex": nic_ifindex, "nic_queues": nic_queues, "zero_copy": zero_copy,
                   "receive_only": spec.receive_only, "_nic_mtu": state["mtu"],
                   "_queue_count": len(queues), "_leased_now": leased_now})

    @staticmethod
    def _lease(netkit_ifindex: int, nic_ifindex: int, queue: int, nic: str, nd) -> int:
        try:
            return netdev_genl.lease_queue(netkit_ifindex, nic_ifindex, queue, nd)
        except KernelError as exc:
            why = {errno.EBUSY: "it is already leased, or has an AF_XDP socket or memory provider",
                   errno.ERANGE: f"{nic} has no such queue",
                   errno.EINVAL: f"{nic} refused the lease (is it a physical NIC?)"}.get(exc.errno)
            if why:
                raise KernelError(f"cannot lease queue {queue} of {nic}: {why}", errno=exc.errno,
                                  fix="pick other queues, or check 'vmnet doctor'") from None
            raise
        except NotSupported as exc:
            raise NotSupported(f"{nic} cannot lend queue {queue}: its driver has no queue-management "
                               "ops", errno=exc.errno, fix=netdev_genl.NIC_REQUIREMENT) from None

    def configure(self, plugged, ctx):
        spec, extra = plugged.spec, plugged.extra
        nic_mtu = extra.pop("_nic_mtu") or MTU_FRAME_MAX
        mtu = min(spec.mtu or MTU_FRAME_MAX, MTU_FRAME_MAX, nic_mtu)
        links.set_mtu_up(spec.consumer_ifname, mtu, ctx.cons_ip)
        extra["steering"] = self._steer(spec, extra, extra.pop("_queue_count"), extra.pop("_leased_now"))
        return Configured(mtu=mtu, host_ifindex=extra["nic_ifindex"])

    @staticmethod
    def _steer(spec, extra, queue_count: int, leased: list[int]) -> dict:
        """The VM's MAC to an RSS context over its queues, and the host's table off them."""
        out = {"host_table": _host_table(extra["nic"], queue_count, leased)}
        try:
            made = steering.create_steering(extra["nic"], extra["nic_queues"], steering.Match(dst_mac=spec.mac))
        except NotSupported as exc:
            return dict(out, active=False, why=exc.message)
        return dict(out, active=True, context=made.context, rule=made.location)

    def unplug(self, name, record, instance):
        record = record or {}
        found = False
        rule = (record.get("extra") or {}).get("steering") or {}
        if rule.get("active"):
            try:
                found = steering.remove_steering(steering.Steering(
                    record["extra"]["nic"], rule["context"], rule["rule"])) or found
            except VmnetError:
                pass
        # in the consumer's netns, or still here (as vmc-<port>) when the move never happened
        here = ("vmc-" + name, None)
        where_first = (record.get("consumer_ifname") or "vmc-" + name, record.get("netns"))
        for ifname, where in dict.fromkeys((where_first, here)):
            try:
                with netns.entered(where):
                    if links.delete_link(ifname):        # deleting netkit ends its leases
                        found = True
                        break
            except VmnetError:
                continue                # its netns is gone, and took the device along
        extra = record.get("extra") or {}
        if extra.get("nic") and found:                          # the queues it leased go back
            try:
                queues = netdev_genl.rx_queues(extra["nic_ifindex"])
                _host_table(extra["nic"], len(queues), [q for q, v in queues.items() if v["leased"]])
            except VmnetError:
                pass
        return found

    def why_broken(self, name, record, instance):
        try:
            with netns.entered(record.get("netns")):
                if links.link_state(record["consumer_ifname"]) is None:
                    return "its netkit device is gone"
        except VmnetError:
            return "its netns is gone"
        nic = record["extra"]["nic"]
        state = links.link_state(nic)
        if state is None:
            return f"its NIC {nic} is gone"
        try:
            hook = nichook.hook_of(state)
        except VmnetError as exc:
            return f"the XDP hook of {nic} cannot be read: {exc.message}"
        if not nichook.ours_on(hook, nichook.pinned_component(instance, state["ifindex"])):
            return f"vmnet's program on {nic} is gone (unloaded from its XDP hook)"
        return None

    def describe(self, record, instance=None):
        extra = record.get("extra") or {}
        out = {"nic": extra.get("nic"), "nic_queues": extra.get("nic_queues"),
               "zero_copy": extra.get("zero_copy"), "steering": extra.get("steering")}
        if instance is not None and extra.get("nic_ifindex"):
            try:
                out["xdp_hook"] = nichook.describe(instance, extra["nic_ifindex"])
            except VmnetError as exc:
                out["xdp_hook"] = {"device": extra.get("nic"), "error": exc.message}
        return out

