"""The handoff against its own consumers and local users, tried as an attacker would.

A QEMU its guest has taken over holds what vmnet gave it (sockets, an
environment, a terminal); a local user can talk to the helper's socket.
Each test plays one attack against a real helper and real kernel objects:
binding a handed-out socket elsewhere, stalling the helper, taking another
VM's sockets, using someone else's connection, names that confuse owners.
"""

from __future__ import annotations

import array
import errno
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid

import pytest
from guard_gate import require_guard, require_no_guard
from helpers import (NO_HOST_PROCESS, POD_UID, PYTHON, SHARED_NETNS, USER_A, HelperProcess, as_identity, capture,
                     host_process)
from test_handoff import CONSUMER_IP, HOST_IP, exec_responder, in_netns, stop, wait_ready

from vmnet import probe
from vmnet.client import Client, call
from vmnet.errors import InvalidInput
from vmnet.priv import authz, links, netns, ports
from vmnet.priv.instance import DEFAULT, Instance

pytestmark = pytest.mark.netns

NOBODY = 65534
PROBE_ETHERTYPE = 0x88B5            # IEEE local experimental: nothing else sends it

# The consumer's part, run by `vmnet exec` as nobody with no capabilities: set up a
# UMEM and rings on each handed-out socket as QEMU does, then try to bind where it
# should not, and transmit if a bind took.
BIND_PROBE = r"""
import errno, json, socket, sys
from vmnet.consumer.afxdp import XskQueue
fds = [int(x) for x in sys.argv[1].split("=", 1)[1].split(":")]
own = socket.if_nametoindex(sys.argv[2].split("=", 1)[1])
decoy = socket.if_nametoindex(sys.argv[3])
frame = bytes.fromhex("ffffffffffff020000000001") + (0x88B5).to_bytes(2, "big") + b"vmnet-bind-probe" * 4
out = {}
q0 = XskQueue(fds[0], own, 0, bind=False)
def attempt(label, q, ifindex, queue):
    try:
        q.bind(ifindex, queue)
        out[label] = "bound"
        return True
    except OSError as exc:
        out[label] = errno.errorcode.get(exc.errno, str(exc.errno))
        return False
if attempt("decoy", q0, decoy, 0):
    for _ in range(20):
        q0.transmit([frame])
else:
    attempt("other-queue", q0, own, 1)
    attempt("own-queue", q0, own, 0)
q1 = XskQueue(fds[1], own, 1, bind=False)
attempt("own-queue-1", q1, own, 1)
print(json.dumps(out), flush=True)
"""


def _veth(a: str, b: str, b_netns: str | None = None):
    """A decoy veth pair (not vmnet's): a here, b in b_netns, both up."""
    from pyroute2 import IPRoute
    peer = {"ifname": b}
    fd = netns.open_netns(b_netns) if b_netns else None
    if fd is not None:
        peer["net_ns_fd"] = fd
    try:
        with IPRoute() as ip:
            ip.link("add", ifname=a, kind="veth", peer=peer)
            ip.link("set", ifname=a, state="up")
    finally:
        if fd is not None:
            os.close(fd)
    with netns.entered(b_netns):
        links.bring_up(b)


def _run_bind_probe(helper, consumer_netns, port, decoy):
    capture_stop, captured = threading.Event(), []
    catcher = threading.Thread(target=capture, args=("vmp-" + port[-6:], PROBE_ETHERTYPE,
                                                      capture_stop, captured))
    catcher.start()
    try:
        out = subprocess.run(
            [PYTHON, "-I", "-m", "vmnet", "exec", "--user", "nobody", "--allow-ipc-lock", "--",
             PYTHON, "-I", "-c", BIND_PROBE, f"sock-fds=vmnet:{port}", f"ifname=vmnet:{port}", decoy],
            env=helper.env, capture_output=True, text=True, timeout=120, cwd="/",
            preexec_fn=in_netns(consumer_netns))
        time.sleep(0.5)                 # let anything that was sent arrive
    finally:
        capture_stop.set()
        catcher.join()
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), captured


@pytest.fixture
def port_beside_a_decoy(test_netns, consumer_netns, port_name):
    """A 2-queue port whose consumer netns also holds another veth (the decoy); its
    peer is in the test's netns, where frames sent on the decoy would arrive."""
    decoy = "vmd-" + port_name[-6:]
    _veth("vmp-" + port_name[-6:], decoy, consumer_netns)
    try:
        yield port_name, decoy
    finally:
        links.delete_link("vmp-" + port_name[-6:])


