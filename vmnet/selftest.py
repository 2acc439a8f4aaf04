"""`vmnet selftest`: the whole data path, end to end, on this machine.

For each mode and queue count: create a veth port whose host end lives in a
throwaway netns (nothing touches the host's own network) and whose consumer
end lives in a second one, start vmnet's responder there unprivileged
through the same fd handoff QEMU gets, send ping, UDP (small and MTU-sized)
and TCP from ordinary sockets, read the responder's per-queue counters,
and remove everything. A row passes when every probe was answered, every
queue carried traffic where the device spreads it, and no frame arrived
with a bad checksum or over the MTU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import select
import signal
import sys
import time

from . import probe
from .errors import CheckFailed, KernelError, VmnetError
from .memlock import MemlockPlan, plan_memlock
from .model import PortSpec
from .qemu_args import device_arg, netdev_arg

HOST_IP, CONSUMER_IP, PREFIX = "198.18.0.1", "198.18.0.2", 24   # RFC 2544 benchmarking range
UDP_PORT, TCP_PORT = 7, 9


@dataclasses.dataclass
class Row:
    mode: str
    queues: int
    backend: str = "veth"
    ok: bool = False
    mtu: int = 0
    rtt_ms: float | None = None
    pings: str = ""
    udp: str = ""
    tcp: str = ""
    per_queue_rx: list = dataclasses.field(default_factory=list)
    bad_checksum: int = 0
    oversized: int = 0
    memlock: str = ""
    binds: str = ""             # "kernel": the bind guard confines the sockets; "netns": only the netns
    credentials: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    problems: list = dataclasses.field(default_factory=list)


def _memlock_facts() -> tuple[int, int, bool]:
    import resource
    from .caps import has_capability
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return soft, hard, has_capability("sys_resource")


def consumer_identity(user: str) -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise VmnetError(f"user {user!r} does not exist", fix="give --user an existing unprivileged user") from None
    return pw.pw_uid, pw.pw_gid


def _read_event(proc, kind: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            break
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == kind:
            return event
    raise CheckFailed(f"the responder sent no '{kind}' event within {timeout:g} s")


def run_case(mode: str, queues: int, *, uid: int, gid: int, allow_ipc_lock: bool,
             tag: str, pings: int = 5, flows: int = 16, separate_netns: bool = True,
             backend: str = "veth", guard=None) -> Row:
    """One row: port, responder, probes, teardown. The consumer end lives in a
    second netns unless separate_netns is False (then beside the host end)."""
    from .priv import netns, links, ports
    from .priv.launch import spawn_consumer

    from .priv.instance import Instance
    # an instance of its own: a helper's recovery never takes the selftest's ports for its own
    instance = Instance(f"selftest-{tag}")
    row = Row(mode=mode, queues=queues, backend=backend)
    started = time.monotonic()
    soft, hard, can_raise = _memlock_facts()
    plan: MemlockPlan = plan_memlock(queues, soft=soft, hard=hard, can_raise_hard=can_raise,
                                     allow_ipc_lock=allow_ipc_lock)
    row.memlock = plan.action
    row.binds = "kernel" if guard is not None else "netns"
    host_ns = f"vmnet-st{tag}h"
    cons_ns = f"vmnet-st{tag}c" if separate_netns else None
    name = f"st{tag}{backend[0]}{mode[0]}{queues}"
    created = proc = None
    netns.create_named(host_ns)
    try:
        if cons_ns:
            netns.create_named(cons_ns)
        with netns.entered(host_ns):
            links.bring_up("lo")
            created = ports.create_port(PortSpec(name=name, queues=queues, mode=mode, netns=cons_ns,
                                                 backend=backend), instance, guard=guard)
            links.add_address(created.port.spec.host_ifname, HOST_IP, PREFIX)
        row.mtu = created.port.mtu
        fds = [s.fileno() for s in created.sockets]
        argv = [sys.executable, "-I", "-m", "vmnet", "respond",
                "--netdev", netdev_arg(created.port, fds), "--device", device_arg(created.port),
                "--ip", CONSUMER_IP, "--udp-port", str(UDP_PORT)]
        proc = spawn_consumer(argv, fds, uid=uid, gid=gid, netns_ref=cons_ns or host_ns, plan=plan)
        try:
            ready = _read_event(proc, "ready", 60)   # generous: a loaded or emulated machine
            # Linux 7.x maps a socket only once its consumer has set up its rings
            waiting = created.store_pending()
            if waiting:
                raise KernelError(f"port {name}: the kernel still refuses the sockets of queue(s) "
                                  f"{waiting} in the XSK map after the responder set up its rings")
        finally:
            created.close()     # the helper's copies are not needed for the data path
        row.credentials = ready["credentials"]
        with netns.entered(host_ns):
            p = probe.ping(CONSUMER_IP, count=pings)
            small = probe.udp_echo(CONSUMER_IP, UDP_PORT, flows=flows, size=64)
            big = probe.udp_echo(CONSUMER_IP, UDP_PORT, flows=flows, size=row.mtu - 28)
            tcp = probe.tcp_connect(CONSUMER_IP, TCP_PORT, attempts=flows)
        proc.send_signal(signal.SIGTERM)
        final = _read_event(proc, "stats", 10)
        proc.wait(10)
        row.rtt_ms = p["rtt_avg_ms"]
        row.pings = f"{p['received']}/{p['sent']}"
        row.udp = f"{small['echoed'] + big['echoed']}/{small['sent'] + big['sent']}"
        row.tcp = f"{tcp['refused']}/{tcp['attempts']}"
        row.per_queue_rx = [q["rx"] for q in final["queues"]]
        row.bad_checksum = sum(q["bad_checksum"] for q in final["queues"])
        row.oversized = sum(q["oversized"] for q in final["queues"])
        if p["received"] != p["sent"]:
            row.problems.append("ping lost")
        if small["echoed"] != small["sent"] or big["echoed"] != big["sent"]:
            row.problems.append("UDP echo lost")
        if tcp["refused"] != tcp["attempts"]:
            row.problems.append("TCP SYN not answered")
        if row.bad_checksum or row.oversized:
            row.problems.append("bad checksum or oversized frame reached the consumer")
        if mode == "native" and 0 in row.per_queue_rx:
            row.problems.append("a queue carried no traffic")
        if row.credentials.get("uid") != uid or set(row.credentials.get("effective", [])) - {"ipc_lock"}:
            row.problems.append("responder was not unprivileged")
    except VmnetError as exc:
        row.problems.append(str(exc).splitlines()[0])
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc is not None and proc.stdout:
            proc.stdout.close()
        if created is not None:
            created.close()
        with netns.entered(host_ns):
            ports.delete_port(name, instance)
        if cons_ns:
            netns.remove_named(cons_ns)
        netns.remove_named(host_ns)
    row.ok = not row.problems
    row.seconds = time.monotonic() - started
    return row


def run(modes=("native", "skb"), queue_counts=(1, 2, 4), user: str = "nobody",
        allow_ipc_lock: bool = True, backend: str = "veth") -> list[Row]:
    from .priv import bindguard
    uid, gid = consumer_identity(user)
    tag = str(os.getpid() % 10000)
    rows = []
    # the consumer netns is the row's own (lo and the port's device): safe without the guard too
    guard = bindguard.Protection.detect(allow_unconfined=False).guard
    try:
        for mode in modes:
            for queues in queue_counts:
                rows.append(run_case(mode, queues, uid=uid, gid=gid, allow_ipc_lock=allow_ipc_lock,
                                     tag=tag, backend=backend, guard=guard))
    finally:
        if guard is not None:
            guard.close()
    return rows


def format_table(rows: list[Row]) -> str:
    head = ("backend", "mode", "queues", "mtu", "ping", "rtt ms", "udp", "tcp", "rx per queue",
            "bad csum", "oversize", "memlock", "binds", "result")
    lines = [head]
    for r in rows:
        lines.append((r.backend, r.mode, str(r.queues), str(r.mtu), r.pings,
                      f"{r.rtt_ms:.2f}" if r.rtt_ms is not None else "-", r.udp, r.tcp,
                      "/".join(map(str, r.per_queue_rx)) or "-", str(r.bad_checksum),
                      str(r.oversized), r.memlock, r.binds, "PASS" if r.ok else "FAIL"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    for r in rows:
        for p in r.problems:
            out.append(f"  {r.mode}/{r.queues}: {p}")
    return "\n".join(out)
