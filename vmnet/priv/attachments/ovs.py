"""Open vSwitch: the host end becomes a port of an OVS bridge, in one OVSDB transaction.

As os-vif plugs a VIF: the Port (with its VLAN: `tag` for an access port,
`trunks` and `vlan_mode` for a trunk, `tag` then being the native VLAN) and
its Interface with the external_ids that OVN- and Neutron-style
controllers look for — iface-id (the port's name unless given),
attached-mac, vm-uuid (the owner's uuid where known), iface-status=active
— and vmnet's own markers, vmnet-port and vmnet-instance, by which the
helper finds its own rows after a crash and never touches anyone else's.
The row goes at unplug (deleting the device would leave it behind).

A bridge of the userspace datapath (datapath_type=netdev) reads its ports
through packet sockets, which see a frame before tc does: such a port gets
the anti-spoofing filter on XDP (vmnet.priv.hostfilter).
"""

from __future__ import annotations

from ...errors import NotFound
from ...network import trunk_vlans
from .. import links, ovsdb
from . import Kind, Prepared, of_record

MARK_PORT, MARK_INSTANCE = "vmnet-port", "vmnet-instance"


def external_ids(name: str, mac: str, iface_id: str | None, vm_uuid: str | None, instance) -> dict:
    """The Interface's external_ids for port `name`. Pure."""
    out = {"iface-id": iface_id or name, "attached-mac": mac, "iface-status": "active",
           MARK_PORT: name, MARK_INSTANCE: instance.describe()}
    if vm_uuid:
        out["vm-uuid"] = vm_uuid
    return out


def vlan_columns(vlan: int | None, trunk) -> dict:
    """The Port's VLAN columns (what `ovs-vsctl set port ... tag= trunks= vlan_mode=` writes). Pure."""
    if trunk:
        out = {"trunks": trunk_vlans(trunk), "vlan_mode": "native-untagged" if vlan is not None else "trunk"}
        if vlan is not None:
            out["tag"] = vlan
        return out
    return {"tag": vlan} if vlan is not None else {}


def _row(api, table: str, name: str):
    rows = api.db_find_rows(table, ("name", "=", name)).execute(check_error=True)
    return rows[0] if rows else None


def _ours(iface, instance, name: str | None = None) -> bool:
    ids = dict(iface.external_ids)
    return ids.get(MARK_INSTANCE) == instance.describe() and (name is None or ids.get(MARK_PORT) == name)


class Ovs(Kind):
    name = "ovs"

    def prepare(self, spec, ctx):
        att = spec.attachment
        api = ovsdb.api(ctx.config)
        bridge = _row(api, "Bridge", att.bridge)
        if bridge is None:
            raise NotFound(f"Open vSwitch bridge {att.bridge} does not exist",
                           fix=f"create it first: ovs-vsctl add-br {att.bridge} (vmnet never creates a bridge)")
        if _row(api, "Port", spec.host_ifname) is not None:
            raise NotFound(f"Open vSwitch already has a port named {spec.host_ifname}",
                           fix=f"remove it (ovs-vsctl del-port {spec.host_ifname}) or pick another port name")
        datapath = bridge.datapath_type or "system"
        link = links.link_state(att.bridge, ctx.ip)       # the bridge's own (internal) interface
        return Prepared(att, mtu=link["mtu"] if link else None, mtu_of=f"Open vSwitch bridge {att.bridge}",
                        filter_hook="xdp" if datapath == "netdev" else "tc", layer2=True)

    def plug(self, port, prepared, ctx):
        att = prepared.attachment
        host = port.spec.host_ifname
        ids = external_ids(port.spec.name, port.spec.mac, att.iface_id, att.vm_uuid, ctx.instance)
        columns = vlan_columns(att.vlan, att.trunk)

        def commands(api):
            yield api.add_port(att.bridge, host, may_exist=False)
            if columns:
                yield api.db_set("Port", host, *columns.items())
            yield api.db_set("Interface", host, ("external_ids", ids))
        ovsdb.run(commands, ctx.config, f"plugging {host} into Open vSwitch bridge {att.bridge}")
        return {"bridge": att.bridge, "iface_id": ids["iface-id"],
                "datapath": "netdev" if prepared.filter_hook == "xdp" else "system", **columns}

    def unplug(self, name, record, ctx):
        if not ovsdb.reachable(ovsdb.endpoint_of(ctx.config)):
            return False
        api = ovsdb.api(ctx.config)
        iface = _row(api, "Interface", "vmn-" + name)
        if iface is None or not _ours(iface, ctx.instance, name):
            return False            # never anyone else's row
        ovsdb.run(lambda a: [a.del_port("vmn-" + name, if_exists=True)], ctx.config,
                  f"removing vmn-{name} from Open vSwitch")
        return True

    def collect(self, keep, ctx):
        if not ovsdb.reachable(ovsdb.endpoint_of(ctx.config)):
            return []
        api = ovsdb.api(ctx.config)
        rows = api.db_find_rows("Interface", ("external_ids", "=", {MARK_INSTANCE: ctx.instance.describe()})) \
            .execute(check_error=True)
        gone = sorted({dict(r.external_ids).get(MARK_PORT) for r in rows} - set(keep) - {None})
        for name in gone:
            self.unplug(name, None, ctx)
        return gone

    def describe(self, record, ctx):
        att = of_record(record)
        host = "vmn-" + record["name"]
        try:
            api = ovsdb.api(ctx.config)
            port, iface = _row(api, "Port", host), _row(api, "Interface", host)
        except Exception as exc:        # a database that went away says so in status
            return {"plugged": False, "missing": getattr(exc, "message", str(exc))}
        if port is None or iface is None:
            return {"plugged": False, "missing": f"Open vSwitch has no port {host} (on {att.bridge})"}
        out = {"plugged": True, "ofport": (iface.ofport or [None])[0], "external_ids": dict(iface.external_ids)}
        error = (iface.error or [None])[0]
        if error:
            out.update(plugged=False, missing=f"Open vSwitch reports: {error}")
        return out