# --- 1. bind confinement -------------------------------------------------------

def test_a_handed_out_socket_binds_only_to_its_own_port_and_queue(test_netns, consumer_netns,
                                                                   port_beside_a_decoy):
    require_guard()
    port, decoy = port_beside_a_decoy
    h = HelperProcess().start()
    try:
        rec = h.vmnet_json("port", "add", port, "--queues", "2", "--netns", consumer_netns,
                           "--consumer-user", "nobody")
        assert rec["confined"] is True
        result, captured = _run_bind_probe(h, consumer_netns, port, decoy)
        assert result == {"decoy": "EPERM", "other-queue": "EPERM", "own-queue": "bound",
                          "own-queue-1": "bound"}
        assert captured == [], "a frame left on the decoy device"
        status = h.vmnet_json("status")
        assert status["helper"]["protection"]["mode"] == "kernel"
        assert status["helper"]["protection"]["refused_binds"] >= 2
    finally:
        h.cleanup()


def test_without_the_guard_the_same_consumer_sends_raw_frames_on_the_decoy(test_netns, consumer_netns,
                                                                         port_beside_a_decoy):
    """What the guard prevents, shown where the kernel cannot run it (allow_unconfined)."""
    require_no_guard()
    port, decoy = port_beside_a_decoy
    h = HelperProcess("allow_unconfined = true\n").start()
    try:
        rec = h.vmnet_json("port", "add", port, "--queues", "2", "--netns", consumer_netns,
                           "--consumer-user", "nobody")
        assert rec["confined"] is False
        result, captured = _run_bind_probe(h, consumer_netns, port, decoy)
        assert result["decoy"] == "bound"
        assert any(b"vmnet-bind-probe" in f for f in captured)
    finally:
        h.cleanup()


def test_without_the_guard_a_port_beside_other_devices_is_refused_unless_allowed(
        test_netns, consumer_netns, port_beside_a_decoy):
    why = require_no_guard()
    port, decoy = port_beside_a_decoy
    h = HelperProcess().start()
    try:
        out = h.vmnet("port", "add", port, "--netns", consumer_netns, "--consumer-user", "nobody")
        assert out.returncode == 8, out.stderr
        assert decoy in out.stderr and "raw frames" in out.stderr and "allow_unconfined" in out.stderr
        assert not ports.port_exists(port, h.instance)
        status = h.vmnet_json("status")["helper"]["protection"]
        assert status["mode"] == "netns" and status["why"] == why
        # a netns of its own (lo and the port's device) is fine
        alone = port[:-1] + ("z" if port[-1] != "z" else "y")
        other_ns = "vmnet-t" + uuid.uuid4().hex[:8]
        netns.create_named(other_ns)
        try:
            h.vmnet_json("port", "add", alone, "--netns", other_ns, "--consumer-user", "nobody")
            h.vmnet_json("port", "del", alone)
        finally:
            netns.remove_named(other_ns)
    finally:
        h.cleanup()


def test_without_the_guard_no_port_puts_a_device_where_an_unconfined_consumer_holds_sockets(
        test_netns, consumer_netns, port_name):
    """Issue: the netns rule held only at creation and handoff. Port A, made in the helper's netns
    (then holding only lo), had its consumer take its unbound sockets; port B --netns X then put
    B's host end beside them, A's consumer bound to it and B's VM received its frames."""
    require_no_guard()
    h = HelperProcess().start()
    a, b = port_name, port_name[:-1] + ("z" if port_name[-1] != "z" else "y")
    try:
        assert h.vmnet_json("port", "add", a, "--consumer-user", "nobody")["confined"] is False
        with Client(h.socket) as c:                 # its consumer holds the sockets, unbound
            _, fds = c.call("fds-for-consumer", name=a)
            out = h.vmnet("port", "add", b, "--netns", consumer_netns, "--consumer-user", "nobody")
            for fd in fds:
                os.close(fd)
        assert out.returncode == 8, out.stderr
        assert f"port {b}: its host end would go into the helper's netns" in out.stderr
        assert f"port {a}'s consumer holds AF_XDP sockets nothing confines" in out.stderr
        assert not ports.port_exists(b, h.instance)
        assert links.get_link(f"vmn-{b}") is None
        # A gone, B is made: its host end endangers nobody
        h.vmnet_json("port", "del", a)
        h.vmnet_json("port", "add", b, "--netns", consumer_netns, "--consumer-user", "nobody")
    finally:
        h.cleanup()


