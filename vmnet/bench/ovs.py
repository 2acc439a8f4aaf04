"""A private Open vSwitch: Debian's ovsdb-server and ovs-vswitchd in a run directory of their
own, ovs-vswitchd inside a given netns (where the ports' host ends are), for the OVS tests and
`vmnet bench`. Nothing of the host's own Open vSwitch (if any) is touched. Bridges use the
userspace datapath (datapath_type=netdev: it needs no openvswitch kernel module, which some
kernels lack), which reads its ports through packet sockets."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

from ..priv import netns

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


def missing() -> str | None:
    for tool in ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} is not installed (Debian's openvswitch-switch)"
    if not os.path.exists(SCHEMA):
        return f"{SCHEMA} is missing (Debian's openvswitch-common)"
    return None


class Ovs:
    def __init__(self, netns_name: str):
        self.netns = netns_name
        self.dir = tempfile.mkdtemp(prefix="vmnet-ovs-")
        self.db = os.path.join(self.dir, "db.sock")
        self.endpoint = f"unix:{self.db}"

    def _daemon(self, argv: list[str], name: str, in_netns: bool = False):
        prefix = netns.command_in(self.netns) if in_netns else []
        subprocess.run(prefix + argv + [f"--pidfile={self.dir}/{name}.pid", f"--unixctl={self.dir}/{name}.ctl",
                                        f"--log-file={self.dir}/{name}.log", "--detach", "--no-chdir"],
                       check=True, env=dict(os.environ, OVS_RUNDIR=self.dir, OVS_DBDIR=self.dir),
                       capture_output=True, timeout=60)

    def start(self) -> "Ovs":
        return self.start_db().start_switch()

    def start_db(self) -> "Ovs":
        """ovsdb-server alone: it has nothing to do with the netns's devices."""
        subprocess.run(["ovsdb-tool", "create", f"{self.dir}/conf.db", SCHEMA], check=True, capture_output=True)
        self._daemon(["ovsdb-server", f"{self.dir}/conf.db", f"--remote=punix:{self.db}"], "ovsdb")
        self.vsctl("--no-wait", "init")
        return self

    def start_switch(self) -> "Ovs":
        """ovs-vswitchd in the netns: from now on it wakes on every rtnetlink change there."""
        self._daemon(["ovs-vswitchd", self.endpoint], "vswitchd", in_netns=True)
        return self

    def vsctl(self, *args, check=True) -> str:
        out = subprocess.run(["ovs-vsctl", f"--db={self.endpoint}", "--timeout=30", *args], capture_output=True,
                             text=True, timeout=60)
        if check and out.returncode != 0:
            raise RuntimeError(f"ovs-vsctl {' '.join(args)}: {out.stderr}")
        return out.stdout

    def add_bridge(self, name: str) -> None:
        self.vsctl("add-br", name, "--", "set", "bridge", name, "datapath_type=netdev")

    def column(self, table: str, row: str, column: str) -> str:
        return self.vsctl("--if-exists", "get", table, row, column).strip()

    def ports(self) -> list[str]:
        return sorted(self.vsctl("--format=csv", "--no-headings", "--columns=name", "list", "Port").split())

    def log(self) -> str:
        with open(os.path.join(self.dir, "vswitchd.log")) as f:
            return f.read()

    def stop(self) -> None:
        for name in ("vswitchd", "ovsdb"):
            try:
                with open(os.path.join(self.dir, f"{name}.pid")) as f:
                    pid = int(f.read().strip())
            except (OSError, ValueError):
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)
