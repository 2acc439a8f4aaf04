"""A real guest on a network: it takes its address by DHCP with busybox udhcpc.

With each QEMU that has af-xdp (VMNET_TEST_QEMU, as tests/test_vm.py; without one everything
here skips, saying so):
- a routed port: vmnet's address server hands the guest its /32, the link-local gateway by
  classless static routes (option 121) and the MTU (option 26); a peer beyond the host
  reaches the guest's address and the guest reaches the peer;
- a libvirt domain with network="default" on a private libvirtd: the guest takes its lease
  from libvirt's own dnsmasq and pings 192.168.122.1;
- a domain made on `default` with libvirt's own NIC, converted by `vmnet libvirt convert`:
  the guest sees the same MAC in the same PCI slot and takes its lease through the port;
  reverted, it boots on libvirt's tap again.
The address server itself, with real clients (udhcpc, the kernel's router discovery, dhcpcd),
runs in the netns tier too (tests/test_networks.py), which needs no QEMU.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import time
import uuid

import pytest
from guest_env import ping
from helpers import SHARED_NETNS
from test_networks import fabric  # noqa: F401 (a fixture)
from test_vm import _boot, _require_qemu, guest_domain_xml, parametrize_qemu
from test_vm_ipc_lock import ROOT_QEMU_CONF

from vmnet import testguest
from vmnet.caps import has_capability

pytestmark = pytest.mark.system
pytest_generate_tests = parametrize_qemu


def lease_of(serial: str, proc=None, timeout: float = 240) -> tuple[dict, int]:
    """What the guest's udhcpc was given, and how many of its 3 pings were answered."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"QEMU exited with {proc.returncode}: {proc.stderr.read()}")
        with open(serial, errors="replace") as f:
            text = f.read()
        pinged = re.search(testguest.PINGED + r" (\d+)", text)
        if pinged:
            lease = re.search(testguest.LEASE + r" (.*)", text)
            assert lease, f"the guest got no lease: {text[-2000:]}"
            fields = dict(re.findall(r"(\w+)=(\S*)", lease.group(1).split(" staticroutes=")[0]))
            fields["staticroutes"] = lease.group(1).split(" staticroutes=")[1].split(" dns=")[0].split()
            return fields, int(pinged.group(1))
        time.sleep(0.5)
    raise AssertionError(f"the guest did not finish in {timeout} s: {text[-2000:]}")


def test_a_routed_guest_takes_its_address_gateway_and_mtu_by_dhcp(helper, consumer_netns, port_name, qemu,
                                                                  fabric):  # noqa: F811
    _require_qemu(qemu)
    helper.vmnet_json("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", "nobody",
                      "--routed", "--address", "10.1.2.3", "--mtu", "1400")
    proc, serial = _boot(helper, consumer_netns, port_name, qemu, address=testguest.DHCP, ping="192.0.2.2")
    try:
        lease, answered = lease_of(serial, proc)
        assert lease["ip"] == "10.1.2.3" and lease["mask"] == "32" and lease["mtu"] == "1400", lease
        assert lease["staticroutes"] == ["169.254.1.1/32", "0.0.0.0", "0.0.0.0/0", "169.254.1.1"]
        assert answered == 3
        assert ping(fabric, "10.1.2.3") == 3
    finally:
        from test_handoff import stop
        stop(proc)


@pytest.fixture
def private_libvirt(qemu):
    from libvirt_env import private_libvirt_on_default, require
    _require_qemu(qemu)
    require()
    # where root cannot raise memlock, QEMU keeps CAP_IPC_LOCK only (tests/test_vm_ipc_lock.py)
    ipc_lock = not has_capability("sys_resource")
    with private_libvirt_on_default(SHARED_NETNS + ('allow_ipc_lock = true\nlibvirt_qemu_user = "root"\n'
                                                    if ipc_lock else ""),
                                    qemu_conf=ROOT_QEMU_CONF if ipc_lock else None) as env:
        yield env


def test_a_guest_on_libvirts_default_network_takes_its_lease_from_libvirts_dnsmasq(private_libvirt, qemu):
    from vmnet.libvirt import domain_xml as lx
    vmlinuz, moddir = _require_qemu(qemu)
    env = private_libvirt
    wrapper = env.wrapper(qemu)
    name, pname = "vmnet-t" + uuid.uuid4().hex[:6], "g" + uuid.uuid4().hex[:6]
    initrd = testguest.build_initramfs(os.path.join(env.dir, "guest.cpio"), moddir, testguest.DHCP,
                                       ping="192.168.122.1")
    os.chmod(initrd, 0o644)
    serial = os.path.join(env.dir, name + ".serial")
    env.define(name, lx.inject(guest_domain_xml(name, vmlinuz, initrd, wrapper, serial),
                               [lx.port_option(f"{pname},network=default")], wrapper))
    try:
        out = env.virsh("start", name)
        assert out.returncode == 0, out.stderr
        record = env.helper.vmnet_json("port", "show", pname)
        assert record["attachment"]["bridge"] == "virbr0" and record["network"]["plugged"]
        deadline = time.monotonic() + 30
        while not os.path.exists(serial) and time.monotonic() < deadline:
            time.sleep(0.2)
        lease, answered = lease_of(serial)
        assert ipaddress.ip_address(lease["ip"]) in ipaddress.ip_network("192.168.122.0/24"), lease
        assert lease["router"] == "192.168.122.1" and answered == 3, lease
        leases = env.virsh("net-dhcp-leases", "default").stdout
        assert record["mac"].lower() in leases.lower() and lease["ip"] in leases, leases
    finally:
        env.virsh("destroy", name)
        env.virsh("undefine", name)
    assert env.helper.vmnet("port", "show", pname).returncode == 3          # release removed it


