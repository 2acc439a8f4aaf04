"""A real guest with a vmnet NIC live-migrated between two libvirt hosts, and back.

Two hosts on one machine (tests/migration_env.py): each its own netns, libvirtd,
host_uuid and vmnet helper, joined by a fabric where a peer pings the VM every
10 ms throughout. `virsh migrate --live --p2p` moves the domain A -> B -> A,
on a bridge port (the guest keeps its address on the fabric's LAN) and on a
routed port (its /32 moves with it: B routes it once the VM runs there, A
withdraws it as soon as the VM stopped there). With each QEMU that has af-xdp
(VMNET_TEST_QEMU, as tests/test_vm.py; without one everything here skips,
saying so). What runs without a guest (the hook sequence, ownership, refusals,
a helper restarted mid-way) is tests/test_migration.py, in CI.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest
from test_vm import _require_qemu, guest_domain_xml, parametrize_qemu

from vmnet import testguest

pytestmark = pytest.mark.system
pytest_generate_tests = parametrize_qemu

BRIDGED_IP = "192.0.2.50"
ROUTED_IP = "10.1.2.3"


@pytest.fixture
def pair(qemu):
    from libvirt_env import require
    from migration_env import Pair
    _require_qemu(qemu)
    require("starts two libvirtds")
    p = Pair(qemu)
    try:
        yield p.start()
    finally:
        p.stop()


def _define(pair, attachment: str) -> tuple[str, str, str, str]:
    from vmnet.libvirt import domain_xml as lx
    vmlinuz, moddir = testguest.find_kernel()
    a = pair.hosts["A"]
    name, pname = "vmnet-t" + uuid.uuid4().hex[:6], "g" + uuid.uuid4().hex[:6]
    if attachment in ("bridge", "libvirt-tap"):
        address, option = BRIDGED_IP, f"{pname},bridge=br0"
        initrd = testguest.build_initramfs(os.path.join(a.dir, "guest.cpio"), moddir, BRIDGED_IP)
    else:
        address, option = ROUTED_IP, f"{pname},routed=yes,address={ROUTED_IP}"
        initrd = testguest.build_initramfs(os.path.join(a.dir, "guest.cpio"), moddir, testguest.DHCP)
    os.chmod(initrd, 0o644)
    serial = os.path.join(a.dir, name + ".serial")
    xml = guest_domain_xml(name, vmlinuz, initrd, pair.emulator, serial)
    if attachment == "libvirt-tap":         # libvirt's own NIC on the same bridge, for comparison
        nic = ("<interface type='bridge'><mac address='52:54:00:6d:69:67'/><source bridge='br0'/>"
               "<model type='virtio'/><driver name='qemu'/></interface>")
        a.define(name, xml.replace("</devices>", nic + "</devices>"))
    else:
        a.define(name, lx.inject(xml, [lx.port_option(option)], pair.emulator))
    return name, pname, address, serial


def _restart_later(host, after: float):
    """SIGKILL the host's helper `after` seconds from now and start it again (in its netns)."""
    import threading
    from vmnet.priv import netns

    def run():
        time.sleep(after)
        host.helper.kill()
        with netns.entered(host.netns):
            host.helper.start()
        t.done = True
    t = threading.Thread(target=run, daemon=True)
    t.done = False
    t.start()
    return t


