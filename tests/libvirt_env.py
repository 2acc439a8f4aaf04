"""A real libvirtd for the system tier: started without systemd, always stopped.

The vmnet hook is installed (pinned to a test helper's configuration) before
libvirtd starts, because libvirtd reads its hooks at start-up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid

from helpers import PYTHON, SHARED_NETNS, HelperProcess

HOOK = "/etc/libvirt/hooks/qemu.d/vmnet"
QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"
BASE_DOMAIN = """<domain type="qemu">
  <name>{name}</name>
  <memory unit="MiB">96</memory>
  <vcpu>1</vcpu>
  <os><type arch="x86_64" machine="pc">hvm</type></os>
  <devices>
    <emulator>{qemu}</emulator>
  </devices>
</domain>
"""


def missing() -> str | None:
    for tool in ("libvirtd", "virtlogd", "virsh"):
        if not shutil.which(tool):
            return f"{tool} is not installed (install.sh installs libvirt 11.3 from bookworm-backports)"
    if not os.path.exists(QEMU):
        return "qemu-system-x86_64 is not installed"
    return None


def require(what: str = "starts libvirtd") -> None:
    """Skip, saying why, where a test cannot start a libvirtd of its own (not root, not installed)."""
    import pytest
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {what}")
    reason = missing()
    if reason:
        pytest.skip(reason)


def write_wrapper(path: str, config: str, qemu: str, log: str | None = None) -> str:
    """vmnet-qemu-wrapper as a domain's <emulator>: pinned to the helper of `config`, execing
    `qemu`, logging its argv to `log` if given."""
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\nexport VMNET_CONFIG={config} VMNET_QEMU={qemu}"
                + (f" VMNET_WRAPPER_LOG={log}" if log else "") + "\n"
                f"exec {os.path.join(os.path.dirname(PYTHON), 'vmnet-qemu-wrapper')} \"$@\"\n")
    os.chmod(path, 0o755)
    return path


def _pid(path):
    with contextlib.suppress(OSError, ValueError):
        with open(path) as f:
            return int(f.read().strip())
    return None


def _alive(pid):
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _terminate(pid: int | None):
    """SIGTERM a daemon this module started, and SIGKILL it if it is still there after 30 s
    (libvirtd answers SIGTERM only once its start-up, QEMU probes included, is over)."""
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)


class Libvirt:
    """qemu_conf: text that replaces /etc/libvirt/qemu.conf for this libvirtd only
    (bind-mounted in a mount namespace of its own; the file on disk is untouched)."""

    def __init__(self, qemu_conf: str | None = None, helper_config: str = ""):
        # every domain's QEMU, and so every port's consumer end, is in the host's netns; and the
        # tests look at the wrapper's argv for 2-queue ports (Debian's QEMU has no af-xdp at all,
        # so the one-queue limit of released QEMUs is not what these tests are about:
        # test_handoff.py tests the wrapper's refusal)
        self.helper = HelperProcess(SHARED_NETNS + "qemu_multiqueue_fixed = true\n" + helper_config)
        self.qemu_conf = qemu_conf
        self.started = []

    def start(self):
        if _alive(_pid("/run/libvirtd.pid")):
            raise RuntimeError("a libvirtd is already running; the system tests need their own")
        self.helper.start()
        subprocess.run([PYTHON, "-I", "-m", "vmnet", "libvirt", "install-hook", "--config", self.helper.config],
                       check=True, capture_output=True)
        # the wrapper as libvirt's <emulator>: pinned to the test helper, logging its argv
        self.wrapper = os.path.join(self.helper.dir, "qemu-wrapper")
        self.wrapper_log = os.path.join(self.helper.dir, "wrapper.log")
        open(self.wrapper_log, "w").close()
        os.chmod(self.wrapper_log, 0o666)
        write_wrapper(self.wrapper, self.helper.config, QEMU, self.wrapper_log)
        for daemon, pidfile in (("virtlogd", "/run/virtlogd.pid"), ("libvirtd", "/run/libvirtd.pid")):
            if not _alive(_pid(pidfile)):
                subprocess.run(self._daemon_argv(daemon), check=True)
                self.started.append(pidfile)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True).returncode == 0:
                return self
            time.sleep(0.2)
        raise RuntimeError("libvirtd did not come up")

    def _daemon_argv(self, daemon: str) -> list[str]:
        if daemon != "libvirtd" or self.qemu_conf is None:
            return [daemon, "-d"]
        conf = os.path.join(self.helper.dir, "qemu.conf")
        with open(conf, "w") as f:
            f.write(self.qemu_conf)
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$1" /etc/libvirt/qemu.conf && exec libvirtd -d', "sh", conf]

    def restart_libvirtd(self):
        """Stop libvirtd and start it again (the hook gets `reconnect` for running domains)."""
        _terminate(_pid("/run/libvirtd.pid"))
        subprocess.run(self._daemon_argv("libvirtd"), check=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("libvirtd did not come back")

    def define(self, name: str, xml: str) -> str:
        """Define domain `name` from `xml` (written to a file, as virsh reads it); its name."""
        path = os.path.join(self.helper.dir, name + ".xml")
        with open(path, "w") as f:
            f.write(xml)
        out = self.virsh("define", path)
        assert out.returncode == 0, out.stderr
        return name

    def virsh(self, *args, check=False):
        return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True,
                              timeout=120, check=check)

    def stop(self):
        """Undo whatever start() got to, in reverse."""
        listed = self.virsh("list", "--all", "--name") if self.started else None
        for dom in (listed.stdout.split() if listed and listed.returncode == 0 else []):
            if dom.startswith("vmnet-t"):
                self.virsh("destroy", dom)
                self.virsh("undefine", dom)
        for pidfile in reversed(self.started):
            _terminate(_pid(pidfile))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(HOOK)
        self.helper.cleanup()


class PrivateLibvirt:
    """A system-mode libvirtd of the test's own: in a netns and a mount namespace of its own,
    with private /run/libvirt, /etc/libvirt (a copy of the host's, with the vmnet hook),
    /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt, so that its networks (virbr0,
    their dnsmasq and firewall rules) never touch the host's. virsh reaches it through its
    socket; the helper reads its networks' status where its /run/libvirt really is
    (libvirt_run_dir).

    listen: a host of a migration pair (tests/migration_env.py): a host_uuid of its own (libvirt
    refuses to migrate to "the same host") and TCP without authentication on its netns's
    addresses. mounts: {path: file} bind-mounted in its mount namespace only (one <emulator>
    path that is each host's own wrapper)."""

    DIRS = {"run": "/run/libvirt", "etc": "/etc/libvirt", "lib": "/var/lib/libvirt",
            "cache": "/var/cache/libvirt", "log": "/var/log/libvirt"}

    def __init__(self, netns_name: str, helper_config: str = "", qemu_conf: str | None = None,
                 listen: bool = False, mounts: dict | None = None):
        import tempfile
        self.netns = netns_name
        self.qemu_conf = qemu_conf
        self.listen, self.mounts = listen, dict(mounts or {})
        self.dir = tempfile.mkdtemp(prefix="vmnet-libvirt-")
        self.run_dir = os.path.join(self.dir, "run")
        self.helper = HelperProcess(f'libvirt_run_dir = "{self.run_dir}"\n' + helper_config)
        self.uri = f"qemu:///system?socket={self.run_dir}/libvirt-sock"

    def start(self) -> "PrivateLibvirt":
        from vmnet.priv import netns
        for name in self.DIRS:
            os.makedirs(os.path.join(self.dir, name))
        subprocess.run(["cp", "-a", "/etc/libvirt/.", os.path.join(self.dir, "etc")], check=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, "etc", "hooks", "qemu.d", "vmnet"))    # the host's, if any
        if self.qemu_conf is not None:
            with open(os.path.join(self.dir, "etc", "qemu.conf"), "w") as f:
                f.write(self.qemu_conf)
        if self.listen:
            with open(os.path.join(self.dir, "etc", "libvirtd.conf"), "a") as f:
                f.write(f'\nhost_uuid = "{uuid.uuid4()}"\nlisten_tcp = 1\nlisten_tls = 0\nauth_tcp = "none"\n')
        with netns.entered(self.netns):
            self.helper.start()
        subprocess.run([PYTHON, "-I", "-m", "vmnet", "libvirt", "install-hook", "--config", self.helper.config,
                        "--path", os.path.join(self.dir, "etc", "hooks", "qemu.d", "vmnet")],
                       check=True, capture_output=True)
        # /run/libvirt exists only once a libvirtd has run on this machine: the mount point is made
        # (empty, as libvirtd would make it) and left, as libvirtd leaves it
        mounts = " && ".join([f"mkdir -p {target} && mount --bind {self.dir}/{name} {target}"
                              for name, target in self.DIRS.items()]
                             + [f"mount --bind {source} {target}" for target, source in self.mounts.items()])
        daemons = (f"virtlogd -d -p {self.dir}/virtlogd.pid && libvirtd -d {'--listen ' if self.listen else ''}"
                   f"-p {self.dir}/libvirtd.pid")
        subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                        f"{mounts} && exec nsenter --net=/run/netns/{self.netns} sh -c '{daemons}'"], check=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.virsh("version").returncode == 0:
                return self
            time.sleep(0.2)
        raise RuntimeError("the private libvirtd did not come up")

    def virsh(self, *args):
        return subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True, timeout=120)

    def wrapper(self, qemu: str) -> str:
        """vmnet-qemu-wrapper as a domain's <emulator>, pinned to this helper, execing `qemu`."""
        os.chmod(self.dir, 0o755)
        return write_wrapper(os.path.join(self.dir, "qemu-wrapper"), self.helper.config, qemu)

    def qemu_pid(self, domain: str) -> int:
        with open(os.path.join(self.run_dir, "qemu", domain + ".pid")) as f:
            return int(f.read().strip())

    def define(self, name: str, xml: str) -> str:
        path = os.path.join(self.dir, name + ".xml")
        with open(path, "w") as f:
            f.write(xml)
        out = self.virsh("define", path)
        assert out.returncode == 0, out.stderr
        return name

    def stop(self):
        listed = self.virsh("list", "--all", "--name")
        for dom in listed.stdout.split() if listed.returncode == 0 else []:
            self.virsh("destroy", dom)
            self.virsh("undefine", dom)
        for net in ("default",):
            self.virsh("net-destroy", net)
        for name in ("libvirtd", "virtlogd"):
            _terminate(_pid(os.path.join(self.dir, f"{name}.pid")))
        self.helper.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def private_libvirt_on_default(helper_config: str = "", qemu_conf: str | None = None):
    """A PrivateLibvirt (in a netns of its own) whose `default` network runs; all gone after."""
    from vmnet.priv import netns
    name = "vmnet-lv" + uuid.uuid4().hex[:6]
    netns.create_named(name)
    env = PrivateLibvirt(name, helper_config, qemu_conf=qemu_conf)
    try:
        env.start()
        if env.virsh("net-info", "default").returncode != 0:
            assert env.virsh("net-define", "/usr/share/libvirt/networks/default.xml").returncode == 0
        out = env.virsh("net-start", "default")
        assert out.returncode == 0, out.stderr
        yield env
    finally:
        env.stop()
        netns.remove_named(name)
