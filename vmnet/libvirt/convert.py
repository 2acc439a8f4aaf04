"""`vmnet libvirt convert`: a domain's libvirt NICs become vmnet NICs on the same network.

Pure (xml.etree only). An <interface type='network'> or type='bridge' —
an Open vSwitch <virtualport> with its interfaceid, <vlan> tags, MTU and
<driver queues> included — becomes the interface form of
vmnet.libvirt.domain_xml: the same <interface> element, made
type='ethernet' with the port's placeholder tap as target, so its MAC,
model, PCI address, alias, boot order and ROM stay what the guest knew;
and a <vmnet:port> plugged where the NIC was. The original element is kept
inside that <vmnet:port> (and the domain's emulator on the container), so
`revert` puts back exactly what was there.

What has no vmnet equivalent is refused, naming the interface: a macvtap
(`direct`), a passed-through device (`hostdev`), vhost-user, vDPA, user
networking, sockets, an interface that is already a tap of someone
else's (`ethernet`), a port group, a native VLAN that is tagged.
Settings that only act on libvirt's own tap (<bandwidth>, <filterref>)
are dropped and reported.
"""

from __future__ import annotations

import copy
import hashlib
import re
import xml.etree.ElementTree as ET

from ..domain_metadata import NS, describe_interface, interface_mac, parse_domain, tap_name
from ..errors import InvalidInput
from . import domain_xml as lx

CONVERTIBLE = ("network", "bridge")
NOT_CONVERTIBLE = {
    "direct": "a macvtap device on a host NIC",
    "hostdev": "a device passed through to the guest",
    "vhostuser": "a vhost-user backend",
    "vdpa": "a vDPA device",
    "user": "QEMU's user networking",
    "mcast": "a multicast socket", "server": "a socket", "client": "a socket", "udp": "a socket",
    "null": "no backend", "vds": "a distributed switch",
    "ethernet": "a tap or device of your own, and vmnet cannot tell where it leads",
}
DROPPED = {"bandwidth": "libvirt shapes its own tap with it; a vmnet port's traffic never passes that tap",
           "filterref": "libvirt's nwfilter acts on its own tap; vmnet's spoofcheck guards the port"}


def _selector_matches(iface: ET.Element, selector: str) -> bool:
    alias = iface.find("alias")
    return (interface_mac(iface) == selector.lower()
            or (alias is not None and alias.get("name") == selector))


def _select(devices: ET.Element, selectors: list[str]) -> list[ET.Element]:
    ifaces = devices.findall("interface")
    if not selectors:
        return ifaces
    chosen = []
    for sel in selectors:
        found = [i for i in ifaces if _selector_matches(i, sel)]
        if not found:
            raise InvalidInput(f"the domain has no interface with MAC or alias {sel!r}",
                               fix="name one that 'virsh domiflist DOMAIN' lists (its MAC), or its alias")
        chosen += [i for i in found if i not in chosen]
    return chosen


def _port_name(domain: str, uuid: str, index: int, mac: str, taken: set[str]) -> str:
    """DOMAIN-N when it fits in a port name (11 characters) and is free; else a name
    derived from the domain's uuid and the NIC's MAC."""
    simple = f"{domain}-{index}"
    if len(simple) <= 11 and re.fullmatch(r"[a-z0-9][a-z0-9_-]*", simple) and simple not in taken:
        return simple
    return "v" + hashlib.sha256(f"{uuid or domain}/{mac}".encode()).hexdigest()[:10]


