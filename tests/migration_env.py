"""Two libvirt hosts on one machine, for live migration with a real guest.

Hosts A and B are network namespaces, each with a system-mode libvirtd of its own
(tests/libvirt_env.PrivateLibvirt with listen: private /run/libvirt, /etc/libvirt,
/var/lib/libvirt..., its own host_uuid, TCP on its addresses) and a vmnet helper
instance of its own, as two machines have. A fabric (a bridge in a third netns)
joins them and a peer. On each host, bridge br0 holds the host's uplink fab0
and carries the host's address (192.0.2.1 on A, .2 on B); the host forwards,
answers ARP on br0 for what it routes (proxy ARP) and routes by default
through the peer (192.0.2.100), which reaches the routed VMs' 10.1.2.0/24
on the fabric's link. A domain's <emulator> is one path, EMULATOR, that
each libvirtd sees as its own host's vmnet wrapper (bind-mounted in its
mount namespace), as on two machines.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import uuid

from guest_env import Namespaces, make_bridge, run_in, veth_to
from helpers import SHARED_NETNS
from libvirt_env import PrivateLibvirt
from test_vm_ipc_lock import ROOT_QEMU_CONF       # where root cannot raise memlock

from vmnet.caps import has_capability
from vmnet.priv import netns

PEER = "192.0.2.100"
ADDRESSES = {"A": "192.0.2.1", "B": "192.0.2.2"}


class Pair:
    """no_ipc_lock_on: hosts whose helper may not leave QEMU CAP_IPC_LOCK (where root cannot raise
    memlock, their QEMU cannot lock its UMEM: a destination that must refuse)."""

    def __init__(self, qemu: str, no_ipc_lock_on: tuple = ()):
        self.qemu = qemu
        self.no_ipc_lock_on = no_ipc_lock_on
        self.spaces = Namespaces()
        self.hosts: dict[str, PrivateLibvirt] = {}
        self.emulator = f"/run/vmnet-migration-{uuid.uuid4().hex[:8]}-qemu"

    def start(self) -> "Pair":
        fabric, a, b, self.peer = (self.spaces.new(p) for p in ("vmnet-f", "vmnet-a", "vmnet-b", "vmnet-p"))
        with netns.entered(fabric):
            make_bridge("fab")
            for i, (ns, ifname) in enumerate(((a, "fab0"), (b, "fab0"), (self.peer, "eth0"))):
                veth_to(ns, f"f{i}", ifname, master="fab")
        run_in(self.peer, "ip", "addr", "add", f"{PEER}/24", "dev", "eth0")
        run_in(self.peer, "ip", "route", "add", "10.1.2.0/24", "dev", "eth0")
        ipc_lock = not has_capability("sys_resource")
        open(self.emulator, "w").close()
        os.chmod(self.emulator, 0o755)
        for name, ns in (("A", a), ("B", b)):
            with netns.entered(ns):
                make_bridge("br0")
            run_in(ns, "ip", "link", "set", "fab0", "master", "br0")
            run_in(ns, "ip", "addr", "add", f"{ADDRESSES[name]}/24", "dev", "br0")
            run_in(ns, "ip", "route", "add", "default", "via", PEER)
            run_in(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.br0.proxy_arp=1")
            config = SHARED_NETNS + ('libvirt_qemu_user = "root"\n' if ipc_lock else "")
            if ipc_lock and name not in self.no_ipc_lock_on:
                config += "allow_ipc_lock = true\n"
            host = PrivateLibvirt(ns, config, qemu_conf=ROOT_QEMU_CONF if ipc_lock else None, listen=True)
            host.mounts[self.emulator] = host.wrapper(self.qemu)
            self.hosts[name] = host
            host.start()
        return self

    def migrate(self, domain: str, source: str, target: str) -> subprocess.CompletedProcess:
        to = ADDRESSES[target]
        return self.hosts[source].virsh("migrate", "--live", "--p2p", "--persistent", "--undefinesource",
                                        domain, f"qemu+tcp://{to}/system", "--migrateuri", f"tcp://{to}")

    def state(self, host: str, domain: str) -> str:
        out = self.hosts[host].virsh("domstate", domain)
        return out.stdout.strip() if out.returncode == 0 else "absent"

    def ports(self, host: str) -> dict:
        return {p["name"]: p for p in self.hosts[host].helper.vmnet_json("status")["ports"]}

    def stop(self):
        for host in self.hosts.values():
            host.stop()
        self.spaces.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.emulator)


class Transfer(threading.Thread):
    """The peer sends to the guest's TCP sink (about 20 MB/s) until stop(), then waits for the sink to have read
    every byte (it closes at EOF); .result (its output: the bytes sent) and .ended (a
    time.monotonic()) after join()."""

    def __init__(self, peer: str, address: str, port: int, flag: str):
        super().__init__(daemon=True)
        self.peer, self.address, self.port, self.flag = peer, address, port, flag
        self.result: subprocess.CompletedProcess | None = None
        self.ended = 0.0

    def stop(self, timeout: float = 240):
        open(self.flag, "w").close()
        self.join(timeout)

    def run(self):
        code = ("import os,socket\n"
                f"s=socket.create_connection(('{self.address}',{self.port}),timeout=60)\n"
                "import time\nc=b'v'*65536;n=0\n"
                # about 20 MB/s: a flat-out sender dirties the guest's memory faster than a TCG
                # migration converges (60 s instead of 3 were seen)
                f"while not os.path.exists({self.flag!r}):\n s.sendall(c);n+=len(c);time.sleep(0.003)\n"
                "s.shutdown(socket.SHUT_WR)\n"
                "while s.recv(4096):pass\n"
                "print(n)\n")
        import sys
        self.result = subprocess.run(["nsenter", f"--net=/run/netns/{self.peer}", sys.executable, "-c", code],
                                     capture_output=True, text=True, timeout=600)
        self.ended = time.monotonic()


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
