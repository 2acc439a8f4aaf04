"""Shared machinery for tests that talk to a real helper daemon."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from vmnet.priv.instance import Instance

PYTHON = sys.executable
# For tests of something else than confinement that put several ports in one netns: where
# the kernel cannot confine binds (no bpf LSM) the helper refuses that unless allowed.
SHARED_NETNS = "allow_unconfined = true\n"
ADMIN_GID = 64100           # numeric ids: no /etc/passwd entries are created or left behind
USER_A, USER_B = 64001, 64002


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (for a helper's metrics endpoint)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def required_or_skip(env: str, failure: str, skip: str):
    """The kernel matrix's rule for a test this kernel cannot run: a skip saying why, or a
    failure where the entry's kernel must run it (scripts/kernel-matrix sets env to 1)."""
    if os.environ.get(env) == "1":
        pytest.fail(f"{env}=1 but {failure}")
    pytest.skip(skip)


def as_identity(uid: int, gid: int, groups=(), keep_ipc_lock: bool = False):
    """preexec_fn: become uid/gid/groups in the child (optionally with ambient CAP_IPC_LOCK)."""
    def become():
        if keep_ipc_lock:
            from vmnet.priv.confine import confine
            confine(uid, gid, keep_ipc_lock=True)       # no supplementary groups
        else:
            os.setgroups(list(groups))
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
    return become


