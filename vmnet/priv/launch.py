"""Starting a consumer the way QEMU is started: inherited fds, nothing else.

The child enters the consumer's netns, gets its memlock limit raised (if
the plan says so, while it still may), drops every privilege (confine), and
execs. Only the listed fds survive the exec (plus stdio).
"""

from __future__ import annotations

import os
import subprocess

from ..memlock import MemlockPlan
from . import confine, netns


def spawn_consumer(argv: list[str], fds: list[int], *, uid: int, gid: int,
                   netns_ref: str | None = None, plan: MemlockPlan | None = None,
                   stdout=subprocess.PIPE, stderr=None) -> subprocess.Popen:
    target = netns.open_netns(netns_ref) if netns_ref else None

    def in_child():
        if target is not None:
            netns._setns(target)
        confine.apply_memlock(plan)
        confine.confine(uid, gid, keep_ipc_lock=plan is not None and plan.action == "ipc-lock")

    try:
        return subprocess.Popen(argv, pass_fds=fds, close_fds=True, preexec_fn=in_child,
                                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                cwd="/", text=True, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                                         "LANG": "C.UTF-8"})
    finally:
        if target is not None:
            os.close(target)
