"""`vmnet-qemu-wrapper` against a helper that answers what it should not.

libvirt shows QEMU's stderr when a start fails, so whatever comes back on
the helper's socket — not JSON, the wrong shape, fields missing or of the
wrong type, another port, too few or too many fds — must end in one
`vmnet-qemu-wrapper: error: ...` line (and its fix), a non-zero exit and no
QEMU, never a traceback. The helper here is a SOCK_SEQPACKET listener of
the test's own that answers each verb from a table.
"""

from __future__ import annotations

import array
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

pytestmark = pytest.mark.unit

WRAPPER = os.path.join(os.path.dirname(sys.executable), "vmnet-qemu-wrapper")
PORT = "web1"
NETDEV = ("af-xdp,id=n0,ifname=vmnet:{p},queues=vmnet:{p},start-queue=vmnet:{p},mode=vmnet:{p},inhibit=on,"
          "sock-fds=vmnet:{p}").format(p=PORT)
DEVICE = "virtio-net-pci,netdev=n0,mac=vmnet:{p},host_mtu=vmnet:{p}".format(p=PORT)
RECORD = {"name": PORT, "queues": 1, "start_queue": 0, "mode": "native", "consumer_ifname": "vmc-web1",
          "mac": "02:00:00:00:00:01", "mtu": 1500, "backend": "veth", "consumer_uid": 107}
# a QEMU that reads every queue: no port is refused for its queues before the reply is looked at
FAKE_QEMU = """#!/bin/sh
if [ "$1" = "-version" ]; then echo "QEMU emulator version 10.2.2"; exit 0; fi
touch {ran}
"""


def ok(result, fds=0):
    return json.dumps({"ok": True, "result": result}).encode(), fds


GOOD = {"port-show": ok(RECORD), "fds-for-consumer": ok(RECORD, 1),
        "raise-memlock-for-peer": ok({"action": "enough", "need": 33554432, "soft": -1, "hard": -1})}


class FakeHelper:
    """Answers each request on its socket with answers[verb]: (payload, number of fds to attach)."""

    def __init__(self, path: str, answers: dict):
        self.answers = answers
        self.verbs: list[str] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.listener.bind(path)
        self.listener.listen(4)
        self.listener.settimeout(60)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(60)
            while True:
                try:
                    data = conn.recv(1 << 20)
                except OSError:
                    return
                if not data:
                    return
                verb = json.loads(data)["verb"]
                self.verbs.append(verb)
                payload, count = self.answers[verb]
                fds = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(count)]
                try:
                    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
                    conn.sendmsg([payload], anc)
                except OSError:
                    return
                finally:
                    for fd in fds:
                        os.close(fd)

    def close(self):
        self.listener.close()
        self.thread.join(10)


def run_wrapper(tmp_path, answers: dict, env: dict | None = None, run: int = 0,
                wrapper: tuple = (WRAPPER,)) -> tuple[subprocess.CompletedProcess, bool, list[str]]:
    """The wrapper, as libvirt starts it, against a fake helper answering `answers` (the rest
    as a helper would): its result, whether QEMU ran, the verbs it asked. `run` numbers
    runs in the same directory (one config file, a helper socket each)."""
    sock = str(tmp_path / f"helper{run}.sock")
    ran = tmp_path / f"qemu-ran{run}"
    qemu = tmp_path / "qemu-system-x86_64"          # named like QEMU: the wrapper asks port-show first
    qemu.write_text(FAKE_QEMU.format(ran=ran))
    qemu.chmod(0o755)
    config = tmp_path / "vmnet.toml"
    if not config.exists():
        config.write_text("")
    helper = FakeHelper(sock, dict(GOOD, **answers))
    try:
        out = subprocess.run([*wrapper, "-machine", "none", "-netdev", NETDEV, "-device", DEVICE],
                             env={"PATH": "/usr/bin:/bin", "VMNET_CONFIG": str(config), "VMNET_SOCKET": sock,
                                  "VMNET_QEMU": str(qemu), **(env or {})},
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, cwd="/")
    finally:
        helper.close()
    return out, ran.exists(), helper.verbs