def _vlans(iface: ET.Element) -> dict:
    vlan = iface.find("vlan")
    if vlan is None:
        return {}
    what = describe_interface(iface)
    tags = []
    native = None
    for tag in vlan.findall("tag"):
        ident = tag.get("id", "")
        if not ident.isascii() or not ident.isdigit():
            raise InvalidInput(f"{what} has <vlan><tag id='{ident}'>, not a number")
        mode = tag.get("nativeMode")
        if mode == "tagged":
            raise InvalidInput(f"{what}: a native VLAN that is also tagged (nativeMode='tagged') "
                               "cannot be converted", fix="make the native VLAN nativeMode='untagged', "
                                                         "or leave this interface out (--interface)")
        if mode == "untagged":
            native = int(ident)
        else:
            tags.append(int(ident))
    trunk = vlan.get("trunk") == "yes" or len(tags) > 1 or native is not None
    if not trunk:
        return {"vlan": str(tags[0])} if tags else {}
    out = {"trunk": ",".join(map(str, tags))} if tags else {}
    if native is not None:
        out["vlan"] = str(native)
    return out


def port_for(iface: ET.Element, name: str) -> dict:
    """The port a convertible interface becomes (as port_option gives one)."""
    what = describe_interface(iface)
    source = iface.find("source")
    opts: dict = {}
    if iface.find("portgroup") is not None or (source is not None and source.get("portgroup")):
        raise InvalidInput(f"{what} uses a port group; vmnet cannot read what the group carries",
                           fix="write the group's VLAN into the interface, or leave it out (--interface)")
    virtualport = iface.find("virtualport")
    if virtualport is not None and virtualport.get("type") not in (None, "openvswitch"):
        raise InvalidInput(f"{what} has a <virtualport type='{virtualport.get('type')}'>, which vmnet "
                           "does not plug", fix="leave this interface out (--interface)")
    if iface.get("type") == "network":
        if source is None or not source.get("network"):
            raise InvalidInput(f"{what} names no network")
        opts["network"] = source.get("network")
    else:
        if source is None or not source.get("bridge"):
            raise InvalidInput(f"{what} names no bridge")
        kind = "ovs-bridge" if virtualport is not None and virtualport.get("type") == "openvswitch" else "bridge"
        opts[kind] = source.get("bridge")
    if virtualport is not None:
        params = virtualport.find("parameters")
        if params is not None and params.get("interfaceid"):
            opts["iface-id"] = params.get("interfaceid")
    opts.update(_vlans(iface))
    driver = iface.find("driver")
    if driver is not None and driver.get("queues") not in (None, "1"):
        opts["queues"] = driver.get("queues")
    mtu = iface.find("mtu")
    if mtu is not None and mtu.get("size"):
        opts["mtu"] = mtu.get("size")
    opts["mac"] = interface_mac(iface)
    el = ET.Element(f"{{{NS}}}port", {"name": name, **{k: v for k, v in opts.items() if v}})
    from ..domain_metadata import port_from_element
    try:
        return port_from_element(el)
    except InvalidInput as exc:
        raise InvalidInput(f"{what}: {exc.message}", fix=exc.fix) from None


