"""A port on a libvirt network, with a real libvirtd: the hook resolves network="default" to
the bridge libvirt runs it on, reading the status libvirt keeps for active networks (never
calling libvirt from the hook), and refuses a stopped or unknown network with the fix.

The libvirtd here is private (tests/libvirt_env.py PrivateLibvirt: its own netns and mount
namespace), so starting its `default` network — virbr0, Debian's dnsmasq-base, firewall
rules — never touches the host. Debian's QEMU has no af-xdp: the domain runs with the stock
emulator and its ports declared in metadata (what live attach uses), so the port exists, on
the network, while the domain runs. A guest taking its lease from libvirt's dnsmasq runs in
the VM tier (tests/test_vm_networks.py)."""

from __future__ import annotations

import uuid

import pytest
from helpers import SHARED_NETNS
from libvirt_env import BASE_DOMAIN, QEMU, missing, private_libvirt_on_default

from vmnet.libvirt import domain_xml as lx
from vmnet.priv import links, netns

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def lv():
    import os
    if os.geteuid() != 0:
        pytest.skip("needs root: starts libvirtd")
    reason = missing()
    if reason:
        pytest.skip(reason)
    with private_libvirt_on_default(SHARED_NETNS) as env:
        yield env


def domain(env, port: str) -> str:
    name = "vmnet-t" + uuid.uuid4().hex[:6]
    return env.define(name, lx.inject(BASE_DOMAIN.format(name=name, qemu=QEMU), [lx.port_option(port)],
                                      QEMU, commandline=False))


def test_a_domains_port_on_network_default_joins_its_bridge(lv):
    pname = "ln" + uuid.uuid4().hex[:6]
    name = domain(lv, f"{pname},network=default")
    try:
        out = lv.virsh("start", name)
        assert out.returncode == 0, out.stderr
        record = lv.helper.vmnet_json("port", "show", pname)
        att = record["attachment"]
        assert att == {"kind": "network", "network": "default", "bridge": "virbr0", "via": "bridge"}
        assert record["mtu"] == 1500 and "libvirt network default" in record["mtu_reason"]
        assert record["network"]["plugged"]
        with netns.entered(lv.netns):
            assert links.get_link("vmn-" + pname).get("IFLA_MASTER") == links.link_state("virbr0")["ifindex"]
        assert "libvirt network default (bridge virbr0)" in lv.helper.vmnet("port", "show", pname).stdout
        assert lv.virsh("destroy", name).returncode == 0
        assert lv.helper.vmnet("port", "show", pname).returncode == 3
    finally:
        lv.virsh("destroy", name)
        lv.virsh("undefine", name)


def test_a_stopped_network_refuses_the_start_with_the_fix(lv):
    pname = "ln" + uuid.uuid4().hex[:6]
    name = domain(lv, f"{pname},network=default")
    try:
        assert lv.virsh("net-destroy", "default").returncode == 0
        out = lv.virsh("start", name)
        assert out.returncode != 0
        assert "libvirt network default is not running" in out.stderr and "virsh net-start default" in out.stderr
        assert lv.helper.vmnet_json("port", "list")["ports"] == []
        with netns.entered(lv.netns):
            assert links.link_state("vmn-" + pname) is None
    finally:
        lv.virsh("net-start", "default")
        lv.virsh("undefine", name)


def test_an_unknown_network_is_refused(lv):
    with netns.entered(lv.netns):
        out = lv.helper.vmnet("port", "add", "ln" + uuid.uuid4().hex[:6], "--consumer-user", "nobody",
                              "--network", "nope")
    assert out.returncode == 3 and "libvirt network nope is not running or does not exist" in out.stderr
    assert "virsh net-list --all" in out.stderr


def test_a_converted_domain_on_network_default_reaches_qemu_as_its_port_and_leaves_nothing(lv):
    """virt-install's kind of NIC, `vmnet libvirt convert`ed: libvirt defines it and lists it
    (domiflist: the placeholder tap, the same MAC); at start the hook makes the port on
    virbr0 and its tap, libvirt opens the tap, and the wrapper replaces exactly that netdev
    with the port's (Debian's QEMU then fails at af-xdp: the guest boots in the VM tier);
    the failed start releases everything."""
    import json
    import os
    import subprocess
    from helpers import PYTHON
    from libvirt_env import write_wrapper
    name = "vmnet-t" + uuid.uuid4().hex[:6]
    mac = "52:54:00:" + ":".join(uuid.uuid4().hex[i:i + 2] for i in (0, 2, 4))
    xml = BASE_DOMAIN.format(name=name, qemu=QEMU).replace(
        "</devices>", f"<interface type='network'><mac address='{mac}'/><source network='default'/>"
                      "<model type='virtio'/></interface></devices>")
    lv.define(name, xml)
    log = os.path.join(lv.dir, "wrapper.log")
    open(log, "w").close()
    os.chmod(log, 0o666)
    os.chmod(lv.dir, 0o755)
    wrapper = write_wrapper(os.path.join(lv.dir, "qemu-wrapper"), lv.helper.config, QEMU, log)
    try:
        dumped = lv.virsh("dumpxml", "--inactive", name).stdout
        converted = subprocess.run([PYTHON, "-I", "-m", "vmnet", "libvirt", "convert", "-", "--emulator", wrapper],
                                   input=dumped, capture_output=True, text=True)
        assert converted.returncode == 0, converted.stderr
        lv.define(name, converted.stdout)
        listed = lv.virsh("domiflist", name).stdout
        (pname,) = [p for p in listed.split() if p.startswith("vmt-")]
        pname = pname[4:]
        assert "ethernet" in listed and mac in listed
        out = lv.virsh("start", name)
        assert out.returncode != 0
        with open(log) as f:
            events = [json.loads(line) for line in f if line.strip()]
        (take,) = [e for e in events if e["event"] == "takeover"]
        assert take["taps"][0]["port"] == pname and take["taps"][0]["tap"] == f"vmt-{pname}"
        (sub,) = [e for e in events if e["event"] == "substituted"]
        assert not [a for a in sub["argv"] if '"type":"tap"' in a]
        (netdev,) = [json.loads(a) for a in sub["argv"] if '"af-xdp"' in a]
        (device,) = [json.loads(a) for a in sub["argv"] if a.startswith('{"driver":"virtio-net-pci"')]
        assert device["netdev"] == netdev["id"] == take["taps"][0]["netdev"] and device["mac"] == mac
        helper_log = lv.helper.read_log()
        assert f"created port {pname} " in helper_log and f"deleted port {pname} " in helper_log
        assert lv.helper.vmnet_json("port", "list")["ports"] == []
        with netns.entered(lv.netns):
            assert links.link_state("vmn-" + pname) is None and links.link_state("vmt-" + pname) is None
        reverted = subprocess.run([PYTHON, "-I", "-m", "vmnet", "libvirt", "convert", "--revert", "-"],
                                  input=lv.virsh("dumpxml", "--inactive", name).stdout,
                                  capture_output=True, text=True)
        assert reverted.returncode == 0, reverted.stderr
        lv.define(name, reverted.stdout)
        back = lv.virsh("dumpxml", "--inactive", name).stdout
        assert "<interface type='network'>" in back and "urn:vmnet" not in back and "vmt-" not in back
        assert f"<emulator>{QEMU}</emulator>" in back and mac in back
    finally:
        lv.virsh("destroy", name)
        lv.virsh("undefine", name)
