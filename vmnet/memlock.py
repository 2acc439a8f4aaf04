"""How much memory a consumer must lock, and how vmnet gets it there.

Pure planning. QEMU registers a 32 MiB UMEM per queue; the kernel charges
it to the consumer uid's locked_vm (summed over that uid's processes)
against the consumer's RLIMIT_MEMLOCK, and answers ENOBUFS beyond it.
CAP_IPC_LOCK bypasses the accounting. Order of preference: the limit is
already enough; the helper raises it (needs CAP_SYS_RESOURCE to raise a
hard limit); the operator explicitly allowed CAP_IPC_LOCK; otherwise fail
before anything is exec'd, saying what is needed.
"""

from __future__ import annotations

import resource
from collections import namedtuple

from .errors import MemlockError

UMEM_BYTES_PER_QUEUE = (2048 + 2048) * 2 * 4096     # = 32 MiB, as QEMU allocates
INFINITY = resource.RLIM_INFINITY


def mib(n: int) -> str:
    return "unlimited" if n == INFINITY or n < 0 else f"{n / 2**20:g} MiB"


# a named tuple, not a dataclass: the wrapper imports this module on every VM start, and
# dataclasses pulls in inspect
class MemlockPlan(namedtuple("MemlockPlan", "action need soft hard")):
    """action: "enough", "raise" or "ipc-lock"; need: bytes the consumer uid must be able
    to lock in total; soft, hard: its RLIMIT_MEMLOCK."""

    __slots__ = ()

    def describe(self) -> str:
        return {
            "enough": f"limit {mib(self.soft)} already covers {mib(self.need)}",
            "raise": f"raise RLIMIT_MEMLOCK from {mib(self.soft)} to {mib(self.need)}",
            "ipc-lock": (f"limit {mib(self.hard)} cannot be raised to {mib(self.need)}: "
                         "the consumer runs with CAP_IPC_LOCK (allowed by the operator)"),
        }[self.action]

    def to_dict(self) -> dict:
        return {"action": self.action, "need": self.need, "soft": self.soft, "hard": self.hard,
                "summary": self.describe()}


def plan_memlock(queues: int, *, soft: int, hard: int, can_raise_hard: bool,
                 allow_ipc_lock: bool, already_locked: int = 0) -> MemlockPlan:
    need = already_locked + queues * UMEM_BYTES_PER_QUEUE
    if soft == INFINITY or soft >= need:
        return MemlockPlan("enough", need, soft, hard)
    if hard == INFINITY or hard >= need or can_raise_hard:
        return MemlockPlan("raise", need, soft, hard)
    if allow_ipc_lock:
        return MemlockPlan("ipc-lock", need, soft, hard)
    raise MemlockError(
        f"the consumer needs to lock {mib(need)} ({queues} queue(s) x 32 MiB UMEM"
        + (f" + {mib(already_locked)} already locked by its uid" if already_locked else "")
        + f") but its memlock limit is {mib(soft)} (hard {mib(hard)}) and vmnet may not raise it",
        fix=("give the helper CAP_SYS_RESOURCE so it can raise the limit, or raise it for the "
             "consumer yourself (LimitMEMLOCK= in systemd, ulimit -l), or allow the fallback "
             "with --allow-ipc-lock (the consumer then keeps CAP_IPC_LOCK, and nothing else)"),
    )
