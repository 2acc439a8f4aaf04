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
        from .fields import validate_netns
        from .model import PortSpec
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


TAP_PREFIX = "vmt-"


def tap_name(port: str) -> str:
    """The placeholder tap a port's <interface type='ethernet'> names (15 bytes at most)."""
    return TAP_PREFIX + port


def interface_mac(iface: ET.Element) -> str | None:
    mac = iface.find("mac")
    value = mac.get("address") if mac is not None else None
    return value.lower() if value else None


def describe_interface(iface: ET.Element) -> str:
    """How an error names an interface: its type, MAC, alias and target."""
    parts = [f"type='{iface.get('type')}'"]
    for what, el, attr in (("mac", iface.find("mac"), "address"), ("alias", iface.find("alias"), "name"),
                           ("target", iface.find("target"), "dev")):
        if el is not None and el.get(attr):
            parts.append(f"{what} {el.get(attr)}")
    return "<interface " + ", ".join(parts) + ">"


def bind_interfaces(domain: ET.Element, ports: list[dict]) -> list[dict]:
    """The ports with what their libvirt interfaces say: a port whose MAC an
    <interface type='ethernet'> carries is that interface's, and gets its target tap as
    placeholder_tap (made with the port, opened by libvirt, taken over by the wrapper), its
    queues and MTU checked against the interface's. A port no interface carries is one of
    the <qemu:commandline> form, or one for live attach: unchanged.

    An interface that names a port's tap but not its MAC is an error (libvirt would fail to
    open a tap that does not exist, saying nothing of why)."""
    from .fields import default_mac
    ifaces = domain.findall("devices/interface")
    out = []
    for port in ports:
        mac = (port.get("mac") or default_mac(port["name"])).lower()
        mine = [i for i in ifaces if interface_mac(i) == mac]
        if not mine:
            named = [i for i in ifaces if (t := i.find("target")) is not None
                     and t.get("dev") == tap_name(port["name"])]
            if named:
                raise InvalidInput(f"{describe_interface(named[0])} names port {port['name']}'s tap but "
                                   f"not its MAC {mac}",
                                   fix="give the interface and the port one MAC: run 'vmnet libvirt "
                                       "inject' again, or set mac= in the <vmnet:port>")
            out.append(port)
            continue
        if len(mine) > 1:
            raise InvalidInput(f"two interfaces of the domain carry port {port['name']}'s MAC {mac}",
                               fix="give each interface a MAC of its own")
        iface = mine[0]
        what = describe_interface(iface)
        if iface.get("type") != "ethernet":
            raise InvalidInput(f"{what} has port {port['name']}'s MAC but is not a vmnet interface",
                               fix="make it <interface type='ethernet'> with <target dev='"
                                   f"{tap_name(port['name'])}' managed='no'/> ('vmnet libvirt convert'), "
                                   "or give the port another MAC")
        target = iface.find("target")
        if target is None or not target.get("dev") or target.get("managed") != "no":
            raise InvalidInput(f"{what} of port {port['name']} has no <target dev='...' managed='no'/>",
                               fix=f"add <target dev='{tap_name(port['name'])}' managed='no'/>: vmnet makes "
                                   "that tap with the port, libvirt opens it, the wrapper swaps it")
        driver = iface.find("driver")
        queues = driver.get("queues") if driver is not None else None
        declared = port.get("queues", 1)
        if queues is not None and (not queues.isascii() or not queues.isdigit() or int(queues) != declared) \
                or queues is None and declared != 1:
            raise InvalidInput(f"{what} has {queues or 1} queue(s), port {port['name']} {declared}",
                               fix="give <driver queues='N'/> and the port's queues= one number")
        bound = dict(port, mac=mac, placeholder_tap=target.get("dev"))
        mtu = iface.find("mtu")
        if mtu is not None and mtu.get("size"):
            size = mtu.get("size")
            if not size.isascii() or not size.isdigit():
                raise InvalidInput(f"{what} has <mtu size='{size}'>, not a number")
            if port.get("mtu") not in (None, int(size)):
                raise InvalidInput(f"{what} has MTU {size}, port {port['name']} {port['mtu']}",
                                   fix="give <mtu size='N'/> and the port's mtu= one number, or leave one out")
            bound["mtu"] = int(size)
        out.append(bound)
    return out


def domain_identity(root: ET.Element) -> tuple[str, str]:
    """(name, uuid) of a domain; uuid is "" when it has none."""
    name = (root.findtext("name") or "").strip()
    uuid = (root.findtext("uuid") or "").strip()
    return name, uuid
