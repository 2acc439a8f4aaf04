"""When a netkit test may skip: only when the kernel is known to lack netkit.

A skip for a missing feature is a failure on a kernel that has it (the
kernel config says CONFIG_NETKIT=y/m, as `vmnet doctor` reads it), and
VMNET_REQUIRE_NETKIT=1 (set by the kernel-matrix runner for kernels built
with netkit) turns every skip into a failure outright.
"""

from __future__ import annotations

import os

import pytest
from helpers import required_or_skip

from vmnet import doctor


def kernel_has_netkit() -> bool | None:
    """True/False from the kernel config (or a loaded module); None when nothing tells."""
    check = doctor.check_netkit(os.uname().release)
    return {doctor.OK: True, doctor.MISSING: False}.get(check.status)


def require_netkit() -> None:
    release = os.uname().release
    check = doctor.check_netkit(release)
    if check.status == doctor.OK:
        return
    required_or_skip("VMNET_REQUIRE_NETKIT", f"kernel {release} shows no netkit: {check.detail}",
                     f"netkit is absent: {check.detail}" if check.status == doctor.MISSING
                     else f"cannot tell whether kernel {release} has netkit: {check.detail}")