def test_the_fake_helpers_expected_answers_start_qemu(tmp_path):
    """The harness itself: answered as a helper answers, the wrapper runs QEMU."""
    out, ran, verbs = run_wrapper(tmp_path, {})
    assert out.returncode == 0 and ran, out.stderr
    assert verbs == ["port-show", "fds-for-consumer", "raise-memlock-for-peer"]


@pytest.mark.parametrize("answers, words", [
    ({"port-show": (b"\xff{garbage", 0)}, "the helper sent a reply that is not JSON"),
    ({"port-show": (b'{"result": {}}', 0)}, "the helper sent a malformed reply"),
    ({"port-show": (b'{"ok": false, "error": "nope"}', 0)}, "the helper sent a malformed reply"),
    ({"fds-for-consumer": (b'{"ok": true, "result": [1, 2]}', 1)}, "the helper sent a malformed reply"),
    ({"port-show": ok({"name": PORT})}, "to port-show for port web1 is not one this vmnet understands: it has no "
                                        "'queues'"),
    ({"port-show": ok(dict(RECORD, queues="1"))}, "'queues' is str '1', not int"),
    ({"fds-for-consumer": ok({k: v for k, v in RECORD.items() if k != "mac"}, 1)}, "it has no 'mac'"),
    ({"fds-for-consumer": ok(dict(RECORD, mtu=True), 1)}, "'mtu' is bool 'True', not int"),
    ({"fds-for-consumer": ok(dict(RECORD, mac="zz"), 1)}, "MAC address 'zz' is not valid"),
    ({"fds-for-consumer": ok(dict(RECORD, name="web2"), 1)}, "it describes port 'web2'"),
    ({"fds-for-consumer": ok(dict(RECORD, mode="auto"), 1)}, "'mode' is 'auto', neither 'native' nor 'skb'"),
    ({"fds-for-consumer": ok(dict(RECORD, consumer_ifname="../eth0"), 1)}, "interface name '../eth0' is not valid"),
    ({"fds-for-consumer": ok(dict(RECORD, mtu=9000), 1)}, "MTU 9000 is out of range"),
    ({"fds-for-consumer": ok(dict(RECORD, bind_queues=[0, 1]), 1)}, "'bind_queues' is not a list of 1 queue id(s)"),
    ({"fds-for-consumer": ok(dict(RECORD, bind_queues=[5000]), 1)}, "start queue 5000 is out of range"),
    ({"fds-for-consumer": ok(RECORD, 0)}, "it carried 0 socket fd(s) for 1 (one per queue)"),
    ({"fds-for-consumer": ok(RECORD, 3)}, "it carried 3 socket fd(s) for 1 (one per queue)"),
    ({"port-show": ok(RECORD, 2)}, "it carried 2 socket fd(s) for 0 (the verb hands out none)"),
    ({"fds-for-consumer": ok(RECORD, 70)}, "carried more fds than the 64 a reply ever carries"),
    ({"raise-memlock-for-peer": ok({"action": "ipc-lock"})}, "an 'ipc-lock' plan without the number of bytes"),
    ({"raise-memlock-for-peer": ok({"need": 1})}, "to raise-memlock-for-peer for port web1 is not one this vmnet "
                                                  "understands: it has no 'action' string"),
], ids=["not-json", "no-ok", "error-not-an-object", "result-a-list", "record-without-queues",
        "queues-a-string", "record-without-mac", "mtu-a-bool", "bad-mac", "another-port", "mode-not-resolved",
        "bad-ifname", "mtu-too-big", "bind-queues-too-many", "bind-queue-out-of-range", "no-fds",
        "too-many-fds", "fds-with-port-show", "fds-past-the-limit", "ipc-lock-without-need", "plan-without-action"])
def test_an_unexpected_helper_reply_is_one_clear_wrapper_error_and_no_qemu(tmp_path, answers, words):
    out, ran, verbs = run_wrapper(tmp_path, answers)
    assert out.returncode not in (0, 127) and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.splitlines()
    assert lines and lines[0].startswith("vmnet-qemu-wrapper: error: ") and words in lines[0], out.stderr
    assert len(lines) <= 2 and all(line.startswith("  fix: ") for line in lines[1:]), out.stderr
    assert not ran, "QEMU was started after an answer the wrapper does not understand"
    assert verbs and set(verbs) <= set(GOOD)