def test_the_doctor_says_which_bind_protection_is_in_force():
    out = subprocess.run([PYTHON, "-I", "-m", "vmnet", "--json", "doctor"], capture_output=True, text=True,
                         timeout=120)
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    guard = checks["bind-guard"]
    assert guard["status"] in ("ok", "warn")
    if guard["status"] == "warn":
        assert "bpf" in guard["detail"] and guard["fix"]


# --- 2. no client can stall the helper -------------------------------------------

def _lingering_tcp_socket():
    """A connected TCP socket whose close() sleeps: SO_LINGER 60 s, a full send queue."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    cli = socket.socket()
    cli.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    cli.connect(srv.getsockname())
    acc, _ = srv.accept()
    cli.setblocking(False)
    try:
        while True:
            cli.send(b"x" * 65536)
    except BlockingIOError:
        pass
    cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 60))
    cli.setblocking(True)           # a non-blocking socket's close() does not linger
    return cli, acc, srv


def _answered_within(path: str, seconds: float) -> bool:
    try:
        with Client(path, timeout=seconds) as c:
            return "helper" in c.call("status")[0]
    except Exception:
        return False


def test_a_lingering_socket_sent_to_the_helper_does_not_stall_it(helper):
    cli, acc, srv = _lingering_tcp_socket()
    attacker = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    attacker.settimeout(5)
    attacker.connect(helper.socket)
    try:
        try:
            attacker.sendmsg([b'{"verb":"status"}'],
                             [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [cli.fileno()]))])
            delivered = True
        except PermissionError:
            delivered = False               # Linux >= 6.16: SO_PASSRIGHTS = 0 on the helper's socket
        t0 = time.monotonic()
        assert _answered_within(helper.socket, 1.0), "the helper did not answer another client"
        assert time.monotonic() - t0 < 1.0
        if delivered:                       # older kernels: refused, then dropped
            reply = json.loads(attacker.recv(65536))
            assert reply["ok"] is False and "accepts none" in reply["error"]["message"]
            assert attacker.recv(65536) == b""
    finally:
        attacker.close()
        acc.close()                          # unread data: an RST, so every linger ends now
        srv.close()
        cli.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        cli.close()


def test_a_netns_reference_naming_a_fifo_is_refused_without_blocking_the_helper(helper, port_name):
    name = "vmnet-fifo-" + uuid.uuid4().hex[:6]
    os.makedirs("/run/netns", exist_ok=True)
    path = f"/run/netns/{name}"
    os.mkfifo(path)
    answers = {}

    def create():
        try:
            call(helper.socket, "port-create", name=port_name, netns=name, consumer_uid=USER_A)
            answers["create"] = "created"
        except Exception as exc:
            answers["create"] = exc
    try:
        worker = threading.Thread(target=create)
        worker.start()
        assert _answered_within(helper.socket, 1.0)
        worker.join(5)
        assert not worker.is_alive(), "port-create never returned"
        assert isinstance(answers["create"], InvalidInput), answers
        assert "not a network namespace" in str(answers["create"]) and name in str(answers["create"])
        assert not ports.port_exists(port_name, helper.instance)
    finally:
        os.unlink(path)


# --- 3. one consumer at a time; a VM restarts on its port ------------------------

HOLD = """
import sys
from vmnet.client import Client
c = Client(sys.argv[1])
record, fds = c.call("fds-for-consumer", name=sys.argv[2])
print(len(fds), flush=True)
sys.stdin.read()
"""

TAKE = """
import sys
from vmnet.client import Client
from vmnet.errors import VmnetError
try:
    record, fds = Client(sys.argv[1]).call("fds-for-consumer", name=sys.argv[2])
    print("got", len(fds))
except VmnetError as exc:
    print(exc.code, exc.message)
