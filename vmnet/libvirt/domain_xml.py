"""vmnet's part of a libvirt domain XML, written: metadata, emulator, interfaces.

Pure (xml.etree only). A domain declares its ports in <metadata> under
vmnet's namespace; <emulator> is vmnet-qemu-wrapper; each port is a NIC
libvirt knows, tied to its port by MAC:

    <interface type='ethernet'>
      <mac address='02:..'/>
      <target dev='vmt-web1' managed='no'/>
      <model type='virtio'/>
    </interface>

The hook makes the port with that placeholder tap, libvirt opens the tap and
manages the NIC (PCI address, alias, `virsh domiflist`), and the wrapper
swaps the tap netdev for the port's af-xdp one (vmnet.kubevirt.takeover).
The older form, a <qemu:commandline> -netdev/-device pair whose values are
`vmnet:PORT` placeholders the wrapper fills, still starts; `inject`
rewrites it to the interface form. `render` produces the parts, `inject`
puts them into an existing domain (replacing earlier vmnet parts, leaving
everything else as it was), `port_option` reads the CLI's --port.

    <metadata>
      <vmnet:ports xmlns:vmnet="urn:vmnet:domain:1">
        <vmnet:port name="web1" queues="2" mode="auto" consumer-user="libvirt-qemu"/>
      </vmnet:ports>
    </metadata>

Reading a domain back (parse_domain, parse_ports, domain_identity) is
vmnet.domain_metadata's, a core module, because the helper reads the
metadata for the hook's verbs; those names are importable from here too.
"""

from __future__ import annotations

import copy
import io
import json
import xml.etree.ElementTree as ET

from ..domain_metadata import (ATTACH_ATTRS, ATTRS, BOOL_ATTRS, EXTRA_ATTRS, INT_ATTRS, NS,  # noqa: F401
                               QEMU_NS, attachment_of, describe_interface, domain_identity, interface_mac,
                               parse_domain, parse_ports, port_from_element, tap_name)
from ..errors import InvalidInput

# vmnet.network and vmnet.qemu_args are imported where needed: a caller that
# only parses or edits a domain (the KubeVirt sidecar) need not load them.

WRAPPER = "/usr/local/bin/vmnet-qemu-wrapper"


def qemu_commandline(root: ET.Element) -> ET.Element:
    """The domain's <qemu:commandline>, made (last in <domain>) when it has none."""
    cmd = root.find(f"{{{QEMU_NS}}}commandline")
    if cmd is None:
        cmd = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
    return cmd


def port_option(text: str) -> dict:
    """`NAME[,queues=N][,mode=...][,mac=...][,consumer-user=...]` (the CLI's --port)."""
    from ..qemu_args import parse_opts
    name, opts = parse_opts(text)
    el = ET.Element(f"{{{NS}}}port", {"name": name, **opts})
    return port_from_element(el)


def _port_element(port: dict, original: ET.Element | None = None) -> ET.Element:
    """A <vmnet:port>; `original`: the interface `convert` replaced, kept inside it."""
    attrib = {}
    for attr, field in ATTRS.items():
        if port.get(field) not in (None, ""):
            attrib[attr] = str(port[field])
    if port.get("consumer_user"):
        attrib["consumer-user"] = port["consumer_user"]
    attrib.update(attachment_attrs(port.get("attachment")))
    el = ET.Element(f"{{{NS}}}port", attrib)
    if original is not None:
        ET.SubElement(el, f"{{{NS}}}original").append(original)
    return el


def interface_element(port: dict, base: ET.Element | None = None) -> ET.Element:
    """The port's <interface type='ethernet'>: `base` (an interface of the domain: its model,
    PCI address, alias, boot order... are kept) made the port's, or a new virtio NIC."""
    iface = ET.Element("interface") if base is None else base
    iface.attrib.clear()
    iface.set("type", "ethernet")
    for tag in ("source", "virtualport", "vlan", "portgroup", "target", "ip", "route", "backend",
                "filterref", "bandwidth"):
        for old in iface.findall(tag):
            iface.remove(old)
    mac = iface.find("mac")
    if mac is None:
        mac = ET.Element("mac")
        iface.insert(0, mac)
    mac.attrib.clear()
    mac.set("address", port["mac"])
    iface.insert(list(iface).index(mac) + 1, ET.Element("target", {"dev": tap_name(port["name"]), "managed": "no"}))
    if iface.find("model") is None:
        ET.SubElement(iface, "model", {"type": "virtio"})
    driver = iface.find("driver")
    queues = port.get("queues", 1)
    if queues > 1:
        if driver is None:
            driver = ET.SubElement(iface, "driver")
        driver.set("queues", str(queues))
    elif driver is not None:
        driver.attrib.pop("queues", None)
        if not driver.attrib and not len(driver):
            iface.remove(driver)
    mtu = iface.find("mtu")
    if port.get("mtu"):
        if mtu is None:
            mtu = ET.SubElement(iface, "mtu")
        mtu.set("size", str(port["mtu"]))
    return iface