def convert(text: str | bytes, selectors: list[str] = (), emulator: str = lx.WRAPPER,
            names: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """(the domain with its network/bridge interfaces — those the selectors name (MAC or
    alias), or all — turned into vmnet NICs, notes on what was left behind). Idempotent:
    interfaces already vmnet's are left as they are. names: selector -> port name."""
    root = parse_domain(text)
    devices = root.find("devices")
    if devices is None:
        return lx.serialize(root), []
    from ..domain_metadata import domain_identity, parse_ports
    dname, uuid = domain_identity(root)
    declared = parse_ports(root, validate=False)
    mine = {p.get("mac", "").lower() for p in declared}
    taken = {p["name"] for p in declared}
    chosen = _select(devices, list(selectors) + [s for s in (names or {}) if s not in selectors])
    todo = []
    for iface in chosen:
        kind = iface.get("type")
        if kind == "ethernet" and interface_mac(iface) in mine:
            continue                # converted or injected already
        if kind not in CONVERTIBLE:
            raise InvalidInput(f"{describe_interface(iface)} is {NOT_CONVERTIBLE.get(kind, 'not a libvirt network or bridge')}: "
                               "it cannot become a vmnet NIC",
                               fix="name the interfaces to convert with --interface MAC|ALIAS")
        if not interface_mac(iface):
            raise InvalidInput(f"{describe_interface(iface)} has no MAC yet",
                               fix="define the domain first (libvirt gives every NIC a MAC), and convert "
                                   "'virsh dumpxml' of it")
        todo.append(iface)
    notes = []
    all_ifaces = devices.findall("interface")
    new_ports = []
    for iface in todo:
        mac = interface_mac(iface)
        name = next((n for s, n in (names or {}).items() if _selector_matches(iface, s)), None)
        name = name or _port_name(dname, uuid, all_ifaces.index(iface), mac, taken)
        taken.add(name)
        port = port_for(iface, name)
        original = copy.deepcopy(iface)
        for tag, why in DROPPED.items():
            if iface.find(tag) is not None:
                notes.append(f"{describe_interface(iface)}: <{tag}> is not carried over: {why}")
        lx.interface_element(port, iface)
        new_ports.append((port, original))
    if not new_ports:
        return lx.serialize(root), notes
    meta = root.find("metadata")
    if meta is None:
        meta = ET.Element("metadata")
        lx._insert_after(root, meta, ("description", "title", "uuid", "genid", "name"))
    container = meta.find(f"{{{NS}}}ports")
    if container is None:
        container = ET.SubElement(meta, f"{{{NS}}}ports")
    emu = devices.find("emulator")
    if emu is None:
        emu = ET.Element("emulator")
        devices.insert(0, emu)
    if emu.text and emu.text.strip() != emulator and not container.get("original-emulator"):
        container.set("original-emulator", emu.text.strip())
    emu.text = emulator
    for port, original in new_ports:
        container.append(lx._port_element(port, original))
    return lx.serialize(root), notes


def revert(text: str | bytes, selectors: list[str] = ()) -> str:
    """The domain with its converted NICs — those the selectors name (MAC, alias or port
    name), or all — as they were before `convert`. Ports vmnet did not convert stay; when
    none is left, so does the emulator the domain had."""
    root = parse_domain(text)
    devices = root.find("devices")
    meta = root.find("metadata")
    containers = meta.findall(f"{{{NS}}}ports") if meta is not None else []
    if devices is None or not containers:
        return lx.serialize(root)
    matched = set()
    for container in containers:
        for el in list(container):
            original = el.find(f"{{{NS}}}original/interface")
            if original is None:
                continue
            mac = (el.get("mac") or "").lower()
            current = next((i for i in devices.findall("interface") if interface_mac(i) == mac), None)
            wanted = not selectors or any(
                s == el.get("name") or s.lower() == mac or (current is not None and _selector_matches(current, s))
                for s in selectors)
            if not wanted:
                continue
            matched.update(s for s in selectors if s == el.get("name") or s.lower() == mac
                           or (current is not None and _selector_matches(current, s)))
            restored = copy.deepcopy(original)
            if current is not None:
                # libvirt may have given the NIC its address and alias since: keep them
                for tag in ("address", "alias"):
                    now = current.find(tag)
                    if now is not None and restored.find(tag) is None:
                        restored.append(copy.deepcopy(now))
                lx._replace(devices, current, restored)
            else:
                lx._append_device(devices, restored)
            container.remove(el)
    missing = [s for s in selectors if s not in matched]
    if missing:
        raise InvalidInput(f"no converted interface of the domain is named by {', '.join(missing)}",
                           fix="name a port, MAC or alias that 'vmnet libvirt convert' converted")
    if not any(len(c) for c in containers):
        original_emulator = next((c.get("original-emulator") for c in containers if c.get("original-emulator")), None)
        for c in containers:
            meta.remove(c)
        if not len(meta):
            root.remove(meta)
        emu = devices.find("emulator")
        if original_emulator and emu is not None:
            emu.text = original_emulator
    return lx.serialize(root)
