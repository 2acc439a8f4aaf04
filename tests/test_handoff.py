"""The fd handoff as QEMU gets it: `vmnet exec` and `vmnet-qemu-wrapper` start the
responder unprivileged, with only the port's sockets, and it answers ping."""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import HelperProcess, as_identity, fd_targets

from vmnet import probe
from vmnet.caps import has_capability, process_credentials
from vmnet.priv import links, netns

pytestmark = pytest.mark.netns

NOBODY = 65534
HOST_IP, CONSUMER_IP = "198.18.0.1", "198.18.0.2"
WRAPPER = os.path.join(os.path.dirname(sys.executable), "vmnet-qemu-wrapper")
NETDEV = "af-xdp,id=n0,ifname=vmnet:{p},queues=vmnet:{p},start-queue=vmnet:{p},mode=vmnet:{p},inhibit=on,sock-fds=vmnet:{p}"
DEVICE = "virtio-net-pci,netdev=n0,mac=vmnet:{p},host_mtu=vmnet:{p}"


def responder_args(port):
    return ["-I", "-m", "vmnet", "respond", "--netdev", NETDEV.format(p=port),
            "--device", DEVICE.format(p=port), "--ip", CONSUMER_IP]


def in_netns(ref, then=None):
    def pre():
        fd = netns.open_netns(ref)
        netns._setns(fd)
        os.close(fd)
        if then:
            then()
    return pre


