"""KubeVirt's live migration of a VMI with a vmnet NIC, as two nodes see it, without Kubernetes.

Two "nodes", each a netns with a vmnet helper of its own, each with a virt-launcher
pod as tests/test_kubevirt_launcher.py emulates one (CNI ADD makes the pod's port;
libvirtd in session mode as uid 107 in the pod's netns and cgroup, with the consumer
socket and the wrapper directory mounted). The source pod's libvirt migrates the
domain to the target pod's, peer to peer over the target's libvirt socket, the
memory over a unix socket, as virt-handler's migration proxies carry them between
nodes (the proxies themselves need a cluster, and are not here). The target pod's
wrapper takes its own placeholder tap over for QEMU -incoming; after the switch-over
the guest answers on the target node's port, and the source pod's CNI DEL removes
the source's port only. Needs VMNET_TEST_QEMU, as the rest of the VM tier.
"""

from __future__ import annotations

import os
import uuid

import pytest
from helpers import file_shows
from test_kubevirt_launcher import DOMAIN, TAP, Launcher, _guest, runtime_dir  # noqa: F401 (fixture)
from test_vm import GUEST_IP, HOST_IP, _require_qemu, parametrize_qemu

from vmnet import probe, testguest
from vmnet.priv import links, netns

pytestmark = pytest.mark.system
pytest_generate_tests = parametrize_qemu


def test_a_vmi_migrates_from_one_nodes_launcher_pod_to_anothers(runtime_dir, qemu):  # noqa: F811
    from guest_env import Namespaces
    _require_qemu(qemu)
    spaces = Namespaces()
    nodes: dict[str, Launcher] = {}
    node_ns: dict[str, str] = {}
    try:
        for name in ("A", "B"):
            node_ns[name], pod = spaces.new(f"vmnet-n{name.lower()}"), spaces.new(f"vmnet-k{name.lower()}")
            with netns.entered(node_ns[name]):
                nodes[name] = Launcher(runtime_dir, pod, qemu, host_uuid=str(uuid.uuid4()))
        a, b = nodes["A"], nodes["B"]
        assert a.port == b.port and a.result["interfaces"][-1]["mac"] == b.result["interfaces"][-1]["mac"]
        vmlinuz, initrd = _guest(a.helper.dir)
        started = a.start(a.domain_xml(initrd, vmlinuz))
        assert started.returncode == 0, (started.stderr, a.libvirt.qemu_log(DOMAIN))
        assert file_shows(a.serial, testguest.READY, timeout=240)
        with netns.entered(node_ns["A"]):
            links.add_address("vmn-" + a.port, HOST_IP, 24)
            assert probe.ping(GUEST_IP, count=3, timeout=2)["received"] == 3
        # the migration stream: a unix socket the target's QEMU listens on (uid 107 may make it here)
        stream = os.path.join(b.libvirt.dir, "run", "migration.sock")
        out = a.libvirt.virsh("migrate", "--live", "--p2p", DOMAIN,
                              f"qemu+unix:///session?socket={b.libvirt.socket}", "--migrateuri",
                              f"unix://{stream}", timeout=300)
        assert out.returncode == 0, (out.stderr, b.libvirt.log(), b.libvirt.qemu_log(DOMAIN))
        assert "running" in b.libvirt.virsh("domstate", DOMAIN).stdout
        # the target pod's wrapper took the target pod's own tap over, for QEMU -incoming
        # (the domain's qemu:env came from the source: both wrappers log to the source pod's file)
        take = next(e for e in a.events() if e["event"] == "takeover" and "-incoming" in e["argv"])
        assert take["taps"][0]["port"] == b.port and take["taps"][0]["tap"] == TAP
        assert b.holder() is not None and b.holder()["pid"] != (a.holder() or {}).get("pid")
        with netns.entered(node_ns["B"]):
            links.add_address("vmn-" + b.port, HOST_IP, 24)
            assert probe.ping(GUEST_IP, count=3, timeout=2)["received"] == 3
        # the source pod goes: its CNI DEL removes the source node's port, the target's serves on
        rc, res, err = a.cni("DEL")
        assert rc == 0, (res, err)
        assert a.helper.vmnet("port", "show", a.port).returncode == 3
        with netns.entered(node_ns["B"]):
            assert probe.ping(GUEST_IP, count=3, timeout=2)["received"] == 3
    finally:
        for name, node in nodes.items():
            with netns.entered(node_ns[name]):
                node.close()
        spaces.close()
