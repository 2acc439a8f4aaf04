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
    full = lx.inject(src, [lx.port_option("db1")])
    assert "sock-fds=vmnet:db1" in full
    assert "sock-fds=vmnet:" not in lx.inject(full, [lx.port_option("db1")], commandline=False)


def test_render_prints_metadata_emulator_and_arguments():
    out = lx.render([lx.port_option("web1,queues=2")])
    assert '<vmnet:port name="web1" queues="2" />' in out
    assert "<emulator>/usr/local/bin/vmnet-qemu-wrapper</emulator>" in out
    assert "sock-fds=vmnet:web1" in out and "&quot;mq&quot;:true,&quot;vectors&quot;:6" in out


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
