"""vmnet's part of a libvirt domain XML, written: metadata, emulator, QEMU arguments.

Pure (xml.etree only). A domain declares its ports in <metadata> under
vmnet's namespace; <emulator> is vmnet-qemu-wrapper; <qemu:commandline>
carries -netdev/-device pairs whose values are `vmnet:PORT` placeholders the
wrapper fills at start. `render` produces those parts, `inject` puts them
into an existing domain (replacing earlier vmnet parts, leaving everything
else as it was), `port_option` reads the CLI's --port.

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

import io
import json
import xml.etree.ElementTree as ET

from ..domain_metadata import (ATTACH_ATTRS, ATTRS, BOOL_ATTRS, EXTRA_ATTRS, INT_ATTRS, NS,  # noqa: F401
                               QEMU_NS, attachment_of, domain_identity, parse_domain, parse_ports,
                               port_from_element)

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


def _port_element(port: dict) -> ET.Element:
    attrib = {}
    for attr, field in ATTRS.items():
        if port.get(field) not in (None, ""):
            attrib[attr] = str(port[field])
    if port.get("consumer_user"):
        attrib["consumer-user"] = port["consumer_user"]
    attrib.update(attachment_attrs(port.get("attachment")))
    return ET.Element(f"{{{NS}}}port", attrib)


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


def render(ports: list[dict], emulator: str = WRAPPER) -> str:
    """The XML fragments a domain needs for these ports."""
    meta = ET.Element("metadata")
    container = ET.SubElement(meta, f"{{{NS}}}ports")
    for p in ports:
        container.append(_port_element(p))
    cmd = ET.Element(f"{{{QEMU_NS}}}commandline")
    for p in ports:
        for arg in qemu_args_for(p):
            ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", {"value": arg})
    emu = ET.Element("emulator")
    emu.text = emulator
    parts = []
    for el in (meta, emu, cmd):
        ET.indent(el, "  ")
        parts.append(ET.tostring(el, encoding="unicode"))
    return "\n".join(parts) + "\n"


def _is_vmnet_arg(arg: ET.Element) -> bool:
    value = arg.get("value", "")
    return ("=vmnet:" in value or '":"vmnet:' in value or
            value.startswith(("af-xdp,id=vmnet-", "virtio-net-pci,id=vmnet-", '{"driver":"virtio-net-pci","id":"vmnet-')))


def inject(text: str | bytes, ports: list[dict], emulator: str = WRAPPER,
           commandline: bool = True) -> str:
    """Add or replace vmnet's parts of a domain XML; idempotent; the rest is kept.

    commandline=False declares the ports only (the hook still creates them),
    keeping the domain's emulator: for domains that take ports by live attach.
    """
    root = parse_domain(text)
    # metadata: replace our container, keep every other application's
    meta = root.find("metadata")
    if meta is None:
        meta = ET.Element("metadata")
        _insert_after(root, meta, ("description", "title", "uuid", "genid", "name"))
    for old in meta.findall(f"{{{NS}}}ports"):
        meta.remove(old)
    if ports:
        container = ET.SubElement(meta, f"{{{NS}}}ports")
        for p in ports:
            container.append(_port_element(p))
    elif not len(meta):
        root.remove(meta)
    # emulator
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    emu = devices.find("emulator")
    if emu is None:
        emu = ET.Element("emulator")
        devices.insert(0, emu)
    if commandline:
        emu.text = emulator
    # qemu:commandline: drop earlier vmnet -netdev/-device pairs, append ours
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
    for p in ports if commandline else ():
        for value in qemu_args_for(p):
            ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", {"value": value})
    if not len(cmd):
        root.remove(cmd)
    ET.indent(root, "  ")
    out = io.StringIO()
    ET.ElementTree(root).write(out, encoding="unicode", xml_declaration=False)
    return out.getvalue() + "\n"


def _insert_after(root: ET.Element, el: ET.Element, after: tuple[str, ...]):
    index = 0
    for i, child in enumerate(list(root)):
        if child.tag in after:
            index = i + 1
    root.insert(index, el)
