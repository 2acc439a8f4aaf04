"""The wrapper directory in a real container, as in a virt-launcher pod (the podman tier).

podman (runc; crun does not run on this cgroup v1 hybrid) starts an image
imported from a busybox-only root (no Python, no libraries) as uid 107 with
every capability dropped but CAP_IPC_LOCK (this machine's root cannot raise
another process's memlock limit: no CAP_SYS_RESOURCE), no_new_privs, in the
pod's netns and under the pod's cgroup (`--cgroup-parent
.../kubepods/besteffort/pod<UID>`, so the container's own cgroup is
`.../pod<UID>/libpod-<id>` in every hierarchy, as a runtime makes it), with
the consumer socket and the wrapper directory mounted read-only, as the
device plugin mounts them. libvirt's part — open the placeholder tap and
pass its fd to the emulator — is played by the test (`--preserve-fds`).
The wrapper takes the tap over and execs a stand-in QEMU, a shell script
that holds what it got until told to go; the test reads its argv,
environment, fds and credentials from outside, in /proc.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest
from helpers import HelperProcess, cni_invoke, fd_targets, install_cni
from launcher_env import LAUNCHER_UID, rmdir_patiently

from vmnet.kubevirt import cni

pytestmark = pytest.mark.system

IFNAME, TAP = "pod1a2b3c4d5e6", "tap1a2b3c4d5e6"
SOCKET_IN_POD, RUNTIME_IN_POD = "/mnt/vmnet/consumer/consumer.sock", "/mnt/vmnet/runtime"
STAND_IN_QEMU = """#!/bin/sh
echo READY
read -r line
"""
# what libvirt does with a managed='no' tap: attach to it by name in the pod's netns, pass the fd
OPENER = r"""
import fcntl, os, struct, sys
from vmnet.priv.netns import entered
tap, netns = sys.argv[1], sys.argv[2]
with entered(netns):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", tap.encode(), 0x0002 | 0x1000))   # TUNSETIFF: TAP|NO_PI
os.dup2(fd, 3)
os.execvp(sys.argv[3], sys.argv[3:])
"""


def _podman_ok() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "needs root"
    if not shutil.which("podman") or not shutil.which("runc"):
        return False, "podman and runc are not installed (install.sh installs them)"
    if not os.path.exists("/dev/net/tun"):
        return False, "no /dev/net/tun"
    return True, ""


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A busybox-only image with the stand-in QEMU at KubeVirt's /usr/libexec/qemu-kvm."""
    ok, why = _podman_ok()
    if not ok:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("image") / "root"
    for d in ("bin", "usr/libexec", "mnt/vmnet/consumer", "mnt/vmnet/runtime", "proc", "sys", "dev", "etc"):
        (root / d).mkdir(parents=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", root / "bin" / "busybox")
    for name in ("sh", "env", "readlink", "dirname", "sort", "cat", "sed", "grep"):
        os.symlink("busybox", root / "bin" / name)
    qemu = root / "usr/libexec/qemu-kvm"
    qemu.write_text(STAND_IN_QEMU)
    qemu.chmod(0o755)
    assert not list(root.glob("**/python*"))
    tag = f"localhost/vmnet-test-launcher:{uuid.uuid4().hex[:8]}"
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    out = subprocess.run(["podman", "import", "-q", "-", tag], stdin=tar.stdout, capture_output=True, text=True)
    tar.wait()
    assert out.returncode == 0, out.stderr
    try:
        yield tag
    finally:
        subprocess.run(["podman", "rmi", "-f", tag], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def runtime_dir(image):
    from vmnet.kubevirt import runtime
    path = f"/run/vmnet-test-rt-{uuid.uuid4().hex[:8]}"
    runtime.build(path)
    with open(os.path.join(path, "etc", "vmnet.toml"), "w") as f:
        f.write('qemu = "/usr/libexec/qemu-kvm"\nallow_ipc_lock = true\n')
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Container:
    """One container run under the cgroup parent of pod `pod_uid` (its tree is removed after)."""

    def __init__(self, image: str, helper: HelperProcess, runtime: str, netns: str, pod_uid: str):
        self.tag = uuid.uuid4().hex[:8]
        self.name = f"vmnet-test-{self.tag}"
        self.top = f"vmnet-test-{self.tag}"
        parent = f"/{self.top}/kubepods/besteffort/pod{pod_uid}"
        netdev = json.dumps({"type": "tap", "fd": "3", "id": "hostua-fast"})
        device = json.dumps({"driver": "virtio-net-pci", "netdev": "hostua-fast", "id": "ua-fast"})
        podman = ["podman", "--runtime", "runc", "run", "--rm", "-i", "--name", self.name,
                  "--cgroup-manager", "cgroupfs", "--cgroup-parent", parent,
                  "--network", f"ns:/run/netns/{netns}", "--preserve-fds", "1",
                  "--user", f"{LAUNCHER_UID}:{LAUNCHER_UID}", "--cap-drop", "all", "--cap-add", "ipc_lock",
                  "--security-opt", "no-new-privileges",
                  "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                  "-v", f"{os.path.join(helper.dir, 'consumer')}:{os.path.dirname(SOCKET_IN_POD)}:ro",
                  "-v", f"{runtime}:{RUNTIME_IN_POD}:ro",
                  "-e", f"VMNET_SOCKET={SOCKET_IN_POD}", "-e", "VMNET_QEMU=/usr/libexec/qemu-kvm",
                  image, f"{RUNTIME_IN_POD}/bin/vmnet-qemu-wrapper", "-name", "guest=default_vmi-fast",
                  "-netdev", netdev, "-device", device]
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", OPENER, TAP, f"/run/netns/{netns}"] + podman,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)

    def report(self, timeout: float = 120) -> dict:
        """What the stand-in QEMU got, read from outside (its /proc): argv, environment, fds,
        credentials; {"exit": rc, "stderr": ...} if the container ended instead."""
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            return {"exit": self.proc.wait(timeout), "stderr": line + self.proc.stderr.read()}
        pid = self.pid()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode() for a in f.read().split(b"\0")[:-1]]
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(v.decode().partition("=")[::2] for v in f.read().split(b"\0") if v)
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        return {"pid": pid, "argv": argv[2:], "env": env, "status": status, "fds": fd_targets(pid)}

    def pid(self) -> int:
        out = subprocess.run(["podman", "inspect", "--format", "{{.State.Pid}}", self.name],
                             capture_output=True, text=True, timeout=60)
        return int(out.stdout.strip())

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("go\n")
                self.proc.stdin.flush()
                self.proc.wait(60)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                subprocess.run(["podman", "rm", "-f", "-t", "2", self.name], capture_output=True, timeout=120)
                self.proc.wait(60)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                pipe.close()
            except BrokenPipeError:
                pass
        # podman made the cgroup parent in every hierarchy (and conmon's beside the container's)
        for top in glob.glob(f"/sys/fs/cgroup/*/{self.top}"):
            for path in sorted((d for d, _, _ in os.walk(top)), key=len, reverse=True):
                rmdir_patiently(path)


class PodPort:
    """A helper, and a pod's port made by CNI ADD (DEL, and the helper's end, after)."""

    def __init__(self, netns: str):
        self.netns, self.uid = netns, str(uuid.uuid4())
        self.helper = HelperProcess().start()
        install_cni(self.helper)
        self.conf = {"cniVersion": "1.0.0", "name": "vmnet-fast", "type": "vmnet", "socket": self.helper.socket}
        rc, result, err = self.cni("ADD")
        assert rc == 0, (result, err)
        self.name = cni.port_name("c0ffee", "vmnet-fast", IFNAME)
        self.boxes: list[Container] = []

    def cni(self, command):
        return cni_invoke(self.helper, command, self.conf, self.netns, pod_uid=self.uid)

    def container(self, image: str, runtime: str, pod_uid: str | None = None) -> Container:
        box = Container(image, self.helper, runtime, self.netns, pod_uid or self.uid)
        self.boxes.append(box)
        return box

    def holder(self):
        return self.helper.vmnet_json("port", "show", self.name)["holder"]


@pytest.fixture
def pod(test_netns, consumer_netns):
    p = PodPort(consumer_netns)
    try:
        yield p
    finally:
        for box in p.boxes:
            box.stop()
        rc, out, err = p.cni("DEL")
        p.helper.cleanup()
        assert rc == 0, (out, err)


def test_the_wrapper_in_a_container_without_python_takes_the_tap_over(pod, image, runtime_dir):
    box = pod.container(image, runtime_dir)
    got = box.report()
    assert "exit" not in got, got
    # one argument replaced: the tap netdev by the port's af-xdp netdev, same id; -device kept
    args = got["argv"]
    netdev = json.loads(args[args.index("-netdev") + 1])
    sock_fd = int(netdev["sock-fds"])
    assert netdev == {"type": "af-xdp", "id": "hostua-fast", "ifname": IFNAME, "queues": 1,
                      "start-queue": 0, "mode": netdev["mode"], "inhibit": True, "sock-fds": str(sock_fd)}
    assert json.loads(args[args.index("-device") + 1])["netdev"] == "hostua-fast"
    # the socket is there, the tap's fd is gone, and nothing else was let in
    assert got["fds"][sock_fd].startswith("socket:["), got["fds"]
    assert "/dev/net/tun" not in got["fds"].values(), got["fds"]
    others = {fd for fd, target in got["fds"].items() if target != "/usr/libexec/qemu-kvm"}
    assert others == {0, 1, 2, sock_fd}, str(got["fds"])        # (the shell reads its script)
    # uid 107, no_new_privs, no capability but the memlock one the operator allowed
    assert got["status"]["Uid"].split() == [str(LAUNCHER_UID)] * 4
    assert got["status"]["NoNewPrivs"] == "1"
    # (ambient too: what keeps it across the exec of a uid that is not root)
    assert {got["status"][k] for k in ("CapEff", "CapPrm", "CapAmb")} == {"0000000000004000"}, got["status"]
    # the environment podman gave, less vmnet's own; nothing of the wrapper's interpreter
    assert not [k for k in got["env"] if k.startswith(("VMNET_", "LD_", "PYTHON"))], got["env"]
    assert set(got["env"]) == {"PATH", "HOME", "TERM", "HOSTNAME", "container"}, got["env"]
    # the helper handed the sockets to the container's process itself (pidfd-tracked holder)
    assert pod.holder()["pid"] == got["pid"]
    box.stop()
    deadline = time.monotonic() + 10
    while pod.holder() is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pod.holder() is None     # free again for a restart


def test_a_container_of_another_pod_is_refused_the_ports_sockets(pod, image, runtime_dir):
    """Same uid 107, same netns, same image: only the cgroup says it is another pod's."""
    got = pod.container(image, runtime_dir, pod_uid=str(uuid.uuid4())).report()
    assert got.get("exit", 0) != 0, got
    assert "vmnet-qemu-wrapper: error:" in got["stderr"] and "pod" in got["stderr"], got["stderr"]
    assert pod.holder() is None
    assert "refused fds-for-consumer" in pod.helper.read_log()
