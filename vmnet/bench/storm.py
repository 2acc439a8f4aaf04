"""A boot storm: 100 VMs' worth of ports made at once, through the paths VMs really use.

A host reboot, or a KubeVirt node drain landing elsewhere, starts many VMs
together. Each VM here is what libvirt does for one domain with a vmnet
port: its hook's `prepare begin` (the hook `vmnet libvirt install-hook`
installs, run as a process with the domain XML on stdin; it creates the
port through the helper), then the wrapper in front of QEMU
(`vmnet-qemu-wrapper` as `vmnet libvirt install-wrapper` installs it, a
process of its own) fetching the port's sockets
and exec'ing "QEMU" — here a stand-in that says it started and sleeps, so
that what is timed is vmnet's part. All VMs start at once, each in a
thread of its own that runs its two processes in turn. Reported: the wall
time from the first start until the last VM's stand-in runs with its
sockets, the slowest single VM (its hook's start to its sockets), the
median, and the helper's CPU time over the storm. Then every stand-in is
stopped and every domain released through the hook, concurrently too,
and the bench checks that no port is left.

The benchmark's own helper (a fresh instance and netns, allow_ipc_lock: the
wrapper runs as root here, so it keeps CAP_IPC_LOCK for the UMEM where a
helper without CAP_SYS_RESOURCE cannot raise its memlock limit).

The wrapper goes into the port's netns through nsenter, as libvirt or
virt-launcher start QEMU: a small C launcher. With a preexec_fn instead,
subprocess forks this process (100 threads, all its page tables copied)
where it would otherwise vfork it, and runs Python in the child, holding
the GIL that every other VM's thread needs to launch its own: that alone
took the slowest VM from about 1.4 to 2.7 s. The floor launches its second
interpreter the same way.
"""

from __future__ import annotations

import concurrent.futures
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid

from ..argv import placeholder_netdev
from ..priv import netns
from . import hook
from .launcher import BenchHelper
from .wrapper import as_installed

STAND_IN = "#!/bin/sh\necho up\nexec sleep 600\n"


def _helper_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def interpreter_floor(vms: int, python: str, ns: str) -> dict:
    """The same storm without vmnet: each VM two bare interpreter starts that import json (what
    the hook and the wrapper cannot do without), in turn, all VMs at once, the second launched
    into the netns as the wrapper is. What 2 cores take for that alone bounds what any Python
    hook and wrapper can reach."""
    argv = [python, "-I", "-S", "-c", "import json"]

    def one_vm(_):
        t0 = time.perf_counter()
        for prefix in ([], netns.command_in(ns)):
            subprocess.run(prefix + argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=120, cwd="/",
                           check=True)
        return t0, time.perf_counter()

    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with concurrent.futures.ThreadPoolExecutor(vms) as pool:
        t0 = time.perf_counter()
        spans = list(pool.map(one_vm, range(vms)))
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (children.ru_utime - children0.ru_utime) + (children.ru_stime - children0.ru_stime)
    return {"floor_wall_s": round(max(end for _, end in spans) - t0, 3),
            "floor_slowest_vm_s": round(max(end - start for start, end in spans), 3),
            "floor_cpu_per_vm_ms": round(cpu * 1000 / vms, 1)}


def measure(tag: str, vms: int = 100, progress=None) -> dict:
    helper = BenchHelper(tag, extra_config="allow_ipc_lock = true\n")
    helper.start()
    try:
        return _storm(helper, tag, vms, progress)
    finally:
        helper.close()


