"""What a domain XML tells vmnet: the domain's name and uuid, and the ports it declares.

Pure (xml.etree only). A domain declares its ports in <metadata> under
vmnet's namespace, one <vmnet:port> each, its attributes the port's
settings and where it is plugged:

    <metadata>
      <vmnet:ports xmlns:vmnet="urn:vmnet:domain:1">
        <vmnet:port name="web1" queues="2" mode="auto" consumer-user="libvirt-qemu"/>
      </vmnet:ports>
    </metadata>

This is the reading half of the domain XML contract, a core module because
the helper reads it (vmnet.domain, for its domain-prepare, -release and
-check verbs) and must not import its callers; the libvirt integration
writes the same metadata, the emulator and the QEMU arguments
(vmnet.libvirt.domain_xml) and the KubeVirt sidecar edits a domain with
parse_domain.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET

from .errors import InvalidInput

# vmnet.model and vmnet.network are imported where needed: a caller that only
# parses a domain (the KubeVirt sidecar) need not load them.

NS = "urn:vmnet:domain:1"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("vmnet", NS)
ET.register_namespace("qemu", QEMU_NS)

# metadata attribute -> PortSpec field
ATTRS = {"name": "name", "queues": "queues", "start-queue": "start_queue", "backend": "backend",
         "mode": "mode", "netns": "netns", "mac": "mac", "mtu": "mtu"}
INT_ATTRS = ("queues", "start-queue", "mtu")
EXTRA_ATTRS = ("consumer-user",)
# metadata attribute -> where the port is plugged (vmnet.network.attachment_from_options)
ATTACH_ATTRS = {"bridge": "bridge", "ovs-bridge": "ovs", "network": "network", "routed": "routed",
                "vlan": "vlan", "trunk": "trunk", "address": "addresses", "gateway": "gateways",
                "route": "routes", "dns": "dns", "search": "search", "hostname": "hostname",
                "iface-id": "iface_id", "vm-uuid": "vm_uuid", "dhcp": "dhcp", "spoofcheck": "spoofcheck"}
BOOL_ATTRS = ("routed", "dhcp", "spoofcheck")


def parse_domain(text: str | bytes) -> ET.Element:
    """A domain XML's root element; comments and the document's namespace prefixes are kept
    for whoever writes it back."""
    data = text.encode() if isinstance(text, str) else text
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True, insert_pis=True))
    try:
        # keep the document's own prefixes when it is written back (ET would say ns0:)
        for _, (prefix, uri) in ET.iterparse(io.BytesIO(data), events=("start-ns",)):
            if prefix and not re.fullmatch(r"ns[0-9]+", prefix) and uri not in (NS, QEMU_NS):
                ET.register_namespace(prefix, uri)
        parser.feed(data)
        root = parser.close()
    except ET.ParseError as exc:
        raise InvalidInput(f"the domain XML is not well-formed ({exc})",
                           fix="check the XML with 'virt-xml-validate'") from None
    if root.tag != "domain":
        raise InvalidInput(f"the XML's root element is <{root.tag}>, not <domain>")
    return root


def port_from_element(el: ET.Element, validate: bool = True) -> dict:
    """One <vmnet:port> as port-create arguments (+ consumer_user).

    validate applies every rule of a port here; without it the helper applies
    the same rules when the port is created (the hook's fast path).
    """
    unknown = set(el.attrib) - set(ATTRS) - set(EXTRA_ATTRS) - set(ATTACH_ATTRS)
    if unknown:
        raise InvalidInput(f"<vmnet:port> has unknown attribute(s) {', '.join(sorted(unknown))}",
                           fix=f"known attributes: {', '.join(list(ATTRS) + list(EXTRA_ATTRS) + list(ATTACH_ATTRS))}")
    args: dict = {}
    for attr, field in ATTRS.items():
        if attr not in el.attrib:
            continue
        value = el.attrib[attr]
        if attr in INT_ATTRS:
            if not value.isascii() or not value.isdigit():
                raise InvalidInput(f"<vmnet:port {attr}={value!r}> is not a number")
            value = int(value)
        args[field] = value
    if "name" not in args:
        raise InvalidInput("<vmnet:port> has no name attribute", fix='add name="..." (at most 11 characters)')
    attachment = attachment_of(el)
    if attachment is not None:
        args["attachment"] = attachment
    if validate:
        from .model import PortSpec, validate_netns
        PortSpec(**args)        # every rule of a port, before anything is created
        if args.get("netns"):
            args["netns"] = validate_netns(args["netns"])
    if "consumer-user" in el.attrib:
        args["consumer_user"] = el.attrib["consumer-user"]
    return args


def attachment_of(el: ET.Element) -> dict | None:
    """The attachment a <vmnet:port>'s attributes describe (None: none is declared)."""
    given = {field: el.attrib[attr] for attr, field in ATTACH_ATTRS.items() if attr in el.attrib}
    if not given:
        return None
    for attr in BOOL_ATTRS:
        field = ATTACH_ATTRS[attr]
        if field in given:
            value = given[field].lower()
            if value not in ("yes", "no", "true", "false", "on", "off"):
                raise InvalidInput(f'<vmnet:port {attr}="{given[field]}"> is not yes or no')
            given[field] = value in ("yes", "true", "on")
    if "vlan" in given:
        if not given["vlan"].isascii() or not given["vlan"].isdigit():
            raise InvalidInput(f'<vmnet:port vlan="{given["vlan"]}"> is not a number')
        given["vlan"] = int(given["vlan"])
    gateways = given.pop("gateways", "")
    from .network import _split, attachment_from_options
    gw = _split(gateways)
    gw4, gw6 = [g for g in gw if ":" not in g], [g for g in gw if ":" in g]
    if len(gw4) > 1 or len(gw6) > 1:
        raise InvalidInput(f'<vmnet:port gateway="{gateways}"> names more than one gateway per IP version')
    att = attachment_from_options(gateway4=gw4[0] if gw4 else None, gateway6=gw6[0] if gw6 else None, **given)
    return att.to_dict()


def parse_ports(domain: ET.Element, validate: bool = True) -> list[dict]:
    """Every port the domain's vmnet metadata declares, as port_from_element gives it."""
    ports = []
    for container in domain.findall(f"metadata/{{{NS}}}ports"):
        for el in container:
            if el.tag != f"{{{NS}}}port":
                raise InvalidInput(f"unexpected element {el.tag} in <vmnet:ports>")
            ports.append(port_from_element(el, validate))
    names = [p["name"] for p in ports]
    if len(set(names)) != len(names):
        raise InvalidInput(f"a port is declared twice in the domain's vmnet metadata: {names}")
    return ports


def domain_identity(root: ET.Element) -> tuple[str, str]:
    """(name, uuid) of a domain; uuid is "" when it has none."""
    name = (root.findtext("name") or "").strip()
    uuid = (root.findtext("uuid") or "").strip()
    return name, uuid
