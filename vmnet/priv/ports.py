"""One port's lifecycle: devices, program, pins and sockets, made or removed as a unit.

create_port either returns a complete, working port or leaves nothing
behind; delete_port removes whatever of a port exists and is idempotent.
Every object a port owns is found from its name and its helper instance
alone: devices vmn-<port>/vmc-<port> (the host end marked with the
instance's alias), pins <instance root>/<port>/. With a bind guard every
socket is confined to its own queue (vmnet.priv.bindguard). The backend
(docs/backends.md) decides only how the two devices are made: a veth pair
or a netkit pair; deleting the host end deletes either pair.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket

from pyroute2 import IPRoute

from ..errors import AlreadyExists, InvalidInput, NotFound, NotSupported, VmnetError
from ..model import MTU_FRAME_MAX, Port, PortSpec, validate_port_name
from . import bpf, links, netdev_genl, netkit, netns, xsk
from .instance import DEFAULT, Instance


@dataclasses.dataclass
class CreatedPort:
    port: Port
    sockets: list[socket.socket]
    offloads_off: list[str]
    pending: list[int] = dataclasses.field(default_factory=list)  # map keys waiting for rings
    instance: Instance = DEFAULT

    def store_pending(self) -> list[int]:
        """Store the sockets the kernel refused until their consumer set up its rings
        (Linux 7.x); returns the keys still waiting."""
        if self.pending:
            self.pending = store_pending(self.port.spec.name, self.port.spec.map_keys,
                                         self.sockets, self.pending, self.instance)
        return self.pending

    def close(self):
        for s in self.sockets:
            s.close()
        self.sockets = []


def _choose_mtu(spec: PortSpec, host_max_mtu: int | None) -> int:
    limit = min(MTU_FRAME_MAX, host_max_mtu or MTU_FRAME_MAX)
    if spec.mtu is None:
        return limit
    if spec.mtu > limit:
        raise InvalidInput(
            f"MTU {spec.mtu} is larger than port {spec.name} can carry in this mode ({limit})",
            fix=f"give --mtu {limit} or less, or leave it out to get the largest")
    return spec.mtu


def _create_devices(spec: PortSpec, ip) -> tuple[PortSpec, str]:
    """Make the port's device pair; resolve backend "auto". Returns the spec
    with the backend actually used, and why it was chosen."""
    if spec.backend == "veth":
        links.create_veth(spec, ip)
        return spec, "asked for"
    if spec.backend == "netkit":
        netkit.create_pair(spec)
        return spec, "asked for"
    if spec.backend == "netkit-lease":
        # Refuse before anything exists: no kernel this project can boot has it yet.
        netdev_genl.require_queue_create()
        raise NotSupported(
            f"port {spec.name}: backend netkit-lease is not implemented past feature detection",
            fix="use the netkit or veth backend (docs/backends.md says what is missing)")
    # auto
    if spec.mode == "native":
        links.create_veth(dataclasses.replace(spec, backend="veth"), ip)
        return (dataclasses.replace(spec, backend="veth"),
                "auto: native XDP was asked for, and netkit has only generic (skb) XDP")
    try:
        netkit.create_pair(dataclasses.replace(spec, backend="netkit"))
        return dataclasses.replace(spec, backend="netkit"), "auto: the kernel has netkit"
    except netkit.NetkitUnavailable as exc:
        links.create_veth(dataclasses.replace(spec, backend="veth"), ip)
        return dataclasses.replace(spec, backend="veth"), f"auto: {exc.why}"


def create_port(spec: PortSpec, instance: Instance = DEFAULT, guard=None) -> CreatedPort:
    bpf.require_bpffs()
    if bpf.pinned(spec.name, instance.pin_root):
        raise AlreadyExists(f"port {spec.name} already exists (pins in {bpf.pin_dir(spec.name, instance.pin_root)})",
                            fix=f"delete it with 'vmnet port del {spec.name}' or pick another name")
    if spec.netns:
        os.close(netns.open_netns(spec.netns))  # refuse a bad netns before creating anything
    # One netlink socket per netns for the whole creation: each socket stays
    # bound to the netns it was opened in, and opening one per request costs more
    # than the requests themselves.
    with contextlib.ExitStack() as stack:
        host_ip = stack.enter_context(IPRoute())
        with netns.entered(spec.netns):
            cons_ip = stack.enter_context(IPRoute()) if spec.netns else host_ip
        return _create(spec, host_ip, cons_ip, instance, guard)


def _create(spec: PortSpec, host_ip, cons_ip, instance: Instance, guard) -> CreatedPort:
    requested = spec.backend
    spec, backend_reason = _create_devices(spec, host_ip)
    attach_mode = "skb" if spec.backend == "netkit" and spec.mode == "auto" else spec.mode
    attached = None
    sockets: list[socket.socket] = []
    try:
        if instance.alias:
            links.set_alias(spec.host_ifname, instance.alias, host_ip)
        offloads = links.disable_offloads(spec.host_ifname)
        consumer = links.require_link(spec.consumer_ifname, cons_ip)
        with netns.entered(spec.netns):
            attached = bpf.load_and_attach(consumer["ifindex"], spec.consumer_ifname,
                                           spec.start_queue + spec.queues, attach_mode)
        # veth lowers the host end's max MTU to what an XDP frame holds
        host = links.require_link(spec.host_ifname, host_ip)
        mtu = _choose_mtu(spec, host["max_mtu"])
        links.set_mtu_up(spec.host_ifname, mtu, host_ip)
        links.set_mtu_up(spec.consumer_ifname, mtu, cons_ip)
        with netns.entered(spec.netns):
            bpf.pin(spec.name, attached, instance.pin_root)
            sockets, pending = xsk.create_xsk_sockets(
                attached.map_fd, spec.map_keys, guard, [(consumer["ifindex"], q) for q in spec.map_keys])
        ids = attached.ids
        port = Port(spec=spec, mode=attached.mode, mtu=mtu, host_ifindex=host["ifindex"],
                    consumer_ifindex=consumer["ifindex"], prog_id=ids["prog_id"],
                    link_id=ids["link_id"], map_id=ids["map_id"],
                    backend_requested=requested, backend_reason=backend_reason)
        attached.close()
        return CreatedPort(port=port, sockets=sockets, offloads_off=offloads, pending=pending,
                           instance=instance)
    except BaseException:
        for s in sockets:
            s.close()
        if attached is not None:
            attached.close()
        _remove(spec.name, instance)
        raise


def new_sockets(record: dict, instance: Instance = DEFAULT, guard=None) -> tuple[list, list]:
    """Fresh, unbound sockets for an existing port, in its map (for its next consumer)."""
    attached = bpf.open_pinned(record["name"], instance.pin_root)
    if attached is None:
        raise NotFound(f"port {record['name']} lost its pins", fix="delete and re-create the port")
    try:
        with netns.entered(record.get("netns")):
            return xsk.create_xsk_sockets(attached.map_fd, record["map_keys"], guard,
                                          [(record["consumer_ifindex"], q) for q in record["map_keys"]])
    finally:
        attached.close()


def store_pending(name: str, keys: list[int], sockets: list, pending: list[int],
                  instance: Instance = DEFAULT) -> list[int]:
    """Retry the pending map keys of port `name` through its pinned map."""
    attached = bpf.open_pinned(name, instance.pin_root)
    if attached is None:
        return pending
    by_key = dict(zip(keys, sockets))
    try:
        return [key for key in pending if not xsk.store(attached.map_fd, key, by_key[key])]
    finally:
        attached.close()


def _remove(name: str, instance: Instance) -> bool:
    found = bpf.unpin(name, instance.pin_root)
    return links.delete_link("vmn-" + name) or found


def delete_port(name: str, instance: Instance = DEFAULT) -> bool:
    """Remove everything port `name` owns; False when nothing was there."""
    validate_port_name(name)
    return _remove(name, instance)


def port_exists(name: str, instance: Instance = DEFAULT) -> bool:
    validate_port_name(name)
    return bpf.pinned(name, instance.pin_root) or links.link_state("vmn-" + name) is not None


__all__ = ["CreatedPort", "create_port", "delete_port", "port_exists", "VmnetError"]