def imported(stderr: str) -> set[str]:
    """The modules a process imported, from its -X importtime lines."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.skipif(os.geteuid() != 0, reason="root keeps the decoded configuration (vmnet.config)")
def test_a_vm_start_imports_neither_dataclasses_nor_tomllib(tmp_path):
    """What the wrapper imports is most of what a VM start costs outside the helper (the boot
    storm, docs/helper.md): its path stays free of the port model's dataclasses, and once
    root has decoded the configuration file, of tomllib."""
    from vmnet import config
    existed = os.path.exists(config.CACHE_PATH), os.path.isdir(os.path.dirname(config.CACHE_PATH))
    (tmp_path / "vmnet.toml").write_text('qemu_multiqueue_fixed = false\n')
    try:
        cold, _, _ = run_wrapper(tmp_path, {}, env={"PYTHONPROFILEIMPORTTIME": "1"}, run=1)
        warm, ran, _ = run_wrapper(tmp_path, {}, env={"PYTHONPROFILEIMPORTTIME": "1"}, run=2)
    finally:
        if not existed[0] and os.path.exists(config.CACHE_PATH):
            os.unlink(config.CACHE_PATH)
        if not existed[1]:
            os.rmdir(os.path.dirname(config.CACHE_PATH))
    assert cold.returncode == 0 and warm.returncode == 0 and ran, warm.stderr[-2000:]
    assert "tomllib" in imported(cold.stderr), "the first start did not decode the file: the check below proves nothing"
    assert not {"tomllib", "dataclasses", "inspect"} & imported(warm.stderr), sorted(imported(warm.stderr))


def installed_wrapper(tmp_path) -> str:
    from vmnet.libvirt.hookinstall import install_wrapper
    path = str(tmp_path / "vmnet-qemu-wrapper")
    install_wrapper(path)
    return path


def test_the_wrapper_install_wrapper_installs_starts_qemu(tmp_path):
    """`vmnet libvirt install-wrapper`'s launcher (what install.sh puts in /usr/local/bin) runs the
    same wrapper: vmnet's own Python, isolated and without site."""
    path = installed_wrapper(tmp_path)
    with open(path) as f:
        assert f.readline() == f"#!{sys.executable} -IS\n"
    assert os.stat(path).st_mode & 0o777 == 0o755
    out, ran, verbs = run_wrapper(tmp_path, {}, wrapper=(path,))
    assert out.returncode == 0 and ran, out.stderr
    assert verbs == ["port-show", "fds-for-consumer", "raise-memlock-for-peer"]
    # and its errors are the wrapper's, one clear line
    out, ran, _ = run_wrapper(tmp_path, {"port-show": (b"\xff{garbage", 0)}, run=1, wrapper=(path,))
    assert out.returncode not in (0, 127) and not ran
    assert out.stderr.startswith("vmnet-qemu-wrapper: error: the helper sent a reply that is not JSON"), out.stderr


def test_the_installed_wrapper_loads_no_site(tmp_path):
    """What -S saves every VM start: site and its .pth files are never loaded (a regular install,
    as install.sh makes; an editable one needs site's .pth hooks to find vmnet at all)."""
    from vmnet.libvirt.hookinstall import _site_packages
    if _site_packages() is None:
        pytest.skip("vmnet is installed editable: its launcher loads site to find it (install.sh installs "
                    "it regularly, and there this runs)")
    path = installed_wrapper(tmp_path)
    # the launcher's own interpreter line, with -X importtime (-I ignores PYTHONPROFILEIMPORTTIME)
    out, ran, _ = run_wrapper(tmp_path, {}, wrapper=(sys.executable, "-IS", "-X", "importtime", path))
    assert out.returncode == 0 and ran, out.stderr[-2000:]
    got = imported(out.stderr)
    assert "vmnet.handoff" in got, "the check below proves nothing"
    assert not {"site", "_distutils_hack", "sitecustomize"} & got, sorted(got)
