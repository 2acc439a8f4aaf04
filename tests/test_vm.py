"""A real guest behind a vmnet port, with a QEMU that has af-xdp (VMNET_TEST_QEMU).

Debian's QEMU is built without af-xdp, so these run only where VMNET_TEST_QEMU
names a QEMU that has it; otherwise they skip, saying so.
"""

import os
import subprocess
import sys
import time

import pytest
from test_handoff import in_netns, stop

from vmnet import probe, testguest
from vmnet.caps import has_capability
from vmnet.priv import links

pytestmark = pytest.mark.system

QEMU = os.environ.get("VMNET_TEST_QEMU")
HOST_IP, GUEST_IP = "198.18.0.1", "198.18.0.2"


def _require_qemu():
    if not QEMU:
        pytest.skip("VMNET_TEST_QEMU is not set: no QEMU with af-xdp to boot a guest with "
                    "(Debian's QEMU is built without af-xdp)")
    help_text = subprocess.run([QEMU, "-netdev", "help"], capture_output=True, text=True).stdout
    if "af-xdp" not in help_text:
        pytest.fail(f"VMNET_TEST_QEMU={QEMU} has no af-xdp netdev")
    kernel = testguest.find_kernel()
    if not kernel:
        pytest.skip("no Debian kernel in /boot to boot the test guest (apt-get install linux-image-amd64)")
    return kernel


def _wait_for(path, marker, proc, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"QEMU exited with {proc.returncode}: {proc.stderr.read()}")
        with open(path, errors="replace") as f:
            if marker in f.read():
                return
        time.sleep(0.5)
    raise AssertionError(f"guest did not come up in {timeout} s")


@pytest.mark.parametrize("mode", ["native", "skb"])
def test_guest_behind_an_unprivileged_qemu_answers_ping(helper, consumer_netns, port_name, mode):
    vmlinuz, moddir = _require_qemu()
    helper.vmnet_json("port", "add", port_name, "--mode", mode, "--netns", consumer_netns,
                      "--consumer-user", "nobody")
    links.add_address("vmn-" + port_name, HOST_IP, 24)
    initrd = testguest.build_initramfs(os.path.join(helper.dir, "initrd.cpio"), moddir, GUEST_IP)
    serial = os.path.join(helper.dir, "serial.log")
    open(serial, "w").close()
    os.chown(serial, 65534, 65534)
    os.chmod(initrd, 0o644)
    proc = subprocess.Popen(
        [sys.executable, "-I", "-m", "vmnet", "exec", "--user", "nobody", "--allow-ipc-lock",
         "--port", port_name, "--", QEMU]
        + testguest.qemu_boot_args(vmlinuz, initrd, serial),
        env=helper.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=in_netns(consumer_netns), cwd="/")
    try:
        _wait_for(serial, testguest.READY, proc)
        result = probe.ping(GUEST_IP, count=5, timeout=2)
        assert result["received"] == 5, result
        status = helper.vmnet_json("port", "show", port_name)
        assert status["mode"] == mode
    finally:
        stop(proc)


def test_libvirt_domain_boots_and_answers_ping(libvirt_env):
    vmlinuz, moddir = _require_qemu()
    if not has_capability("sys_resource"):
        pytest.skip("this machine's root lacks CAP_SYS_RESOURCE, so QEMU under libvirt (no "
                    "capabilities, 8 MiB memlock) cannot lock its 32 MiB UMEM; "
                    "test_vm_ipc_lock boots the same domain with QEMU keeping CAP_IPC_LOCK")
    qemu_caps = _boot_under_libvirt(libvirt_env, vmlinuz, moddir)
    assert qemu_caps["uid"] == int(subprocess.check_output(["id", "-u", "libvirt-qemu"]))
    assert qemu_caps["effective"] == []


def _boot_under_libvirt(env, vmlinuz, moddir) -> dict:
    """Define and start a domain behind one port through the hook and the wrapper; ping it.

    Returns the running QEMU's credentials (vmnet.caps.process_credentials)."""
    import uuid
    from libvirt_env import QEMU as DEBIAN_QEMU
    from vmnet.libvirt import domain_xml as lx
    from vmnet.caps import process_credentials
    d = env.helper.dir
    wrapper = os.path.join(d, "afxdp-wrapper")
    with open(env.wrapper) as f:
        text = f.read().replace(f"VMNET_QEMU={DEBIAN_QEMU}", f"VMNET_QEMU={QEMU}")
    with open(wrapper, "w") as f:
        f.write(text)
    os.chmod(wrapper, 0o755)
    name, pname = "vmnet-t" + uuid.uuid4().hex[:6], "g" + uuid.uuid4().hex[:6]
    initrd = testguest.build_initramfs(os.path.join(d, "guest.cpio"), moddir, GUEST_IP)
    os.chmod(initrd, 0o644)
    serial = os.path.join(d, name + ".serial")
    firmware = "".join(f'<qemu:arg value="{a}"/>' for a in testguest.firmware_args())
    xml = f"""<domain type="qemu" xmlns:qemu="{lx.QEMU_NS}"><name>{name}</name>
      <memory unit="MiB">256</memory><vcpu>1</vcpu>
      <os><type arch="x86_64" machine="pc">hvm</type><kernel>{vmlinuz}</kernel><initrd>{initrd}</initrd>
      <cmdline>console=ttyS0 panic=-1 quiet</cmdline></os>
      <devices><emulator>{wrapper}</emulator><serial type="file"><source path="{serial}"/></serial></devices>
      <qemu:commandline>{firmware}</qemu:commandline>
    </domain>"""
    path = os.path.join(d, name + ".xml")
    with open(path, "w") as f:
        f.write(lx.inject(xml, [lx.port_option(pname)], wrapper))
    assert env.virsh("define", path).returncode == 0
    try:
        out = env.virsh("start", name)
        assert out.returncode == 0, out.stderr
        with open(f"/run/libvirt/qemu/{name}.pid") as f:
            qemu_pid = int(f.read().strip())
        links.add_address("vmn-" + pname, HOST_IP, 24)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if os.path.exists(serial) and testguest.READY in open(serial, errors="replace").read():
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"guest did not come up in 180 s: {open(serial, errors='replace').read()[-2000:]}")
        assert probe.ping(GUEST_IP, count=5, timeout=2)["received"] == 5
        creds = process_credentials(qemu_pid)
        assert env.helper.vmnet_json("port", "show", pname)["owner"] == "uuid:" + env.virsh("domuuid", name).stdout.strip()
        return creds
    finally:
        env.virsh("destroy", name)
        env.virsh("undefine", name)
        assert env.helper.vmnet("port", "show", pname).returncode == 3   # release removed it
