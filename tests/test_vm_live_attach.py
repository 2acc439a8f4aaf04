"""Live attach as docs/libvirt.md tells it, into a running domain with the stock emulator.

The domain is libvirt-xml/vm-live-attach.xml's shape: its port is declared in
its metadata, so the hook makes it at start; `vmnet libvirt attach DOMAIN
PORT` then plugs that very port into the running QEMU (getfd, netdev_add
af-xdp, device_add), the guest's hot-plugged NIC answers ping, traffic goes
on across a libvirtd restart (`reconnect`), detach unplugs it and destroy
leaves nothing. A domain without metadata gets a port made for it. Each case
runs on machine pc (the NIC goes on the root bus) and on q35 (into a free
pcie-root-port: the domain declares four, libvirt fills two with its USB
controller and balloon).

QEMU must lock 32 MiB of UMEM per queue and this machine's root cannot raise
a memlock limit, so libvirt here runs QEMU as root with its capabilities
(clear_emulator_capabilities = 0); the helper plans memlock from the running
QEMU's own capabilities (it holds CAP_IPC_LOCK: nothing to raise). Needs
VMNET_TEST_QEMU (each QEMU is attached into in turn).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from helpers import file_shows
from test_vm import GUEST_IP, HOST_IP, _require_qemu
from test_vm import pytest_generate_tests  # noqa: F401  (the qemu parameter)
from test_vm_ipc_lock import ROOT_QEMU_CONF

from vmnet import probe, testguest
from vmnet.libvirt import domain_xml as lx
from vmnet.priv import links

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def libvirt_root():
    from libvirt_env import Libvirt, missing
    reason = missing()
    if reason:
        pytest.skip(reason)
    env = Libvirt(qemu_conf=ROOT_QEMU_CONF, helper_config='libvirt_qemu_user = "root"\n')
    try:
        yield env.start()
    finally:
        env.stop()


def _vmnet(env, *args):
    return subprocess.run([sys.executable, "-I", "-m", "vmnet", *args], env=env.helper.env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


MACHINES = {"pc": "", "q35": "<controller type='pci' model='pcie-root'/>"
                            + "<controller type='pci' model='pcie-root-port'/>" * 4}


@pytest.mark.parametrize("machine", list(MACHINES))
@pytest.mark.parametrize("declared", [True, False], ids=["port-in-metadata", "no-metadata"])
def test_attach_plugs_a_port_into_a_running_domain_across_a_libvirtd_restart(libvirt_root, qemu, declared, machine):
    vmlinuz, moddir = _require_qemu(qemu)
    env = libvirt_root
    name, pname = "vmnet-t" + uuid.uuid4().hex[:6], "la" + uuid.uuid4().hex[:6]
    initrd = testguest.build_initramfs(os.path.join(env.helper.dir, name + ".cpio"), moddir, GUEST_IP,
                                       wait_for_nic=True)
    os.chmod(initrd, 0o644)
    serial = os.path.join(env.helper.dir, name + ".serial")
    firmware = "".join(f'<qemu:arg value="{a}"/>' for a in testguest.firmware_args())
    xml = f"""<domain type="qemu" xmlns:qemu="{lx.QEMU_NS}"><name>{name}</name>
      <memory unit="MiB">256</memory><vcpu>1</vcpu>
      <os><type arch="x86_64" machine="{machine}">hvm</type><kernel>{vmlinuz}</kernel><initrd>{initrd}</initrd>
      <cmdline>console=ttyS0 panic=-1 quiet</cmdline></os>
      <features><acpi/></features>
      <devices><emulator>{qemu}</emulator>{MACHINES[machine]}<serial type="file"><source path="{serial}"/></serial></devices>
      <qemu:commandline>{firmware}</qemu:commandline>
    </domain>"""
    if declared:        # the stock emulator stays: the port is declared only, as in vm-live-attach.xml
        xml = lx.inject(xml, [lx.port_option(pname)], commandline=False)
    env.define(name, xml)
    try:
        out = env.virsh("start", name)
        assert out.returncode == 0, out.stderr
        assert file_shows(serial, testguest.WAITING), "the guest did not boot"
        if declared:
            made = env.helper.vmnet_json("port", "show", pname)
            assert made["owner"] == "uuid:" + env.virsh("domuuid", name).stdout.strip()
            assert made["holder"] is None                    # made by the hook, not handed out yet
        attached = _vmnet(env, "--json", "libvirt", "attach", name, pname)
        assert attached.returncode == 0, attached.stderr
        with open(f"/run/libvirt/qemu/{name}.pid") as f:
            qemu_pid = int(f.read())
        shown = env.helper.vmnet_json("port", "show", pname)
        assert shown["holder"]["pid"] == qemu_pid           # QEMU holds them, not the CLI
        links.add_address("vmn-" + pname, HOST_IP, 24)
        assert file_shows(serial, testguest.READY), open(serial, errors="replace").read()[-2000:]
        assert probe.ping(GUEST_IP, count=5, timeout=2)["received"] == 5
        env.restart_libvirtd()                               # the hook gets reconnect; QEMU runs on
        assert probe.ping(GUEST_IP, count=5, timeout=2)["received"] == 5
        detached = _vmnet(env, "libvirt", "detach", name, pname)
        assert detached.returncode == 0, detached.stderr
        assert detached.stdout.startswith("detached"), detached.stderr     # the guest let the NIC go
        peripherals = env.virsh("qemu-monitor-command", name,
                                '{"execute":"qom-list","arguments":{"path":"/machine/peripheral"}}').stdout
        assert f'"vmnet-{pname}-dev"' not in peripherals and '"vmnet-' not in peripherals
        assert env.helper.vmnet("port", "show", pname).returncode == 3
    finally:
        env.virsh("destroy", name)
        env.virsh("undefine", name)
    assert env.helper.vmnet("port", "show", pname).returncode == 3
