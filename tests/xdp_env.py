"""Sharing a device's XDP hook in tests: xdp-loader (Debian's xdp-tools), counting programs,
and whether this kernel runs libxdp's dispatcher at all.

libxdp's dispatcher needs freplace (BPF_PROG_TYPE_EXT) programs. Debian's
6.12 and 7.3 kernels load them; this project's 6.18 host refuses them
(EPERM, as it refuses BPF LSM programs), and libxdp then falls back to one
program alone. So the sharing tests run in the kernel-matrix entries,
where VMNET_REQUIRE_XDP_DISPATCHER=1 turns a skip into a failure, and skip
here, saying why. xdp-loader runs with nsenter --net (not `ip netns exec`,
which mounts a fresh /sys and hides bpffs) and inherits the session's
private LIBXDP_BPFFS (tests/conftest.py).
"""

from __future__ import annotations

import functools
import os
import shutil
import struct
import subprocess
import tempfile
import uuid

import pytest
from helpers import required_or_skip

from vmnet.priv import libbpf, links, netns, xdpshare, xskprog

SOURCE = os.path.join(os.path.dirname(__file__), "bpf", "xdp_count.c")


def xdp_loader(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    if shutil.which("xdp-loader") is None:
        pytest.fail("xdp-loader is missing: install.sh installs Debian's xdp-tools")
    out = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "xdp-loader", *args], capture_output=True,
                         text=True, stdin=subprocess.DEVNULL, timeout=120)
    if check and out.returncode != 0:
        raise AssertionError(f"xdp-loader {' '.join(args)}: {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


@functools.lru_cache(maxsize=None)
def counting_program(name: str) -> str:
    """A counting XDP object whose program is called `name` (built once per session)."""
    out = os.path.join(tempfile.gettempdir(), f"vmnet-test-{name}-{os.getpid()}.o")
    arch = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True).stdout.strip()
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", f"-I/usr/include/{arch}", f"-DNAME={name}",
                    "-c", SOURCE, "-o", out], check=True)
    return out


def count(ns: str, dev: str, name: str) -> int:
    """Frames the counting program `name` in the device's dispatcher has seen."""
    with netns.entered(ns):
        hook = hook_of(dev)
    comp = next((c for c in hook.components if c.name == name), None)
    assert comp is not None, f"{name} is not on {dev}: {hook.to_dict()}"
    for map_id in comp.map_ids:
        fd = libbpf.map_fd_by_id(map_id)
        try:
            if libbpf.map_info(fd).name.startswith(b"seen"):
                return struct.unpack("Q", libbpf.map_lookup(fd, struct.pack("I", 0), 8))[0]
        finally:
            os.close(fd)
    raise AssertionError(f"{name} has no counter map")


def veth(ns: str, a: str, b: str, queues: int = 1) -> None:
    """A veth pair in netns `ns`, both ends up (removed with the netns)."""
    from pyroute2 import IPRoute
    with netns.entered(ns), IPRoute() as ip:
        ip.link("add", ifname=a, kind="veth", peer={"ifname": b, "num_rx_queues": queues,
                                                     "num_tx_queues": queues},
                num_rx_queues=queues, num_tx_queues=queues)
        for dev in (a, b):
            # no IPv6 neighbour discovery: vmnet's own counters count every frame
            with open(f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6", "w") as f:
                f.write("1")
            ip.link("set", index=ip.link_lookup(ifname=dev)[0], state="up")


def hook_of(dev: str) -> xdpshare.Hook:
    state = links.require_link(dev)
    prog = state["xdp_prog_id"] or state["xdp_drv_prog_id"] or state["xdp_skb_prog_id"]
    return xdpshare.inspect(state["ifindex"], dev, prog, state["xdp_mode"], xskprog.PROGRAM)


@functools.lru_cache(maxsize=None)
def dispatcher_supported() -> tuple[bool, str]:
    """Whether libxdp builds a dispatcher on this kernel: xdp-loader on a throwaway veth."""
    ns = "vmnet-x" + uuid.uuid4().hex[:8]
    netns.create_named(ns)
    try:
        veth(ns, "vmnet-xa", "vmnet-xb")
        out = xdp_loader(ns, "load", "-m", "skb", "vmnet-xa", counting_program("vmnet_probe"), check=False)
        with netns.entered(ns):
            hook = hook_of("vmnet-xa")
        xdp_loader(ns, "unload", "vmnet-xa", "--all", check=False)
        if hook.kind == "dispatcher":
            return True, ""
        said = out.stderr.strip()[-200:]
        return False, ("this kernel refuses the freplace (BPF_PROG_TYPE_EXT) programs libxdp's dispatcher "
                       "is made of, so libxdp loads one program alone" + (f" ({said})" if said else ""))
    finally:
        netns.remove_named(ns)


def require_dispatcher():
    ok, why = dispatcher_supported()
    if ok:
        return
    required_or_skip("VMNET_REQUIRE_XDP_DISPATCHER", why,
                     f"{why}; the kernel-matrix entries (Debian's 6.12 and 7.3) run this")
