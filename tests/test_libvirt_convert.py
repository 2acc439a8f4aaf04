"""`vmnet libvirt convert` and `--revert` on domains as virt-install and virt-manager define
them (golden files), and how the helper ties a port to its interface (bind_interfaces)."""

import os
import pathlib
import xml.etree.ElementTree as ET

import pytest

from vmnet import domain, domain_metadata as dm
from vmnet.errors import InvalidInput
from vmnet.libvirt import convert as cv
from vmnet.libvirt import domain_xml as lx

pytestmark = pytest.mark.unit

GOLDEN = pathlib.Path(__file__).parent / "golden"


def _golden(name: str, out: str):
    """Regenerate with VMNET_UPDATE_GOLDEN=1 after a deliberate change, and review the diff."""
    path = GOLDEN / name
    if os.environ.get("VMNET_UPDATE_GOLDEN"):
        path.write_text(out)
    assert out == path.read_text()


def _canonical(text) -> str:
    return lx.serialize(dm.parse_domain(text))


def _ifaces(text):
    return dm.parse_domain(text).findall("devices/interface")


def test_a_q35_domain_on_the_default_network_keeps_its_nic_in_the_same_slot():
    src = (GOLDEN / "convert-q35-defined.in.xml").read_text()
    out, notes = cv.convert(src)
    _golden("convert-q35-defined.out.xml", out)
    assert notes == []
    (iface,) = _ifaces(out)
    assert iface.get("type") == "ethernet"
    assert iface.find("mac").get("address") == "52:54:00:12:34:56"
    assert iface.find("target").attrib == {"dev": "vmt-web-0", "managed": "no"}
    assert iface.find("address").get("bus") == "0x01" and iface.find("alias").get("name") == "ua-net0"
    assert iface.find("source") is None
    (port,) = dm.parse_ports(dm.parse_domain(out))
    assert port["name"] == "web-0" and port["mac"] == "52:54:00:12:34:56"
    assert port["attachment"]["kind"] == "network" and port["attachment"]["network"] == "default"
    root = dm.parse_domain(out)
    assert root.find("devices/emulator").text == lx.WRAPPER
    assert root.find("metadata/{http://libosinfo.org/xmlns/libvirt/domain/1.0}libosinfo") is not None
    assert "eth0 must stay in slot 01:00.0" in out
    # what the helper makes of it at prepare: the port with the interface's tap
    (bound,) = domain.parse(out)[2]
    assert bound["placeholder_tap"] == "vmt-web-0" and bound["mac"] == "52:54:00:12:34:56"


def test_bridges_ovs_vlans_queues_and_mtu_carry_over_and_what_cannot_is_reported():
    src = (GOLDEN / "convert-pc-bridges.in.xml").read_text()
    with pytest.raises(InvalidInput) as exc:
        cv.convert(src)
    assert "type='direct', mac 52:54:00:aa:00:04" in str(exc.value) and "macvtap" in str(exc.value)
    assert "--interface" in exc.value.fix
    out, notes = cv.convert(src, ["52:54:00:aa:00:01", "52:54:00:aa:00:02", "52:54:00:aa:00:03"])
    _golden("convert-pc-bridges.out.xml", out)
    ports = {p["mac"]: p for p in dm.parse_ports(dm.parse_domain(out))}
    trunk = ports["52:54:00:aa:00:01"]
    assert trunk["attachment"]["kind"] == "bridge" and trunk["attachment"]["bridge"] == "br0"
    assert trunk["attachment"]["vlan"] == 10 and trunk["attachment"]["trunk"] == [[20, 20], [30, 30]]
    assert trunk["queues"] == 2 and trunk["mtu"] == 1500
    ovs = ports["52:54:00:aa:00:02"]["attachment"]
    assert ovs["kind"] == "ovs" and ovs["bridge"] == "br-int" and ovs["vlan"] == 42
    assert ovs["iface_id"] == "9d5c4c8e-8a42-4d1b-9a4e-2f7d3b1c6a10"
    assert ports["52:54:00:aa:00:03"]["attachment"]["network"] == "default"
    assert any("<filterref>" in n for n in notes) and any("<bandwidth>" in n for n in notes)
    kinds = {i.find("mac").get("address"): (i.get("type"), i.find("model").get("type")) for i in _ifaces(out)}
    assert kinds == {"52:54:00:aa:00:01": ("ethernet", "virtio"), "52:54:00:aa:00:02": ("ethernet", "e1000"),
                     "52:54:00:aa:00:03": ("ethernet", "virtio"), "52:54:00:aa:00:04": ("direct", "virtio")}
    # the helper ties each port to its interface; the queues and MTU agree
    bound = {p["mac"]: p for p in domain.parse(out)[2]}
    assert {p["placeholder_tap"] for p in bound.values()} == {f"vmt-{p['name']}" for p in bound.values()}


@pytest.mark.parametrize("case,selectors", [("convert-q35-defined", []),
                                            ("convert-pc-bridges", ["52:54:00:aa:00:01", "52:54:00:aa:00:02",
                                                                    "52:54:00:aa:00:03"])])
def test_convert_is_idempotent_and_revert_gives_back_the_domain(case, selectors):
    src = (GOLDEN / f"{case}.in.xml").read_text()
    once, _ = cv.convert(src, selectors)
    assert cv.convert(once, selectors)[0] == once
    assert cv.convert(once)[0] == once if case == "convert-q35-defined" else True
    assert cv.revert(once) == _canonical(src)
    assert cv.revert(cv.revert(once)) == _canonical(src)