def _storm(helper: BenchHelper, tag: str, vms: int, progress) -> dict:
    argv, found = hook.find_hook(helper, None)
    if argv is None:
        return {"skipped": found}
    stand_in = os.path.join(helper.dir, "vmnet-bench-vm")
    with open(stand_in, "w") as f:
        f.write(STAND_IN)
    os.chmod(stand_in, 0o755)
    wrapper = as_installed(helper.dir)
    env = dict(helper.env, VMNET_QEMU=stand_in)

    domains = []
    for i in range(vms):
        port, dom, dom_uuid = f"{tag}s{i}", f"bench-{tag}-storm{i}", str(uuid.uuid4())
        xml = hook._port_xml(dom, dom_uuid, port)
        if xml is None:
            return {"skipped": "vmnet.libvirt.domain_xml is not available to write the ports' metadata"}
        domains.append((port, dom, xml))
    procs: list[subprocess.Popen | None] = [None] * vms

    def one_vm(i: int) -> dict:
        port, dom, xml = domains[i]
        t0 = time.perf_counter()
        done = subprocess.run(argv + [dom, "prepare", "begin", "-"], input=xml, env=helper.env,
                              capture_output=True, timeout=120, cwd="/")
        t_hook = time.perf_counter()
        if done.returncode != 0:
            return {"error": f"prepare of {dom} failed (exit {done.returncode}): {hook._last_line(done)}"}
        netdev, device = placeholder_netdev(port)
        proc = subprocess.Popen(netns.command_in(helper.netns) + [wrapper, "-netdev", netdev, "-device", device],
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd="/")
        procs[i] = proc
        line = proc.stdout.readline()
        t_up = time.perf_counter()
        if line.strip() != b"up":
            proc.wait(30)
            return {"error": f"the wrapper of {dom} did not start its VM: "
                             f"{proc.stderr.read().decode(errors='replace').strip()[-300:]}"}
        return {"start": t0, "hook_ms": (t_hook - t0) * 1000, "up": t_up, "vm_ms": (t_up - t0) * 1000}

    floor = interpreter_floor(vms, sys.executable, helper.netns)
    cpu0 = _helper_cpu_s(helper.proc.pid)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        with concurrent.futures.ThreadPoolExecutor(vms) as pool:
            t0 = time.perf_counter()
            results = list(pool.map(one_vm, range(vms)))
        cpu = _helper_cpu_s(helper.proc.pid) - cpu0
        if progress:
            progress("boot storm", 1, 2)
        errors = [r["error"] for r in results if "error" in r]
        ok = [r for r in results if "error" not in r]
        out: dict = {"vms": vms, "hook": found, "started": len(ok)}
        if errors:
            out["errors"] = errors[:5]
            out["error"] = f"{len(errors)} of {vms} VMs did not start: {errors[0]}"
        if ok:
            per_vm = sorted(r["vm_ms"] for r in ok)
            out.update(
                wall_s=round((max(r["up"] for r in ok) - t0), 3),
                slowest_vm_s=round(per_vm[-1] / 1000, 3),
                vm_p50_ms=round(statistics.median(per_vm), 1),
                hook_p50_ms=round(statistics.median(r["hook_ms"] for r in ok), 1),
                helper_cpu_s=round(cpu, 2),
                helper_cpu_per_vm_ms=round(cpu * 1000 / len(ok), 2))
    finally:
        for proc in procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in procs:
            if proc is not None:
                proc.wait()
                proc.stdout.close()
                proc.stderr.close()
        # the hooks' and the wrappers' own CPU (the stand-ins sleep): what a VM start costs
        # outside the helper, and what 2 cores must share
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        processes_cpu = (children.ru_utime - children0.ru_utime) + (children.ru_stime - children0.ru_stime)
        t1 = time.perf_counter()

        def release(i: int) -> str | None:
            port, dom, xml = domains[i]
            done = subprocess.run(argv + [dom, "release", "end", "-"], input=xml, env=helper.env,
                                  capture_output=True, timeout=120, cwd="/")
            return None if done.returncode == 0 else f"release of {dom} failed (exit {done.returncode}): " \
                                                     f"{hook._last_line(done)}"

        with concurrent.futures.ThreadPoolExecutor(vms) as pool:
            failed = [e for e in pool.map(release, range(vms)) if e]
        release_s = time.perf_counter() - t1
        left = [p["name"] for p in helper.call("port-list")["ports"]]
        for name in left:
            helper.call("port-delete", name=name, missing_ok=True)
    out.update(floor)
    if "wall_s" in out:
        out["processes_cpu_per_vm_ms"] = round(processes_cpu * 1000 / out["started"], 1)
        out["cpus"] = os.cpu_count()
    out["release_all_s"] = round(release_s, 3)
    out["release_failures"] = len(failed)
    if failed:
        out["release_errors"] = failed[:3]
    out["ports_left_after_release"] = len(left)
    if progress:
        progress("boot storm", 2, 2)
    return out
