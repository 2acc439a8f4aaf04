"""netkit-lease end to end: NIC queues leased into a netkit device in the consumer's netns.

Runs where the kernel has netdev queue-create (Linux >= 7.1) and a NIC can
lend queues: netdevsim in the kernel-matrix entry 7.3-netdevsim, where a
skip is a failure (VMNET_REQUIRE_LEASE=1). netdevsim has no AF_XDP
zero-copy, so its ports are receive-only (what a copy-mode lease can do);
VMNET_TEST_LEASE_NIC names a real NIC for the QEMU test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from helpers import HelperProcess, capture, responder_stats
from lease_env import NetdevsimPair, require_netdevsim
from xdp_env import count, counting_program, hook_of, require_dispatcher, xdp_loader
from test_handoff import in_netns, stop, wait_ready

from vmnet.errors import AlreadyExists, InvalidInput, NotFound, NotSupported, VmnetError
from vmnet.model import PortSpec
from vmnet.priv import bpf, links, netdev_genl, netns, ports

pytestmark = pytest.mark.netns

NOBODY = 65534


@pytest.fixture
def nic(test_netns):
    require_netdevsim()
    peer = "vmnet-p" + uuid.uuid4().hex[:8]
    netns.create_named(peer)
    pair = None
    try:
        pair = NetdevsimPair(4, peer)
        yield pair
    finally:
        if pair is not None:
            pair.remove()
        netns.remove_named(peer)


@pytest.fixture
def pod():
    name = "vmnet-q" + uuid.uuid4().hex[:8]
    netns.create_named(name)
    with netns.entered(name):
        links.bring_up("lo")
    try:
        yield name
    finally:
        netns.remove_named(name)


def _frame(mac: str, tag: bytes = b"vmnet-lease") -> bytes:
    return bytes.fromhex(mac.replace(":", "")) + bytes.fromhex("020000000099") + b"\x88\xb5" + tag * 4


def _nothing_leased(nic) -> bool:
    return not any(q["leased"] for q in netdev_genl.rx_queues(nic.nic_ifindex).values())


def _no_xdp(nic) -> bool:
    return not links.link_state(nic.nic)["xdp_prog_id"]


RESPOND = ("af-xdp,id=n0,ifname=vmnet:{p},queues=vmnet:{p},start-queue=vmnet:{p},mode=vmnet:{p},"
           "inhibit=on,sock-fds=vmnet:{p}")


def _exec_responder(helper, pod, port):
    return subprocess.Popen(
        [sys.executable, "-I", "-m", "vmnet", "exec", "--user", "nobody", "--allow-ipc-lock", "--",
         sys.executable, "-I", "-m", "vmnet", "respond", "--no-program-check",
         "--netdev", RESPOND.format(p=port),
         "--device", f"virtio-net-pci,netdev=n0,mac=vmnet:{port},host_mtu=vmnet:{port}", "--ip", "198.18.0.2"],
        env=helper.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=in_netns(pod), cwd="/")


def test_a_leased_port_receives_on_its_nic_queues_and_the_rest_reach_the_host(nic, pod, port_name):
    h = HelperProcess().start()
    proc = None
    try:
        rec = h.vmnet_json("port", "add", port_name, "--backend", "netkit-lease", "--lease-from", nic.nic,
                           "--queues", "2", "--netns", pod, "--receive-only", "--consumer-user", "nobody")
        assert rec["extra"]["nic_queues"] == [1, 2] and rec["bind_queues"] == [1, 2]
        assert rec["extra"]["zero_copy"] is False and rec["xdp"]["ifname"] == nic.nic
        with netns.entered(pod):
            assert links.link_state(rec["consumer_ifname"])["ifindex"] == rec["consumer_ifindex"]
        leased = {q: v["leased"] for q, v in netdev_genl.rx_queues(nic.nic_ifindex).items()}
        assert leased == {0: False, 1: True, 2: True, 3: False}
        proc = _exec_responder(h, pod, port_name)
        ready = wait_ready(proc)
        assert ready["queues"] == [1, 2]
        stop_event, host_saw = threading.Event(), []
        catcher = threading.Thread(target=capture, args=(nic.nic, 0x88B5, stop_event, host_saw))
        catcher.start()
        try:
            frame = _frame(rec["mac"])
            for q in (1, 2, 3):
                nic.send(q, frame + bytes([q]), count=5)
            time.sleep(0.5)
        finally:
            stop_event.set()
            catcher.join()
        by_queue = {s["queue"]: s["rx"] for s in responder_stats(proc)}
        assert by_queue == {1: 5, 2: 5}                         # each leased queue, on its own socket
        assert sum(1 for f in host_saw if f.endswith(bytes([3]))) == 5   # NIC queue 3: the host's
        assert not any(f.endswith(bytes([1])) or f.endswith(bytes([2])) for f in host_saw)
        shown = h.vmnet_json("port", "show", port_name)
        counters = {c["queue"]: c["redirected"] for c in shown["queue_counters"]}
        assert counters == {1: 5, 2: 5}
        assert shown["zero_copy"] is False and shown["nic_queues"] == [1, 2]
        assert shown["steering"]["active"] is False and "RSS" in shown["steering"]["why"]
        assert shown["steering"]["host_table"].startswith("not kept off the leased queues")
        text = h.vmnet("status").stdout
        assert "zero-copy no" in text and "steering: none" in text
    finally:
        if proc is not None:
            stop(proc)
        h.cleanup()
    assert _nothing_leased(nic) and _no_xdp(nic)


def test_a_leased_port_shares_the_nic_with_programs_loaded_before_and_after_it(test_netns, nic, pod, port_name):
    """xdp-loader loads a counting program before vmnet and one after: the leased queues' frames
    reach the VM's sockets (and the program before it), the rest reach the program after it
    and the host; deleting the port leaves both running."""
    require_dispatcher()
    nic_ns = test_netns
    h = HelperProcess().start()
    proc = None
    try:
        xdp_loader(nic_ns, "load", "-m", "native", "--prio", "10", nic.nic, counting_program("count_before"))
        rec = h.vmnet_json("port", "add", port_name, "--backend", "netkit-lease", "--lease-from", nic.nic,
                           "--queues", "2", "--netns", pod, "--receive-only", "--consumer-user", "nobody")
        xdp_loader(nic_ns, "load", "-m", "native", "--prio", "30", nic.nic, counting_program("count_after"))
        assert [c.name for c in hook_of(nic.nic).components] == ["count_before", "vmnet_xsk_v2", "count_after"]
        shown = h.vmnet_json("port", "show", port_name)
        assert shown["xdp_hook"]["vmnet_slot"] == 1 and shown["xdp_hook"]["kind"] == "dispatcher"
        assert [c["name"] for c in shown["xdp_hook"]["components"]] == ["count_before", "vmnet_xsk_v2",
                                                                        "count_after"]
        assert f"XDP hook of {nic.nic}: libxdp dispatcher (native), vmnet in slot 1" in h.vmnet("status").stdout
        proc = _exec_responder(h, pod, port_name)
        wait_ready(proc)
        for q in (1, 2, 3):
            nic.send(q, _frame(rec["mac"]) + bytes([q]), count=4)
        time.sleep(0.5)
        assert {s["queue"]: s["rx"] for s in responder_stats(proc)} == {1: 4, 2: 4}
        assert count(nic_ns, nic.nic, "count_before") == 12      # every frame
        assert count(nic_ns, nic.nic, "count_after") == 4        # NIC queue 3 only: passed on by vmnet
        stop(proc)
        proc = None
        h.vmnet("port", "del", port_name)
        assert [c.name for c in hook_of(nic.nic).components] == ["count_before", "count_after"]
        assert _nothing_leased(nic)
        xdp_loader(nic_ns, "unload", nic.nic, "--all")
    finally:
        if proc is not None:
            stop(proc)
        h.cleanup()
    assert _no_xdp(nic)


def test_ports_leasing_from_one_nic_share_its_program_which_goes_with_the_last(nic, pod, port_name, instance):
    other_pod = "vmnet-q" + uuid.uuid4().hex[:8]
    netns.create_named(other_pod)
    made = []
    try:
        a = ports.create_port(PortSpec(name=port_name[:-1] + "a", backend="netkit-lease", lease_from=f"{nic.nic}:1",
                                       netns=pod, receive_only=True), instance)
        made.append(a)
        b = ports.create_port(PortSpec(name=port_name[:-1] + "b", backend="netkit-lease", lease_from=f"{nic.nic}:2",
                                       netns=other_pod, receive_only=True), instance)
        made.append(b)
        assert a.port.prog_id == b.port.prog_id                   # the instance's program
        hook = hook_of(nic.nic)                                   # in the NIC's dispatcher, once
        assert hook.kind == "dispatcher" and hook.mode == "native"
        assert [c.id for c in hook.components] == [a.port.xdp["component"]] == [b.port.xdp["component"]]
        shared = bpf.pin_dir(f"+nic-{nic.nic_ifindex}", instance.pin_root)
        assert os.path.isdir(shared)
        made.pop(0).close()
        ports.delete_port(a.port.spec.name, instance, record=a.port.to_dict())
        assert os.path.isdir(shared) and not _no_xdp(nic)         # b still leases from it
        # b has no consumer, so Linux 7.x keeps its socket out of the map until it has rings:
        # its frames are looked up by the NIC's program and passed, and counted as such
        seen = lambda c: c["redirected"] + c["passed_no_socket"]       # noqa: E731
        before = seen(ports.queue_stats(b.port.to_dict(), instance)[0])
        nic.send(2, _frame(b.port.spec.mac), count=3)
        time.sleep(0.3)
        assert seen(ports.queue_stats(b.port.to_dict(), instance)[0]) - before == 3
    finally:
        for c in made:
            c.close()
            ports.delete_port(c.port.spec.name, instance, record=c.port.to_dict())
        netns.remove_named(other_pod)
    assert _no_xdp(nic) and _nothing_leased(nic) and not os.path.exists(instance.pin_root)


def _refused(instance, spec, kind, words):
    with pytest.raises(kind) as exc:
        ports.create_port(spec, instance)
    assert words in exc.value.message, exc.value.message
    assert exc.value.fix
    return exc.value


def _nothing_half_made(nic, pod, name, instance):
    with netns.entered(pod):
        assert links.link_state("vmc-" + name) is None
    assert links.link_state("vmc-" + name) is None
    assert _nothing_leased(nic) and _no_xdp(nic)
    assert not os.path.exists(instance.pin_root)


@pytest.mark.parametrize("case", ["no-nic", "no-zero-copy", "too-many", "no-such-queue", "bad-queue-list"])
def test_a_lease_that_cannot_work_is_refused_before_anything_is_left(nic, pod, port_name, instance, case):
    spec = dict(name=port_name, backend="netkit-lease", netns=pod, receive_only=True, lease_from=nic.nic)
    kind, words = {
        "no-nic": (NotFound, "does not exist"),
        "no-zero-copy": (NotSupported, "could not send"),
        "too-many": (NotSupported, "free queue(s)"),
        "no-such-queue": (InvalidInput, "has no RX queue 9"),
        "bad-queue-list": (InvalidInput, "names 1 queue(s) for a port of 2"),
    }[case]
    if case == "no-nic":
        spec["lease_from"] = "vmnet-none0"
    elif case == "no-zero-copy":
        spec["receive_only"] = False
    elif case == "too-many":
        spec["queues"] = 4                  # queue 0 stays with the host: 3 are free
    elif case == "no-such-queue":
        spec["lease_from"] = f"{nic.nic}:9"
    else:
        spec.update(queues=2, lease_from=f"{nic.nic}:1")
    if case == "bad-queue-list":
        with pytest.raises(kind) as exc:
            PortSpec(**spec)
        assert words in exc.value.message
        return
    _refused(instance, PortSpec(**spec), kind, words)
    _nothing_half_made(nic, pod, port_name, instance)


def test_a_queue_already_leased_is_refused_and_the_first_lease_is_untouched(nic, pod, port_name, instance):
    first = ports.create_port(PortSpec(name=port_name, backend="netkit-lease", lease_from=f"{nic.nic}:1",
                                       netns=pod, receive_only=True), instance)
    try:
        second = port_name[:-1] + ("x" if port_name[-1] != "x" else "y")
        _refused(instance, PortSpec(name=second, backend="netkit-lease", lease_from=f"{nic.nic}:1",
                                    netns=pod, receive_only=True), AlreadyExists, "already leased")
        with netns.entered(pod):
            assert links.link_state("vmc-" + second) is None
        assert netdev_genl.rx_queues(nic.nic_ifindex)[1]["leased"]
    finally:
        first.close()
        ports.delete_port(port_name, instance, record=first.port.to_dict())
    assert _nothing_leased(nic)


def test_a_nic_carrying_a_program_that_is_not_vmnets_is_refused(nic, pod, port_name, instance):
    foreign = bpf.load_and_attach(nic.nic_ifindex, nic.nic, 4, "native")
    try:
        _refused(instance, PortSpec(name=port_name, backend="netkit-lease", lease_from=nic.nic, netns=pod,
                                    receive_only=True), AlreadyExists, "without a dispatcher")
        with netns.entered(pod):
            assert links.link_state("vmc-" + port_name) is None
        assert _nothing_leased(nic)
    finally:
        foreign.close()
    assert _no_xdp(nic)


def test_a_device_without_queue_management_ops_cannot_lend_queues(test_netns, pod, port_name, instance):
    require_netdevsim()
    from pyroute2 import IPRoute
    with IPRoute() as ip:
        ip.link("add", ifname="vmnet-vq0", kind="veth", peer="vmnet-vq1", num_rx_queues=4, num_tx_queues=4)
    try:
        with pytest.raises(VmnetError) as exc:
            ports.create_port(PortSpec(name=port_name, backend="netkit-lease", lease_from="vmnet-vq0", netns=pod,
                                       receive_only=True), instance)
        assert "vmnet-vq0" in exc.value.message and exc.value.fix
        with netns.entered(pod):
            assert links.link_state("vmc-" + port_name) is None
        assert links.link_state("vmc-" + port_name) is None
        assert not os.path.exists(instance.pin_root)
    finally:
        links.delete_link("vmnet-vq0")


def test_a_helper_that_stopped_mid_create_leaves_no_lease_after_its_restart(nic, pod, port_name):
    h = HelperProcess().start()
    try:
        h.kill(signal.SIGKILL)
        # what the helper leaves when it dies between the lease and the record: its intent
        spec = PortSpec(name=port_name, backend="netkit-lease", lease_from=nic.nic, netns=pod, receive_only=True)
        os.makedirs(h.state_dir, exist_ok=True)
        with open(os.path.join(h.state_dir, port_name + ".intent"), "w") as f:
            json.dump({"name": port_name, "netns": spec.netns, "backend": spec.backend,
                       "consumer_ifname": spec.consumer_ifname}, f)
        ports.create_port(spec, h.instance).close()
        assert not _nothing_leased(nic)
        h.start()
        assert f"removing port {port_name}" in h.read_log()
        assert _nothing_leased(nic) and _no_xdp(nic)
        with netns.entered(pod):
            assert links.link_state("vmc-" + port_name) is None
    finally:
        h.cleanup()


def test_a_real_nic_lends_queues_to_a_qemu_that_answers_ping_and_tcp():
    """Zero-copy and transmit on a leased queue need a real NIC (mlx5, bnxt_en, ...) and a peer
    on its wire; netdevsim has neither zero-copy nor a wire."""
    if not os.environ.get("VMNET_TEST_LEASE_NIC"):
        pytest.skip("VMNET_TEST_LEASE_NIC is not set: no NIC with queue-management ops and AF_XDP "
                    "zero-copy on these machines (netdevsim, used above, has no zero-copy)")
    pytest.skip("a NIC was named, but this test also needs a peer on that NIC's wire to ping the guest "
                "from; this tier is run by hand (docs/backends.md, 'A real NIC')")