"""


def _hold(helper, port, uid=USER_A):
    proc = subprocess.Popen([PYTHON, "-I", "-c", HOLD, helper.socket, port], env=helper.env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=as_identity(uid, uid), cwd="/")
    line = proc.stdout.readline()
    assert line.strip().isdigit(), proc.stderr.read()
    return proc


def _take(helper, port, uid=USER_A) -> str:
    out = subprocess.run([PYTHON, "-I", "-c", TAKE, helper.socket, port], env=helper.env,
                         capture_output=True, text=True, preexec_fn=as_identity(uid, uid), cwd="/",
                         timeout=60)
    return out.stdout.strip() or out.stderr


def _release(proc):
    proc.stdin.close()
    proc.wait(10)
    proc.stdout.close()
    proc.stderr.close()


def test_a_ports_sockets_go_to_one_live_consumer_at_a_time(helper, consumer_netns, port_name):
    helper.vmnet_json("port", "add", port_name, "--queues", "2", "--netns", consumer_netns,
                      "--consumer-user", str(USER_A))
    holder = _hold(helper, port_name)
    try:
        refused = _take(helper, port_name)
        assert refused.startswith("in-use") and f"pid {holder.pid}" in refused, refused
        shown = helper.vmnet_json("port", "show", port_name)
        assert shown["holder"]["pid"] == holder.pid and shown["holder"]["alive"] is True
    finally:
        _release(holder)
    assert _take(helper, port_name) == "got 2"
    log = helper.read_log()
    assert f"its consumer (pid {holder.pid}) exited" in log or "exited" in log


def test_a_vm_restarted_on_its_port_gets_fresh_sockets_and_traffic(helper, consumer_netns, port_name):
    helper.vmnet_json("port", "add", port_name, "--queues", "2", "--netns", consumer_netns,
                      "--consumer-user", str(NOBODY))
    links.add_address("vmn-" + port_name, HOST_IP, 24)
    for run in range(2):
        proc = exec_responder(helper, consumer_netns, port_name)
        try:
            wait_ready(proc)
            assert probe.ping(CONSUMER_IP, count=3)["received"] == 3, f"run {run}"
        finally:
            stop(proc)


def test_the_holder_is_remembered_across_a_helper_restart(helper, consumer_netns, port_name):
    helper.vmnet_json("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", str(USER_A))
    holder = _hold(helper, port_name)
    try:
        helper.kill(signal.SIGKILL)
        helper.start()
        refused = _take(helper, port_name)
        assert refused.startswith("in-use") and f"pid {holder.pid}" in refused, refused
    finally:
        _release(holder)
    deadline = time.monotonic() + 10
    while "exited" not in helper.read_log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _take(helper, port_name) == "got 1"


HOLD_THEN_ASK = """
import sys
from vmnet.client import Client
from vmnet.errors import VmnetError
c = Client(sys.argv[1])
record, fds = c.call("fds-for-consumer", name=sys.argv[2])
print("first", len(fds), flush=True)
sys.stdin.readline()                    # the admin deletes the port and makes another
try:
    record, fds = c.call("fds-for-consumer", name=sys.argv[3])
    print("second", len(fds), flush=True)
except VmnetError as exc:
    print("second", exc.code, exc.message, flush=True)
sys.stdin.read()
"""


def test_a_consumer_asking_again_on_its_connection_after_its_port_went_cannot_stop_the_helper(
        helper, consumer_netns, port_name):
    """Deleting a port closed its holder's pidfd; the next holder's pidfd, a copy of the same
    connection's, got the same number and the loop's selector refused it (FileExistsError):
    the helper exited. The loop now watches copies of its own."""
    other = port_name[:-1] + ("x" if port_name[-1] != "x" else "y")
    helper.vmnet_json("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", str(USER_A))
    proc = subprocess.Popen([PYTHON, "-I", "-c", HOLD_THEN_ASK, helper.socket, port_name, other], env=helper.env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=as_identity(USER_A, USER_A), cwd="/")
    try:
        assert proc.stdout.readline().strip() == "first 1", proc.stderr.read()
        helper.vmnet("port", "del", port_name)
        helper.vmnet_json("port", "add", other, "--netns", consumer_netns, "--consumer-user", str(USER_A))
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "second 1", proc.stderr.read()
        time.sleep(0.3)                 # a loop pass or two with the new holder watched
        assert helper.proc.poll() is None, helper.read_log()[-3000:]
        assert helper.vmnet_json("port", "show", other)["holder"]["pid"] == proc.pid
    finally:
        _release(proc)
    deadline = time.monotonic() + 10    # its exit is still seen: the port is free again
    while helper.vmnet_json("port", "show", other)["holder"] is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert helper.vmnet_json("port", "show", other)["holder"] is None
    helper.vmnet("port", "del", other)


MEMLOCK = """
import json, sys
from vmnet.client import Client
from vmnet.errors import VmnetError
c = Client(sys.argv[1])
for name in sys.argv[3:]:
    c.call("fds-for-consumer", name=name)
try:
    print(json.dumps(c.call("raise-memlock-for-peer", ports=[sys.argv[2]] * 1000)[0]))
except VmnetError as exc:
    print(json.dumps({"error": exc.message}))