@pytest.mark.parametrize("attachment", ["bridge", "routed", "libvirt-tap"])
def test_a_guest_migrates_to_b_and_back_answering_throughout(pair, qemu, attachment):
    """libvirt-tap: the same guest on libvirt's own tap NIC on the same bridge (vhost off, as QEMU
    runs unprivileged here): the losses to compare vmnet's with."""
    from guest_env import ping
    from migration_env import Transfer, wait_for
    from vmnet.bench.migration import Pinger
    name, pname, address, serial = _define(pair, attachment)
    a = pair.hosts["A"]
    out = a.virsh("start", name)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: os.path.exists(serial) and testguest.READY in open(serial, errors="replace").read(), 240,
             "the guest on A")
    assert ping(pair.peer, address) == 3
    vmnet = attachment != "libvirt-tap"
    mac = pair.ports("A")[pname]["mac"] if vmnet else None
    losses = []
    for source, target in (("A", "B"), ("B", "A")):
        pinger = Pinger(pair.peer, address)
        flag = os.path.join(a.dir, f"stop-{source}")
        transfer = Transfer(pair.peer, address, testguest.TCP_SINK_PORT, flag)
        transfer.start()
        time.sleep(1)
        started = time.monotonic()
        # A -> B: the source's helper is killed and restarted while the memory is copied
        restart = _restart_later(pair.hosts[source], 0.5) if source == "A" else None
        out = pair.migrate(name, source, target)
        took = time.monotonic() - started
        if restart is not None:
            restart.join(60)
            assert restart.done, "the source's helper did not come back"
        assert out.returncode == 0, out.stderr
        time.sleep(1)
        sent, answered, _ = pinger.stop(time.time())
        transfer.stop()
        # the TCP connection made before the migration carried on across the switch-over, and ended
        # with the sink having read every byte (it closes at EOF)
        assert transfer.result is not None and transfer.result.returncode == 0, transfer.result
        assert int(transfer.result.stdout) > 0
        losses.append((source, target, sent - answered, round(took, 2), int(transfer.result.stdout) >> 20))
        assert pair.state(target, name) == "running" and pair.state(source, name) == "absent"
        if vmnet:
            wait_for(lambda: pname not in pair.ports(source), 30, "the source's release")
            port = pair.ports(target)[pname]
            assert port["mac"] == mac and port["migration"] is None
            assert port["network"]["plugged"], port["network"]
        assert ping(pair.peer, address) == 3
        # the guest answered throughout: what it missed is the switch-over, not the migration
        assert sent - answered < sent // 2, (sent, answered)
    print(f"\n{attachment}: pings lost at 10 ms (source, target, lost, migrate s, MiB sent over TCP across "
          f"the switch-over): {losses}")
    out = a.virsh("destroy", name)
    assert out.returncode == 0, out.stderr
    if vmnet:
        wait_for(lambda: pname not in pair.ports("A"), 30, "the port's release")


def test_a_name_taken_on_b_aborts_the_migration_and_the_vm_runs_on_a_untouched(pair, qemu):
    from guest_env import ping
    name, pname, address, serial = _define(pair, "bridge")
    a, b = pair.hosts["A"], pair.hosts["B"]
    assert a.virsh("start", name).returncode == 0
    from migration_env import wait_for
    wait_for(lambda: os.path.exists(serial) and testguest.READY in open(serial, errors="replace").read(), 240,
             "the guest on A")
    b.helper.vmnet_json("port", "add", pname, "--consumer-user", "nobody", "--owner", "someone-else")
    out = pair.migrate(name, "A", "B")
    assert out.returncode != 0
    assert f"port {pname} of domain {name} exists on this host already" in out.stderr
    assert pair.state("A", name) == "running" and pair.state("B", name) == "absent"
    assert list(pair.ports("B")) == [pname] and pair.ports("B")[pname]["owner"] == "someone-else"
    assert ping(pair.peer, address) == 3
    b.helper.vmnet("port", "del", pname)
    assert a.virsh("destroy", name).returncode == 0


def test_a_destination_that_cannot_lock_the_umem_aborts_the_migration_and_the_vm_runs_on(qemu):
    """B's helper may not leave QEMU CAP_IPC_LOCK and root here cannot raise memlock: B's QEMU
    cannot start; libvirt aborts, releases B's ports, and the VM runs on, on A."""
    from guest_env import ping
    from libvirt_env import require
    from migration_env import Pair, wait_for
    from vmnet.caps import has_capability
    _require_qemu(qemu)
    require("starts two libvirtds")
    if has_capability("sys_resource"):
        pytest.skip("root here may raise any memlock limit: there is no refusal to provoke")
    pair = Pair(qemu, no_ipc_lock_on=("B",))
    try:
        pair.start()
        name, pname, address, serial = _define(pair, "bridge")
        assert pair.hosts["A"].virsh("start", name).returncode == 0
        wait_for(lambda: os.path.exists(serial) and testguest.READY in open(serial, errors="replace").read(), 240,
                 "the guest on A")
        out = pair.migrate(name, "A", "B")
        assert out.returncode != 0
        print(f"\nthe refused migration: {out.stderr.strip()}")
        assert pair.state("A", name) == "running" and pair.state("B", name) == "absent"
        wait_for(lambda: pair.ports("B") == {}, 30, "B's release")
        assert pair.ports("A")[pname]["migration"] is None
        assert ping(pair.peer, address) == 3
        assert pair.hosts["A"].virsh("destroy", name).returncode == 0
    finally:
        pair.stop()
