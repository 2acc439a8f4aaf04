"""The domain XML contract: golden files for inject and render (vmnet.libvirt.domain_xml), and
reading the metadata back (vmnet.domain_metadata)."""

import os
import pathlib

import pytest

from vmnet import domain_metadata as dm
from vmnet.libvirt import domain_xml as lx
from vmnet.errors import InvalidInput

pytestmark = pytest.mark.unit

GOLDEN = pathlib.Path(__file__).parent / "golden"
EXAMPLES = pathlib.Path(__file__).parent.parent / "libvirt-xml"
CASES = {
    "q35-virt-install": ["web1,queues=2,consumer-user=libvirt-qemu"],
    "with-commandline": ["db1", "db2,queues=4,mode=skb,mac=02:00:00:00:0d:02"],
    "already-injected": ["new1,queues=2"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_inject_matches_the_golden_file(case):
    """Regenerate with VMNET_UPDATE_GOLDEN=1 after a deliberate change, and review the diff."""
    src = (GOLDEN / f"{case}.in.xml").read_text()
    out = lx.inject(src, [lx.port_option(p) for p in CASES[case]])
    expected = GOLDEN / f"{case}.out.xml"
    if os.environ.get("VMNET_UPDATE_GOLDEN"):
        expected.write_text(out)
    assert out == expected.read_text()


@pytest.mark.parametrize("case", sorted(CASES))
def test_inject_is_idempotent_and_round_trips_the_ports(case):
    ports = [lx.port_option(p) for p in CASES[case]]
    once = lx.inject((GOLDEN / f"{case}.in.xml").read_text(), ports)
    assert lx.inject(once, ports) == once
    parsed = dm.parse_ports(dm.parse_domain(once))
    assert [p["name"] for p in parsed] == [p["name"] for p in ports]


def test_inject_keeps_other_metadata_comments_and_foreign_arguments():
    out = lx.inject((GOLDEN / "already-injected.in.xml").read_text(), [lx.port_option("new1")])
    assert "team-a" in out and "timestamp=on" in out and "-msg" in out
    assert "old1" not in out
    out = lx.inject((GOLDEN / "with-commandline.in.xml").read_text(), [lx.port_option("db1")])
    assert "the operator's comment stays" in out and "name=opt/app/config,string=hello" in out


def test_inject_with_no_ports_removes_vmnets_arguments():
    out = lx.inject((GOLDEN / "already-injected.in.xml").read_text(), [])
    assert "vmnet:" not in out and "timestamp=on" in out


def test_declare_only_keeps_the_emulator_and_adds_no_arguments():
    """For live attach: ports in the metadata, the domain's own emulator, no -netdev of ours."""
    src = (GOLDEN / "with-commandline.in.xml").read_text()
    emulator = dm.parse_domain(src).find("devices/emulator").text
    out = lx.inject(src, [lx.port_option("db1")], commandline=False)
    root = dm.parse_domain(out)
    assert root.find("devices/emulator").text == emulator
    assert [p["name"] for p in dm.parse_ports(root)] == ["db1"]
    assert "sock-fds=vmnet:" not in out and "name=opt/app/config,string=hello" in out
    # and it takes out what an earlier full inject put in
    for form, mark in (("commandline", "sock-fds=vmnet:db1"), ("interface", 'dev="vmt-db1"')):
        full = lx.inject(src, [lx.port_option("db1")], form=form)
        assert mark in full
        declared = lx.inject(full, [lx.port_option("db1")], commandline=False)
        assert "sock-fds=vmnet:" not in declared and "vmt-db1" not in declared


def test_render_prints_metadata_emulator_and_an_interface():
    out = lx.render([lx.port_option("web1,queues=2")])
    mac = dm.parse_domain(f"<domain>{out}</domain>").find("interface/mac").get("address")
    assert f'<vmnet:port name="web1" queues="2" mac="{mac}" />' in out
    assert "<emulator>/usr/local/bin/vmnet-qemu-wrapper</emulator>" in out
    assert '<target dev="vmt-web1" managed="no" />' in out and '<driver queues="2" />' in out
    old = lx.render([lx.port_option("web1,queues=2")], commandline=True)
    assert "sock-fds=vmnet:web1" in old and "&quot;mq&quot;:true,&quot;vectors&quot;:6" in old


def test_inject_keeps_the_interfaces_address_alias_and_model_and_follows_its_mac():
    """An interface of the port already in the domain (libvirt gave it a PCI address and an
    alias at define) is rewritten in place; a new port name with the same interface MAC
    keeps the guest's NIC."""
    src = (GOLDEN / "q35-virt-install.in.xml").read_text()
    once = dm.parse_domain(lx.inject(src, [lx.port_option("web1")]))
    iface = next(i for i in once.findall("devices/interface") if i.get("type") == "ethernet")
    ET = __import__("xml.etree.ElementTree").etree.ElementTree
    ET.SubElement(iface, "address", {"type": "pci", "domain": "0x0000", "bus": "0x07", "slot": "0x00",
                                    "function": "0x0"})
    ET.SubElement(iface, "alias", {"name": "ua-fast"})
    iface.find("model").set("type", "e1000e")
    again = dm.parse_domain(lx.inject(ET.tostring(once), [lx.port_option("web1,queues=2")]))
    ifaces = [i for i in again.findall("devices/interface") if i.get("type") == "ethernet"]
    assert len(ifaces) == 1
    assert ifaces[0].find("address").get("bus") == "0x07" and ifaces[0].find("alias").get("name") == "ua-fast"
    assert ifaces[0].find("model").get("type") == "e1000e" and ifaces[0].find("driver").get("queues") == "2"
    assert ifaces[0].find("mac").get("address") == iface.find("mac").get("address")


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.xml")))
def test_shipped_examples_parse_and_declare_valid_ports(example):
    root = dm.parse_domain((EXAMPLES / example).read_bytes())
    ports = dm.parse_ports(root)
    assert ports, "every example declares at least one port"
    assert dm.domain_identity(root)[0]


@pytest.mark.parametrize("xml, message", [
    ("<domain", "not well-formed"),
    ("<network/>", "root element is <network>"),
    ('<domain><metadata><vmnet:ports xmlns:vmnet="urn:vmnet:domain:1"><vmnet:port queues="2"/>'
     "</vmnet:ports></metadata></domain>", "no name"),
    ('<domain><metadata><vmnet:ports xmlns:vmnet="urn:vmnet:domain:1"><vmnet:port name="a" queues="x"/>'
     "</vmnet:ports></metadata></domain>", "not a number"),
    ('<domain><metadata><vmnet:ports xmlns:vmnet="urn:vmnet:domain:1"><vmnet:port name="a" colour="red"/>'
     "</vmnet:ports></metadata></domain>", "unknown attribute"),
    ('<domain><metadata><vmnet:ports xmlns:vmnet="urn:vmnet:domain:1"><vmnet:port name="a"/>'
     '<vmnet:port name="a"/></vmnet:ports></metadata></domain>', "declared twice"),
    ('<domain><metadata><vmnet:ports xmlns:vmnet="urn:vmnet:domain:1"><vmnet:port name="a" netns="../x"/>'
     "</vmnet:ports></metadata></domain>", "netns reference"),
])
def test_bad_domain_xml_or_metadata_is_refused_with_a_clear_message(xml, message):
    with pytest.raises(InvalidInput) as exc:
        dm.parse_ports(dm.parse_domain(xml))
    assert message in str(exc.value)