def test_revert_of_one_interface_keeps_the_others_converted():
    src = (GOLDEN / "convert-pc-bridges.in.xml").read_text()
    once, _ = cv.convert(src, ["52:54:00:aa:00:01", "52:54:00:aa:00:03"])
    name = next(p["name"] for p in dm.parse_ports(dm.parse_domain(once)) if p["mac"] == "52:54:00:aa:00:03")
    partly = cv.revert(once, [name])
    types = {i.find("mac").get("address"): i.get("type") for i in _ifaces(partly)}
    assert types["52:54:00:aa:00:03"] == "network" and types["52:54:00:aa:00:01"] == "ethernet"
    assert dm.parse_domain(partly).find("devices/emulator").text == lx.WRAPPER
    assert cv.revert(partly) == _canonical(src)
    with pytest.raises(InvalidInput, match="no converted interface"):
        cv.revert(once, ["52:54:00:aa:00:04"])


def test_port_names_can_be_chosen_and_long_domain_names_get_derived_ones():
    src = (GOLDEN / "convert-q35-defined.in.xml").read_text()
    out, _ = cv.convert(src, names={"ua-net0": "front"})
    assert [p["name"] for p in dm.parse_ports(dm.parse_domain(out))] == ["front"]
    long = src.replace("<name>web</name>", "<name>a-very-long-domain-name</name>")
    (port,) = dm.parse_ports(dm.parse_domain(cv.convert(long)[0]))
    assert len(port["name"]) == 11 and port["name"].startswith("v")


@pytest.mark.parametrize("edit,message", [
    (("<source network='default'/>", "<source network='default' portgroup='web'/>"), "port group"),
    (("<source network='default'/>", "<source network='default'/><vlan><tag id='5000'/></vlan>"), "VLAN"),
    (("<source network='default'/>", "<source network='default'/><vlan trunk='yes'>"
      "<tag id='5' nativeMode='tagged'/><tag id='6'/></vlan>"), "nativeMode='tagged'"),
    (("<interface type='network'>", "<interface type='vhostuser'>"), "vhost-user"),
    (("<interface type='network'>", "<interface type='hostdev'>"), "passed through"),
    (("<interface type='network'>", "<interface type='user'>"), "user networking"),
])
def test_what_cannot_be_converted_is_refused_naming_the_interface(edit, message):
    src = (GOLDEN / "convert-q35-defined.in.xml").read_text().replace(*edit)
    with pytest.raises(InvalidInput) as exc:
        cv.convert(src)
    assert message in str(exc.value) and "mac 52:54:00:12:34:56" in str(exc.value)


def test_an_unknown_selector_is_refused():
    with pytest.raises(InvalidInput, match="no interface with MAC or alias 'ua-none'"):
        cv.convert((GOLDEN / "convert-q35-defined.in.xml").read_text(), ["ua-none"])


def _bound(meta: str, iface: str):
    xml = (f"<domain><name>d</name><metadata><vmnet:ports xmlns:vmnet='urn:vmnet:domain:1'>{meta}"
           f"</vmnet:ports></metadata><devices>{iface}</devices></domain>")
    return domain.parse(xml)[2]


@pytest.mark.parametrize("meta,iface,message", [
    ("<vmnet:port name='p1' mac='02:00:00:00:00:01'/>",
     "<interface type='ethernet'><mac address='02:00:00:00:00:02'/><target dev='vmt-p1' managed='no'/></interface>",
     "names port p1's tap but not its MAC 02:00:00:00:00:01"),
    ("<vmnet:port name='p1' mac='02:00:00:00:00:01'/>",
     "<interface type='network'><mac address='02:00:00:00:00:01'/><source network='default'/></interface>",
     "is not a vmnet interface"),
    ("<vmnet:port name='p1' mac='02:00:00:00:00:01'/>",
     "<interface type='ethernet'><mac address='02:00:00:00:00:01'/><target dev='vmt-p1'/></interface>",
     "has no <target dev='...' managed='no'/>"),
    ("<vmnet:port name='p1' mac='02:00:00:00:00:01' queues='2'/>",
     "<interface type='ethernet'><mac address='02:00:00:00:00:01'/><target dev='vmt-p1' managed='no'/></interface>",
     "has 1 queue(s), port p1 2"),
    ("<vmnet:port name='p1' mac='02:00:00:00:00:01' mtu='1400'/>",
     "<interface type='ethernet'><mac address='02:00:00:00:00:01'/><target dev='vmt-p1' managed='no'/>"
     "<mtu size='1500'/></interface>", "has MTU 1500, port p1 1400"),
])
def test_a_port_and_its_interface_that_disagree_refuse_the_start(meta, iface, message):
    with pytest.raises(InvalidInput) as exc:
        _bound(meta, iface)
    assert message in str(exc.value)


def test_release_and_check_need_no_interface():
    """A domain whose interface was edited since its start still releases its ports."""
    xml = ("<domain><name>d</name><uuid>6c0f5a3e-0b8e-4bde-9d0a-2f6f6d3c9a11</uuid><metadata>"
           "<vmnet:ports xmlns:vmnet='urn:vmnet:domain:1'><vmnet:port name='p1' mac='02:00:00:00:00:01'/>"
           "</vmnet:ports></metadata><devices><interface type='network'><mac address='02:00:00:00:00:01'/>"
           "</interface></devices></domain>")
    calls = []
    out = domain.release(lambda verb, **kw: calls.append(verb) or {"owner": "uuid:6c0f5a3e-0b8e-4bde-9d0a-2f6f6d3c9a11"},
                         xml)
    assert out["deleted"] == ["p1"] and calls == ["port-show", "port-delete"]


def test_a_port_of_the_commandline_form_is_not_bound():
    (port,) = _bound("<vmnet:port name='p1'/>", "")
    assert "placeholder_tap" not in port
    ET.fromstring(lx.render([lx.port_option("p1")]).split("\n<emulator>")[0])
