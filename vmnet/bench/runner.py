"""One benchmark run: every part in order, one result object, everything removed after.

Parts: latency (through the helper, against the floor), scale, hook,
wrapper (its start-up against QEMU's own), data path. A part that fails is recorded with its error and the others still
run; Ctrl-C stops the run. Either way the helper's ports, its pins, its
netns and its directory, and the data-path case's namespaces, are removed
before this returns or raises.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
import traceback
import uuid

from ..errors import VmnetError
from ..priv import bpf, netns
from ..priv.instance import DEFAULT, pin_base_removed_if_made
from . import datapath, hook, latency, networks, scale, wrapper
from .launcher import BenchHelper, sweep_pins, uninterrupted
from .stats import goals_of, ratio

PARTS = ("latency", "scale", "hook", "wrapper", "datapath", "networks", "lease", "xdp-sharing", "migration",
         "boot-storm")
CONSUMER_UID = 65534        # nobody: ports are never handed out here


@dataclasses.dataclass
class Plan:
    quick: bool = False
    iterations: int = 200
    ports: int = 256
    queue_counts: tuple = (1, 4, 8)
    status_runs: int = 5
    hook_runs: int = 30
    hook_port_runs: int = 10
    pings: int = 20
    guest_pings: int = 50
    tcp_seconds: float = 5.0
    tcp_rounds: int = 3
    network_iterations: int = 100
    network_tcp_rounds: int = 8         # 2 s each, per port and direction
    skip: tuple = ()
    hook_path: str | None = None
    profile_dir: str | None = None
    lease_from: str | None = None       # the lease part runs only with a NIC to lease from
    storm_vms: int = 100
    state_dir: str | None = None        # where the main helper's records go (default: under /run)

    @classmethod
    def make(cls, quick: bool, **overrides) -> "Plan":
        plan = cls(quick=True, iterations=20, ports=64, status_runs=3, hook_runs=5,
                   hook_port_runs=2, pings=5, guest_pings=10, tcp_seconds=2.0,
                   tcp_rounds=1, network_iterations=10, network_tcp_rounds=2, storm_vms=20) if quick else cls()
        for key, value in overrides.items():
            if value is not None:
                setattr(plan, key, value)
        return plan


def _quiet(*_):
    pass


def progress_to_terminal(label: str, done: int, total: int):
    sys.stderr.write(f"\r\033[K{label}: {done}/{total}")
    sys.stderr.flush()


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The first CPU's model name ("QEMU TCG CPU ..." in an emulated guest: the kernel matrix's)."""
    try:
        with open(cpuinfo, errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return "unknown"


def run(plan: Plan, progress=_quiet) -> dict:
    """Run the plan; SIGTERM is treated as Ctrl-C meanwhile, so that both clean up."""
    in_main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    try:
        with pin_base_removed_if_made():       # the benchmark's instances pin under it
            return _run(plan, progress)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, old)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _run(plan: Plan, progress) -> dict:
    if os.geteuid() != 0:
        raise VmnetError("vmnet bench creates ports, programs and network namespaces: it needs root",
                         fix="run it as root (sudo vmnet bench)")
    bpf.require_bpffs()
    tag = "bn" + uuid.uuid4().hex[:4]
    started = time.monotonic()
    result: dict = {
        "quick": plan.quick, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"kernel": os.uname().release, "cpus": os.cpu_count(), "cpu_model": cpu_model(),
                    "loadavg_start": _loadavg()},
        "plan": dataclasses.asdict(plan), "errors": {},
    }
    profile = os.path.join(plan.profile_dir, "helper.prof") if plan.profile_dir else None
    if plan.profile_dir:
        os.makedirs(plan.profile_dir, exist_ok=True)
    helper = BenchHelper(tag, profile_to=profile, state_parent=plan.state_dir)
    try:
        helper.start()
        _part(result, "latency", plan, lambda: latency.measure(
            helper, plan.queue_counts, plan.iterations, tag, CONSUMER_UID, progress))
        _part(result, "scale", plan, lambda: scale.measure(
            helper, plan.ports, tag, CONSUMER_UID, plan.status_runs, progress))
        _part(result, "hook", plan, lambda: hook.measure(
            helper, tag, plan.hook_runs, plan.hook_port_runs, plan.hook_path, progress))
        result["helper_log_warnings"] = [line for line in helper.log_tail(2000).splitlines()
                                         if " ERROR " in line or "Traceback" in line][:10]
    finally:
        helper.close()
        if progress is not _quiet:
            progress("cleaned up", 1, 1)
    _part(result, "wrapper", plan, lambda: wrapper.measure(tag, plan.hook_runs, progress=progress))
    try:
        _part(result, "datapath", plan, lambda: datapath.measure(
            tag, plan.pings, guest_pings=plan.guest_pings, tcp_seconds=plan.tcp_seconds,
            tcp_rounds=plan.tcp_rounds, progress=progress))
    finally:
        with uninterrupted():           # run_case cleans up after itself; this is for a Ctrl-C inside it
            sweep_pins(DEFAULT, "st" + tag)
            for ns in (f"vmnet-st{tag}h", f"vmnet-st{tag}c"):
                netns.remove_named(ns)
    _part(result, "networks", plan, lambda: networks.measure(        # removes what it made itself
        tag, plan.network_iterations, 2.0, plan.network_tcp_rounds, CONSUMER_UID, progress))
    if plan.lease_from:
        from . import lease
        _part(result, "lease", plan, lambda: lease.measure(plan.lease_from, plan.iterations, progress))
    else:
        result["lease"] = {"skipped": "no --lease-from NIC"}
    from . import xdpshare
    _part(result, "xdp-sharing", plan, lambda: xdpshare.measure(max(plan.iterations // 4, 5), progress))
    from . import migration
    _part(result, "migration", plan, lambda: migration.measure("mg" + tag, rounds=1 if plan.quick else 3,
                                                                progress=progress))
    from . import storm
    _part(result, "boot-storm", plan, lambda: storm.measure("bs" + tag, plan.storm_vms, progress))
    if profile and os.path.exists(profile):
        result["profile"] = _summarise_profile(profile, os.path.join(plan.profile_dir, "helper-top.txt"))
    result["machine"]["loadavg_end"] = _loadavg()
    result["duration_s"] = round(time.monotonic() - started, 1)
    _headline(result)
    result["goals"] = [g.to_dict() for g in goals_of(result)]
    if not result["errors"]:
        del result["errors"]
    return result


def _part(result: dict, name: str, plan: Plan, measure):
    if name in plan.skip:
        result[name] = {"skipped": "--skip " + name}
        return
    try:
        result[name] = measure()
    except Exception as exc:            # one broken part must not cost the others' numbers
        result[name] = {"error": str(exc).splitlines()[0]}
        result["errors"][name] = "".join(traceback.format_exception(exc)).strip().splitlines()[-6:]


def _headline(result: dict):
    """The flat keys the issue asks for, from the parts' details."""
    lat = result.get("latency") or {}
    per_q = {q: v for q, v in lat.items() if isinstance(v, dict) and "create" in v}
    result["create_p50_ms"] = {q: v["create"]["p50"] for q, v in per_q.items()}
    result["create_p99_ms"] = {q: v["create"]["p99"] for q, v in per_q.items()}
    result["delete_p50_ms"] = {q: v["delete"]["p50"] for q, v in per_q.items()}
    result["delete_p99_ms"] = {q: v["delete"]["p99"] for q, v in per_q.items()}
    result["library_create_p50_ms"] = {q: v["library_create"]["p50"] for q, v in per_q.items()}
    result["floor_create_p50_ms"] = {q: v["floor_create"]["p50"] for q, v in per_q.items()}
    result["floor_delete_p50_ms"] = {q: v["floor_delete"]["p50"] for q, v in per_q.items()}
    result["create_p50_ratio_to_floor_by_queues"] = {
        q: ratio(v["create"]["p50"], v["floor_create"]["p50"]) for q, v in per_q.items()}
    result["floor_p50_ms"] = result["floor_create_p50_ms"].get("1")
    result["create_p50_ratio_to_floor"] = result["create_p50_ratio_to_floor_by_queues"].get("1")
    result["create_cpu_ratio_to_floor_by_queues"] = {
        q: ratio(v["create_cpu"]["p50"], v["floor_create_cpu"]["p50"]) for q, v in per_q.items()}
    result["create_cpu_ratio_to_floor"] = result["create_cpu_ratio_to_floor_by_queues"].get("1")

    sc = result.get("scale") or {}
    result["scale_last16_over_first16"] = sc.get("last_over_first")
    result["helper_rss_mb"] = sc.get("helper_rss_mb")
    result["status_ms"] = (sc.get("status_cli") or {}).get("p50")
    result["scale_ports"] = sc.get("ports")
    result["status_in_process_ms"] = (sc.get("status_in_process") or {}).get("p50")
    result["delete_all_s"] = sc.get("delete_total_s")

    hk = result.get("hook") or {}
    result["hook_ratio_to_python"] = hk.get("ratio_to_python")
    result["hook_ms"] = (hk.get("plain") or {}).get("p50")
    result["python_c_pass_ms"] = (hk.get("python_c_pass") or {}).get("p50")
    prep = (hk.get("port_prepare") or {}).get("p50")
    result["hook_prepare_port_ms"] = prep
    create_1q = result["create_p50_ms"].get("1")
    result["hook_prepare_over_create_ms"] = (round(prep - create_1q, 3)
                                             if prep is not None and create_1q is not None else None)

    nw = result.get("networks") or {}
    kinds = (nw.get("create") or {}).get("kinds") or {}
    result["network_create_p50_ms"] = {k: v["create"]["p50"] for k, v in kinds.items() if "create" in v}
    result["network_added_p50_ms"] = {k: v["added_p50_ms"] for k, v in kinds.items() if "added_p50_ms" in v}
    nd = nw.get("datapath") or {}
    ratios = [r for r in (nd.get("ratio_bridge_to_unattached") or {}).values() if r is not None]
    result["network_tcp_ratio_bridge_to_unattached"] = min(ratios) if ratios else None

    wr = result.get("wrapper") or {}
    result["wrapper_added_ms"] = wr.get("added_ms")

    bs = result.get("boot-storm") or {}
    result["boot_storm_wall_s"] = bs.get("wall_s")
    result["boot_storm_slowest_vm_s"] = bs.get("slowest_vm_s")

    dp = result.get("datapath") or {}
    result["ping_rtt_ms"] = dp.get("rtt_avg_ms")
    afxdp = (dp.get("ratios_to_tap") or {}).get("afxdp") or {}
    result["guest_rtt_p50_ratio_afxdp_to_tap"] = afxdp.get("rtt_p50")
    result["tcp_ratio_afxdp_to_tap"] = afxdp.get("tcp")


def _summarise_profile(path: str, text_path: str) -> dict:
    import io
    import pstats
    buf = io.StringIO()
    stats = pstats.Stats(path, stream=buf)
    stats.sort_stats("cumulative").print_stats(60)
    with open(text_path, "w") as f:
        f.write(buf.getvalue())
    return {"pstats": path, "top": text_path}
