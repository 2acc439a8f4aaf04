"""What a given QEMU's af-xdp netdev can do with a vmnet port, and what it cannot.

The rules are pure; the one probe (`QEMU -version`, asked once per binary
and cached) is at the bottom. Read from net/af-xdp.c of Debian's 10.0.13
and 10.2.2 sources (docs/datapath.md has the finding in full):

- Every released QEMU with af-xdp reads only one queue of a multi-queue
  af-xdp netdev. net_init_af_xdp() turns on read polling
  (af_xdp_read_poll(s, true)) once, after its per-queue loop, for one
  queue's state: up to 10.0 for the first (the program check just before
  it resets `s` to queue 0), from 10.1 for the last (that reset moved under
  `if (nc0 && !inhibit)`, and vmnet's sock-fds need inhibit=on). The other
  queues' sockets are never read; their frames are lost. So vmnet refuses
  ports of more than one queue to QEMU, unless the operator declares a QEMU
  with the fix (qemu_multiqueue_fixed = true).
- Up to 10.0, QEMU checks with inhibit=on that an XDP program is attached
  to ifname= in mode=; a netkit-lease port's program is on the NIC, not on
  the netkit device QEMU binds, so such a port needs QEMU 10.1 or later.
- A receive-only netkit-lease port (a NIC without AF_XDP zero-copy) cannot
  send: never for a VM.
"""

from __future__ import annotations

import json
import os
import re

from .errors import NotSupported

_VERSION = re.compile(r"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?")
FIXED_SETTING = "qemu_multiqueue_fixed = true"


def parse_version(text: str) -> tuple[int, int, int] | None:
    m = _VERSION.search(text or "")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


def _v(version) -> str:
    return ".".join(map(str, version)) if version else "of unknown version"


def is_qemu(path: str) -> bool:
    """Whether a consumer command is a QEMU binary (and its rules apply)."""
    name = os.path.basename(path)
    return name.startswith(("qemu-system-", "qemu-kvm"))


def refusal(version: tuple | None, record: dict, multiqueue_fixed: bool = False) -> NotSupported | None:
    """Why this QEMU cannot use this port, or None. `record`: the port as the helper reports it."""
    name, queues = record.get("name"), record.get("queues", 1)
    extra = record.get("extra") or {}
    where = f"QEMU {_v(version)}"
    if extra.get("receive_only"):
        return NotSupported(
            f"port {name} is receive-only (its NIC has no AF_XDP zero-copy, so nothing sent on a "
            "leased queue leaves): a VM behind it could not send",
            fix="lease from a NIC with zero-copy, or use the veth or netkit backend for a VM")
    if queues > 1 and not multiqueue_fixed:
        polled = "the first" if version and version < (10, 1, 0) else "the last"
        return NotSupported(
            f"port {name} has {queues} queues, and {where} reads only one queue of an af-xdp netdev "
            f"({polled}, in this version): net/af-xdp.c net_init_af_xdp() turns on read polling "
            "(af_xdp_read_poll) for a single queue after its per-queue loop, so frames on the "
            "port's other queues would be lost",
            fix=f"give the port 1 queue; or run a QEMU whose net_init_af_xdp() polls every queue "
                f"(docs/datapath.md) and set {FIXED_SETTING} in vmnet.toml")
    if record.get("backend") == "netkit-lease" and version is not None and version < (10, 1, 0):
        return NotSupported(
            f"port {name} is a netkit-lease port, whose XSK program runs on the NIC, and {where} "
            f"insists on a program attached to {record.get('consumer_ifname')} itself",
            fix="use QEMU 10.1 or later (it does not check with inhibit=on)")
    return None


# ---- the probe ---------------------------------------------------------------

_seen: dict[tuple, tuple | None] = {}


def _cache_file() -> str | None:
    base = os.environ.get("XDG_CACHE_HOME") or (os.path.join(os.environ["HOME"], ".cache")
                                                 if os.environ.get("HOME") else None)
    return os.path.join(base, "vmnet", "qemu-versions.json") if base else None


def version_of(path: str, timeout: float = 10.0) -> tuple[int, int, int] | None:
    """The version of the QEMU binary at path: asked once (`-version`), then cached by its
    inode, size and mtime, in this process and in the user's cache directory when it has one."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    key = (real, st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _seen:
        return _seen[key]
    cache = _cache_file()
    stored = _read(cache)
    entry = stored.get(real)
    if entry and entry.get("id") == list(key[1:]):
        version = tuple(entry["version"]) if entry.get("version") else None
    else:
        import subprocess       # only on a cache miss: the wrapper runs this on every VM start
        try:
            out = subprocess.run([real, "-version"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                 timeout=timeout).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        version = parse_version(out)
        stored[real] = {"id": list(key[1:]), "version": list(version) if version else None}
        _write(cache, stored)
    _seen[key] = version
    return version


def _read(path: str | None) -> dict:
    if not path:
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(path: str | None, data: dict) -> None:
    """Best effort: a cache that cannot be written only costs the next start a probe."""
    if not path:
        return
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass


def listed(value: str | None) -> list[str]:
    """QEMU binaries from a ':'-separated list (VMNET_TEST_QEMU for the VM tests and the benchmark)."""
    return [p for p in (value or "").split(":") if p]


def labels(paths: list[str]) -> dict[str, str]:
    """path -> a label from its version ("10.2.2"), made unique with its directory when two
    binaries report the same version (a patched build beside the stock one)."""
    out: dict[str, str] = {}
    for path in paths:
        version = version_of(path)
        label = ".".join(map(str, version)) if version else "unknown"
        if label in out.values():
            where = os.path.dirname(os.path.realpath(path))
            if os.path.basename(where) == "bin":
                where = os.path.dirname(where)
            label += "-" + os.path.basename(where)
        out[path] = label
    return out
