"""A virt-launcher pod without Kubernetes: a fake pod cgroup, its netns, libvirtd as uid 107.

What KubeVirt's compute container is, as far as vmnet can tell: processes
of uid/gid 107 with no capabilities but NET_BIND_SERVICE and no_new_privs,
in the pod's network namespace and in its cgroup
(`.../kubepods/besteffort/pod<UID>/<container>` with the cgroupfs driver,
`.../kubepods-besteffort-pod<UID_>.slice/cri-containerd-<id>.scope` with
systemd's), with the consumer socket and the wrapper directory mounted into
its filesystem, running libvirt's QEMU driver unprivileged. Debian's
libvirt packages ship the monolithic libvirtd, not virtqemud: libvirtd
run as a non-root user is the same QEMU driver in session mode.

This machine cannot raise a memlock hard limit (root lacks
CAP_SYS_RESOURCE), so the pod also keeps CAP_IPC_LOCK, as a pod whose VMI
sets reservedOverhead.memLock would get an unlimited limit instead.

Everything made here — cgroup directories (under a vmnet-test-<tag>
directory of each hierarchy), the run directory — is removed by cleanup().
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

LAUNCHER_UID = 107
PODEXEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "podexec.py")
CGROUP_ROOT = "/sys/fs/cgroup"


def cgroup_hierarchies() -> dict[str, str]:
    """name -> mount point of a v1 hierarchy this test may use, and "unified" for v2."""
    out = {}
    for name in ("pids", "unified"):
        path = os.path.join(CGROUP_ROOT, name)
        if os.path.isdir(path) and os.access(os.path.join(path, "cgroup.procs"), os.W_OK):
            out[name] = path
    if not out and os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")):
        out["unified"] = CGROUP_ROOT            # a v2-only machine
    return out


def rmdir_patiently(path: str, tries: int = 50):
    """rmdir a cgroup directory, waiting for the kernel to let its last process go."""
    for _ in range(tries):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


class FakePod:
    """A pod UID, its netns (given) and its cgroups; processes are started into it."""

    def __init__(self, netns: str, uid: str | None = None, container: str = "compute"):
        self.uid = uid or str(uuid.uuid4())
        self.netns = netns
        self.tag = uuid.uuid4().hex[:8]
        self.cgroups, self.made = [], []
        for name, root in cgroup_hierarchies().items():
            top = os.path.join(root, f"vmnet-test-{self.tag}")
            if name == "unified":     # systemd driver spelling on v2
                parts = ["kubepods.slice", "kubepods-besteffort.slice",
                         f"kubepods-besteffort-pod{self.uid.replace('-', '_')}.slice",
                         f"cri-containerd-{self.tag}{container}.scope"]
            else:                     # cgroupfs driver spelling on v1
                parts = ["kubepods", "besteffort", f"pod{self.uid}", f"{self.tag}{container}"]
            path = top
            for part in [""] + parts:
                path = os.path.join(path, part) if part else path
                os.mkdir(path)
                self.made.append(path)
            self.cgroups.append(path)
        self.procs: list[subprocess.Popen] = []

    def spec(self, mounts=(), env=None, caps=("net_bind_service", "ipc_lock"), netns: str | None = "pod",
             cgroups: list[str] | None = None, uid: int = LAUNCHER_UID, gid: int = LAUNCHER_UID) -> str:
        return json.dumps({"cgroups": self.cgroups if cgroups is None else cgroups,
                           "netns": f"/run/netns/{self.netns}" if netns == "pod" else netns,
                           "uid": uid, "gid": gid, "caps": list(caps), "mounts": [list(m) for m in mounts],
                           "env": env or {"PATH": "/usr/bin:/bin"}})

    def run(self, argv, timeout=120, **spec) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-I", PODEXEC, self.spec(**spec), "--"] + list(argv),
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def start(self, argv, log: str, **spec) -> subprocess.Popen:
        with open(log, "a") as f:
            p = subprocess.Popen([sys.executable, "-I", PODEXEC, self.spec(**spec), "--"] + list(argv),
                                 stdout=f, stderr=f, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def pids(self) -> set[int]:
        out = set()
        for cg in self.cgroups:
            for root, _, _ in os.walk(cg):
                with contextlib.suppress(OSError), open(os.path.join(root, "cgroup.procs")) as f:
                    out |= {int(x) for x in f.read().split()}
        return out

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
        deadline = time.monotonic() + 20
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        for path in reversed(self.made):
            rmdir_patiently(path)


class SessionLibvirt:
    """libvirtd in session mode as the pod's uid, inside the pod, with the vmnet mounts."""

    def __init__(self, pod: FakePod, base: str, mounts=(), host_uuid: str | None = None):
        """host_uuid: this "node's" (two launchers on one machine migrate between them only when
        their libvirtds have host UUIDs of their own)."""
        self.pod = pod
        self.dir = os.path.join(base, "launcher")
        for d in ("home", "run", "config/libvirt", "cache"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)
        with open(os.path.join(self.dir, "config/libvirt/qemu.conf"), "w") as f:
            # what cmd/virt-launcher/qemu.conf says that matters here; QEMU's output in a file
            f.write('stdio_handler = "file"\n')
        with open(os.path.join(self.dir, "config/libvirt/libvirtd.conf"), "w") as f:
            f.write('log_filters = "1:qemu 1:util.command 3:*"\nlog_outputs = "1:file:%s"\n'
                    % os.path.join(self.dir, "libvirtd.log"))
            if host_uuid:
                f.write(f'host_uuid = "{host_uuid}"\n')
        # the launcher image's own users: libvirt looks its uid up
        for name, line in (("passwd", f"qemu:x:{LAUNCHER_UID}:{LAUNCHER_UID}:qemu:/:/sbin/nologin\n"),
                           ("group", f"qemu:x:{LAUNCHER_UID}:\n")):
            with open(f"/etc/{name}") as src, open(os.path.join(self.dir, name), "w") as dst:
                dst.write(src.read() + line)
        subprocess.run(["chown", "-R", f"{LAUNCHER_UID}:{LAUNCHER_UID}", self.dir], check=True)
        os.chmod(base, 0o755)
        self.mounts = list(mounts) + [(os.path.join(self.dir, "passwd"), "/etc/passwd", True),
                                      (os.path.join(self.dir, "group"), "/etc/group", True)]
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": os.path.join(self.dir, "home"),
                    "XDG_RUNTIME_DIR": os.path.join(self.dir, "run"),
                    "XDG_CONFIG_HOME": os.path.join(self.dir, "config"),
                    "XDG_CACHE_HOME": os.path.join(self.dir, "cache"),
                    "LIBVIRT_AUTOSTART": "0"}
        self.socket = os.path.join(self.dir, "run", "libvirt", "libvirt-sock")
        self.proc = None

    def start(self, timeout=60):
        self.proc = self.pod.start(["/usr/sbin/libvirtd", "--verbose"], os.path.join(self.dir, "stdout.log"),
                                   mounts=self.mounts, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("libvirtd exited: " + self.log())
            if os.path.exists(self.socket) and self.virsh("uri").returncode == 0:
                return self
            time.sleep(0.2)
        raise RuntimeError("libvirtd (session) did not start: " + self.log())

    def virsh(self, *args, timeout=180) -> subprocess.CompletedProcess:
        return self.pod.run(["/usr/bin/virsh", "-c", f"qemu:///session?socket={self.socket}", *args],
                            timeout=timeout, mounts=self.mounts, env=self.env)

    def log(self) -> str:
        out = ""
        for name in ("stdout.log", "libvirtd.log"):
            with contextlib.suppress(OSError), open(os.path.join(self.dir, name), errors="replace") as f:
                out += f"--- {name}\n" + f.read()[-4000:]
        return out

    def qemu_log(self, domain: str) -> str:
        path = os.path.join(self.dir, "cache", "libvirt", "qemu", "log", f"{domain}.log")
        with contextlib.suppress(OSError), open(path, errors="replace") as f:
            return f.read()[-6000:]
        return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(20)
        shutil.rmtree(self.dir, ignore_errors=True)