"""


def _planned_mib(helper, port, *take) -> int:
    out = subprocess.run([PYTHON, "-I", "-c", MEMLOCK, helper.socket, port, *take], env=helper.env,
                         capture_output=True, text=True, preexec_fn=as_identity(USER_A, USER_A),
                         cwd="/", timeout=60)
    reply = json.loads(out.stdout)
    if "need" in reply:
        return reply["need"] // 2**20
    return int(re.search(r"needs to lock (\d+) MiB", reply["error"]).group(1))


def test_memlock_plans_a_port_named_twice_once_and_only_live_consumers(shared_helper, port_name):
    helper = shared_helper
    a, b = port_name[:-1] + "a", port_name[:-1] + "b"
    helper.vmnet_json("port", "add", a, "--queues", "2", "--consumer-user", str(USER_A))
    helper.vmnet_json("port", "add", b, "--consumer-user", str(USER_A))
    assert _planned_mib(helper, a, a) == 64                 # 1000 times the same port: once
    assert _take(helper, b) == "got 1"                      # its consumer exited: not counted
    assert _planned_mib(helper, a, a) == 64
    holder = _hold(helper, b)                               # a live consumer of the same uid: counted
    try:
        assert _planned_mib(helper, a, a) == 96
    finally:
        _release(holder)
    out = _take(helper, a)
    assert out == "got 2"
    refused = subprocess.run(
        [PYTHON, "-I", "-c", "import sys\nfrom vmnet.client import call\n"
         "try:\n call(sys.argv[1], 'raise-memlock-for-peer', ports=[sys.argv[2]])\n"
         "except Exception as e: print(e)", helper.socket, a],
        env=helper.env, capture_output=True, text=True, preexec_fn=as_identity(USER_A, USER_A),
        timeout=60).stdout
    assert "does not hold the sockets" in refused


# a pod's port goes into that pod's own netns only: its consumer end, a tap its consumer owns
# and its sockets anywhere else are the host's or another tenant's, whatever allow_unconfined says
OTHER_POD = "9c2f1e44-0b7a-4c1e-9d55-3f2a6b8e7d10"


def _pod_port(h, name, ref, pod_uid=POD_UID):
    """A pod's port as the CNI plugin asks for it; its device names are the port's own, so
    that no device of the host (where an unfixed helper would put them) is ever touched."""
    return h.vmnet("port", "add", name, "--netns", ref, "--ifname", "vp" + name[-7:],
                   "--placeholder-tap", "tp" + name[-7:], "--consumer-user", "107", "--consumer-group", "107",
                   "--pod-uid", pod_uid)


def _devices_in(ref) -> set:
    from pyroute2 import IPRoute
    with netns.entered(ref), IPRoute() as ip:
        return {m.get("IFLA_IFNAME") for m in ip.get_links()}


@pytest.mark.parametrize("whose", ["the helper", "pid 1", "a host process"])
def test_a_pods_port_is_refused_in_the_hosts_or_the_helpers_netns_even_when_unconfined_is_allowed(
        test_netns, port_name, whose):
    if whose == "a host process" and host_process() is None:
        pytest.skip(NO_HOST_PROCESS)
    h = HelperProcess(SHARED_NETNS).start()
    try:
        ref = {"the helper": f"/proc/{h.proc.pid}/ns/net", "pid 1": "/proc/1/ns/net",
               "a host process": f"/proc/{host_process()}/ns/net"}[whose]
        readable = os.access(ref, os.R_OK)
        before = _devices_in(ref) if readable else None
        out = _pod_port(h, port_name, ref)
        if whose == "pid 1" and not readable:
            # root here has no ptrace access to pid 1: the helper cannot open it either
            assert out.returncode == 2 and f"may not open network namespace reference {ref}" in out.stderr
        else:
            assert out.returncode == 8, (out.stdout, out.stderr)
            said = "is the vmnet helper's own" if whose == "the helper" else "is the host's"
            assert f"network namespace {ref} {said}" in out.stderr, out.stderr
            assert "fix: give the pod sandbox's own network namespace" in out.stderr
            assert _devices_in(ref) == before
        assert h.vmnet_json("port", "list")["ports"] == [] and not ports.port_exists(port_name, h.instance)
        assert _devices_in(f"/proc/{h.proc.pid}/ns/net") == {"lo"}
    finally:
        h.cleanup()


def test_a_pods_port_cannot_share_a_netns_with_another_pod_or_a_port_of_no_pod(
        test_netns, consumer_netns, port_name):
    h = HelperProcess(SHARED_NETNS).start()
    plain, first, other, sibling = (port_name + c for c in "abcd")
    try:
        h.vmnet_json("port", "add", plain, "--netns", consumer_netns, "--consumer-user", "107")
        out = _pod_port(h, first, consumer_netns)
        assert out.returncode == 8, out.stderr
        assert f"already holds the consumer end of port {plain} (of no pod)" in out.stderr
        assert f"network namespace /run/netns/{consumer_netns}" in out.stderr
        h.vmnet_json("port", "del", plain)
        assert _pod_port(h, first, consumer_netns).returncode == 0
        out = _pod_port(h, other, consumer_netns, pod_uid=OTHER_POD)
        assert out.returncode == 8, out.stderr
        assert f"already holds the consumer end of port {first} (of pod {POD_UID})" in out.stderr
        assert _pod_port(h, sibling, consumer_netns).returncode == 0         # the same pod's next NIC
        assert {p["name"] for p in h.vmnet_json("port", "list")["ports"]} == {first, sibling}
        assert _devices_in(consumer_netns) == {"lo"} | {f"{k}{n[-7:]}" for n in (first, sibling)
                                                        for k in ("vp", "tp")}
    finally:
        h.cleanup()


# --- 4. credentials and identity -------------------------------------------------

def test_a_connection_opened_by_root_cannot_be_used_by_the_process_it_was_handed_to(helper, port_name):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(helper.socket)
    code = ("import os, socket, sys, json\n"
            "s = socket.socket(fileno=int(sys.argv[1]))\n"
            "s.send(json.dumps({'verb': 'port-create', 'args': {'name': sys.argv[2], 'consumer_uid': 1}}).encode())\n"
            "print(s.recv(65536).decode())\n"
            "print(repr(s.recv(65536)))\n")
    try:
        out = subprocess.run([PYTHON, "-I", "-c", code, str(sock.fileno()), port_name],
                             pass_fds=[sock.fileno()], capture_output=True, text=True, timeout=30,
                             preexec_fn=as_identity(USER_A, USER_A))
    finally:
        sock.close()
    reply, after = out.stdout.splitlines()[:2]
    error = json.loads(reply)["error"]
    assert error["code"] == "permission-denied" and "not by the process that opened" in error["message"]
    assert after == "b''"                    # and the connection is gone
    assert not ports.port_exists(port_name, helper.instance)


def test_a_peer_that_exited_answers_nothing_even_when_its_pid_is_in_use():
    """The cgroup/uid facts come through a pidfd: a dead peer cannot lend a live pid its identity."""
    gone = subprocess.Popen(["true"])
    pidfd = os.pidfd_open(gone.pid)
    gone.wait()
    try:
        # the pid of a running process (ours) with the pidfd of the exited one
        peer = authz.Peer(os.getpid(), os.getuid(), os.getgid(), (), pidfd)
        assert peer.read("cgroup") == "" and peer.cgroups() == []
        assert authz.Policy().consumer_mismatch(peer, {"consumer_uid": os.getuid(),
                                                       "consumer_cgroup": "/"}) is not None
        alive = authz.Peer(os.getpid(), os.getuid(), os.getgid(), (), os.pidfd_open(os.getpid()))
        try:
            assert alive.cgroups()
        finally:
            os.close(alive.pidfd)
    finally:
        os.close(pidfd)


SESSION_PROBE = """
import fcntl, json, os, termios
out = {"sid_is_pid": os.getsid(0) == os.getpid(), "env": dict(os.environ)}
try:
    os.close(os.open("/dev/tty", os.O_RDWR))
    out["tty"] = "controlling terminal"
