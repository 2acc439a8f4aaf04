"""vmnet's XSK program in libxdp's dispatcher, beside programs xdp-loader loads.

A veth end plays the NIC here (the netns tier; queue leasing itself runs on
netdevsim in the 7.3 entry, tests/test_lease.py): vmnet's component joins
the device's hook as the first port leasing from a NIC does
(vmnet.priv.nichook), with a slot for the device's queue 0. Counting
programs (tests/bpf/xdp_count.c) loaded by xdp-loader before and after it
show, by their own counters, which frames each program saw.

Needs a kernel that runs freplace programs (tests/xdp_env.py): the
kernel-matrix entries require it, the 6.18 host skips, saying why.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
from xdp_env import count, counting_program, hook_of, require_dispatcher, veth, xdp_loader

from vmnet.errors import AlreadyExists, NotSupported
from vmnet.priv import bpf, libbpf, links, netns, nichook, xsk, xskprog
from vmnet.consumer.afxdp import XskQueue

pytestmark = pytest.mark.netns

NIC, PEER = "vmnet-xn", "vmnet-xp"
FRAME = bytes.fromhex("020000000001" "020000000002") + b"\x88\xb5" + b"vmnet-share" * 4


@pytest.fixture
def dev(test_netns):
    require_dispatcher()
    veth(test_netns, NIC, PEER)
    yield test_netns


@pytest.fixture
def program(instance, port_name):
    """The instance's shared XSK program with one slot for (NIC, queue 0)."""
    prog = xskprog.XskProgram.ensure(instance.pin_root)
    slot = prog.claim(port_name, 1)[0]
    prog.assign(slot, port_name, links.require_link(NIC)["ifindex"], 0)
    try:
        yield prog, slot
    finally:
        prog.release([slot])
        nichook.release(instance, links.require_link(NIC)["ifindex"]) if links.link_state(NIC) else None
        prog.unpin_if_unused()
        prog.close()


def _join(prog, instance):
    state = links.require_link(NIC)
    return nichook.ensure(prog, instance, {"ifindex": state["ifindex"], "ifname": NIC, "mode": "skb"},
                          nichook_priority())


def nichook_priority():
    from vmnet.priv import xdpshare
    return xdpshare.DEFAULT_PRIORITY


def _send(n: int):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        s.bind((PEER, 0))
        for _ in range(n):
            s.send(FRAME)
    finally:
        s.close()
    time.sleep(0.2)


def _names(ns) -> list[str]:
    return [c.name for c in hook_of(NIC).components]


def _dispatch_dirs() -> list[str]:
    d = os.path.join(os.environ["LIBXDP_BPFFS"], "xdp")
    return sorted(e for e in os.listdir(d) if e.startswith("dispatch-")) if os.path.isdir(d) else []


def _host_sees(n_send: int) -> int:
    """Frames of ours the host's stack gets on the NIC while n_send are sent."""
    cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
    cap.bind((NIC, 0))
    cap.settimeout(0.3)
    _send(n_send)
    seen = 0
    try:
        while True:
            data, addr = cap.recvfrom(2048)
            if addr[2] != socket.PACKET_OUTGOING and data.endswith(b"vmnet-share"):
                seen += 1
    except TimeoutError:
        pass
    finally:
        cap.close()
    return seen


def test_vmnet_runs_between_a_program_loaded_before_and_one_after_and_each_sees_its_frames(dev, program,
                                                                                          instance):
    prog, slot = program
    before, after = counting_program("count_before"), counting_program("count_after")
    xdp_loader(dev, "load", "-m", "skb", "--prio", "10", NIC, before)
    mode, component = _join(prog, instance)
    assert mode == "skb"
    xdp_loader(dev, "load", "-m", "skb", "--prio", "30", NIC, after)
    assert _names(dev) == ["count_before", xskprog.PROGRAM, "count_after"]
    status = xdp_loader(dev, "status", NIC).stdout
    lines = [line for line in status.splitlines() if "=>" in line or line.strip().startswith("count")]
    order = [next(n for n in ("count_before", xskprog.PROGRAM, "count_after") if n in line) for line in lines]
    assert order == ["count_before", xskprog.PROGRAM, "count_after"], status
    # the component stays vmnet's own program: same id after xdp-loader rebuilt the dispatcher
    assert hook_of(NIC).component(component) is not None
    assert nichook.describe(instance, links.require_link(NIC)["ifindex"])["vmnet_slot"] == 1

    # a socket at the slot: vmnet takes the queue's frames; the program after it and the host see none
    q = XskQueue(xsk.new_socket().detach(), links.require_link(NIC)["ifindex"], 0)
    try:
        assert prog.store(slot, q.sock)
        assert _host_sees(5) == 0
        got = q.receive()
        assert sum(1 for _, f in got if f.endswith(b"vmnet-share")) == 5
    finally:
        q.close()
    assert count(dev, NIC, "count_before") == 5 and count(dev, NIC, "count_after") == 0
    assert prog.stats(slot)["redirected"] == 5
    # no socket: vmnet passes, the next program and the host get the frames
    assert _host_sees(4) == 4
    assert count(dev, NIC, "count_before") == 9 and count(dev, NIC, "count_after") == 4
    assert prog.stats(slot)["passed_no_socket"] == 4
    xdp_loader(dev, "unload", NIC, "--all")
    assert not _dispatch_dirs()


