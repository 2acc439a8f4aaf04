"""A throwaway `vmnet helper` for the benchmark, in a throwaway netns.

The helper runs as a subprocess exactly as an operator would run it
(`python -m vmnet helper`, its own socket, state directory and config file),
with its netns set to a fresh one so that every veth pair the benchmark
makes stays out of the host's network. It runs in its own session so that
a Ctrl-C at the terminal reaches only the benchmark, which then deletes
every port through the helper before stopping it. `close()` removes
everything whatever happened: ports, pins, the netns, the directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

from ..client import Client
from ..errors import VmnetError
from ..priv import bpf, netns
from ..priv.instance import Instance


class BenchHelper:
    def __init__(self, tag: str, profile_to: str | None = None, extra_config: str = "",
                 state_parent: str | None = None):
        self.tag = tag
        self.extra_config = extra_config    # more lines for its vmnet.toml (e.g. an ovsdb endpoint)
        self.netns = f"vmnet-bench-{tag}"
        self.dir = f"/run/vmnet-bench-{tag}-{uuid.uuid4().hex[:4]}"
        self.socket = os.path.join(self.dir, "helper.sock")
        self.config = os.path.join(self.dir, "vmnet.toml")
        self.log = os.path.join(self.dir, "helper.log")
        # its records: in its own directory, as the helper's default (/run/vmnet/ports) is under
        # /run, or in a fresh directory under state_parent (a file system to compare)
        self.state_dir = (os.path.join(state_parent, f"vmnet-bench-{tag}-{uuid.uuid4().hex[:4]}")
                          if state_parent else os.path.join(self.dir, "state"))
        self.state_parent = state_parent
        self._made_state_dir = False
        self.env = dict(os.environ, VMNET_CONFIG=self.config)
        self.env.pop("VMNET_SOCKET", None)
        self.profile_to = profile_to
        # an instance of its own: its recovery at start can never touch another helper's ports
        self.instance = Instance(f"bench-{tag}")
        self.library_instance = Instance(f"benchlib-{tag}")     # the latency part's in-process way
        self.proc: subprocess.Popen | None = None
        self._logf = None

    def start(self, timeout: float = 20.0) -> "BenchHelper":
        os.makedirs(self.dir, mode=0o755)
        if self.state_parent:
            # made here, not by the helper's makedirs: under a directory others may write to
            # (/dev/shm), a name someone else took first is refused, never used
            os.mkdir(self.state_dir, 0o700)
            self._made_state_dir = True
        with open(self.config, "w") as f:
            # every port's consumer end shares the benchmark's netns; where the kernel cannot
            # confine binds (no bpf LSM) the helper must be allowed that
            f.write(f'socket = "{self.socket}"\nstate_dir = "{self.state_dir}"\n'
                    f'instance = "{self.instance.name}"\nallow_unconfined = true\n' + self.extra_config)
        os.chmod(self.config, 0o644)
        netns.create_named(self.netns)
        with netns.entered(self.netns):
            from ..priv import links
            links.bring_up("lo")
        argv = [sys.executable, "-I", "-m", "vmnet", "helper"]
        if self.profile_to:
            argv[2:2] = ["-m", "cProfile", "-o", self.profile_to]
        target = netns.open_netns(self.netns)
        self._logf = open(self.log, "a")
        try:
            self.proc = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=self._logf, stderr=self._logf, cwd="/",
                                         start_new_session=True,
                                         preexec_fn=lambda: netns._setns(target))
        finally:
            os.close(target)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise VmnetError(f"the benchmark's helper exited at start:\n{self.log_tail()}",
                                 fix="run 'vmnet helper' by hand to see why")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                probe.connect(self.socket)
                return self
            except OSError:
                time.sleep(0.02)
            finally:
                probe.close()
        raise VmnetError(f"the benchmark's helper did not listen within {timeout:g} s:\n{self.log_tail()}")

    def call(self, verb: str, **args) -> dict:
        """One request on a new connection, as every vmnet client makes it."""
        with Client(self.socket) as c:
            result, fds = c.call(verb, **args)
        for fd in fds:
            os.close(fd)
        return result

    def cpu_ns(self) -> int:
        """CPU time the helper has used so far, in ns (all its threads)."""
        total = 0
        for task in os.listdir(f"/proc/{self.proc.pid}/task"):
            with open(f"/proc/{self.proc.pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        return total

    def rss_mb(self) -> dict:
        """VmRSS and VmHWM of the helper in MiB (/proc counts KiB)."""
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = round(int(value.split()[0]) / 1024, 1)
        return out

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def close(self):
        """Delete every port, stop the helper, remove pins, netns and directory. Idempotent.

        Ctrl-C is held back until it is done: an interrupted cleanup is a leak.
        """
        with uninterrupted():
            self._close()

    def _close(self):
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                for rec in self.call("port-list")["ports"]:
                    with contextlib.suppress(Exception):
                        self.call("port-delete", name=rec["name"], missing_ok=True)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._logf is not None:
            self._logf.close()
            self._logf = None
        sweep_pins(self.instance, self.tag)
        sweep_pins(self.library_instance, self.tag)
        netns.remove_named(self.netns)      # takes any device left in it along
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._made_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self._made_state_dir = False


@contextlib.contextmanager
def uninterrupted():
    """Hold SIGINT and SIGTERM back for the block; they are delivered after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def sweep_pins(instance: Instance, *prefixes: str):
    """Remove what the benchmark's instance still has of ports whose names start with one of
    the prefixes (pins, slots), and the instance's shared program once it has no port.

    Their devices live in the benchmark's own netns and go with it.
    """
    from ..priv import ports, xskprog
    for name in sorted(set(bpf.pinned_ports(instance.pin_root)) | ports.claimed_ports(instance)):
        if name.startswith(prefixes):
            ports.delete_port(name, instance)
    program = xskprog.opened(instance.pin_root)
    if program is not None:
        program.unpin_if_unused()
        program.close()
