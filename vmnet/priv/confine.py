"""Dropping privileges in the consumer's process just before exec.

The contract (as passt documents its stages):
  Should: run as the given uid/gid with no supplementary groups; have
    no_new_privs set; have an empty bounding set and empty effective,
    permitted, inheritable and ambient sets; have RLIMIT_MEMLOCK raised when
    the plan says so (done first, while CAP_SYS_RESOURCE is still held).
  May: keep CAP_IPC_LOCK, and only it, in the permitted, effective,
    inheritable and ambient sets when the memlock plan is "ipc-lock"
    (ambient is what carries it across the uid switch and exec).
  Mustn't: keep any other capability, any group of the caller, or any fd
    not handed over explicitly (the caller closes the rest).
"""

from __future__ import annotations

import os
import resource

import prctl

from ..memlock import MemlockPlan

PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4


def _ambient() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapAmb:"):
                return int(line.split()[1], 16)
    return 0


def _ambient_prctl(op: int, cap: int = 0) -> None:
    # python-prctl has no PR_CAP_AMBIENT; ctypes (about 2 ms to import) only when it is needed
    import ctypes
    if ctypes.CDLL(None, use_errno=True).prctl(PR_CAP_AMBIENT, op, cap, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "cannot change the ambient capability set")


def _last_cap() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def apply_memlock(plan: MemlockPlan | None, pid: int = 0):
    """Raise RLIMIT_MEMLOCK of pid (0: this process) to what the plan needs."""
    if plan is not None and plan.action == "raise":
        hard = plan.hard if plan.hard == resource.RLIM_INFINITY else max(plan.hard, plan.need)
        resource.prlimit(pid, resource.RLIMIT_MEMLOCK, (plan.need, hard))


def confine(uid: int | None, gid: int | None, keep_ipc_lock: bool = False):
    """Become uid/gid with no capabilities (but CAP_IPC_LOCK when asked). Irreversible.

    uid None keeps the caller's identity (an unprivileged caller, e.g. the
    wrapper under libvirt): its capabilities still go, and its bounding set
    too when it holds CAP_SETPCAP.
    """
    if keep_ipc_lock:
        # must be inheritable before the bounding set loses it
        prctl.cap_inheritable.ipc_lock = True
    prctl.set_keepcaps(keep_ipc_lock)
    if prctl.cap_effective.setpcap:
        for cap in range(_last_cap() + 1):
            prctl.capbset_drop(cap)
    if uid is not None:
        os.setgroups([])
        os.setresgid(gid if gid is not None else uid, gid if gid is not None else uid,
                     gid if gid is not None else uid)
        os.setresuid(uid, uid, uid)
    # effective before permitted: the kernel refuses an effective set wider than the
    # permitted one (a caller that stays root, e.g. the wrapper under a libvirt that
    # leaves QEMU its capabilities, still has a full effective set here)
    if keep_ipc_lock:
        prctl.cap_effective.limit(prctl.CAP_IPC_LOCK)
        prctl.cap_permitted.limit(prctl.CAP_IPC_LOCK)
        prctl.cap_inheritable.limit(prctl.CAP_IPC_LOCK)
        _ambient_prctl(PR_CAP_AMBIENT_RAISE, prctl.CAP_IPC_LOCK)
    else:
        prctl.cap_effective.limit()
        prctl.cap_inheritable.limit()
        prctl.cap_permitted.limit()
    # whatever the caller had in its ambient set is gone with the sets above: the kernel keeps
    # there only what is both permitted and inheritable (capabilities(7); tests/test_confine.py)
    # — for the capabilities python-prctl knows; one newer than it is cleared here
    if _ambient() & ~((1 << prctl.CAP_IPC_LOCK) if keep_ipc_lock else 0):
        _ambient_prctl(PR_CAP_AMBIENT_CLEAR_ALL)
        if keep_ipc_lock:
            _ambient_prctl(PR_CAP_AMBIENT_RAISE, prctl.CAP_IPC_LOCK)
    prctl.set_keepcaps(False)
    prctl.set_no_new_privs(True)
