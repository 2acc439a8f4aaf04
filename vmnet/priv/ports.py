"""One port's lifecycle: devices, program, pins and sockets, made or removed as a unit.

create_port either returns a complete, working port or leaves nothing
behind; delete_port removes whatever of a port exists and is idempotent.
Every object a port owns is found from its name alone: devices
vmn-<port>/vmc-<port>, pins /sys/fs/bpf/vmnet/<port>/.
"""

from __future__ import annotations

import dataclasses
import os
import socket

from ..errors import AlreadyExists, InvalidInput, VmnetError
from ..model import MTU_FRAME_MAX, Port, PortSpec, validate_port_name
from . import bpf, links, netns, xsk


@dataclasses.dataclass
class CreatedPort:
    port: Port
    sockets: list[socket.socket]
    offloads_off: list[str]

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


def create_port(spec: PortSpec) -> CreatedPort:
    bpf.require_bpffs()
    if bpf.pinned(spec.name):
        raise AlreadyExists(f"port {spec.name} already exists (pins in {bpf.pin_dir(spec.name)})",
                            fix=f"delete it with 'vmnet port del {spec.name}' or pick another name")
    if spec.netns:
        os.close(netns.open_netns(spec.netns))  # refuse a bad netns before creating anything
    links.create_veth(spec)
    attached = None
    sockets: list[socket.socket] = []
    try:
        offloads = links.disable_offloads(spec.host_ifname)
        with netns.entered(spec.netns):
            consumer = links.require_link(spec.consumer_ifname)
            attached = bpf.load_and_attach(consumer["ifindex"], spec.consumer_ifname,
                                           spec.start_queue + spec.queues, spec.mode)
        # veth lowers the host end's max MTU to what an XDP frame holds
        host = links.require_link(spec.host_ifname)
        mtu = _choose_mtu(spec, host["max_mtu"])
        links.set_mtu_up(spec.host_ifname, mtu)
        with netns.entered(spec.netns):
            links.set_mtu_up(spec.consumer_ifname, mtu)
            bpf.pin(spec.name, attached)
            sockets = xsk.create_xsk_sockets(attached.map_fd, spec.map_keys)
        ids = attached.ids
        port = Port(spec=spec, mode=attached.mode, mtu=mtu, host_ifindex=host["ifindex"],
                    consumer_ifindex=consumer["ifindex"], prog_id=ids["prog_id"],
                    link_id=ids["link_id"], map_id=ids["map_id"])
        attached.close()
        return CreatedPort(port=port, sockets=sockets, offloads_off=offloads)
    except BaseException:
        for s in sockets:
            s.close()
        if attached is not None:
            attached.close()
        _remove(spec.name)
        raise


def _remove(name: str) -> bool:
    found = bpf.unpin(name)
    return links.delete_link("vmn-" + name) or found


def delete_port(name: str) -> bool:
    """Remove everything port `name` owns; False when nothing was there."""
    validate_port_name(name)
    return _remove(name)


def port_exists(name: str) -> bool:
    validate_port_name(name)
    return bpf.pinned(name) or links.link_state("vmn-" + name) is not None


__all__ = ["CreatedPort", "create_port", "delete_port", "port_exists", "VmnetError"]
