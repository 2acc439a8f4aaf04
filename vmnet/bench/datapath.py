"""The data path: a guest behind an af-xdp vmnet port against the same guest on QEMU's tap.

Always: ping RTT through a native one-queue port to vmnet's responder, set
up by vmnet.selftest.run_case exactly as QEMU would be (same handoff, no
capabilities but CAP_IPC_LOCK where memlock cannot be raised).

When VMNET_TEST_QEMU names a QEMU with af-xdp, the comparison the issue
asks for: the same test guest (vmnet.testguest) booted by the same QEMU as
the same unprivileged user behind a native vmnet port, a generic-XDP (skb)
vmnet port, QEMU's tap backend, and tap without its virtio-net header
(vmnet.bench.qemuguest), all with the port's MTU. The guests run at once
and are measured in turn, the order rotating each round, so that a busy
machine slows all of them and not one: ICMP echo RTT from the host, and a
host -> guest TCP bulk transfer into the guest's sink, timed until the
guest has read every byte and closed, with the sender's retransmissions
and why, the drop counters on the way (XDP_STATISTICS, the host end's
link) and QEMU's CPU per MB by thread. The guests run under TCG, which
makes every absolute number low; the ratios to tap are the result.
Everything made here (a throwaway helper and its ports, the namespaces,
the tap devices, the QEMU processes, the guests' files) is removed before
this returns, also on errors and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import statistics
import struct
import time
import traceback

from .. import probe, selftest, testguest
from ..priv import links, netns
from .launcher import BenchHelper, uninterrupted
from .qemuguest import (Guest, create_tap, kill_stragglers, prepare_files, qemu_problem,
                        start_tap_guest, start_vmnet_guest, tap_device_arg, tap_netdev_arg)
from .stats import ratio, summary

BOOT_TIMEOUT = 240.0        # four TCG guests booting at once on a busy 2-core machine: ~15-65 s
PING_GAP = 0.02             # between pings: not a flood, the guest may go idle in between
TCP_CHUNK = 1 << 16
WARMUP_SECONDS = 1.0
# (key, for people, XDP mode of a vmnet port | None for tap, tap with a virtio-net header).
# AF_XDP frames carry no virtio-net header, so the af-xdp guest gets no checksum or
# segmentation offload; tap's default has both (the host hands the guest 64 KB TSO
# frames). "tap_novnet" is tap without the header: the same frames as af-xdp, which
# tells how much of a difference is the offload and how much the path.
BACKENDS = (("afxdp", "vmnet port, native XDP", "native", False),
            ("afxdp_skb", "vmnet port, generic (skb) XDP", "skb", False),
            ("tap", "QEMU tap, vhost=off", None, True),
            ("tap_novnet", "QEMU tap, vhost=off, vnet_hdr=off", None, False))
BASELINE = "tap"


def _quiet(*_):
    pass


def measure(tag: str, pings: int, user: str = "nobody", *, guest_pings: int = 50,
            tcp_seconds: float = 5.0, tcp_rounds: int = 3, qemu: str | None = None,
            progress=_quiet) -> dict:
    uid, gid = selftest.consumer_identity(user)
    out = {"consumer": "vmnet responder", "mode": "native", "queues": 1, "pings": pings}
    row = selftest.run_case("native", 1, uid=uid, gid=gid, allow_ipc_lock=True, tag=tag,
                            pings=pings, flows=4)
    out.update(ok=row.ok, rtt_avg_ms=None if row.rtt_ms is None else round(row.rtt_ms, 3),
               ping=row.pings, memlock=row.memlock, problems=row.problems)
    from ..qemu_compat import labels, listed
    qemus = listed(qemu if qemu is not None else os.environ.get("VMNET_TEST_QEMU"))
    problem = qemu_problem(qemus[0] if qemus else None)
    if problem:
        out["guest"] = {"skipped": problem}
        return out
    # one comparison per QEMU (VMNET_TEST_QEMU is a ':'-separated list), each reported apart;
    # the headline numbers and goals are the first one's
    out["guests"] = {}
    for i, (path, label) in enumerate(labels(qemus).items()):
        problem = qemu_problem(path)
        if problem:
            out["guests"][label] = {"skipped": problem, "qemu": path}
            continue
        try:
            out["guests"][label] = compare_guests(f"g{i}{tag}", path, user, uid, gid, guest_pings, tcp_seconds,
                                                  tcp_rounds, progress)
        except Exception as exc:        # the responder's numbers stay; the error is reported
            out["guests"][label] = {"error": str(exc).splitlines()[0], "qemu": path,
                                    "traceback": "".join(traceback.format_exception(exc)).strip().splitlines()[-6:]}
    guest = next(iter(out["guests"].values()))
    out["guest"] = guest
    if "backends" not in guest:
        return out
    per = guest["backends"]
    out["guest_rtt_p50_ms"] = {k: v["rtt"]["p50"] for k, v in per.items()}
    out["guest_rtt_p99_ms"] = {k: v["rtt"]["p99"] for k, v in per.items()}
    out["tcp_mbytes_s"] = {k: v["tcp_mbytes_s"] for k, v in per.items()}
    out["ratios_to_tap"] = {k: {"rtt_p50": ratio(out["guest_rtt_p50_ms"][k], out["guest_rtt_p50_ms"][BASELINE]),
                                "rtt_p99": ratio(out["guest_rtt_p99_ms"][k], out["guest_rtt_p99_ms"][BASELINE]),
                                "tcp": ratio(out["tcp_mbytes_s"][k], out["tcp_mbytes_s"][BASELINE])}
                            for k in per if k != BASELINE}
    return out


def compare_guests(tag: str, qemu: str, user: str, uid: int, gid: int, pings: int,
                   tcp_seconds: float, tcp_rounds: int, progress=_quiet) -> dict:
    """Boot the guests, measure them in turn, remove everything."""
    vmlinuz, moddir = testguest.find_kernel()
    helper = BenchHelper(tag)
    tap_ns = f"vmnet-{tag}t"
    made_ns: list[str] = []
    guests: list[Guest] = []
    try:
        helper.start()
        guests, mtu = _start_guests(helper, tag, qemu, vmlinuz, moddir, user, uid, gid, tap_ns,
                                    made_ns, guests)
        deadline = time.monotonic() + BOOT_TIMEOUT
        started = time.monotonic()
        for g in guests:
            g.wait_ready(deadline)
        boot_s = round(time.monotonic() - started, 1)
        progress("guests up", 1, 1)
        rtts = _ping_rounds(guests, pings, progress)
        runs = _tcp_rounds(guests, tcp_seconds, tcp_rounds, progress)
        backends = {}
        for g in guests:
            samples = [r for r in rtts[g.key] if r is not None]
            rates = [r["mbytes_s"] for r in runs[g.key]]
            backends[g.key] = {
                "backend": g.backend,
                "rtt": summary(samples), "pings_lost": len(rtts[g.key]) - len(samples),
                "tcp_mbytes_s": round(statistics.median(rates), 2),
                "tcp_runs": runs[g.key],
                "qemu_cpu_ms_per_mb": cpu_per_mb(runs[g.key]),
                "host_link": _link_counters(g.host_netns, g.host_ifname),
                "qemu_credentials": _credentials(g.proc.pid),
            }
            if g.port:
                shown = helper.call("port-show", name=g.port)
                backends[g.key].update(mode=shown["mode"], xdp_statistics=shown.get("sockets"))
        return {"qemu": qemu, "kernel": vmlinuz, "user": user, "mtu": mtu, "workdir": helper.dir,
                "boot_s": boot_s, "pings": pings, "tcp_seconds": tcp_seconds, "tcp_rounds": tcp_rounds,
                "backends": backends}
    finally:
        with uninterrupted():
            for g in guests:
                g.stop()
            kill_stragglers(helper.dir)
            helper.close()          # ports, pins, its netns, its directory (the guests' files)
            for g in guests:
                if g.host_netns == tap_ns:
                    with contextlib.suppress(Exception), netns.entered(tap_ns):
                        links.delete_link(g.host_ifname)
            for ns in made_ns:
                netns.remove_named(ns)


def _start_guests(helper, tag, qemu, vmlinuz, moddir, user, uid, gid, tap_ns, made_ns, guests):
    """One guest per backend, each in its own /24 (host ends share a netns: the helper's, the taps').

    The first port's MTU (vmnet's default: the largest a frame carries) is
    given to every other port and to the tap device and its guest.
    """
    from ..fields import default_mac
    mtu = None
    for i, (key, label, mode, vnet_hdr) in enumerate(BACKENDS, 1):
        host_ip, guest_ip = f"198.18.{i}.1", f"198.18.{i}.2"
        serial, log = (os.path.join(helper.dir, f"{key}.{ext}") for ext in ("serial", "log"))
        if mode:
            port, consumer_ns = f"{tag}{mode[0]}", f"vmnet-{tag}{mode[0]}"
            g = Guest(key, label, guest_ip, helper.netns, "vmn-" + port, serial, log, port=port)
            guests.append(g)            # from here on, the caller stops it whatever happens
            made_ns.append(consumer_ns)
            netns.create_named(consumer_ns)
            same_mtu = {"mtu": mtu} if mtu else {}
            mtu = helper.call("port-create", name=port, queues=1, mode=mode, netns=consumer_ns,
                              consumer_uid=uid, consumer_gid=gid, **same_mtu)["mtu"]
            with netns.entered(helper.netns):
                links.add_address(g.host_ifname, host_ip, 24)
            initrd = prepare_files(g, helper.dir, moddir, uid, gid)
            start_vmnet_guest(g, qemu=qemu, boot_args=_boot_args(key, vmlinuz, initrd, serial),
                              helper_env=helper.env, consumer_netns=consumer_ns, user=user)
        else:
            tap_if = f"vmt{i}-{tag}"
            g = Guest(key, label, guest_ip, tap_ns, tap_if, serial, log)
            guests.append(g)
            if tap_ns not in made_ns:
                made_ns.append(tap_ns)
                netns.create_named(tap_ns)
            with netns.entered(tap_ns):
                links.bring_up("lo")
                create_tap(tap_if, uid, gid)
                links.set_mtu_up(tap_if, mtu)
                links.add_address(tap_if, host_ip, 24)
            initrd = prepare_files(g, helper.dir, moddir, uid, gid)
            start_tap_guest(g, qemu=qemu, boot_args=_boot_args(key, vmlinuz, initrd, serial),
                            netdev=tap_netdev_arg("tap0", tap_if, vnet_hdr),
                            device=tap_device_arg("tap0", default_mac(tap_if), mtu), uid=uid, gid=gid)
    return guests, mtu


def _boot_args(key: str, vmlinuz: str, initrd: str, serial: str) -> list[str]:
    # debug-threads: QEMU names its threads ("CPU 0/TCG", ...), so thread_cpu can tell them apart
    return testguest.qemu_boot_args(vmlinuz, initrd, serial) + ["-name", f"{key},debug-threads=on"]


def _rotated(items: list, shift: int) -> list:
    shift %= len(items)
    return items[shift:] + items[:shift]


def _ping_rounds(guests: list[Guest], pings: int, progress) -> dict:
    for g in guests:            # ARP, and the first wake-up of each guest's path
        _ping(g)
    rtts = {g.key: [] for g in guests}
    for i in range(pings):
        for g in _rotated(guests, i):
            rtts[g.key].append(_ping(g))
            time.sleep(PING_GAP)
        progress("guest ping", i + 1, pings)
    return rtts


def _ping(g: Guest) -> float | None:
    with netns.entered(g.host_netns):
        return probe.ping(g.address, count=1, timeout=1.0)["rtt_min_ms"]


def _tcp_rounds(guests: list[Guest], seconds: float, rounds: int, progress) -> dict:
    for g in guests:            # not recorded: a fresh guest's first transfer was the slowest in trials
        tcp_bulk(g.host_netns, g.address, testguest.TCP_SINK_PORT, WARMUP_SECONDS)
    runs = {g.key: [] for g in guests}
    for r in range(rounds):
        for g in _rotated(guests, r):
            before = thread_cpu(g.proc.pid)
            run = tcp_bulk(g.host_netns, g.address, testguest.TCP_SINK_PORT, seconds)
            after = thread_cpu(g.proc.pid)
            run["qemu_cpu_s"] = {k: round(after[k] - before.get(k, 0), 2) for k in after}
            runs[g.key].append(run)
        progress("guest tcp", r + 1, rounds)
    return runs


def cpu_per_mb(runs: list[dict]) -> dict:
    """QEMU's CPU per MB received by the guest: its vCPU (the guest's own work) and the rest
    (the main loop: backend <-> virtio queues)."""
    mb = sum(r["bytes"] for r in runs) / 1e6
    vcpu = sum(v for r in runs for k, v in r["qemu_cpu_s"].items() if k.startswith("CPU "))
    other = sum(v for r in runs for k, v in r["qemu_cpu_s"].items() if not k.startswith("CPU "))
    return {"vcpu": round(vcpu * 1000 / mb, 2), "other": round(other * 1000 / mb, 2)} if mb else {}


def thread_cpu(pid: int) -> dict:
    """CPU seconds of a process by thread name: QEMU's "CPU 0/TCG" runs the guest, its
    main thread ("qemu-system-x86") moves frames between the backend and the virtio queues."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def tcp_bulk(ns: str, address: str, port: int, seconds: float) -> dict:
    """Send for `seconds`, then wait until the guest's sink has read everything and closed."""
    with netns.entered(ns):
        before = tcp_counters()
        s = _connect(address, port)
    chunk = bytes(TCP_CHUNK)
    with s:
        s.settimeout(30)
        sent = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            s.sendall(chunk)
            sent += len(chunk)
        info = tcp_info(s)          # while the flow is still at full speed
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):
            pass
        elapsed = time.perf_counter() - t0
        info["total_retrans"] = tcp_info(s)["total_retrans"]
    with netns.entered(ns):
        after = tcp_counters()
    info["why_retransmitted"] = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    return {"bytes": sent, "seconds": round(elapsed, 3), "mbytes_s": round(sent / elapsed / 1e6, 2), **info}


