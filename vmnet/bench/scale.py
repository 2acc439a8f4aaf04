"""A host filling up: N one-queue ports through the helper, then status and teardown.

Reports the create latency of the first 16 against the last 16 (an O(n)
scan anywhere shows up as a ratio above 1), the helper's CPU time per
create, first vs last (an O(n) of ours shows there whatever the kernel
waits), the helper's resident memory with N ports, `vmnet --json status`
as an operator runs it (a new process, Python start-up included) and the
same status request made in-process, and the time to delete them all.
The file system that holds the helper's records is reported with them:
where it is ext4 without a journal (as /run is on some virtual machines,
not on a systemd host, whose /run is a tmpfs), every new file skips and
reads each inode freed there in the last 1-6 minutes, so the creates that
follow many deletes are slower for reasons that are not vmnet's
(docs/performance.md); `vmnet bench --state-dir` measures on another.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from ..doctor import filesystem
from .stats import ratio, summary

EDGE = 16
DISPATCHER_MAX = 48       # BPF_DISPATCHER_MAX in kernel/bpf/dispatcher.c


def vmnet_command() -> list[str]:
    """The `vmnet` an operator runs: the console script beside this Python, else `python -m vmnet`."""
    script = os.path.join(os.path.dirname(sys.executable), "vmnet")
    if os.access(script, os.X_OK):
        return [script]
    found = shutil.which("vmnet")
    return [found] if found else [sys.executable, "-m", "vmnet"]


def measure(helper, count: int, tag: str, consumer_uid: int, status_runs: int, progress) -> dict:
    names = [f"{tag}s{i}" for i in range(count)]
    creates, deletes = [], []
    rss_before = helper.rss_mb()
    cpu = []
    for i, name in enumerate(names):
        c0, t0 = helper.cpu_ns(), time.perf_counter()
        helper.call("port-create", name=name, queues=1, backend="veth", consumer_uid=consumer_uid)
        creates.append((time.perf_counter() - t0) * 1000)
        cpu.append((helper.cpu_ns() - c0) / 1e6)
        progress("scale create", i + 1, count)
    rss_after = helper.rss_mb()

    in_process, cli = [], []
    reply_bytes = 0
    argv = vmnet_command() + ["--json", "status"]
    for i in range(status_runs):
        t0 = time.perf_counter()
        result = helper.call("status")
        in_process.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        done = subprocess.run(argv, env=helper.env, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, cwd="/")
        cli.append((time.perf_counter() - t0) * 1000)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        shown = len(json.loads(done.stdout)["ports"])
        if shown != len(result["ports"]) or shown < count:
            raise RuntimeError(f"vmnet status listed {shown} ports, expected {count}")
        reply_bytes = len(json.dumps(result, separators=(",", ":")))
        progress("scale status", i + 1, status_runs)

    t_all = time.perf_counter()
    for i, name in enumerate(names):
        t0 = time.perf_counter()
        helper.call("port-delete", name=name)
        deletes.append((time.perf_counter() - t0) * 1000)
        progress("scale delete", i + 1, count)
    delete_total = time.perf_counter() - t_all

    edge = min(EDGE, count // 2) or 1
    first, last = creates[:edge], creates[-edge:]
    # The kernel's XDP dispatcher holds DISPATCHER_MAX programs; while it has
    # room, every attach waits for an RCU grace period (~10 ms), after that
    # none does. So creates past it are faster, hiding any O(n) of ours:
    # compare the last ones with the first ones past the dispatcher too.
    past = creates[DISPATCHER_MAX:DISPATCHER_MAX + edge] if count >= DISPATCHER_MAX + 2 * edge else None
    return {
        "ports": count,
        "state_dir": helper.state_dir,
        "state_fs": filesystem(helper.state_dir),
        "edge": edge,
        "first_p50_ms": round(statistics.median(first), 3),
        "last_p50_ms": round(statistics.median(last), 3),
        "last_over_first": ratio(statistics.median(last), statistics.median(first)),
        "past_dispatcher_p50_ms": round(statistics.median(past), 3) if past else None,
        "last_over_past_dispatcher": ratio(statistics.median(last), statistics.median(past)) if past else None,
        "create_ms": [round(x, 2) for x in creates],
        # the helper's CPU time per create: an O(n) of ours would show here, whatever the kernel waits
        "cpu_first_p50_ms": round(statistics.median(cpu[:edge]), 3),
        "cpu_last_p50_ms": round(statistics.median(cpu[-edge:]), 3),
        "cpu_last_over_first": ratio(statistics.median(cpu[-edge:]), statistics.median(cpu[:edge])),
        "create": summary(creates),
        "helper_rss_mb_before": rss_before.get("VmRSS"),
        "helper_rss_mb": rss_after.get("VmRSS"),
        "helper_hwm_mb": rss_after.get("VmHWM"),
        "status_cli": summary(cli),
        "status_in_process": summary(in_process),
        "status_reply_bytes": reply_bytes,
        "status_command": " ".join(argv),
        "delete": summary(deletes),
        "delete_total_s": round(delete_total, 3),
    }
