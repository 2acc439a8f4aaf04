"""One XSK program per helper instance, on every port's device: keys, ifindexes, upgrades.

Every port's device gets a link to the same program; each queue a slot in
its maps, keyed by (ifindex, queue). ifindexes are per netns, so vmnet
gives its devices ifindexes of its own range; these tests show that two
ports in two netns never share one even where the kernel would have given
both the same, that each port's frames reach its own sockets only, and
that a port made with a program of its own (as vmnet made them before)
keeps working until it is deleted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
from helpers import HelperProcess, responder_stats
from test_handoff import in_netns, stop, wait_ready

from vmnet import probe
from vmnet.model import PortSpec
from vmnet.priv import bpf, links, netns, ports, xsk, xskprog
from vmnet.qemu_args import device_arg, netdev_arg

pytestmark = pytest.mark.netns

NOBODY = 65534
# a uid per responder that no other test uses: the kernel charges UMEM to the uid and
# releases it only some time after its process exits (15-35 ms here, seconds in a loaded
# guest), so a uid an earlier test's consumer used may still be charged when the next starts
RESPONDER_UIDS = {"a": 64101, "b": 64102}


def _fresh_netns() -> str:
    name = "vmnet-s" + uuid.uuid4().hex[:8]
    netns.create_named(name)
    with netns.entered(name):
        links.bring_up("lo")
    return name


def test_ports_share_one_program_and_their_devices_never_share_an_ifindex(test_netns, instance, port_name):
    a_ns, b_ns = _fresh_netns(), _fresh_netns()
    made = []
    try:
        # what the kernel itself would do: the first device of each fresh netns gets ifindex 2
        from pyroute2 import IPRoute
        kernel_choice = []
        for ns in (a_ns, b_ns):
            with netns.entered(ns), IPRoute() as ip:
                ip.link("add", ifname="plain0", kind="veth", peer="plain1")
                kernel_choice.append(ip.link_lookup(ifname="plain0")[0])
                ip.link("del", ifname="plain0")
        assert kernel_choice[0] == kernel_choice[1]
        a, b = port_name[:-1] + "a", port_name[:-1] + "b"
        made.append(ports.create_port(PortSpec(name=a, netns=a_ns), instance))
        made.append(ports.create_port(PortSpec(name=b, netns=b_ns), instance))
        pa, pb = made[0].port, made[1].port
        assert pa.prog_id == pb.prog_id                      # one program
        assert pa.link_id != pb.link_id                      # attached twice
        assert pa.consumer_ifindex != pb.consumer_ifindex
        for p, ns in ((pa, a_ns), (pb, b_ns)):
            assert p.consumer_ifindex == xskprog.consumer_ifindex(p.slots[0]) >= xskprog.IFINDEX_BASE
            with netns.entered(ns):
                assert links.link_state(p.spec.consumer_ifname)["ifindex"] == p.consumer_ifindex
    finally:
        for c in made:
            c.close()
            ports.delete_port(c.port.spec.name, instance)
        netns.remove_named(a_ns)
        netns.remove_named(b_ns)
    assert not os.path.exists(instance.pin_root)


def test_an_ifindex_taken_in_the_consumer_netns_is_passed_over(test_netns, instance, port_name):
    ns = _fresh_netns()
    c = None
    try:
        from pyroute2 import IPRoute
        with netns.entered(ns), IPRoute() as ip:
            # the ifindex the next port's consumer end would get (its first slot: 0)
            ip.link("add", ifname="squat0", kind="veth", peer="squat1", index=xskprog.consumer_ifindex(0))
        c = ports.create_port(PortSpec(name=port_name, netns=ns), instance)
        assert c.port.consumer_ifindex != xskprog.consumer_ifindex(0)
        assert c.port.slots[0] != 0
    finally:
        if c is not None:
            c.close()
            ports.delete_port(port_name, instance)
        netns.remove_named(ns)


def _respond(created, ns, ip, uid):
    from vmnet.memlock import plan_memlock
    from vmnet.priv.launch import spawn_consumer
    from vmnet.selftest import _memlock_facts
    soft, hard, can = _memlock_facts()
    plan = plan_memlock(created.port.spec.queues, soft=soft, hard=hard, can_raise_hard=can, allow_ipc_lock=True)
    fds = [s.fileno() for s in created.sockets]
    argv = [sys.executable, "-I", "-m", "vmnet", "respond", "--netdev", netdev_arg(created.port, fds),
            "--device", device_arg(created.port), "--ip", ip]
    return spawn_consumer(argv, fds, uid=uid, gid=uid, netns_ref=ns, plan=plan,
                          stderr=subprocess.PIPE)


def test_each_ports_frames_reach_only_its_own_sockets(test_netns, instance, port_name):
    """Two ports whose consumer ends live in two netns: ping each; each port's counters move
    by its own traffic only."""
    nets = {"a": ("198.18.1.1", "198.18.1.2"), "b": ("198.18.2.1", "198.18.2.2")}
    made, procs, spaces = {}, [], []
    try:
        for tag in nets:
            ns = _fresh_netns()
            spaces.append(ns)
            c = ports.create_port(PortSpec(name=port_name[:-1] + tag, netns=ns), instance)
            made[tag] = c
            links.add_address(c.port.spec.host_ifname, nets[tag][0], 24)
            procs.append(_respond(c, ns, nets[tag][1], uid=RESPONDER_UIDS[tag]))
        for p in procs:
            wait_ready(p)
        for c in made.values():
            c.store_pending()
        # the host ends' own IPv6 chatter reaches the ports too: count echo requests, which only
        # the pings send, at the responders; and the program's counters of the pinged port
        def redirected():
            return {t: ports.queue_stats(c.port.to_dict(), instance)[0]["redirected"] for t, c in made.items()}

        def echoes():
            return {t: sum(q["icmp"] for q in responder_stats(p)) for t, p in zip(made, procs)}
        before = redirected()
        assert probe.ping(nets["a"][1], count=6)["received"] == 6
        mid = redirected()
        assert mid["a"] - before["a"] >= 6
        assert echoes() == {"a": 6, "b": 0}
        assert probe.ping(nets["b"][1], count=4)["received"] == 4
        assert redirected()["b"] - mid["b"] >= 4
        assert echoes() == {"a": 6, "b": 4}
    finally:
        for p in procs:
            stop(p)
        for c in made.values():
            c.close()
            ports.delete_port(c.port.spec.name, instance)
        for ns in spaces:
            netns.remove_named(ns)


def _make_port_the_old_way(name: str, consumer_ns: str, root: str) -> dict:
    """What vmnet did before the shared program: a program and XSK map of the port's own,
    pinned as <root>/<port>/{link,xsks}, keys = queue ids; and the record it wrote."""
    spec = PortSpec(name=name, netns=consumer_ns, consumer_uid=NOBODY)
    links.create_veth(spec)
    with netns.entered(consumer_ns):
        consumer = links.require_link(spec.consumer_ifname)
        attached = bpf.load_and_attach(consumer["ifindex"], spec.consumer_ifname, 1, "auto")
    links.disable_offloads(spec.host_ifname)
    host = links.require_link(spec.host_ifname)
    links.set_mtu_up(spec.host_ifname, 3506)
    with netns.entered(consumer_ns):
        links.set_mtu_up(spec.consumer_ifname, 3506)
        bpf.pin(name, attached, root)
        socks, _ = xsk.create_xsk_sockets([0], lambda key, sock: xsk.store(attached.map_fd, key, sock))
    for s in socks:
        s.close()
    ids = attached.ids
    attached.close()
    record = dict(spec.to_dict(), mode_requested="auto", mode="native", mtu=3506,
                  host_ifname=spec.host_ifname, consumer_ifname=spec.consumer_ifname,
                  host_ifindex=host["ifindex"], consumer_ifindex=consumer["ifindex"], map_keys=[0],
                  prog_id=ids["prog_id"], link_id=ids["link_id"], map_id=ids["map_id"],
                  backend_requested="veth", backend_reason="", consumer_cgroup=None, owner=None,
                  created=time.time(), created_by=0, handed_out=False)
    return record


def test_a_port_made_with_a_program_of_its_own_keeps_working_until_deleted(test_netns, consumer_netns,
                                                                         port_name):
    h = HelperProcess()
    try:
        os.makedirs(h.state_dir, mode=0o700)
        record = _make_port_the_old_way(port_name, consumer_netns, h.instance.pin_root)
        with open(os.path.join(h.state_dir, port_name + ".json"), "w") as f:
            json.dump(record, f)
        h.start()
        shown = h.vmnet_json("port", "show", port_name)
        assert shown.get("layout", 1) == 1 and shown["queue_counters"] is None
        links.add_address("vmn-" + port_name, "198.18.0.1", 24)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "vmnet", "exec", "--user", "nobody", "--allow-ipc-lock", "--",
             sys.executable, "-I", "-m", "vmnet", "respond", "--netdev",
             f"af-xdp,id=n0,ifname=vmnet:{port_name},queues=vmnet:{port_name},start-queue=vmnet:{port_name},"
             f"mode=vmnet:{port_name},inhibit=on,sock-fds=vmnet:{port_name}",
             "--device", f"virtio-net-pci,netdev=n0,mac=vmnet:{port_name},host_mtu=vmnet:{port_name}",
             "--ip", "198.18.0.2"],
            env=h.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=in_netns(consumer_netns), cwd="/")
        try:
            wait_ready(proc)
            assert probe.ping("198.18.0.2", count=3)["received"] == 3
        finally:
            stop(proc)
        assert h.vmnet_json("port", "del", port_name)["deleted"] is True
        assert not bpf.pinned(port_name, h.instance.pin_root)
        assert links.link_state("vmn-" + port_name) is None
    finally:
        h.cleanup()


def test_pins_appear_complete_or_not_at_all(instance):
    """bpf.pin_atomically: a directory of pins appears whole under its final name; a temporary one
    a dead helper of the same pid left is cleared first; a final name that appeared first wins,
    and nothing of the loser is left."""
    root = instance.pin_root
    fds = bpf.load_object(bpf.object_path(), {}, {"a": bpf.MAP_NAME, "b": bpf.MAP_NAME}, "the test's maps")
    final, tmp = os.path.join(root, "+t"), os.path.join(root, "_t-1")
    try:
        os.makedirs(tmp, mode=0o700)
        from vmnet.priv import libbpf
        libbpf.obj_pin(fds["a"], os.path.join(tmp, "a"))        # what a dead helper left
        assert bpf.pin_atomically(final, tmp, fds)
        assert sorted(os.listdir(final)) == ["a", "b"] and not os.path.exists(tmp)
        assert not bpf.pin_atomically(final, tmp, {"c": fds["a"]})
        assert sorted(os.listdir(final)) == ["a", "b"] and not os.path.exists(tmp)
    finally:
        for d in (final, tmp):
            bpf.remove_pin_dir(d, ["a", "b", "c"])
        bpf.close_fds(fds)
        try:
            os.rmdir(root)
        except FileNotFoundError:
            pass