except OSError as exc:
    out["tty"] = exc.strerror
try:
    fcntl.ioctl(0, termios.TIOCSTI, b"x")
    out["tiocsti"] = "injected"
except OSError as exc:
    out["tiocsti"] = exc.strerror
print("RESULT" + json.dumps(out), flush=True)
"""


def test_vmnet_exec_as_another_user_leaves_the_callers_terminal_and_environment(helper, consumer_netns,
                                                                             port_name):
    import pty
    helper.vmnet_json("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", "nobody")
    pid, master = pty.fork()
    if pid == 0:        # a login-shell-like caller: session leader with the pty as its terminal
        try:
            in_netns(consumer_netns)()
            env = dict(helper.env, SECRET_OF_ROOT="do-not-leak", HOME="/root")
            os.execve(PYTHON, [PYTHON, "-I", "-m", "vmnet", "exec", "--user", "nobody", "--allow-ipc-lock",
                               "--", PYTHON, "-I", "-c", SESSION_PROBE, f"sock-fds=vmnet:{port_name}"], env)
        finally:
            os._exit(127)
    output = b""
    try:
        deadline = time.monotonic() + 60
        while b"RESULT" not in output or not output.endswith(b"\n"):
            r, _, _ = select.select([master], [], [], max(0, deadline - time.monotonic()))
            if not r:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(master)
        os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert "RESULT" in text, text
    result = json.loads(text.split("RESULT", 1)[1].splitlines()[0])
    assert result["sid_is_pid"] is True
    assert result["tty"] != "controlling terminal"
    assert result["tiocsti"] != "injected"
    env = result["env"]
    assert env["USER"] == "nobody" and env["LOGNAME"] == "nobody" and env["HOME"] != "/root"
    assert "SECRET_OF_ROOT" not in env and "VMNET_CONFIG" not in env


def test_a_domain_named_like_another_domains_uuid_cannot_release_its_ports(shared_helper, port_name):
    helper = shared_helper
    victim_uuid = str(uuid.uuid4())
    meta = f'<metadata><vmnet:ports xmlns:vmnet="urn:vmnet:domain:1"><vmnet:port name="{port_name}"/></vmnet:ports></metadata>'
    victim = f"<domain type='qemu'><name>victim</name><uuid>{victim_uuid}</uuid>{meta}</domain>"
    impostor = f"<domain type='qemu'><name>{victim_uuid}</name>{meta}</domain>"
    assert call(helper.socket, "domain-prepare", xml=victim)["owner"] == "uuid:" + victim_uuid
    released = call(helper.socket, "domain-release", xml=impostor)
    assert released["deleted"] == [] and released["owner"] == "name:" + victim_uuid
    assert ports.port_exists(port_name, helper.instance)
    assert call(helper.socket, "domain-release", xml=victim)["deleted"] == [port_name]


@pytest.mark.parametrize("attribute, words", [
    ('consumer-user="\u00b2"', "does not exist"),           # a digit to isdigit(), not to int()
    ('netns="/run/netns/vmnet-no-such-netns"', "does not exist"),
])
def test_bad_domain_metadata_is_invalid_input_with_a_message(shared_helper, port_name, attribute, words):
    helper = shared_helper
    xml = (f"<domain type='qemu'><name>d</name><metadata><vmnet:ports xmlns:vmnet='urn:vmnet:domain:1'>"
           f"<vmnet:port name='{port_name}' {attribute}/></vmnet:ports></metadata></domain>")
    with pytest.raises(Exception) as exc:
        call(helper.socket, "domain-prepare", xml=xml)
    assert exc.value.code in ("invalid-input", "not-found") and words in exc.value.message
    assert "internal error" not in helper.read_log()


def test_a_netns_reference_the_helper_may_not_open_is_invalid_input_naming_it(monkeypatch):
    """EACCES on a reference (seen for /proc/1/ns/net where root lacks ptrace access to pid 1)
    cannot be provoked portably, so os.open is made to answer it here."""
    real = os.open

    def refuse(path, flags, *a, **kw):
        if str(path) == "/proc/4242/ns/net":
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real(path, flags, *a, **kw)
    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(InvalidInput) as exc:
        netns.open_netns("/proc/4242/ns/net")
    assert "/proc/4242/ns/net" in exc.value.message and "may not open" in exc.value.message
    assert exc.value.fix


# --- 5. helper instances never touch each other's ports --------------------------

def test_a_helper_never_removes_another_instances_ports(test_netns, port_name):
    production = HelperProcess("allow_unconfined = true\n").start()
    suite = None
    try:
        production.vmnet_json("port", "add", port_name, "--consumer-user", str(USER_A))
        # what a crash would leave to the suite's instance: a port with pins and no record
        half = port_name[:-1] + ("h" if port_name[-1] != "h" else "i")
        suite = HelperProcess("allow_unconfined = true\n")
        ports.create_port(ports.PortSpec(name=half, consumer_uid=USER_A), suite.instance).close()
        suite.start()
        assert not ports.port_exists(half, suite.instance)        # its own half-made port: removed
        assert ports.port_exists(port_name, production.instance)  # the other instance's: untouched
        mine = production.vmnet_json("port", "show", port_name)
        assert mine["sockets"] is not None
        assert f"removing port {port_name}" not in suite.read_log()
        assert port_name not in suite.read_log()
    finally:
        if suite is not None:
            suite.cleanup()
        production.cleanup()


def test_the_suites_helpers_are_never_the_default_instance():
    h = HelperProcess()
    try:
        assert not h.instance.is_default and h.instance.pin_root != DEFAULT.pin_root
        with open(h.config) as f:
            assert f'instance = "{h.instance.name}"' in f.read()
    finally:
        import shutil
        shutil.rmtree(h.dir)


@pytest.mark.unit
def test_the_default_instance_keeps_vmnets_historical_paths():
    assert DEFAULT.pin_root == "/sys/fs/bpf/vmnet" and DEFAULT.alias is None
    assert DEFAULT.owns_device(None) and not DEFAULT.owns_device("vmnet@t1")
    other = Instance("t1")
    assert other.pin_root == "/sys/fs/bpf/vmnet/@t1" and other.owns_device("vmnet@t1")
    assert not other.owns_device(None)


def test_a_second_helper_on_the_same_instance_is_refused_and_the_first_keeps_its_ports(
        helper, consumer_netns, port_name):
    """Its own socket and state directory, the same instance: at start it would take the first
    helper's live ports for a crash's leftovers and remove them."""
    helper.vmnet_json("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", str(USER_A))
    second = HelperProcess()
    try:
        with open(second.config) as f:      # the same instance, nothing else shared
            lines = [line for line in f.read().splitlines() if not line.startswith("instance = ")]
        with open(second.config, "w") as f:
            f.write("\n".join(lines + [f'instance = "{helper.instance.name}"']) + "\n")
        proc = subprocess.run([PYTHON, "-I", "-m", "vmnet", "helper"], env=second.env, capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert proc.returncode == 4, proc.stderr
        assert "another vmnet helper is running instance" in proc.stderr and "instance of its own" in proc.stderr
    finally:
        shutil.rmtree(second.dir, ignore_errors=True)
    assert helper.vmnet_json("port", "show", port_name)["name"] == port_name
    assert links.link_state("vmn-" + port_name) is not None


# --- connection slots per tenant ------------------------------------------------------

# Inside a fake pod: open up to N connections to the consumer socket, each asking once (a
# reply, even a refusal, means it was served); print how many were served; hold them.
HOLD_SLOTS = r"""
import json, socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
held = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    s.settimeout(5)
    try:
        s.send(json.dumps({"verb": "fds-for-consumer", "args": {"name": "absent"}}).encode())
        if s.recv(65536):
            held.append(s)
            continue
    except OSError:
        pass
    s.close()