@pytest.mark.parametrize("order", list(itertools.permutations(["count_before", "vmnet", "count_after"])),
                         ids=lambda o: "-".join(o))
def test_unloading_in_any_order_leaves_the_others_running(dev, program, instance, order):
    prog, slot = program
    ifindex = links.require_link(NIC)["ifindex"]
    xdp_loader(dev, "load", "-m", "skb", "--prio", "10", NIC, counting_program("count_before"))
    _join(prog, instance)
    xdp_loader(dev, "load", "-m", "skb", "--prio", "30", NIC, counting_program("count_after"))
    left = ["count_before", "vmnet", "count_after"]
    for gone in order:
        if gone == "vmnet":
            assert nichook.release(instance, ifindex)
        else:
            cid = next(c.id for c in hook_of(NIC).components if c.name == gone)
            xdp_loader(dev, "unload", NIC, "--id", str(cid))
        left.remove(gone)
        expect = [xskprog.PROGRAM if n == "vmnet" else n for n in left]
        assert _names(dev) == expect
        if not left:
            break
        counts = {n: count(dev, NIC, n) for n in left if n != "vmnet"}
        passed = prog.stats(slot)["passed_no_socket"]
        _send(3)
        for n, c in counts.items():
            assert count(dev, NIC, n) == c + 3, (n, order)
        if "vmnet" in left:
            assert prog.stats(slot)["passed_no_socket"] == passed + 3
            assert nichook.ours_on(hook_of(NIC), nichook.pinned_component(instance, ifindex))
    assert links.require_link(NIC)["xdp_prog_id"] == 0 and not _dispatch_dirs()
    assert not os.path.exists(bpf.pin_dir(nichook.shared_name(ifindex), instance.pin_root))


def test_vmnet_first_makes_a_dispatcher_that_others_join_and_leave(dev, program, instance):
    prog, _ = program
    ifindex = links.require_link(NIC)["ifindex"]
    _, component = _join(prog, instance)
    assert hook_of(NIC).kind == "dispatcher" and _names(dev) == [xskprog.PROGRAM]
    xdp_loader(dev, "load", "-m", "skb", NIC, counting_program("count_after"))
    assert hook_of(NIC).component(component) is not None
    assert _join(prog, instance)[1] == component                 # the next port reuses it
    xdp_loader(dev, "unload", NIC, "--id", str(next(c.id for c in hook_of(NIC).components
                                                    if c.name == "count_after")))
    assert _names(dev) == [xskprog.PROGRAM]
    assert nichook.release(instance, ifindex)
    assert links.require_link(NIC)["xdp_prog_id"] == 0 and not _dispatch_dirs()


def _refused_and_nothing_made(prog, instance, kind, words):
    ifindex = links.require_link(NIC)["ifindex"]
    before = hook_of(NIC).to_dict()
    with pytest.raises(kind) as exc:
        _join(prog, instance)
    for w in words:
        assert w in exc.value.message, exc.value.message
    assert exc.value.fix
    assert hook_of(NIC).to_dict() == before
    assert not os.path.exists(bpf.pin_dir(nichook.shared_name(ifindex), instance.pin_root))
    return exc.value


def _attach_alone(path: str, name: str) -> int:
    """Program `name` of object `path` on the NIC by a bpf_link of this process, no dispatcher."""
    obj = libbpf.BpfObject(path)
    try:
        obj.load()
        return libbpf.link_create_xdp(obj.program_fd(name), links.require_link(NIC)["ifindex"],
                                      libbpf.XDP_FLAGS_SKB_MODE)
    finally:
        obj.close()


