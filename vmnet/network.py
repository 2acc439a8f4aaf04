"""Where a port's host end is plugged (its attachment) and what its guest is told, validated.

Pure: nothing here touches the kernel. A port has two independent axes, as
os-vif has VIF type and plug: the backend says how its device is made
(vmnet.priv.backends), the attachment says where the host end goes:

- none: nowhere (the operator connects vmn-<port> himself);
- bridge: a member of a Linux bridge, with an access VLAN or a trunk;
- ovs: a port of an Open vSwitch bridge, with its tag/trunks and the
  Interface external_ids OVN/Neutron-style controllers read;
- routed: a host route per address through the host end, proxy ARP/NDP on
  it and a link-local gateway for the guest (as Calico does);
- network: a libvirt network, resolved when the port is made to the bridge
  (or Open vSwitch bridge) it runs on, read from the status libvirt keeps
  for it (never by calling libvirt: the hook would deadlock).

Addresses a port is given are what its guest gets by DHCP and router
advertisements and what anti-spoofing lets it send from.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re

from .errors import InvalidInput

KINDS = ("none", "bridge", "ovs", "routed", "network")
# kinds whose network carries VLANs vmnet can tag (a libvirt network's bridge is libvirt's)
VLAN_KINDS = ("bridge", "ovs")
GATEWAY4 = "169.254.1.1"      # the routed guest's gateway, answered by proxy ARP (Calico's)
GATEWAY6 = "fe80::1"          # ... and its IPv6 one, answered by proxy NDP
MAX_ADDRESSES = 16
MAX_DNS = 8
MAX_ROUTES = 32
_NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_IFACE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,254}")
_HOST_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_BRIDGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")


def parse_vlan(value, what: str = "vlan") -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4094:
        raise InvalidInput(f"{what} {value!r} is not a VLAN id", fix="give a VLAN id from 1 to 4094")
    return value


def parse_trunk(value) -> tuple[tuple[int, int], ...]:
    """'10,20-30' (or [10, [20, 30]], or [[10, 10], [20, 30]]) -> ((10, 10), (20, 30)),
    sorted; overlapping ranges are refused."""
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,;\s]+", value) if p]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise InvalidInput(f"trunk {value!r} is not a VLAN list", fix="write it as 10,20-30")
    ranges = []
    for part in parts:
        if isinstance(part, str) and "-" in part:
            low, _, high = part.partition("-")
            low, high = parse_vlan(low.strip(), "trunk VLAN"), parse_vlan(high.strip(), "trunk VLAN")
        elif isinstance(part, (list, tuple)) and len(part) == 2:
            low, high = parse_vlan(part[0], "trunk VLAN"), parse_vlan(part[1], "trunk VLAN")
        elif isinstance(part, (list, tuple)) and len(part) == 1:
            low = high = parse_vlan(part[0], "trunk VLAN")
        else:
            low = high = parse_vlan(part, "trunk VLAN")
        if low > high:
            raise InvalidInput(f"trunk range {low}-{high} runs backwards", fix=f"write {high}-{low}")
        ranges.append((low, high))
    if not ranges:
        raise InvalidInput("trunk names no VLAN", fix="write it as 10,20-30")
    ranges.sort()
    for (_, high), (low, _) in zip(ranges, ranges[1:]):
        if low <= high:
            raise InvalidInput(f"trunk {format_trunk(ranges)} names VLAN {low} twice",
                               fix="give each VLAN once")
    return tuple(ranges)


def format_trunk(ranges) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def trunk_vlans(ranges) -> list[int]:
    return [v for lo, hi in ranges for v in range(lo, hi + 1)]


def parse_address(text, routed: bool = False) -> str:
    """An address of the guest in interface form (10.1.2.3/24, fd00::3/64); a bare address
    is a host address (/32, /128). Routed addresses are host addresses only."""
    if not isinstance(text, str):
        raise InvalidInput(f"address {text!r} is not a string", fix="write it as 10.1.2.3/32")
    try:
        iface = ipaddress.ip_interface(text.strip())
    except ValueError:
        raise InvalidInput(f"address {text!r} is not an IPv4 or IPv6 address",
                           fix="write it as 10.1.2.3/32 or fd00::3/128") from None
    ip = iface.ip
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local:
        raise InvalidInput(f"address {ip} cannot be a VM's address (multicast, unspecified, loopback "
                           "or link-local)", fix="give the VM's unicast address")
    host = 32 if ip.version == 4 else 128
    if "/" not in text:
        iface = ipaddress.ip_interface(f"{ip}/{host}")
    if routed and iface.network.prefixlen != host:
        raise InvalidInput(f"routed address {text} is not a host address (/{host})",
                           fix=f"give the VM's own address as {ip}/{host}: a routed port routes "
                               "single addresses to the VM")
    if ip.version == 4 and iface.network.prefixlen < host - 1 and ip in (
            iface.network.network_address, iface.network.broadcast_address):
        raise InvalidInput(f"address {text} is the network or broadcast address of its subnet",
                           fix="give the VM's own address")
    return str(iface)


def parse_ip(text, what: str, version: int | None = None) -> str:
    try:
        ip = ipaddress.ip_address(text.strip() if isinstance(text, str) else text)
    except ValueError:
        raise InvalidInput(f"{what} {text!r} is not an IP address") from None
    if version is not None and ip.version != version:
        raise InvalidInput(f"{what} {text} is not an IPv{version} address")
    return str(ip)


def parse_route(value) -> tuple[str, str | None]:
    """A route for the guest: 'DEST[ via GW]' or {"dst": ..., "gw": ...} (CNI's shape)."""
    if isinstance(value, dict):
        unknown = set(value) - {"dst", "gw"}
        if unknown:
            raise InvalidInput(f"route {value!r} has unknown key(s) {', '.join(sorted(unknown))}")
        dst, gw = value.get("dst"), value.get("gw")
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        dst, gw = value
    elif isinstance(value, str):
        dst, _, gw = value.partition(" via ")
        gw = gw or None
    else:
        raise InvalidInput(f"route {value!r} is not DEST or DEST via GW")
    try:
        net = ipaddress.ip_network(dst.strip() if isinstance(dst, str) else dst, strict=False)
    except (ValueError, TypeError, AttributeError):
        raise InvalidInput(f"route destination {dst!r} is not a network", fix="write it as 10.0.0.0/8") from None
    if gw is not None:
        gw = parse_ip(gw, "route gateway", net.version)
    return str(net), gw


def parse_hostname(text) -> str:
    if not isinstance(text, str) or len(text) > 253 or not all(
            _HOST_LABEL.fullmatch(label) for label in text.rstrip(".").split(".")):
        raise InvalidInput(f"hostname {text!r} is not a DNS name",
                           fix="use letters, digits and '-', labels of at most 63 characters")
    return text.rstrip(".")


def _split(value) -> list:
    """A list, or a text of items separated by commas or spaces."""
    if isinstance(value, str):
        return [v for v in re.split(r"[,;\s]+", value) if v]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise InvalidInput(f"{value!r} is not a list")


@dataclasses.dataclass(frozen=True)
class Attachment:
    """Where a port's host end is plugged, and what its guest is told (docs/networks.md)."""

    kind: str = "none"
    bridge: str | None = None        # bridge, ovs: the bridge; network: its bridge, once resolved
    network: str | None = None       # network: the libvirt network's name
    vlan: int | None = None          # access VLAN, or a trunk's native (untagged) VLAN
    trunk: tuple = ()                # tagged VLANs: ((low, high), ...)
    iface_id: str | None = None      # ovs: external_ids:iface-id (default: the port's name)
    vm_uuid: str | None = None       # ovs: external_ids:vm-uuid
    addresses: tuple = ()            # the guest's addresses, interface form
    gateway4: str | None = None      # routed: 169.254.1.1 unless given
    gateway6: str | None = None      # routed: fe80::1 unless given
    routes: tuple = ()               # more routes for the guest: ((dst, gw or None), ...)
    dns: tuple = ()                  # name servers the guest is told
    search: tuple = ()               # DNS search domains
    hostname: str | None = None
    dhcp: bool = True                # serve the addresses to the guest (DHCPv4, RA, DHCPv6)
    spoofcheck: bool = True          # drop frames from the guest with another MAC or address
    via: str | None = None           # network: "bridge" or "ovs", once resolved

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)       # noqa: E731 (frozen)
        if self.kind not in KINDS:
            raise InvalidInput(f"attachment {self.kind!r} is not known", fix=f"use one of: {', '.join(KINDS)}")
        for label in ("dhcp", "spoofcheck"):
            if not isinstance(getattr(self, label), bool):
                raise InvalidInput(f"{label} must be true or false")
        if self.kind in ("bridge", "ovs") and not self.bridge:
            raise InvalidInput(f"a {self.kind} attachment needs the bridge's name",
                               fix="--bridge NAME" if self.kind == "bridge" else "--ovs BRIDGE")
        if self.bridge is not None and (not isinstance(self.bridge, str) or not _BRIDGE.fullmatch(self.bridge)):
            raise InvalidInput(f"bridge name {self.bridge!r} is not valid",
                               fix="use 1-15 characters from letters, digits, '.', '-', '_'")
        if self.kind in ("none", "routed") and self.bridge:
            raise InvalidInput(f"a {self.kind} attachment has no bridge (it was given {self.bridge})")
        if self.kind == "network":
            if not isinstance(self.network, str) or not _NETWORK_NAME.fullmatch(self.network):
                raise InvalidInput(f"libvirt network name {self.network!r} is not valid",
                                   fix="give the name 'virsh net-list' shows, e.g. default")
        elif self.network is not None:
            raise InvalidInput(f"network={self.network} applies only to a libvirt network attachment")
        if self.via not in (None, "bridge", "ovs") or (self.via and self.kind != "network"):
            raise InvalidInput(f"via {self.via!r} is not valid here")
        if self.vlan is not None:
            set_("vlan", parse_vlan(self.vlan))
        if self.trunk:
            set_("trunk", parse_trunk(self.trunk))
        if (self.vlan is not None or self.trunk) and self.kind not in VLAN_KINDS:
            if self.kind == "network":
                raise InvalidInput(f"a libvirt network's VLANs are its own: a port on network {self.network} "
                                   "cannot tag", fix="give the port the bridge itself (--bridge) to tag, or "
                                                     "leave --vlan/--trunk out")
            raise InvalidInput(f"a {self.kind} attachment carries no VLAN tags", fix="leave --vlan/--trunk out")
        if self.trunk and self.vlan is not None and any(lo <= self.vlan <= hi for lo, hi in self.trunk):
            raise InvalidInput(f"VLAN {self.vlan} is both the native VLAN and in the trunk {format_trunk(self.trunk)}",
                               fix="name the native VLAN with --vlan and the tagged ones with --trunk")
        for label, value, pattern in (("iface-id", self.iface_id, _IFACE_ID), ("vm-uuid", self.vm_uuid, _IFACE_ID)):
            if value is None:
                continue
            if self.kind != "ovs" and not (self.kind == "network"):
                raise InvalidInput(f"{label} applies only to Open vSwitch ports", fix=f"leave {label} out")
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise InvalidInput(f"{label} {value!r} is not valid",
                                   fix="use letters, digits and . _ : @ -, at most 255 characters")
        routed = self.kind == "routed"
        addresses = tuple(parse_address(a, routed) for a in _split(self.addresses))
        if len(addresses) > MAX_ADDRESSES:
            raise InvalidInput(f"{len(addresses)} addresses are more than the {MAX_ADDRESSES} a port may have")
        if len({a.split("/")[0] for a in addresses}) != len(addresses):
            raise InvalidInput("an address is given twice")
        set_("addresses", addresses)
        if routed and not addresses:
            raise InvalidInput("a routed port needs the VM's address(es)",
                               fix="give --address 10.1.2.3/32 (and/or an IPv6 /128)")
        versions = {ipaddress.ip_interface(a).version for a in addresses}
        if self.gateway4 is not None:
            set_("gateway4", parse_ip(self.gateway4, "IPv4 gateway", 4))
        elif routed and 4 in versions:
            set_("gateway4", GATEWAY4)
        if self.gateway6 is not None:
            set_("gateway6", parse_ip(self.gateway6, "IPv6 gateway", 6))
        elif routed and 6 in versions:
            set_("gateway6", GATEWAY6)
        for label, gw, version in (("IPv4 gateway", self.gateway4, 4), ("IPv6 gateway", self.gateway6, 6)):
            if gw is not None and version not in versions:
                raise InvalidInput(f"an {label} ({gw}) is given, but no IPv{version} address",
                                   fix=f"give the VM an IPv{version} address (--address), or leave the gateway out")
        if self.gateway4 and not routed and not any(
                ipaddress.ip_address(self.gateway4) in ipaddress.ip_interface(a).network
                for a in addresses if ":" not in a):
            raise InvalidInput(f"gateway {self.gateway4} is outside the VM's IPv4 subnets",
                               fix="give an address whose subnet holds the gateway, e.g. 10.0.0.5/24")
        routes = tuple(parse_route(r.strip()) for r in re.split(r"[;,]", self.routes) if r.strip()) \
            if isinstance(self.routes, str) else tuple(parse_route(r) for r in self.routes)
        if len(routes) > MAX_ROUTES:
            raise InvalidInput(f"{len(routes)} routes are more than the {MAX_ROUTES} a guest is told")
        set_("routes", routes)
        dns = tuple(parse_ip(d, "name server") for d in _split(self.dns))
        if len(dns) > MAX_DNS:
            raise InvalidInput(f"{len(dns)} name servers are more than {MAX_DNS}")
        set_("dns", dns)
        search = tuple(parse_hostname(s) for s in _split(self.search))
        if len(search) > MAX_DNS:
            raise InvalidInput(f"{len(search)} search domains are more than {MAX_DNS}")
        set_("search", search)
        if self.hostname is not None:
            set_("hostname", parse_hostname(self.hostname))

    # ---- views -----------------------------------------------------------

    # parsed once per attachment (a port's create asks several times); the cache is no field
    @functools.cached_property
    def ipv4(self) -> list[ipaddress.IPv4Interface]:
        return [i for i in map(ipaddress.ip_interface, self.addresses) if i.version == 4]

    @functools.cached_property
    def ipv6(self) -> list[ipaddress.IPv6Interface]:
        return [i for i in map(ipaddress.ip_interface, self.addresses) if i.version == 6]

    @property
    def serves_addresses(self) -> bool:
        """Whether vmnet answers the guest's DHCP and router solicitations for this port."""
        return self.dhcp and bool(self.addresses)

    @property
    def plugged_as(self) -> str:
        """The kind that does the plugging: a resolved libvirt network plugs as its bridge."""
        return self.via if self.kind == "network" and self.via else self.kind

    def describe(self) -> str:
        """One line for people: where the port is plugged."""
        if self.kind == "none":
            text = "not attached"
        elif self.kind == "routed":
            text = "routed " + ", ".join(self.addresses)
        elif self.kind == "network":
            text = f"libvirt network {self.network}" + (f" (bridge {self.bridge})" if self.bridge else "")
        else:
            text = ("bridge " if self.kind == "bridge" else "Open vSwitch bridge ") + self.bridge
        if self.vlan is not None:
            text += f", {'native ' if self.trunk else ''}VLAN {self.vlan}"
        if self.trunk:
            text += f", trunk {format_trunk(self.trunk)}"
        if self.addresses and self.kind != "routed":
            text += ", addresses " + ", ".join(self.addresses)
        return text

    def to_dict(self) -> dict:
        out = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "kind" or value == f.default:
                continue
            if f.name == "trunk":
                value = [list(r) for r in value]
            elif f.name == "routes":
                value = [{"dst": d, **({"gw": g} if g else {})} for d, g in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data) -> "Attachment":
        if data is None:
            return cls()
        if isinstance(data, Attachment):
            return data
        if not isinstance(data, dict):
            raise InvalidInput("attachment must be an object", fix='give e.g. {"kind": "bridge", "bridge": "br0"}')
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise InvalidInput(f"unknown attachment field(s): {', '.join(sorted(unknown))}",
                               fix=f"known fields: {', '.join(sorted(names))}")
        for key in ("bridge", "network", "iface_id", "vm_uuid", "hostname", "gateway4", "gateway6", "kind", "via"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise InvalidInput(f"attachment field {key} must be a string")
        return cls(**data)

    def resolved(self, **changes) -> "Attachment":
        return dataclasses.replace(self, **changes)


def attachment_from_options(kind: str | None = None, *, bridge=None, ovs=None, network=None, routed=False,
                            **fields) -> Attachment:
    """The attachment the CLI's, the metadata's and the CNI configuration's options describe:
    at most one of bridge, ovs, network and routed (or kind, explicitly)."""
    chosen = [name for name, given in (("bridge", bridge), ("ovs", ovs), ("network", network),
                                       ("routed", routed)) if given]
    if len(chosen) > 1:
        raise InvalidInput(f"a port is plugged in one place: {' and '.join(chosen)} were both given",
                           fix="choose one of bridge, ovs, network and routed")
    if kind is not None and chosen and chosen[0] != kind:
        raise InvalidInput(f"attachment {kind} was asked for, and {chosen[0]} too", fix="give one")
    kind = kind or (chosen[0] if chosen else "none")
    fields = {k: v for k, v in fields.items() if v not in (None, (), [], "")}
    if kind in ("bridge", "ovs"):
        fields["bridge"] = bridge or ovs or fields.get("bridge")
    if kind == "network":
        fields["network"] = network
    return Attachment(kind=kind, **fields)


# ---- libvirt networks, as libvirt keeps their status -------------------------

def parse_libvirt_network_status(text: str | bytes, name: str) -> dict:
    """What a port needs of an active libvirt network, from the status XML libvirt keeps
    for it (/run/libvirt/network/NAME.xml): {"bridge", "forward", "ovs", "mtu"}."""
    import xml.etree.ElementTree as ET
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise InvalidInput(f"the status of libvirt network {name} is not XML ({exc})") from None
    net = root if root.tag == "network" else root.find("network")
    if net is None:
        raise InvalidInput(f"the status of libvirt network {name} holds no <network>")
    forward = net.find("forward")
    mode = forward.get("mode", "nat") if forward is not None else "none"
    bridge = net.find("bridge")
    port = net.find("virtualport")
    mtu = net.find("mtu")
    if mode in ("passthrough", "private", "vepa", "hostdev"):
        raise InvalidInput(f"libvirt network {name} hands out host devices (forward mode {mode}): "
                           "a vmnet port cannot join it",
                           fix="use a network that runs on a bridge (forward nat, route, open, none or bridge)")
    if bridge is None or not bridge.get("name"):
        raise InvalidInput(f"libvirt network {name} has no bridge", fix="use a network that runs on a bridge")
    out = {"bridge": bridge.get("name"), "forward": mode,
           "ovs": port is not None and port.get("type") == "openvswitch"}
    if mtu is not None and (mtu.get("size") or "").isdigit():
        out["mtu"] = int(mtu.get("size"))
    return out
