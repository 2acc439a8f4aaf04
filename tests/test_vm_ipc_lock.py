"""A libvirt domain booting behind a vmnet port where root cannot raise memlock.

Here libvirt runs QEMU as root and leaves it its capabilities; the vmnet
wrapper (the domain's <emulator>) drops every one but CAP_IPC_LOCK
(allow_ipc_lock), which lets QEMU lock its UMEM with no memlock limit to
raise. A module of its own: it needs its own libvirtd (a private qemu.conf),
and the other libvirt tests share one per module. Needs VMNET_TEST_QEMU, a
QEMU with af-xdp, like the rest of test_vm.
"""

import pytest
from test_vm import _boot_under_libvirt, _require_qemu

pytestmark = pytest.mark.system

# libvirt runs QEMU as root and leaves it its capabilities; the wrapper then drops
# every one but CAP_IPC_LOCK (allow_ipc_lock), as `vmnet exec --allow-ipc-lock` does
ROOT_QEMU_CONF = 'user = "root"\ngroup = "root"\nclear_emulator_capabilities = 0\n'


@pytest.fixture
def libvirt_ipc_lock():
    """libvirtd whose QEMU keeps CAP_IPC_LOCK only: for machines whose root cannot raise memlock."""
    from libvirt_env import Libvirt, missing
    reason = missing()
    if reason:
        pytest.skip(reason)
    env = Libvirt(qemu_conf=ROOT_QEMU_CONF,
                  helper_config='allow_ipc_lock = true\nlibvirt_qemu_user = "root"\n')
    try:
        yield env.start()
    finally:
        env.stop()



def test_libvirt_domain_boots_with_qemu_keeping_only_ipc_lock(libvirt_ipc_lock):
    vmlinuz, moddir = _require_qemu()
    qemu_caps = _boot_under_libvirt(libvirt_ipc_lock, vmlinuz, moddir)
    # libvirt handed QEMU (through the wrapper) every capability root has; QEMU kept one
    assert qemu_caps["effective"] == ["ipc_lock"] and qemu_caps["permitted"] == ["ipc_lock"]
    assert qemu_caps["bounding"] == [] and qemu_caps["no_new_privs"]