def test_a_program_attached_without_a_dispatcher_is_refused_naming_it_and_its_holder(dev, program, instance):
    prog, _ = program
    link = _attach_alone(counting_program("lone_prog"), "lone_prog")
    try:
        pid = str(os.getpid())
        err = _refused_and_nothing_made(prog, instance, AlreadyExists,
                                        ["'lone_prog'", "without a dispatcher", pid])
        assert "xdp-loader load" in err.fix
    finally:
        os.close(link)


def test_a_dispatcher_libxdp_did_not_pin_is_refused_as_bpfmans(dev, program, instance):
    """bpfman is not packaged for Debian: this attaches a dispatcher the way bpfman does (its
    own program, by bpf_link, pinned outside libxdp's directory)."""
    prog, _ = program
    link = _attach_alone("/usr/lib/x86_64-linux-gnu/bpf/xdp-dispatcher.o", "xdp_dispatcher")
    try:
        _refused_and_nothing_made(prog, instance, NotSupported, ["bpfman", "does not interoperate"])
    finally:
        os.close(link)


def test_a_full_dispatcher_is_refused_naming_its_programs(dev, program, instance):
    prog, _ = program
    objs = [counting_program(f"count_{i}") for i in range(10)]
    xdp_loader(dev, "load", "-m", "skb", NIC, *objs)
    try:
        assert len(hook_of(NIC).components) == 10
        _refused_and_nothing_made(prog, instance, NotSupported, ["is full", "count_0", "count_9"])
    finally:
        xdp_loader(dev, "unload", NIC, "--all")
    assert not _dispatch_dirs()


CHURN = r"""
import sys
from vmnet.priv import links, netns, nichook, xskprog
from vmnet.priv.instance import Instance
instance, ns, nic = Instance(sys.argv[1]), sys.argv[2], sys.argv[3]
with netns.entered(ns):
    prog = xskprog.XskProgram.ensure(instance.pin_root) if sys.argv[4] == "pinned" else \
        xskprog.XskProgram(instance.pin_root, __import__("vmnet.priv.bpf", fromlist=["x"]).load_object(
            xskprog.object_path(), {"prog": xskprog.PROGRAM}, xskprog.MAPS, "x"))
    state = links.require_link(nic)
    print("ready", flush=True)
    while True:
        nichook.ensure(prog, instance, {"ifindex": state["ifindex"], "ifname": nic, "mode": "skb"}, 20)
        nichook.release(instance, state["ifindex"])
"""


@pytest.mark.parametrize("maps", ["pinned", "unpinned"])
def test_a_helper_killed_while_it_joins_or_leaves_leaves_a_consistent_dispatcher(dev, program, instance, maps):
    """SIGKILL at random moments of join/leave (inside libxdp's own steps too), eight times;
    then recovery: the other program runs alone, no vmnet component, no stale pins."""
    prog, _ = program
    ifindex = links.require_link(NIC)["ifindex"]
    xdp_loader(dev, "load", "-m", "skb", "--prio", "10", NIC, counting_program("count_before"))
    rng = random.Random(int(os.environ.get("VMNET_TEST_SEED", "0")) or None)
    for _ in range(8):
        # -I and cwd /: the installed vmnet (with its BPF objects), not the work tree's
        child = subprocess.Popen([sys.executable, "-I", "-c", CHURN, instance.name, dev, NIC, maps],
                                 stdout=subprocess.PIPE, text=True, env=os.environ, cwd="/")
        try:
            assert child.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
        # the helper's recovery, in its order: abandoned temporary pins, then the NIC hooks
        bpf.remove_abandoned_pins(instance.pin_root)
        removed = nichook.collect(instance, prog, leased=set())
        hook = hook_of(NIC)
        assert [c.name for c in hook.components] == ["count_before"], (removed, hook.to_dict())
        assert _dispatch_dirs() == [f"dispatch-{ifindex}-{hook.prog_id}"]
        assert not os.path.exists(bpf.pin_dir(nichook.shared_name(ifindex), instance.pin_root))
    _send(2)
    assert count(dev, NIC, "count_before") == 2
    xdp_loader(dev, "unload", NIC, "--all")
    assert not _dispatch_dirs()