class HelperProcess:
    """`vmnet helper` in a subprocess, in the caller's netns and mount namespace.

    Always an instance of its own (vmnet.priv.instance): its pins live under
    /sys/fs/bpf/vmnet/@<instance>/ and its devices carry its alias, so at
    start it can only ever remove what a helper of the same instance made —
    never a production helper's ports, nor another test's.
    """

    def __init__(self, extra_config: str = ""):
        tag = uuid.uuid4().hex[:8]
        self.dir = f"/run/vmnet-test-{tag}"
        self.instance = Instance(f"t{tag}")
        os.makedirs(self.dir, mode=0o755)
        self.socket = os.path.join(self.dir, "helper.sock")
        self.state_dir = os.path.join(self.dir, "state")
        self.config = os.path.join(self.dir, "vmnet.toml")
        with open(self.config, "w") as f:
            f.write(f'socket = "{self.socket}"\nstate_dir = "{self.state_dir}"\n'
                    f'instance = "{self.instance.name}"\n'
                    f'admin_group = "{ADMIN_GID}"\nidle_timeout = 5.0\n{extra_config}')
        os.chmod(self.config, 0o644)
        self.env = dict(os.environ, VMNET_CONFIG=self.config)
        self.proc = None
        self.preexec = None                 # run in the helper's process before exec (e.g. fewer caps)
        self.prefix: list[str] = []         # a command the helper runs under (it must exec it)
        self.log = os.path.join(self.dir, "helper.log")

    def start(self, timeout: float = 60.0):
        self._logf = open(self.log, "a")
        self.proc = subprocess.Popen([*self.prefix, PYTHON, "-I", "-m", "vmnet", "helper"], env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=self._logf, stderr=self._logf,
                                     preexec_fn=self.preexec)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.kill()
                raise RuntimeError(f"helper exited: {self.read_log()}")
            with contextlib.suppress(OSError):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                try:
                    s.connect(self.socket)
                    return self
                finally:
                    s.close()
            time.sleep(0.05)
        self.kill()             # never leave a helper running behind a failed start
        raise RuntimeError(f"helper did not start listening in {timeout:g} s: {self.read_log()}")

    def kill(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        if getattr(self, "_logf", None):
            self._logf.close()
            self._logf = None

    def read_log(self) -> str:
        with open(self.log) as f:
            return f.read()

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def vmnet(self, *args, preexec=None, timeout=60, env=None):
        """Run the vmnet CLI against this helper; returns CompletedProcess."""
        return subprocess.run([PYTHON, "-I", "-m", "vmnet", *args], env=dict(self.env, **(env or {})),
                              capture_output=True, text=True, timeout=timeout, preexec_fn=preexec,
                              stdin=subprocess.DEVNULL, cwd="/")

    def vmnet_json(self, *args, **kw):
        out = self.vmnet("--json", *args, **kw)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def cleanup(self):
        """Stop the helper and delete every port it still has."""
        if self.proc and self.proc.poll() is not None:
            with contextlib.suppress(RuntimeError):
                self.start()        # a test killed it: bring it back to delete its ports
        with contextlib.suppress(Exception):
            for port in self.vmnet_json("port", "list")["ports"]:
                self.vmnet("port", "del", port["name"])
        self.kill(signal.SIGTERM)
        shutil.rmtree(self.dir, ignore_errors=True)


def host_process() -> int | None:
    """A process in the host's (initial) netns that root may inspect, or None: pid 1's netns
    often cannot be opened (no ptrace access to it), the shell that started the suite's can.
    Known by the initial netns' fixed inode (vmnet.fields.HOST_NETNS_INO)."""
    from vmnet.fields import HOST_NETNS_INO
    pid = os.getppid()
    while pid > 1:
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == HOST_NETNS_INO:
                return pid
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            return None
    return None


NO_HOST_PROCESS = ("no process of the host's netns to name here (the suite runs in a netns of its own, or "
                   "this kernel numbers the host's netns like any other)")


REFERENCE_CNI = "/usr/lib/cni"          # Debian's containernetworking-plugins
POD_UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def install_cni(h):
    """The plugin as install.sh --cni installs it (a `vmnet` in a CNI bin directory)."""
    os.makedirs(os.path.join(h.dir, "bin"), exist_ok=True)
    os.symlink(os.path.join(os.path.dirname(PYTHON), "vmnet-cni"), os.path.join(h.dir, "bin", "vmnet"))


def cni_invoke(h, command, conf, pod=None, ifname="pod1a2b3c4d5e6", container="c0ffee", plugin="vmnet",
               extra_env=None, stdin=None, pod_uid=POD_UID):
    """Run a CNI plugin as a runtime does: found by type in CNI_PATH, CNI_* environment,
    configuration on stdin. (returncode, parsed stdout or None, stderr)."""
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_IFNAME": ifname,
           "CNI_PATH": f"{h.dir}/bin:{REFERENCE_CNI}", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=virt-launcher-a;"
                       f"K8S_POD_INFRA_CONTAINER_ID={container};K8S_POD_UID={pod_uid}"}
    if pod:
        env["CNI_NETNS"] = f"/run/netns/{pod}"
    env.update(extra_env or {})
    binary = next(os.path.join(d, plugin) for d in env["CNI_PATH"].split(":")
                  if os.path.exists(os.path.join(d, plugin)))
    out = subprocess.run([binary], input=stdin if stdin is not None else json.dumps(conf), env=env,
                         capture_output=True, text=True, timeout=120)
    body = json.loads(out.stdout) if out.stdout.strip() else None
    return out.returncode, body, out.stderr


def capture(ifname: str, ethertype: int, stop_event, found: list):
    """Append every frame of `ethertype` seen on `ifname` to `found` until `stop_event` is set
    (run it on a thread)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
    s.bind((ifname, 0))
    s.settimeout(0.2)
    try:
        while not stop_event.is_set():
            try:
                found.append(s.recv(2048))
            except TimeoutError:
                pass
    finally:
        s.close()


def responder_stats(proc) -> list[dict]:
    """The per-queue counters of a running `vmnet responder` (it prints them on SIGUSR1)."""
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("{") and json.loads(line).get("event") == "stats":
            return json.loads(line)["queues"]
    raise AssertionError("the responder sent no stats")


def fd_targets(pid: int) -> dict[int, str]:
    """fd -> what it points to (socket:[inode], a path, ...) of process `pid`."""
    fds = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            fds[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            pass
    return fds


def file_shows(path: str, marker: str, timeout: float = 180) -> bool:
    """Whether `marker` appears in file `path` (a guest's serial log) within `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and marker in open(path, errors="replace").read():
            return True
        time.sleep(0.5)
    return False
