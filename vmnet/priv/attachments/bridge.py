"""A Linux bridge: the host end becomes a member, with an access VLAN or a trunk.

vmnet never creates a bridge and never changes one's settings: a missing
bridge, or VLANs asked of a bridge without VLAN filtering, are refused with
the command that fixes it. Turning VLAN filtering on changes what the
bridge does for its other members (each keeps the bridge's default VLAN,
untagged), which is the operator's decision to make (docs/networks.md).
What vmnet changes is its own port's membership only: the bridge's default
VLAN is taken off the port, and the port's access VLAN (PVID, untagged) and
trunk VLANs (tagged) are put on it — what `bridge vlan add` does.
"""

from __future__ import annotations

import errno
import struct

from pyroute2.netlink.exceptions import NetlinkError

from ...errors import KernelError, NotFound, NotSupported
from ... import rawnl
from .. import links
from . import Kind, Prepared, of_record

VLAN_PVID, VLAN_UNTAGGED, VLAN_RANGE_BEGIN, VLAN_RANGE_END = 0x2, 0x4, 0x8, 0x10
IFLA_BR_VLAN_FILTERING, IFLA_BR_VLAN_DEFAULT_PVID = 7, 39


def vlan_entries(vlan: int | None, trunk) -> list[tuple[int, int]]:
    """(flags, vid) of a port's VLAN membership: the access or native VLAN untagged with its
    PVID, each trunk range tagged. Pure."""
    out = []
    if vlan is not None:
        out.append((VLAN_PVID | VLAN_UNTAGGED, vlan))
    for low, high in trunk:
        if low == high:
            out.append((0, low))
        else:
            out += [(VLAN_RANGE_BEGIN, low), (VLAN_RANGE_END, high)]
    return out


def bridge_info(name: str, ip=None) -> dict | None:
    """ifindex, MTU and VLAN settings of bridge `name` in this netns, None when there is no such
    device; vlan_filtering is None when the kernel has no bridge VLAN filtering at all. (Raw
    rtnetlink, vmnet.rawnl: `ip` is not used; the caller is in the bridge's netns.)"""
    try:
        msg = rawnl.link(name)
    except OSError as exc:
        raise KernelError(f"cannot read device {name}", errno=exc.errno) from None
    if msg is None:
        return None
    if msg["kind"] != "bridge":
        return {"ifindex": msg["ifindex"], "mtu": msg["mtu"], "bridge": False}
    data = msg["data"]
    # the kernel reports vlan_filtering (0) even where it cannot filter; its VLAN settings such as
    # the default PVID only where it can (CONFIG_BRIDGE_VLAN_FILTERING)
    pvid = data.get(IFLA_BR_VLAN_DEFAULT_PVID)
    filtering = data.get(IFLA_BR_VLAN_FILTERING)
    return {"ifindex": msg["ifindex"], "mtu": msg["mtu"], "bridge": True,
            "vlan_filtering": None if pvid is None else bool(filtering and filtering[0]),
            "default_pvid": struct.unpack("=H", pvid[:2])[0] if pvid else None}


def require_bridge(name: str, ip=None, vlans: bool = False) -> dict:
    br = bridge_info(name, ip)
    if br is None:
        raise NotFound(f"bridge {name} does not exist", fix=f"create it first: ip link add {name} type bridge && "
                                                              f"ip link set {name} up (vmnet never creates a bridge)")
    if not br["bridge"]:
        raise NotFound(f"device {name} is not a Linux bridge",
                       fix="name a bridge (ip -d link show type bridge), or use --ovs for Open vSwitch")
    if vlans and br["vlan_filtering"] is None:
        raise NotSupported(f"this kernel's bridges cannot filter VLANs, so port VLANs on {name} are impossible",
                           fix="boot a kernel with CONFIG_BRIDGE_VLAN_FILTERING (Debian's have it), or leave "
                               "--vlan/--trunk out")
    if vlans and not br["vlan_filtering"]:
        raise NotSupported(f"bridge {name} does not filter VLANs, so it cannot keep this port's VLANs apart",
                           fix=f"turn it on (ip link set {name} type bridge vlan_filtering 1: its other members "
                               "keep the default VLAN, untagged; see docs/networks.md), or leave --vlan/--trunk out")
    return br


class Bridge(Kind):
    name = "bridge"

    def prepare(self, spec, ctx):
        att = spec.attachment
        br = require_bridge(att.bridge, ctx.ip, vlans=att.vlan is not None or bool(att.trunk))
        return Prepared(att, mtu=br["mtu"], mtu_of=f"bridge {att.bridge}", facts={"bridge": br}, layer2=True)

    def plug(self, port, prepared, ctx):
        att = prepared.attachment
        host = port.spec.host_ifname
        # read in prepare, a moment ago: a bridge deleted since then fails the set below (ENODEV)
        br = prepared.facts.get("bridge") or require_bridge(att.bridge, ctx.ip,
                                                            vlans=att.vlan is not None or bool(att.trunk))
        try:
            rawnl.transact(rawnl.set_master_request(port.host_ifindex, br["ifindex"]))
        except OSError as exc:
            raise KernelError(f"cannot make {host} a member of bridge {att.bridge}", errno=exc.errno) from None
        entries = vlan_entries(att.vlan, att.trunk)
        if entries:
            try:
                if br.get("default_pvid"):
                    try:
                        rawnl.transact(rawnl.bridge_vlans_request(rawnl.RTM_DELLINK, port.host_ifindex,
                                                                  [(0, br["default_pvid"])]))
                    except OSError as exc:
                        if exc.errno != errno.ENOENT:
                            raise
                rawnl.transact(rawnl.bridge_vlans_request(rawnl.RTM_SETLINK, port.host_ifindex, entries))
            except OSError as exc:
                raise KernelError(f"cannot give {host} its VLANs on bridge {att.bridge}", errno=exc.errno) from None
        return {"bridge": att.bridge, "bridge_ifindex": br["ifindex"]}

    def unplug(self, name, record, ctx):
        # a deleted host end leaves its bridge with its VLANs; here only when it outlives the port
        try:
            with links.netlink(ctx.ip) as ip:
                ip.link("set", ifname="vmn-" + name, master=0)
            return True
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return False
            raise KernelError(f"cannot take vmn-{name} off its bridge", errno=exc.code) from None

    def describe(self, record, ctx):
        att = of_record(record)
        br = bridge_info(att.bridge, ctx.ip)
        host = links.get_link("vmn-" + record["name"], ctx.ip)
        out = {"plugged": False}
        if br is None or not br["bridge"]:
            out["missing"] = f"bridge {att.bridge} is gone"
        elif host is None:
            out["missing"] = "the host end is gone"
        elif host.get("IFLA_MASTER") != br["ifindex"]:
            out["missing"] = f"the host end is no longer a member of {att.bridge}"
        else:
            out["plugged"] = True
        return out
