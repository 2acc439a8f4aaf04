"""Where a port's host end is plugged: one small plugin per kind, one lifecycle for all.

The second axis beside the backends (vmnet.priv.backends): os-vif's plug
per VIF type. vmnet.priv.ports runs the same steps for every port and asks
the attachment only what differs between none, bridge, ovs, routed and a
libvirt network:

- prepare(spec, ctx) -> Prepared: before anything is made, check what
  must already be there (the bridge, its VLAN filtering, the OVSDB, the
  libvirt network) and read the network's MTU; a libvirt network is
  resolved here to the bridge it runs on;
- plug(port, prepared, ctx) -> dict: put the configured host end there;
  what it returns (facts for status) is kept in the port's record;
- unplug(name, record, ctx) -> bool: remove what plug made; idempotent,
  and with record None (what a crash left) by name alone;
- describe(record, ctx) -> dict: where the port is plugged now and what
  is missing on the host (status, port show, doctor);
- collect(keep, ctx) -> list[str]: after a crash, what plug left of ports
  the helper no longer has (by vmnet's own markers, never anyone else's);
- activate(record, ctx) / withdraw(record, ctx): for a live migration
  (docs/migration.md), what draws the VM's traffic to this host — a routed
  port's host routes — is put in place only once the VM runs here
  (activate: a port made with incoming) and taken away as soon as it has
  stopped here (withdraw), before the port itself goes at release.

A new kind is one module here and one line in KINDS. Anti-spoofing
(vmnet.priv.hostfilter) and serving the guest its addresses
(vmnet.priv.addrserver) are the same for every kind and are not theirs.
"""

from __future__ import annotations

import dataclasses

from ...errors import InvalidInput
from ...network import Attachment


@dataclasses.dataclass
class Prepared:
    attachment: Attachment          # resolved: a libvirt network names its bridge and via
    mtu: int | None = None          # the network's MTU (None: no network to match)
    mtu_of: str = ""                # whose MTU that is, for messages ("bridge br0")
    filter_hook: str = "tc"         # "xdp" where a packet socket reads the host end before tc
    layer2: bool = False            # the host end is a switch port (no IPv6 of its own: it has nothing to say)
    facts: dict = dataclasses.field(default_factory=dict)   # what prepare found, for plug (the bridge)


@dataclasses.dataclass
class Context:
    """What an attachment may use."""

    instance: object                # vmnet.priv.instance.Instance
    config: object = None           # the helper's Config (OVSDB address, libvirt's run dir)
    ip: object = None               # a netlink socket in the helper's netns (None: open one)


class Kind:
    name = "?"

    def prepare(self, spec, ctx: Context) -> Prepared:
        return Prepared(spec.attachment)

    def plug(self, port, prepared: Prepared, ctx: Context) -> dict:
        return {}

    def unplug(self, name: str, record: dict | None, ctx: Context) -> bool:
        return False

    def describe(self, record: dict, ctx: Context) -> dict:
        return {}

    def collect(self, keep: set[str], ctx: Context) -> list[str]:
        return []

    def activate(self, record: dict, ctx: Context) -> dict:
        return {}

    def withdraw(self, record: dict, ctx: Context) -> bool:
        return False


_kinds: dict[str, Kind] = {}


def get(name: str) -> Kind:
    if not _kinds:          # made once: status asks for every port's kind
        from . import bridge, libvirt_network, none, ovs, routed
        _kinds.update({"none": none.NoAttachment(), "bridge": bridge.Bridge(), "ovs": ovs.Ovs(),
                       "routed": routed.Routed(), "network": libvirt_network.LibvirtNetwork()})
    table = _kinds
    if name not in table:
        raise InvalidInput(f"attachment {name!r} is not available", fix=f"use one of: {', '.join(table)}")
    return table[name]


KINDS = ("none", "bridge", "ovs", "routed", "network")


def of_record(record: dict | None) -> Attachment:
    return Attachment.from_dict((record or {}).get("attachment"))
