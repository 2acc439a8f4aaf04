"""The vmnet command as a user runs it: exit codes, messages, JSON."""

import json
import os
import resource
import subprocess
import sys

import pytest

# -I: the installed vmnet, never the source tree in the working directory
VMNET = [sys.executable, "-I", "-m", "vmnet"]


def run(*args, preexec=None):
    return subprocess.run(VMNET + list(args), capture_output=True, text=True, timeout=300,
                          preexec_fn=preexec, stdin=subprocess.DEVNULL)


@pytest.mark.unit
def test_help_explains_every_command():
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("selftest", "respond"):
        assert cmd in out.stdout
    assert "unprivileged" in run("selftest", "--help").stdout


@pytest.mark.unit
def test_bad_queue_count_is_a_usage_error():
    out = run("selftest", "--queues", "0")
    assert out.returncode == 2
    assert "0" in out.stderr and "1<=x<=64" in out.stderr


@pytest.mark.netns
def test_responder_refuses_to_run_with_privileges():
    out = run("respond", "--netdev", "af-xdp,id=x,ifname=lo,inhibit=on,sock-fds=99", "--device",
              "virtio-net-pci,mac=02:00:00:00:00:01", "--ip", "198.18.0.2")
    assert out.returncode == 8
    assert "must run unprivileged" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.netns
def test_selftest_json_reports_each_row():
    out = run("--json", "selftest", "--mode", "skb", "--queues", "2")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["passed"] is True
    (row,) = data["rows"]
    assert (row["mode"], row["queues"], row["ok"]) == ("skb", 2, True)
    assert row["memlock"] in ("enough", "raise", "ipc-lock")


def _without_sys_resource_and_small_memlock():
    import prctl
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (2**20, 2**20))
    prctl.capbset_drop(prctl.CAP_SYS_RESOURCE)
    prctl.cap_effective.sys_resource = False
    prctl.cap_permitted.sys_resource = False


@pytest.mark.netns
def test_memlock_too_low_without_fallback_fails_before_anything_exists():
    out = run("selftest", "--no-ipc-lock", "--mode", "skb", "--queues", "1",
              preexec=_without_sys_resource_and_small_memlock)
    assert out.returncode == 6, out.stdout + out.stderr
    assert "needs to lock 32 MiB" in out.stderr
    assert "1 MiB" in out.stderr
    assert "--allow-ipc-lock" in out.stderr and "CAP_SYS_RESOURCE" in out.stderr
    assert not os.path.exists("/sys/fs/bpf/vmnet") or not os.listdir("/sys/fs/bpf/vmnet")


@pytest.mark.netns
def test_doctor_prints_one_line_per_check_and_passes_here():
    out = run("doctor")
    assert out.returncode == 0, out.stderr
    for name in ("af-xdp", "btf", "bpf-link", "netkit", "queue-lease", "bpffs", "memlock", "qemu", "libvirt"):
        assert f"] {name}:" in out.stdout
    data = json.loads(run("--json", "doctor").stdout)
    assert {c["name"] for c in data["checks"]} >= {"af-xdp", "netkit", "qemu"}


@pytest.mark.unit
def test_selftest_refuses_native_mode_on_netkit():
    out = run("selftest", "--backend", "netkit", "--mode", "native")
    assert out.returncode == 2 and "netkit has no native XDP" in out.stderr


@pytest.mark.netns
def test_selftest_without_privileges_says_it_needs_root():
    def as_nobody():
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
    out = subprocess.run(VMNET + ["selftest"], capture_output=True, text=True, timeout=60,
                         preexec_fn=as_nobody, cwd="/")
    assert out.returncode == 8 and "sudo vmnet selftest" in out.stderr


@pytest.mark.unit
def test_libvirt_inject_declare_only_from_stdin():
    src = os.path.join(os.path.dirname(__file__), "golden", "with-commandline.in.xml")
    with open(src) as f:
        out = subprocess.run(VMNET + ["libvirt", "inject", "-", "--port", "db1", "--declare-only"], stdin=f,
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert '<vmnet:port name="db1"' in out.stdout
    assert "/usr/bin/qemu-system-x86_64" in out.stdout and "sock-fds=vmnet:" not in out.stdout
