"""Summaries of timing samples and the issue's goals, judged. Pure.

Percentiles use the nearest-rank method (p99 of 200 samples is the third
largest): no interpolation between samples that never happened.
"""

from __future__ import annotations

import dataclasses
import math
import statistics


def percentile(samples: list[float], p: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(samples_ms: list[float]) -> dict:
    """p50/p99/min/max/mean of samples in milliseconds, rounded for people."""
    if not samples_ms:
        return {"n": 0, "p50": None, "p99": None, "min": None, "max": None, "mean": None}
    return {"n": len(samples_ms),
            "p50": _r(statistics.median(samples_ms)),
            "p99": _r(percentile(samples_ms, 99)),
            "min": _r(min(samples_ms)),
            "max": _r(max(samples_ms)),
            "mean": _r(statistics.fmean(samples_ms))}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 3)


def _r(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


@dataclasses.dataclass
class Goal:
    """One of the issue's goals: `value` must stay at or under `limit`."""

    name: str
    value: float | None
    limit: float
    unit: str               # "ms", "MB" or "x" (a ratio)
    note: str = ""
    minimum: bool = False   # `value` must reach `limit` instead (a throughput ratio)

    @property
    def measured(self) -> bool:
        return self.value is not None

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.limit if self.minimum else self.value <= self.limit

    def verdict(self) -> str:
        if self.value is None:
            return f"not measured{': ' + self.note if self.note else ''}"
        spare = abs(self.limit - self.value)
        if self.met:
            return f"met, {_fmt(spare, self.unit)} to spare ({self.value / self.limit:.2f} of the limit)"
        return f"MISSED by {_fmt(spare, self.unit)} ({self.value / self.limit:.2f} of the limit)"

    def to_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "limit": self.limit, "unit": self.unit, "minimum": self.minimum,
                "met": self.met, "of_limit": None if self.value is None else round(self.value / self.limit, 3),
                "verdict": self.verdict()}


def _fmt(x: float, unit: str) -> str:
    if unit == "x":
        return f"{x:.2f}x"
    return f"{x:.1f} {unit}"


def goals_of(result: dict) -> list[Goal]:
    """The issue's goals, judged on a bench result (missing parts: not measured)."""
    p99, lat = result.get("create_p99_ms", {}), result.get("create_p50_ms", {})
    hook = result.get("hook", {})
    added = result.get("network_added_p50_ms") or {}
    return [
        Goal("create p99, 1 queue", p99.get("1"), 30.0, "ms"),
        Goal("create p99, 8 queues", p99.get("8"), 60.0, "ms"),
        Goal("create p50 / floor p50, 1 queue", result.get("create_p50_ratio_to_floor"), 2.0, "x",
             note="" if lat else "latency part skipped"),
        # a node's worth of VMs: the helper's CPU per create at most twice the kernel's own
        Goal("helper CPU per create / floor CPU, 1 queue", result.get("create_cpu_ratio_to_floor"), 2.0, "x",
             note="" if lat else "latency part skipped"),
        Goal("scale: last 16 / first 16 creates", result.get("scale_last16_over_first16"), 1.25, "x"),
        Goal("scale: helper RSS", result.get("helper_rss_mb"), 80.0, "MB"),
        Goal("scale: vmnet --json status (CLI)", result.get("status_ms"), 300.0, "ms"),
        # ... and at 1,000 ports: RSS under 120 MB, status from a new process under 150 ms
        *[Goal(f"scale, 1,000 ports: {what}", result.get(key) if result.get("scale_ports") == 1000 else None,
               limit, unit, note=_thousand_note(result))
          for what, key, limit, unit in (("helper RSS", "helper_rss_mb", 120.0, "MB"),
                                         ("vmnet --json status (CLI)", "status_ms", 150.0, "ms"))],
        Goal("hook without vmnet / python3 -c pass", result.get("hook_ratio_to_python"), 2.0, "x",
             note=hook.get("skipped", "")),
        # issue 4: with one port, prepare adds at most 30 ms to the port's create time
        Goal("hook prepare with one port - create p50", result.get("hook_prepare_over_create_ms"), 30.0, "ms",
             note=hook.get("skipped") or hook.get("port_skipped", "")),
        # ports join networks: each of bridge, VLAN and routed adds at most 1 ms to a plain port's
        # create p50; the data path through a bridge with anti-spoofing keeps 0.95x of an unattached port's
        *[Goal(f"networks: {kind} create p50 - plain create p50", added.get(kind), 1.0, "ms",
               note=_network_note(result, kind)) for kind in ("bridge", "vlan", "routed")],
        Goal("networks: TCP, bridge + anti-spoofing / unattached", result.get("network_tcp_ratio_bridge_to_unattached"),
             0.95, "x", minimum=True, note=_network_note(result, "datapath")),
        # live migration: a vmnet NIC loses no more pings (10 ms apart) than a tap NIC + 1
        Goal("migration: pings lost, vmnet - tap", (result.get("migration") or {}).get("extra_pings_lost"), 1.0,
             "pings", note=(result.get("migration") or {}).get("skipped", "")),
        # a boot storm: 100 VMs' hooks and wrappers at once, all with sockets within 3 s, none over 1.5 s
        *[Goal(f"boot storm: 100 VMs, {what}", _storm(result, key), limit, "s", note=_storm_note(result))
          for what, key, limit in (("wall until the last has its sockets", "wall_s", 3.0),
                                   ("slowest single VM", "slowest_vm_s", 1.5))],
    ]


def _thousand_note(result: dict) -> str:
    ports = result.get("scale_ports")
    return "" if ports in (None, 1000) else f"this run made {ports} ports (--ports 1000 for this goal)"


def _storm(result: dict, key: str):
    bs = result.get("boot-storm") or {}
    return bs.get(key) if bs.get("vms") == 100 and not bs.get("error") else None


def _storm_note(result: dict) -> str:
    bs = result.get("boot-storm") or {}
    if bs.get("skipped") or bs.get("error"):
        return bs.get("skipped") or bs.get("error")
    if bs.get("vms") not in (None, 100):
        return f"this run started {bs['vms']} VMs (--quick), not 100"
    return ""


def _network_note(result: dict, kind: str) -> str:
    nw = result.get("networks") or {}
    if nw.get("skipped") or nw.get("error"):
        return nw.get("skipped") or nw.get("error")
    if kind == "datapath":
        return (nw.get("datapath") or {}).get("error", "")
    return (((nw.get("create") or {}).get("kinds") or {}).get(kind) or {}).get("skipped", "")