def attachment_attrs(attachment: dict | None) -> dict:
    """A port's attachment as <vmnet:port> attributes (attachment_of's inverse)."""
    from ..network import Attachment, format_trunk
    att = Attachment.from_dict(attachment)
    out = {}
    if att.kind in ("bridge", "ovs"):
        out["bridge" if att.kind == "bridge" else "ovs-bridge"] = att.bridge
    elif att.kind == "network":
        out["network"] = att.network
    elif att.kind == "routed":
        out["routed"] = "yes"
    if att.vlan is not None:
        out["vlan"] = str(att.vlan)
    if att.trunk:
        out["trunk"] = format_trunk(att.trunk)
    if att.addresses:
        out["address"] = " ".join(att.addresses)
    from ..network import GATEWAY4, GATEWAY6
    routed_defaults = (GATEWAY4, GATEWAY6) if att.kind == "routed" else ()
    gateways = [g for g in (att.gateway4, att.gateway6) if g and g not in routed_defaults]
    if gateways:
        out["gateway"] = " ".join(gateways)
    if att.routes:
        out["route"] = "; ".join(d + (f" via {g}" if g else "") for d, g in att.routes)
    for key, attr in (("dns", "dns"), ("search", "search")):
        if getattr(att, key):
            out[attr] = " ".join(getattr(att, key))
    for key, attr in (("hostname", "hostname"), ("iface_id", "iface-id"), ("vm_uuid", "vm-uuid")):
        if getattr(att, key):
            out[attr] = getattr(att, key)
    if not att.dhcp:
        out["dhcp"] = "no"
    if not att.spoofcheck:
        out["spoofcheck"] = "no"
    return out


def qemu_args_for(port: dict) -> list[str]:
    from ..qemu_args import netdev_id
    name = port["name"]
    ph = f"vmnet:{name}"
    netdev = (f"af-xdp,id={netdev_id(name)},ifname={ph},queues={ph},start-queue={ph},"
              f"mode={ph},inhibit=on,sock-fds={ph}")
    # JSON, like libvirt's own -device arguments: QEMU creates key=value devices
    # first, and this one would take a PCI slot libvirt has given to another
    device = {"driver": "virtio-net-pci", "id": f"{netdev_id(name)}-dev", "netdev": netdev_id(name),
              "mac": ph, "host_mtu": ph}
    queues = port.get("queues", 1)
    if queues > 1:
        device.update(mq=True, vectors=2 * queues + 2)
    return ["-netdev", netdev, "-device", json.dumps(device, separators=(",", ":"))]


def render(ports: list[dict], emulator: str = WRAPPER, commandline: bool = False) -> str:
    """The XML fragments a domain needs for these ports: <metadata>, <emulator> and an
    <interface> each (commandline: the older <qemu:commandline> pairs instead)."""
    ports = [with_mac(p) for p in ports]
    meta = ET.Element("metadata")
    container = ET.SubElement(meta, f"{{{NS}}}ports")
    for p in ports:
        container.append(_port_element(p))
    emu = ET.Element("emulator")
    emu.text = emulator
    parts = [meta, emu]
    if commandline:
        cmd = ET.Element(f"{{{QEMU_NS}}}commandline")
        for p in ports:
            for arg in qemu_args_for(p):
                ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", {"value": arg})
        parts.append(cmd)
    else:
        parts += [interface_element(p) for p in ports]
    out = []
    for el in parts:
        ET.indent(el, "  ")
        out.append(ET.tostring(el, encoding="unicode"))
    return "\n".join(out) + "\n"


def with_mac(port: dict, mac: str | None = None) -> dict:
    """The port with its MAC written out (given, else `mac`, else the one derived from its
    name): the metadata and the interface must say the same."""
    from ..fields import default_mac, validate_mac
    return dict(port, mac=validate_mac(port.get("mac") or mac or default_mac(port["name"])))


def _is_vmnet_arg(arg: ET.Element) -> bool:
    value = arg.get("value", "")
    return ("=vmnet:" in value or '":"vmnet:' in value or
            value.startswith(("af-xdp,id=vmnet-", "virtio-net-pci,id=vmnet-", '{"driver":"virtio-net-pci","id":"vmnet-')))


