"""One port's lifecycle: slots, devices, attachment and sockets, made or removed as a unit.

The same steps for every backend (vmnet.priv.backends): claim one slot per
queue in the helper instance's shared XSK program (vmnet.priv.xskprog),
plug the devices (the consumer end gets the ifindex the first slot
implies), attach the program where the backend says (a link of the port's
own, pinned at <instance root>/<port>/link, or one shared by the ports
leasing queues of one NIC, <instance root>/+nic-<ifindex>/link), let the
backend configure its devices, put the host end's anti-spoofing filter on
it (vmnet.priv.hostfilter, pinned at <port>/filter) and plug it where its
attachment says (vmnet.priv.attachments: checked and resolved before
anything is made, its network's MTU honoured), point each (ifindex, queue)
at its slot, and make one socket per queue inside the consumer's netns —
confined by the bind guard when there is one — stored at its slot.

create_port either returns a complete, working port or leaves nothing
behind; delete_port removes whatever of a port exists and is idempotent.
Ports made before the shared program (layout 1: a program and map of
their own, pins <port>/link and <port>/xsks) keep working until deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket

from pyroute2 import IPRoute

from ..errors import AlreadyExists, IfindexTaken, KernelError, NotFound, VmnetError
from ..fields import has_host_end, validate_port_name
from ..model import Port, PortSpec
from ..tap_alias import port_of_alias
from . import attachments, backends, bpf, hostfilter, links, netns, nichook, tap, xdpshare, xsk, xskprog
from .instance import DEFAULT, Instance

LAYOUT = 2


@dataclasses.dataclass
class CreatedPort:
    port: Port
    sockets: list[socket.socket]
    offloads_off: list[str]
    pending: list[int] = dataclasses.field(default_factory=list)  # slots waiting for rings
    instance: Instance = DEFAULT

    def store_pending(self) -> list[int]:
        """Store the sockets the kernel refused until their consumer set up its rings
        (Linux 7.x); returns the slots (or keys) still waiting."""
        if self.pending:
            self.pending = store_pending(self.port.to_dict(), self.sockets, self.pending, self.instance)
        return self.pending

    def close(self):
        for s in self.sockets:
            s.close()
        self.sockets = []


def create_port(spec: PortSpec, instance: Instance = DEFAULT, guard=None,
                program: xskprog.XskProgram | None = None, config=None,
                host_filter: hostfilter.HostFilter | None = None) -> CreatedPort:
    bpf.require_bpffs()
    if bpf.pinned(spec.name, instance.pin_root):
        raise AlreadyExists(f"port {spec.name} already exists (pins in {bpf.pin_dir(spec.name, instance.pin_root)})",
                            fix=f"delete it with 'vmnet port del {spec.name}' or pick another name")
    if spec.netns:
        os.close(netns.open_netns(spec.netns))  # refuse a bad netns before creating anything
    own = program is None
    program = program or xskprog.XskProgram.ensure(instance.pin_root)
    try:
        program.pin()
        # One netlink socket per netns for the whole creation, opened when first used (a
        # veth port's create path is raw rtnetlink and uses none): each socket stays bound
        # to the netns it was opened in, and opening one costs more than most requests.
        host_ip, cons_ip = LazyIPRoute(None), LazyIPRoute(spec.netns) if spec.netns else None
        try:
            return _create(spec, host_ip, cons_ip or host_ip, instance, guard, program, config, host_filter)
        finally:
            host_ip.close()
            if cons_ip is not None:
                cons_ip.close()
    finally:
        if own:
            program.close()


IFINDEX_TRIES = 8


class LazyIPRoute:
    """A pyroute2 IPRoute bound to netns `ref` (None: the calling thread's), opened on first use."""

    def __init__(self, ref: str | None):
        self.ref, self._ip = ref, None
        if ref is None:                 # bound now, to the netns the caller is in now
            self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def __getattr__(self, name):
        if self._ip is None:
            if self.ref is not None:
                with netns.entered(self.ref):
                    self._ip = IPRoute()
            else:
                here = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    netns._setns(self._home)
                    try:
                        self._ip = IPRoute()
                    finally:
                        netns._setns(here)
                finally:
                    os.close(here)
        return getattr(self._ip, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self):
        if self._ip is not None:
            self._ip.close()
            self._ip = None
        if self.ref is None and self._home >= 0:
            os.close(self._home)
            self._home = -1


def _plug(spec, ctx, program) -> tuple[list[int], backends.Plugged]:
    """Claim slots and plug. When the consumer end's ifindex (implied by the first slot) is
    taken in its netns by a device that is not vmnet's, take other slots; the unusable first
    slots stay claimed until this is over, so they are not chosen again."""
    held: list[int] = []
    try:
        for attempt in range(IFINDEX_TRIES):
            slots = program.claim(spec.name, spec.queues)
            ctx.ifindex = xskprog.consumer_ifindex(slots[0])
            ctx.host_ifindex = xskprog.host_ifindex(slots[0])
            try:
                return slots, backends.get(spec.backend).plug(spec, ctx)
            except IfindexTaken:
                held.append(slots[0])
                program.release(slots[1:])
                if attempt == IFINDEX_TRIES - 1:
                    raise
            except BaseException:
                program.release(slots)
                raise
        raise AssertionError("unreachable")
    finally:
        program.release(held)


def _create(spec, host_ip, cons_ip, instance, guard, program, config=None, host_filter=None) -> CreatedPort:
    requested = spec.backend
    att_ctx = attachments.Context(instance=instance, config=config, ip=host_ip)
    kind = attachments.get(spec.attachment.kind)
    try:
        prepared = kind.prepare(spec, att_ctx)          # refusals come before anything is made
    except BaseException:
        program.unpin_if_unused()
        raise
    spec = dataclasses.replace(spec, attachment=prepared.attachment)
    ctx = backends.Context(instance=instance, host_ip=host_ip, cons_ip=cons_ip, ifindex=0, config=config,
                           network_mtu=(prepared.mtu, prepared.mtu_of) if prepared.mtu else None,
                           host_layer2=prepared.layer2)
    sockets: list[socket.socket] = []
    link_fd = -1
    filter_fd = None
    own_filter = None
    attached: dict = {}
    try:
        # a backend that fails undoes its own half-made devices: a device of the same name
        # that was there before (another port's) is not ours to delete
        slots, plugged = _plug(spec, ctx, program)
    except BaseException:
        program.unpin_if_unused()
        raise
    try:
        spec = plugged.spec
        xdp = dict(plugged.xdp)
        with netns.entered(xdp["netns"]):
            if xdp["shared"]:
                xdp["mode"], xdp["component"] = _shared_attachment(program, instance, xdp, config)
                link_id = 0
            else:
                link_fd, xdp["mode"] = program.attach(xdp["ifindex"], xdp["ifname"], xdp["mode"])
                link_id = libbpf_link_id(link_fd)
        att = spec.attachment
        if att.spoofcheck and has_host_end({"backend": spec.backend}):
            # before the host end is up, let alone joins anything: nothing the VM sends may get
            # there unchecked (and the kernel adds a classifier to a device that is down in a
            # third of the time). A pair's host end has the ifindex its slots imply: the backend
            # asked the kernel for exactly that one, and a taken one is refused, not replaced.
            if host_filter is None:
                host_filter = own_filter = hostfilter.HostFilter.ensure(instance.pin_root)
            else:
                host_filter.pin()
            host_filter.set_port(ctx.host_ifindex, spec.mac, att.addresses,
                                 (bool(att.ipv4) or att.kind == "routed", bool(att.ipv6) or att.kind == "routed"))
            filter_fd = host_filter.attach(ctx.host_ifindex, spec.host_ifname, prepared.filter_hook)
        configured = backends.get(spec.backend).configure(plugged, ctx)
        if filter_fd is not None and configured.host_ifindex != ctx.host_ifindex:
            raise KernelError(f"host end {spec.host_ifname} has ifindex {configured.host_ifindex}, not "
                              f"{ctx.host_ifindex} as its anti-spoofing rules say")
        port = Port(spec=spec, mode=xdp["mode"], mtu=configured.mtu, host_ifindex=configured.host_ifindex,
                    consumer_ifindex=plugged.consumer_ifindex, prog_id=program.prog_id, link_id=link_id,
                    map_id=0, backend_requested=requested, backend_reason=plugged.reason,
                    layout=LAYOUT, slots=slots, bind_queues=plugged.bind_queues, xdp=xdp,
                    extra=plugged.extra, mtu_reason=configured.mtu_reason)
        if filter_fd is not None:
            port.filter = {"hook": prepared.filter_hook}
        attached = kind.plug(port, prepared, att_ctx)
        port.attached = attached
        pins = {"link": link_fd} if link_fd >= 0 else {}
        if filter_fd is not None and filter_fd >= 0:
            pins["filter"] = filter_fd
        if pins:
            bpf.pin_port_links(spec.name, pins, instance.pin_root)
        for slot, (ifindex, queue) in zip(slots, plugged.keys):
            program.assign(slot, spec.name, ifindex, queue)
        with netns.entered(spec.netns):
            sockets, pending = xsk.create_xsk_sockets(slots, program.store, guard,
                                                      [(plugged.consumer_ifindex, q) for q in plugged.bind_queues])
            if spec.placeholder_tap:
                tap.create(spec.placeholder_tap, spec.name, spec.consumer_uid, spec.consumer_gid,
                           spec.queues > 1, cons_ip)
        return CreatedPort(port=port, sockets=sockets, offloads_off=configured.offloads_off,
                           pending=pending, instance=instance)
    except BaseException:
        for s in sockets:
            s.close()
        _remove(spec.name, instance, {"name": spec.name, "layout": LAYOUT, "slots": slots,
                                      "netns": spec.netns, "backend": plugged.spec.backend,
                                      "consumer_ifname": spec.consumer_ifname,
                                      "placeholder_tap": spec.placeholder_tap,
                                      "xdp": plugged.xdp, "extra": plugged.extra,
                                      "attachment": spec.attachment.to_dict(), "attached": attached,
                                      "host_ifindex": ctx.host_ifindex}, program, slots, config, host_filter)
        raise
    finally:
        for fd in (link_fd, filter_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        if own_filter is not None:
            own_filter.close()


def libbpf_link_id(link_fd: int) -> int:
    from . import libbpf
    return libbpf.link_info(link_fd).id


def _shared_attachment(program, instance: Instance, xdp: dict, config=None) -> tuple[str, int]:
    """The component all ports leasing from one NIC share in its XDP dispatcher
    (vmnet.priv.nichook): joined by the first of them, kept while any has a slot there.
    (mode, component program id)."""
    priority = config.xdp_priority if config is not None else xdpshare.DEFAULT_PRIORITY
    return nichook.ensure(program, instance, xdp, priority)


def new_sockets(record: dict, instance: Instance = DEFAULT, guard=None, program=None) -> tuple[list, list]:
    """Fresh, unbound sockets for an existing port, in its map (for its next consumer)."""
    port = Port.from_dict(record)
    with _socket_map(port, instance, program) as found:
        if found is None:
            raise NotFound(f"port {record['name']} lost its pins", fix="delete and re-create the port")
        keys, store_at = found
        with netns.entered(record.get("netns")):
            return xsk.create_xsk_sockets(keys, store_at, guard, [(port.consumer_ifindex, q) for q in port.queue_ids])


@contextlib.contextmanager
def _socket_map(port: Port, instance: Instance, program=None):
    """(keys, store_at) of where a port's sockets go: its slots in the shared program, or, for
    a port made with a program of its own (layout 1), its queue ids in its own map; None
    when that map's pins are gone."""
    if port.layout != 1:
        with _program(instance, program) as prog:
            yield port.slots, prog.store
        return
    attached = bpf.open_pinned(port.spec.name, instance.pin_root)
    if attached is None:
        yield None
        return
    try:
        yield port.queue_ids, lambda key, sock: xsk.store(attached.map_fd, key, sock)
    finally:
        attached.close()


@contextlib.contextmanager
def _program(instance: Instance, program=None):
    if program is not None:
        yield program
        return
    found = xskprog.opened(instance.pin_root)
    if found is None:
        raise NotFound(f"the shared XSK program of instance {instance.describe()} is not pinned",
                       fix="delete and re-create the port")
    try:
        yield found
    finally:
        found.close()


def store_pending(record: dict, sockets: list, pending: list[int], instance: Instance = DEFAULT,
                  program=None) -> list[int]:
    """Retry storing the sockets of the pending slots (layout 1: map keys) of a port."""
    with _socket_map(Port.from_dict(record), instance, program) as found:
        if found is None:
            return pending
        keys, store_at = found
        by_key = dict(zip(keys, sockets))
        return [key for key in pending if not store_at(key, by_key[key])]


def queue_stats(record: dict, instance: Instance = DEFAULT, program=None) -> list[dict] | None:
    """The program's per-queue counters of a port (layout 2), or None. Read off the record as it
    is (map_keys: the queue ids in socket order), not rebuilt into a Port: status asks this of
    every port."""
    if record.get("layout", 1) == 1:
        return None
    if program is not None:         # the helper's own (status asks every port: no context per port)
        return _queue_stats(record, program)
    with _program(instance, program) as prog:
        return _queue_stats(record, prog)


def _queue_stats(record: dict, prog) -> list[dict]:
    return [dict(prog.stats(slot), queue=q, slot=slot)
            for slot, q in zip(record.get("slots") or (), record.get("map_keys") or ())]


def _remove(name: str, instance: Instance, record: dict | None, program=None, slots=None, config=None,
            host_filter=None) -> bool:
    """Remove what exists of a port: where it is plugged, slots, attachment, devices, pins,
    filter rules. Idempotent."""
    found = False
    kind = attachments.of_record(record).kind
    found = attachments.get(kind).unplug(name, record, attachments.Context(instance, config)) or found
    layout = (record or {}).get("layout", LAYOUT if record else None)
    # the host end's ifindex keys its anti-spoofing rules: recorded, or implied by the first slot
    host_ifindexes = {(record or {}).get("host_ifindex")} - {None, 0}
    if layout != 1:
        with contextlib.suppress(NotFound):
            with _program(instance, program) as prog:
                # the slots a record names are looked up one by one (still checked to be this
                # port's); only a port without a record (a crash mid-create) needs every claim read
                recorded = slots if slots is not None else (record or {}).get("slots")
                if recorded is not None:
                    claims = {s: c for s in recorded if (c := prog.claim_of(s)) is not None}
                    mine = list(recorded) if slots is not None else [s for s, c in claims.items() if c[0] == name]
                else:
                    claims = prog.claims()
                    mine = [s for s, (port, _, _) in claims.items() if port == name]
                if not host_ifindexes and mine:
                    host_ifindexes = {xskprog.host_ifindex(s) for s in mine}
                devices = {claims[s][1] for s in mine if s in claims}
                xdp = (record or {}).get("xdp") or {}
                if xdp.get("ifindex"):
                    devices.add(xdp["ifindex"])
                if mine:
                    prog.release(mine)
                    found = True
                # a pair's own ends carry no other port's queues: only a device others can share
                # (a NIC a netkit-lease port leases from, whose ifindex it records as its host's)
                # needs the claims read, to find whether this was its last port
                own = ({record.get("host_ifindex"), record.get("consumer_ifindex")}
                       if record and has_host_end(record) else set())
                shared = devices - own
                if shared:
                    left = {ifindex for _, ifindex, _ in prog.claims().values()}
                    for ifindex in shared - left:
                        found = nichook.release(instance, ifindex) or found
                prog.unpin_if_unused()
    found = bpf.unpin(name, instance.pin_root) or found
    found = _clear_filter(host_ifindexes, attachments.of_record(record).addresses if record else None,
                          instance, host_filter) or found
    found = _remove_placeholder(name, record) or found
    kind = (record or {}).get("backend") or "veth"          # a pair is found by its host end
    return backends.get("veth" if kind == "auto" else kind).unplug(name, record, instance) or found


def _clear_filter(ifindexes: set, addresses, instance: Instance, host_filter=None) -> bool:
    """The port's anti-spoofing rules, by its host end's ifindex (what a crash left without one
    is pruned at the helper's start)."""
    filt = host_filter or hostfilter.HostFilter.opened(instance.pin_root)
    if filt is None:
        return False
    try:
        found = False
        for ifindex in ifindexes:
            found = filt.clear_port(ifindex, addresses) or found
        filt.unpin_if_unused()
        return found
    finally:
        if host_filter is None:
            filt.close()


def _remove_placeholder(name: str, record: dict | None) -> bool:
    """The port's placeholder tap, in its netns (gone with the netns when that is gone)."""
    ifname = (record or {}).get("placeholder_tap")
    if not ifname:
        return False
    try:
        with netns.entered(record.get("netns")):
            return tap.delete(ifname, name)
    except NotFound:
        return False


def delete_port(name: str, instance: Instance = DEFAULT, record: dict | None = None,
                program=None, config=None, host_filter=None) -> bool:
    """Remove everything port `name` owns; False when nothing was there."""
    validate_port_name(name)
    return _remove(name, instance, record, program, config=config, host_filter=host_filter)


def port_exists(name: str, instance: Instance = DEFAULT) -> bool:
    validate_port_name(name)
    if bpf.pinned(name, instance.pin_root) or links.link_state("vmn-" + name) is not None:
        return True
    return name in claimed_ports(instance)


def why_broken(record: dict, instance: Instance) -> str | None:
    """Why a recorded port no longer works, or None when it does."""
    name = record["name"]
    if record.get("layout", 1) == 1:
        attached = bpf.open_pinned(name, instance.pin_root)
        if attached is None:
            return "its pins are gone"
        try:
            if attached.ids["ifindex"] == 0:
                return "its program lost its device"
        finally:
            attached.close()
        return None if links.link_state("vmn-" + name) is not None else "its host device is gone"
    return backends.get(record["backend"]).why_broken(name, record, instance) or _placeholder_gone(record)


def _placeholder_gone(record: dict) -> str | None:
    ifname = record.get("placeholder_tap")
    if not ifname:
        return None
    try:
        with netns.entered(record.get("netns")):
            msg = links.get_link(ifname)
    except VmnetError:
        return "its netns is gone"
    if msg is None or port_of_alias(msg.get("IFLA_IFALIAS")) != record["name"]:
        return f"its placeholder tap {ifname} is gone"
    return None


def claimed_ports(instance: Instance) -> set[str]:
    """Port names holding slots in the instance's program (for the helper's recovery)."""
    prog = xskprog.opened(instance.pin_root)
    if prog is None:
        return set()
    try:
        return {port for port, _, _ in prog.claims().values()}
    finally:
        prog.close()


__all__ = ["CreatedPort", "create_port", "delete_port", "port_exists", "PortSpec", "VmnetError"]
