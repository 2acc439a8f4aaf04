"""What the wrapper costs a VM's start: QEMU itself, against the wrapper in front of it.

Each way runs the same `-version` (libvirt probes the emulator this way,
and it is the shortest run QEMU has), as the wrapper is installed on a
libvirt host (`vmnet libvirt install-wrapper`: vmnet's virtualenv, without
site) and as the KubeVirt directory runs it
(`vmnet kubevirt runtime`: Debian's python3.11 through its own loader),
plus the takeover decision: a tap netdev by fd that is not a placeholder
(TUNGETIFF, then the tap's alias in one rtnetlink request), through each
way, before the same pass-through. The
fetch of the sockets is the helper's part, measured in "latency".
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
import tempfile
import time

from ..priv import netns
from .stats import ratio, summary

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


def _timed(argv, runs: int, env, pass_fds=(), preexec=None) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              pass_fds=pass_fds, preexec_fn=preexec, stdin=subprocess.DEVNULL)
        out.append((time.perf_counter() - t0) * 1000)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.decode(errors='replace')[-300:]}")
    return out


def _in_netns(ref: str):
    def enter():
        fd = netns.open_netns(ref)
        netns._setns(fd)
        os.close(fd)
    return enter


def as_installed(directory: str) -> str:
    """The wrapper as `vmnet libvirt install-wrapper` installs it, written into `directory`."""
    from ..libvirt.hookinstall import install_wrapper
    path = os.path.join(directory, "vmnet-qemu-wrapper")
    install_wrapper(path)
    return path


def measure(tag: str, runs: int, qemu: str | None = None, progress=None) -> dict:
    qemu = qemu or "/usr/bin/qemu-system-x86_64"
    if not os.path.exists(qemu):
        return {"skipped": f"no QEMU at {qemu}"}
    env = {"PATH": "/usr/bin:/bin", "VMNET_QEMU": qemu, "HOME": "/"}
    out: dict = {"qemu": qemu, "runs": runs}
    tmp = tempfile.mkdtemp(prefix=f"vmnet-bench-{tag}-")
    ns = f"vmnet-st{tag}w"
    fd = -1
    try:
        wrapper = as_installed(tmp)
        from ..kubevirt import runtime
        t0 = time.perf_counter()
        made = runtime.build(os.path.join(tmp, "runtime"), qemu=qemu)
        out["runtime_build_s"] = round(time.perf_counter() - t0, 2)
        out["runtime_mib"] = round(made["bytes"] / 2**20, 1)
        ways = {"qemu": [qemu, "-version"], "wrapper_venv": [wrapper, "-version"],
                "wrapper_runtime": [made["wrapper"], "-version"]}
        for name, argv in ways.items():
            _timed(argv, 2, env)                                            # warm the page cache
            out[name] = summary(_timed(argv, runs, env))
            if progress:
                progress(f"wrapper: {name}", len(out) - 3, len(ways) + 1)
        netns.create_named(ns)
        with netns.entered(ns):
            from pyroute2 import IPRoute
            with IPRoute() as ip:
                ip.link("add", ifname="vmtbench", kind="tuntap", mode="tap", ifr={"no_pi": True})
            fd = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"vmtbench", IFF_TAP | IFF_NO_PI))
        tap_args = ["-netdev", f'{{"type":"tap","fd":"{fd}","id":"n0"}}', "-version"]
        for name, path in (("wrapper_venv_tap_not_vmnets", wrapper), ("wrapper_runtime_tap_not_vmnets",
                                                                      made["wrapper"])):
            _timed([path, *tap_args], 2, env, (fd,), _in_netns(ns))
            out[name] = summary(_timed([path, *tap_args], runs, env, (fd,), _in_netns(ns)))
        base = out["qemu"]["p50"]
        out["ratios_to_qemu"] = {k: ratio(out[k]["p50"], base) for k in
                                 ("wrapper_venv", "wrapper_runtime", "wrapper_venv_tap_not_vmnets",
                                  "wrapper_runtime_tap_not_vmnets")}
        out["added_ms"] = {k: round(out[k]["p50"] - base, 1) for k in out["ratios_to_qemu"]}
        return out
    finally:
        if fd >= 0:
            os.close(fd)
        netns.remove_named(ns)
        shutil.rmtree(tmp, ignore_errors=True)