def inject(text: str | bytes, ports: list[dict], emulator: str = WRAPPER,
           commandline: bool = True, form: str = "interface") -> str:
    """Add or replace vmnet's parts of a domain XML; idempotent; the rest is kept.

    form "interface" (the default): each port is an <interface type='ethernet'> libvirt
    manages; an interface of the domain that already carries the port (its MAC, or its tap)
    is rewritten in place, keeping its PCI address, alias and model. form "commandline": the
    older <qemu:commandline> pairs. Either way earlier vmnet parts of the other form go.
    commandline=False declares the ports only (the hook still creates them), keeping the
    domain's emulator and interfaces: for domains that take ports by live attach.
    """
    if form not in ("interface", "commandline"):
        raise InvalidInput(f"form {form!r} is not known", fix="use interface or commandline")
    root = parse_domain(text)
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    meta = root.find("metadata")
    if meta is None:
        meta = ET.Element("metadata")
        _insert_after(root, meta, ("description", "title", "uuid", "genid", "name"))
    before = {el.get("name"): el for c in meta.findall(f"{{{NS}}}ports") for el in c}
    previous = {p["name"]: p for p in parse_ports(root, validate=False)}
    containers = meta.findall(f"{{{NS}}}ports")
    original_emulator = next((c.get("original-emulator") for c in containers if c.get("original-emulator")), None)
    interfaces = commandline and form == "interface"
    if interfaces or form == "interface":
        ports = [with_mac(p, _current_mac(devices, p["name"], previous.get(p["name"]))) for p in ports]
    # the interfaces of earlier ports that are not declared any more: their original back, or gone
    wanted = {p["name"] for p in ports}
    for name, old in previous.items():
        if name in wanted:
            continue
        iface = _interface_of(devices, name, old.get("mac"))
        if iface is not None and iface.get("type") == "ethernet":
            kept = before[name].find(f"{{{NS}}}original/interface")
            _replace(devices, iface, copy.deepcopy(kept) if kept is not None else None)
    for old in containers:
        meta.remove(old)
    if ports:
        container = ET.SubElement(meta, f"{{{NS}}}ports")
        if original_emulator:
            container.set("original-emulator", original_emulator)
        for p in ports:
            kept = before.get(p["name"])
            kept = kept.find(f"{{{NS}}}original/interface") if kept is not None else None
            container.append(_port_element(p, copy.deepcopy(kept) if kept is not None else None))
    elif not len(meta):
        root.remove(meta)
    emu = devices.find("emulator")
    if emu is None:
        emu = ET.Element("emulator")
        devices.insert(0, emu)
    if commandline:
        emu.text = emulator
    if not interfaces:
        # the other forms have no interface of vmnet's: an earlier inject's goes
        for p in ports:
            iface = _interface_of(devices, p["name"], p.get("mac"))
            target = iface.find("target") if iface is not None else None
            if target is not None and iface.get("type") == "ethernet" and target.get("dev") == tap_name(p["name"]):
                devices.remove(iface)
    else:
        for p in ports:
            iface = _interface_of(devices, p["name"], p["mac"])
            if iface is not None and iface.get("type") != "ethernet":
                raise InvalidInput(f"{describe_interface(iface)} has port {p['name']}'s MAC",
                                   fix="turn it into the port's with 'vmnet libvirt convert', or give the "
                                       "port another mac=")
            if iface is None:
                _append_device(devices, interface_element(p))
            else:
                interface_element(p, iface)
    # qemu:commandline: drop earlier vmnet -netdev/-device pairs, append ours in that form
    cmd = qemu_commandline(root)
    args = list(cmd)
    keep: list[ET.Element] = []
    i = 0
    while i < len(args):
        a = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else None
        if (a.tag == f"{{{QEMU_NS}}}arg" and a.get("value") in ("-netdev", "-device") and nxt is not None
                and _is_vmnet_arg(nxt)):
            i += 2
            continue
        keep.append(a)
        i += 1
    for a in args:
        cmd.remove(a)
    for a in keep:
        cmd.append(a)
    for p in ports if commandline and form == "commandline" else ():
        for value in qemu_args_for(p):
            ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", {"value": value})
    if not len(cmd):
        root.remove(cmd)
    return serialize(root)


def serialize(root: ET.Element) -> str:
    ET.indent(root, "  ")
    out = io.StringIO()
    ET.ElementTree(root).write(out, encoding="unicode", xml_declaration=False)
    return out.getvalue() + "\n"


def _interface_of(devices: ET.Element, port: str, mac: str | None) -> ET.Element | None:
    """The domain's interface of a port: the one with its MAC, else the one naming its tap."""
    ifaces = devices.findall("interface")
    if mac:
        found = [i for i in ifaces if interface_mac(i) == mac.lower()]
        if found:
            return found[0]
    return next((i for i in ifaces if (t := i.find("target")) is not None and t.get("dev") == tap_name(port)),
                None)


def _current_mac(devices: ET.Element, port: str, previous: dict | None) -> str | None:
    """The MAC a port already has in this domain: its declaration's, or its interface's."""
    if previous and previous.get("mac"):
        return previous["mac"]
    iface = _interface_of(devices, port, None)
    return interface_mac(iface) if iface is not None else None


def _replace(devices: ET.Element, old: ET.Element, new: ET.Element | None) -> None:
    index = list(devices).index(old)
    devices.remove(old)
    if new is not None:
        devices.insert(index, new)


def _append_device(devices: ET.Element, el: ET.Element) -> None:
    """After the domain's last interface (or at the end): where libvirt would list it."""
    children = list(devices)
    last = max((i for i, c in enumerate(children) if c.tag == "interface"), default=len(children) - 1)
    devices.insert(last + 1, el)


def _insert_after(root: ET.Element, el: ET.Element, after: tuple[str, ...]):
    index = 0
    for i, child in enumerate(list(root)):
        if child.tag in after:
            index = i + 1
    root.insert(index, el)