# TcpExt counters that tell a lost segment from a sender that only grew impatient:
# a tail loss probe or a timeout the receiver answers with a D-SACK lost nothing
TCP_EXT = ("TCPLossProbes", "TCPLossProbeRecovery", "TCPTimeouts", "TCPSpuriousRTOs", "TCPFastRetrans",
           "TCPSlowStartRetrans", "TCPDSACKRecv", "TCPSACKReorder")


def tcp_counters() -> dict:
    """TCP_EXT of this thread's netns (/proc/thread-self/net: setns moves only the thread)."""
    with open("/proc/thread-self/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], map(int, values.split()[1:])))
            return {k: table.get(k, 0) for k in TCP_EXT}
    return {k: 0 for k in TCP_EXT}


def _connect(address: str, port: int, timeout: float = 10.0) -> socket.socket:
    """The sink restarts nothing, but give a guest that just printed READY a moment."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((address, port))
            return s
        except OSError as exc:
            s.close()
            if exc.errno != errno.ECONNREFUSED or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


_TCP_INFO = struct.Struct("8B24I")      # struct tcp_info up to tcpi_total_retrans


def tcp_info(s: socket.socket) -> dict:
    """The sender's MSS, smoothed RTT and retransmissions (<linux/tcp.h> struct tcp_info)."""
    raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
    f = _TCP_INFO.unpack(raw)[8:]
    return {"snd_mss": f[2], "srtt_ms": f[15] / 1000, "snd_cwnd": f[18], "total_retrans": f[23]}


def _link_counters(ns: str, ifname: str) -> dict:
    from pyroute2 import IPRoute
    with netns.entered(ns), IPRoute() as ip:
        msg = ip.link("get", ifname=ifname)[0]
    stats = msg.get("IFLA_STATS64") or {}
    return {k: stats.get(k) for k in ("tx_packets", "tx_dropped", "rx_packets", "rx_dropped")}


def _credentials(pid: int) -> dict:
    from ..caps import process_credentials
    creds = process_credentials(pid)
    return {"uid": creds["uid"], "effective": creds["effective"], "no_new_privs": creds["no_new_privs"]}
