"""How a port's device is made: one small plugin per backend, one lifecycle for all.

In the spirit of os-vif's plug/unplug plugins, vmnet.priv.ports runs the same
steps for every port — claim slots in the instance's shared program, plug
the devices, attach the program, assign the slots, make the sockets — and
asks the backend only what differs between veth, netkit and netkit-lease:

- plug(spec, ctx) -> Plugged: make the devices (the consumer end in the
  consumer's netns, where QEMU binds) and say where the XSK program goes,
  which queue ids the consumer binds and which (ifindex, queue) the program
  sees for each of them;
- configure(plugged, ctx) -> Configured: once the program is attached:
  offloads, MTU, links up;
- unplug(name, record, instance) -> bool: remove the devices; idempotent,
  and with record None (what a crash left) by name alone;
- why_broken(name, record, instance) -> str | None: whether a recorded
  port's devices and attachment are still there (the helper's recovery);
- describe(record, instance) -> dict: what status shows beyond the common fields.

A new backend is one module here and one line in BACKENDS.
"""

from __future__ import annotations

import dataclasses

from ...errors import InvalidInput
from ...model import PortSpec


@dataclasses.dataclass
class Context:
    """What a backend may use while a port is made."""

    instance: object            # vmnet.priv.instance.Instance
    host_ip: object             # netlink socket bound to the helper's netns
    cons_ip: object             # netlink socket bound to the consumer's netns
    ifindex: int                # the ifindex vmnet gives the consumer end (unique per instance)
    host_ifindex: int = 0       # ... and the host end of a pair
    config: object = None       # the helper's Config, when there is a helper
    network_mtu: tuple | None = None    # (MTU, whose) of the network the host end joins
    host_layer2: bool = False   # the host end joins a switch (bridge, Open vSwitch): no IPv6 of its own


@dataclasses.dataclass
class Plugged:
    spec: PortSpec              # with "auto" resolved
    reason: str                 # why this backend ("asked for", or auto's reason)
    consumer_ifindex: int
    bind_queues: list[int]      # queue ids the consumer binds, socket by socket
    keys: list[tuple[int, int]]  # (ifindex, queue) the program sees for each socket's frames
    xdp: dict                   # ifindex, ifname, netns (None: helper's), mode, shared (None: per port)
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Configured:
    mtu: int
    host_ifindex: int = 0
    offloads_off: list = dataclasses.field(default_factory=list)
    mtu_reason: str = ""


class Backend:
    name = "?"

    def plug(self, spec: PortSpec, ctx: Context) -> Plugged:
        raise NotImplementedError

    def configure(self, plugged: Plugged, ctx: Context) -> Configured:
        raise NotImplementedError

    def unplug(self, name: str, record: dict | None, instance) -> bool:
        raise NotImplementedError

    def why_broken(self, name: str, record: dict, instance) -> str | None:
        return None

    def describe(self, record: dict, instance=None) -> dict:
        return {}


_backends: dict[str, Backend] = {}


def get(name: str) -> Backend:
    if not _backends:       # made once: status asks for every port's backend
        from . import netkit, netkit_lease, veth
        _backends.update({"veth": veth.Veth(), "netkit": netkit.Netkit(),
                          "netkit-lease": netkit_lease.NetkitLease(), "auto": Auto()})
    table = _backends
    if name not in table:
        raise InvalidInput(f"backend {name!r} is not available", fix=f"use one of: {', '.join(table)}")
    return table[name]


class Auto(Backend):
    """netkit when the kernel has it and skb mode will do, else veth; says why."""

    name = "auto"

    def plug(self, spec, ctx):
        from . import netkit, veth
        from ..netkit import NetkitUnavailable
        if spec.mode == "native":
            plugged = veth.Veth().plug(dataclasses.replace(spec, backend="veth"), ctx)
            plugged.reason = "auto: native XDP was asked for, and netkit has only generic (skb) XDP"
            return plugged
        try:
            plugged = netkit.Netkit().plug(dataclasses.replace(spec, backend="netkit"), ctx)
            plugged.reason = "auto: the kernel has netkit"
            return plugged
        except NetkitUnavailable as exc:
            plugged = veth.Veth().plug(dataclasses.replace(spec, backend="veth"), ctx)
            plugged.reason = f"auto: {exc.why}"
            return plugged
