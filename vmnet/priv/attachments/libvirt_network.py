"""A libvirt network: resolved to the bridge (or Open vSwitch bridge) it runs on.

The libvirt hook runs inside libvirt and must never call back into it (it
would deadlock), so the network is read from the status libvirt keeps for
every active network: <libvirt_run_dir>/network/<name>.xml (/run/libvirt
for the system daemon; only active networks have one). The port then
plugs as a bridge member or an Open vSwitch port, and its guest gets its
lease from the network's own DHCP server (libvirt's dnsmasq), as a guest
on libvirt's own NIC does.
"""

from __future__ import annotations

import os

from ...errors import InvalidInput, NotFound
from ...network import parse_libvirt_network_status
from . import Kind, get, of_record

DEFAULT_RUN_DIR = "/run/libvirt"


def status_path(name: str, config=None) -> str:
    run = getattr(config, "libvirt_run_dir", None) or DEFAULT_RUN_DIR
    return os.path.join(run, "network", name + ".xml")


def read_network(name: str, config=None) -> dict:
    """What a port needs of active libvirt network `name` (vmnet.network's parse)."""
    path = status_path(name, config)
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 20)
    except FileNotFoundError:
        defined = os.path.exists(os.path.join("/etc/libvirt/qemu/networks", name + ".xml"))
        raise NotFound(f"libvirt network {name} is not running" if defined else
                       f"libvirt network {name} is not running or does not exist ({path} is missing)",
                       fix=f"start it: virsh net-start {name} (virsh net-list --all lists them; "
                           f"virsh net-autostart {name} starts it with libvirt)") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read the status of libvirt network {name} ({path}: {exc.strerror})") from None
    return parse_libvirt_network_status(text, name)


def as_plugged(att):
    """The bridge or ovs attachment a resolved network attachment plugs as.

    The domain's uuid and an iface-id only mean something to Open vSwitch:
    on a Linux bridge network they are dropped, not refused.
    """
    via = att.via or "bridge"
    ovs_only = {} if via == "ovs" else {"iface_id": None, "vm_uuid": None}
    return att.resolved(kind=via, network=None, via=None, **ovs_only)


class LibvirtNetwork(Kind):
    name = "network"

    def prepare(self, spec, ctx):
        import dataclasses
        att = spec.attachment
        net = read_network(att.network, ctx.config)
        via = "ovs" if net["ovs"] else "bridge"
        resolved = att.resolved(bridge=net["bridge"], via=via)
        resolved = resolved if via == "ovs" else as_plugged(resolved).resolved(kind="network", network=att.network,
                                                                                 via=via)
        prepared = get(via).prepare(dataclasses.replace(spec, attachment=as_plugged(resolved)), ctx)
        prepared.attachment = resolved
        prepared.mtu_of = f"libvirt network {att.network} ({prepared.mtu_of})"
        return prepared

    def _as_via(self, record):
        att = of_record(record)
        return get(att.via or "bridge"), dict(record, attachment=as_plugged(att).to_dict())

    def plug(self, port, prepared, ctx):
        import dataclasses
        att = prepared.attachment
        as_via = as_plugged(att)
        inner = dataclasses.replace(prepared, attachment=as_via)
        port = dataclasses.replace(port, spec=dataclasses.replace(port.spec, attachment=as_via))
        return dict(get(att.via).plug(port, inner, ctx), network=att.network)

    def unplug(self, name, record, ctx):
        att = of_record(record)
        if not att.bridge:          # never resolved: nothing was plugged
            return False
        kind, rec = self._as_via(record)
        return kind.unplug(name, rec, ctx)

    def describe(self, record, ctx):
        att = of_record(record)
        kind, rec = self._as_via(record)
        out = kind.describe(rec, ctx) if att.bridge else {"plugged": False}
        if not os.path.exists(status_path(att.network, ctx.config)):
            out["plugged"] = False
            out["missing"] = f"libvirt network {att.network} is not running (virsh net-start {att.network})"
        return out
