"""When a bind-guard test may skip: only where the kernel cannot run it.

The guard needs the bpf LSM and a kernel that loads BPF LSM programs; this
project's 6.18 host lists bpf among its LSMs but refuses to load them
(EPERM), Debian's 6.12 runs them. VMNET_REQUIRE_BIND_GUARD=1 (set by the
kernel-matrix runner for kernels built with CONFIG_BPF_LSM and bpf in
CONFIG_LSM) turns every skip into a failure.
"""

from __future__ import annotations

import os

import pytest
from helpers import required_or_skip

from vmnet.priv import bindguard


def guard_available() -> tuple[bool, str]:
    try:
        bindguard.ensure().close()
        return True, ""
    except bindguard.GuardUnavailable as exc:
        return False, exc.why


def require_guard() -> None:
    ok, why = guard_available()
    if ok:
        return
    required_or_skip("VMNET_REQUIRE_BIND_GUARD", f"the kernel cannot run vmnet's bind guard: {why}",
                     f"the kernel cannot run vmnet's bind guard: {why} (the kernel-matrix entry 6.12 runs this)")


def require_no_guard() -> str:
    """For tests of what happens without the guard: skip where the kernel has it."""
    ok, why = guard_available()
    if ok:
        pytest.skip("the kernel runs vmnet's bind guard here: the fallback cannot be shown")
    return why