def _nic_of(serial: str) -> dict:
    """eth0's MAC and PCI address as the guest wrote them on its console."""
    with open(serial, errors="replace") as f:
        found = re.search(testguest.NIC + r" (.*)", f.read())
    assert found, "the guest wrote no NIC line"
    return dict(re.findall(r"(\w+)=(\S*)", found.group(1)))


def test_a_converted_domain_boots_on_its_port_with_the_same_nic_and_reverted_boots_on_a_tap(private_libvirt,
                                                                                               qemu):
    """virt-install's kind of NIC on `default` (MAC and PCI slot given), `vmnet libvirt
    convert`ed: the guest sees the same MAC in the same slot, takes its lease from libvirt's
    dnsmasq through the port; `--revert`ed, it boots on libvirt's tap again."""
    import subprocess
    from helpers import PYTHON
    vmlinuz, moddir = _require_qemu(qemu)
    env = private_libvirt
    wrapper = env.wrapper(qemu)
    name = "vmnet-t" + uuid.uuid4().hex[:6]
    mac = "52:54:00:" + ":".join(uuid.uuid4().hex[i:i + 2] for i in (0, 2, 4))
    initrd = testguest.build_initramfs(os.path.join(env.dir, "guest.cpio"), moddir, testguest.DHCP,
                                       ping="192.168.122.1")
    os.chmod(initrd, 0o644)
    serial = os.path.join(env.dir, name + ".serial")
    nic = (f"<interface type='network'><mac address='{mac}'/><source network='default'/><model type='virtio'/>"
           "<address type='pci' domain='0x0000' bus='0x00' slot='0x07' function='0x0'/></interface>")
    env.define(name, guest_domain_xml(name, vmlinuz, initrd, qemu, serial).replace("</devices>", nic + "</devices>"))

    def vmnet(*args, text):
        out = subprocess.run([PYTHON, "-I", "-m", "vmnet", "libvirt", "convert", "-", *args], input=text,
                             capture_output=True, text=True, env=env.helper.env)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def boot() -> tuple[dict, dict, int]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(serial)
        out = env.virsh("start", name)
        assert out.returncode == 0, out.stderr
        deadline = time.monotonic() + 30
        while not os.path.exists(serial) and time.monotonic() < deadline:
            time.sleep(0.2)
        lease, answered = lease_of(serial)
        return _nic_of(serial), lease, answered

    try:
        env.define(name, vmnet("--emulator", wrapper, text=env.virsh("dumpxml", "--inactive", name).stdout))
        (pname,) = [w[4:] for w in env.virsh("domiflist", name).stdout.split() if w.startswith("vmt-")]
        seen, lease, answered = boot()
        assert seen == {"mac": mac, "pci": "0000:00:07.0"}, seen
        record = env.helper.vmnet_json("port", "show", pname)
        assert record["mac"] == mac and record["attachment"]["bridge"] == "virbr0"
        assert ipaddress.ip_address(lease["ip"]) in ipaddress.ip_network("192.168.122.0/24") and answered == 3
        tap = f"vmt-{pname}"
        stats = dict(re.findall(r"(\w+) (\d+)", env.virsh("domifstat", name, tap).stdout))
        assert stats["rx_packets"] == stats["tx_packets"] == "0", stats     # the placeholder's, not the port's

        def answers() -> bool:
            return subprocess.run(["ip", "netns", "exec", env.netns, "ping", "-n", "-q", "-c", "2", "-W", "1",
                                   lease["ip"]], capture_output=True).returncode == 0
        assert answers()
        assert env.virsh("domif-setlink", name, tap, "down").returncode == 0          # libvirt's set_link on
        assert not answers()                                                         # the NIC reaches the port
        assert env.virsh("domif-setlink", name, tap, "up").returncode == 0
        assert answers()
        env.virsh("destroy", name)
        assert env.helper.vmnet("port", "show", pname).returncode == 3          # release removed it

        env.define(name, vmnet("--revert", text=env.virsh("dumpxml", "--inactive", name).stdout))
        seen, lease, answered = boot()
        assert seen == {"mac": mac, "pci": "0000:00:07.0"}, seen
        listed = env.virsh("domiflist", name).stdout
        assert "network" in listed and "vmt-" not in listed, listed
        assert ipaddress.ip_address(lease["ip"]) in ipaddress.ip_network("192.168.122.0/24") and answered == 3
        assert env.helper.vmnet_json("port", "list")["ports"] == []
    finally:
        env.virsh("destroy", name)
        env.virsh("undefine", name)