def wait_ready(proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        if not r:
            break
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("{") and json.loads(line).get("event") == "ready":
            return json.loads(line)
    proc.kill()
    raise AssertionError(f"responder not ready: {proc.stderr.read()}")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for f in (proc.stdout, proc.stderr):
        if f:
            f.close()


@pytest.fixture
def port(helper, consumer_netns, port_name):
    helper.vmnet_json("port", "add", port_name, "--queues", "2", "--netns", consumer_netns,
                      "--consumer-user", str(NOBODY))
    links.add_address("vmn-" + port_name, HOST_IP, 24)
    return port_name


def check_unprivileged_with_only_the_sockets(pid, queues):
    creds = process_credentials(pid)
    assert creds["uid"] == NOBODY and creds["no_new_privs"]
    assert set(creds["effective"]) <= {"ipc_lock"} and set(creds["permitted"]) <= {"ipc_lock"}
    fds = fd_targets(pid)
    extra = {fd: t for fd, t in fds.items() if fd > 2}
    # the AF_XDP sockets (each also referenced by the ring mappings' own fds), nothing else
    assert all(t.startswith("socket:[") for t in extra.values()), extra
    assert len(set(extra.values())) == queues, extra


def exec_responder(helper, consumer_netns, port):
    """`vmnet exec` the responder as nobody in the consumer's netns, as root would start QEMU."""
    return subprocess.Popen(
        [sys.executable, "-I", "-m", "vmnet", "exec", "--user", "nobody", "--allow-ipc-lock", "--",
         sys.executable] + responder_args(port),
        env=helper.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=in_netns(consumer_netns), cwd="/")


def test_vmnet_exec_starts_the_responder_unprivileged_and_it_answers_ping(helper, consumer_netns, port):
    proc = exec_responder(helper, consumer_netns, port)
    try:
        ready = wait_ready(proc)
        assert ready["queues"] == [0, 1] and ready["mode"] == "native"
        assert probe.ping(CONSUMER_IP, count=3)["received"] == 3
        check_unprivileged_with_only_the_sockets(proc.pid, 2)
        assert process_credentials(proc.pid)["bounding"] == []
    finally:
        stop(proc)


def test_wrapper_runs_the_real_qemu_with_the_ports_fds_and_no_privileges(test_netns, consumer_netns, port_name):
    h = HelperProcess('allow_ipc_lock = true\n').start()
    proc = None
    try:
        h.vmnet_json("port", "add", port_name, "--queues", "2", "--netns", consumer_netns,
                     "--consumer-user", str(NOBODY))
        links.add_address("vmn-" + port_name, HOST_IP, 24)
        log = os.path.join(h.dir, "wrapper.log")
        open(log, "w").close()
        os.chown(log, NOBODY, NOBODY)
        env = dict(h.env, VMNET_QEMU=sys.executable, VMNET_WRAPPER_LOG=log)
        # launched the way libvirt launches QEMU: an unprivileged uid; here it also
        # holds CAP_IPC_LOCK, because this machine's root cannot raise memlock
        proc = subprocess.Popen([WRAPPER] + responder_args(port_name), env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd="/", preexec_fn=in_netns(
                                    consumer_netns, as_identity(NOBODY, NOBODY, keep_ipc_lock=True)))
        wait_ready(proc)
        assert probe.ping(CONSUMER_IP, count=3)["received"] == 3
        check_unprivileged_with_only_the_sockets(proc.pid, 2)
        with open(log) as f:
            events = {e["event"]: e for e in map(json.loads, f)}
        # a helper that can raise memlock (CAP_SYS_RESOURCE, e.g. in a kernel-matrix guest) does
        want = "raise" if has_capability("sys_resource") else "ipc-lock"
        assert events["memlock"]["memlock"]["action"] == want
        event = events["substituted"]
        assert len(event["fds"]) == 2
        fds = ":".join(map(str, event["fds"]))
        assert f"ifname=vmc-{port_name},queues=2,start-queue=0,mode=native,inhibit=on,sock-fds={fds}" in " ".join(event["argv"])
        assert "host_mtu=3506" in " ".join(event["argv"])
    finally:
        if proc:
            stop(proc)
        h.cleanup()


def test_wrapper_without_memlock_or_fallback_fails_clearly(helper, consumer_netns, port):
    if process_credentials()["effective"].count("sys_resource"):
        pytest.skip("the helper can raise memlock here, so this failure cannot happen")
    out = subprocess.run([WRAPPER] + responder_args(port), env=dict(helper.env, VMNET_QEMU=sys.executable),
                         capture_output=True, text=True, cwd="/", stdin=subprocess.DEVNULL,
                         preexec_fn=in_netns(consumer_netns, as_identity(NOBODY, NOBODY)), timeout=60)
    assert out.returncode == 6, out.stderr
    assert "needs to lock 64 MiB" in out.stderr and "fix:" in out.stderr


def test_wrapper_passes_probe_argv_through_unchanged(tmp_path):
    record = tmp_path / "argv.json"
    fake = tmp_path / "qemu"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    argv = ["-machine", "none,accel=kvm:tcg", "-qmp", "unix:/tmp/x.sock,server=on,wait=off",
            "-nodefaults", "-nographic", "", "a b", "-name", "vm,,with,,commas"]
    out = subprocess.run([WRAPPER] + argv, env=dict(os.environ, VMNET_QEMU=str(fake)),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(record.read_text()) == argv


@pytest.mark.system
def test_wrapper_passthrough_with_debians_qemu():
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        pytest.skip("Debian's qemu-system-x86_64 is not installed")
    env = dict(os.environ, VMNET_QEMU=qemu)
    for args in (["-version"], ["-netdev", "help"], ["-machine", "help"]):
        direct = subprocess.run([qemu] + args, capture_output=True, text=True, timeout=60)
        wrapped = subprocess.run([WRAPPER] + args, capture_output=True, text=True, timeout=60, env=env)
        assert (wrapped.returncode, wrapped.stdout) == (direct.returncode, direct.stdout)


def test_killing_the_helper_during_traffic_loses_nothing(helper, consumer_netns, port):
    proc = exec_responder(helper, consumer_netns, port)
    try:
        wait_ready(proc)
        ping = subprocess.Popen(["ping", "-c", "30", "-i", "0.05", "-W", "1", CONSUMER_IP],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(0.4)
        helper.kill(signal.SIGKILL)
        time.sleep(0.3)
        helper.start()
        out, _ = ping.communicate(timeout=60)
        assert " 0% packet loss" in out, out
        status = helper.vmnet_json("status")
        (p,) = status["ports"]
        assert p["name"] == port and p["sockets"] is None and "restarted" in p["sockets_note"]
        assert probe.ping(CONSUMER_IP, count=2)["received"] == 2
    finally:
        stop(proc)


FAKE_QEMU = """#!/bin/sh
# a stand-in for QEMU: answers -version like one, records any other argv
if [ "$1" = "-version" ]; then echo "QEMU emulator version {version} (Debian)"; exit 0; fi
echo "$@" > {record}
"""


@pytest.mark.parametrize("version, queues, refused", [
    ("10.0.13", 2, "reads only one queue of an af-xdp netdev (the first"),
    ("10.2.2", 4, "reads only one queue of an af-xdp netdev (the last"),
    ("10.2.2", 1, None),
])
def test_the_wrapper_refuses_a_multiqueue_port_to_a_qemu_that_reads_one_queue(
        test_netns, consumer_netns, port_name, version, queues, refused):
    h = HelperProcess('allow_ipc_lock = true\n').start()
    try:
        h.vmnet_json("port", "add", port_name, "--queues", str(queues), "--netns", consumer_netns,
                     "--consumer-user", str(NOBODY))
        qemu = os.path.join(h.dir, "qemu-system-x86_64")          # named like QEMU: its rules apply
        record = os.path.join(h.dir, "argv")
        with open(qemu, "w") as f:
            f.write(FAKE_QEMU.format(version=version, record=record))
        os.chmod(qemu, 0o755)
        os.chmod(h.dir, 0o777)            # the fake QEMU, run as nobody, writes its record here
        out = subprocess.run([WRAPPER] + responder_args(port_name)[4:], capture_output=True, text=True,
                             timeout=60, cwd="/", stdin=subprocess.DEVNULL,
                             env=dict(h.env, VMNET_QEMU=qemu, HOME=h.dir),
                             preexec_fn=in_netns(consumer_netns, as_identity(NOBODY, NOBODY, keep_ipc_lock=True)))
        if refused:
            assert out.returncode == 5, out.stderr
            assert f"QEMU {version}" in out.stderr and refused in out.stderr and "net_init_af_xdp" in out.stderr
            assert "fix: give the port 1 queue" in out.stderr
            assert not os.path.exists(record)
            assert h.vmnet_json("port", "show", port_name)["holder"] is None    # no socket was taken
        else:
            assert os.path.exists(record), out.stderr
    finally:
        h.cleanup()