print(json.dumps({"served": len(held)}), flush=True)
time.sleep(600)
"""


def _pod_asks_once(pod, path) -> dict:
    code = ("import json, socket, sys; s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); "
            "s.connect(sys.argv[1]); s.settimeout(10); "
            "s.send(json.dumps({'verb': 'fds-for-consumer', 'args': {'name': 'absent'}}).encode()); "
            "r = s.recv(65536); print(r.decode() if r else '{}')")
    out = pod.run([PYTHON, "-I", "-c", code, path], caps=())
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("limits", ["", "max_clients = 6\n"], ids=["per-pod-budget", "pool-full"])
def test_a_pod_holding_every_slot_it_can_does_not_lock_out_another_pod_or_root(test_netns, consumer_netns, limits):
    """Issue: every virt-launcher is uid 107 and slots were counted per uid, so one pod holding 32
    connections locked every other VM's QEMU out of the consumer socket."""
    from launcher_env import FakePod
    other_ns = "vmnet-c" + uuid.uuid4().hex[:8]
    netns.create_named(other_ns)
    h = HelperProcess(limits)
    a, b = FakePod(consumer_netns), FakePod(other_ns)
    try:
        h.start()
        consumer = os.path.join(h.dir, "consumer", "consumer.sock")
        log = os.path.join(h.dir, "pod-a.log")
        holder = a.start([PYTHON, "-I", "-c", HOLD_SLOTS, consumer, "40"], log, caps=())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and holder.poll() is None:
            with open(log) as f:
                if '"served"' in f.read():
                    break
            time.sleep(0.1)
        with open(log) as f:
            served = json.loads(f.read().strip().splitlines()[-1])["served"]
        assert 1 <= served <= 8, f"pod A was served on {served} connections"
        # the other pod's QEMU (the same uid 107) is served ...
        got = _pod_asks_once(b, consumer)
        assert got.get("ok") is False and got["error"]["code"] == "not-found", got
        # ... and root on the admin socket
        with Client(h.socket) as c:
            assert "helper" in c.call("status")[0]
        assert h.proc.poll() is None
        assert "already has 8 connection(s)" in h.read_log() or "freed one of a tenant" in h.read_log()
    finally:
        a.cleanup()
        b.cleanup()
        h.cleanup()
        netns.remove_named(other_ns)
