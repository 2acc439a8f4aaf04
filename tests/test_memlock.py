"""How vmnet plans the memory a consumer must lock for its UMEMs."""

from __future__ import annotations

import re

import pytest

from vmnet import memlock
from vmnet.errors import MemlockError
from vmnet.memlock import INFINITY, UMEM_BYTES_PER_QUEUE, MemlockPlan, plan_memlock

pytestmark = pytest.mark.unit

MiB = 2**20


def plan(queues=1, *, soft=8 * MiB, hard=8 * MiB, can_raise_hard=False, allow_ipc_lock=False,
         already_locked=0) -> MemlockPlan:
    return plan_memlock(queues, soft=soft, hard=hard, can_raise_hard=can_raise_hard,
                        allow_ipc_lock=allow_ipc_lock, already_locked=already_locked)


def test_umem_is_32_mib_per_queue():
    assert UMEM_BYTES_PER_QUEUE == 32 * MiB == (2048 + 2048) * 2 * 4096


@pytest.mark.parametrize("queues", [1, 2, 4, 64])
def test_need_is_32_mib_per_queue(queues):
    assert plan(queues, soft=INFINITY).need == queues * 32 * MiB


# --- enough ----------------------------------------------------------------------

@pytest.mark.parametrize("soft", [32 * MiB, 32 * MiB + 1, 1 << 40])
def test_soft_limit_at_or_above_the_need_is_enough(soft):
    p = plan(1, soft=soft, hard=soft)
    assert p.action == "enough"
    assert (p.need, p.soft, p.hard) == (32 * MiB, soft, soft)


def test_unlimited_soft_limit_is_enough():
    assert plan(64, soft=INFINITY, hard=INFINITY).action == "enough"


def test_enough_wins_over_every_fallback():
    assert plan(1, soft=64 * MiB, hard=64 * MiB, can_raise_hard=True,
                allow_ipc_lock=True).action == "enough"


# --- raise ---------------------------------------------------------------------------

def test_soft_limit_one_byte_short_is_not_enough():
    assert plan(1, soft=32 * MiB - 1, hard=64 * MiB).action == "raise"


@pytest.mark.parametrize("hard", [32 * MiB, 1 << 40, INFINITY])
def test_hard_limit_at_or_above_the_need_means_raise(hard):
    assert plan(1, soft=8 * MiB, hard=hard).action == "raise"


def test_hard_limit_below_the_need_is_raised_when_the_helper_may_raise_hard_limits():
    assert plan(2, soft=8 * MiB, hard=8 * MiB, can_raise_hard=True).action == "raise"


def test_raise_is_preferred_to_ipc_lock():
    assert plan(1, hard=64 * MiB, allow_ipc_lock=True).action == "raise"
    assert plan(1, can_raise_hard=True, allow_ipc_lock=True).action == "raise"


# --- ipc-lock -------------------------------------------------------------------------

def test_ipc_lock_only_when_the_operator_allowed_it():
    p = plan(1, soft=8 * MiB, hard=8 * MiB, allow_ipc_lock=True)
    assert p.action == "ipc-lock"
    assert "CAP_IPC_LOCK" in p.describe()
    with pytest.raises(MemlockError):
        plan(1, soft=8 * MiB, hard=8 * MiB, allow_ipc_lock=False)


# --- failure ----------------------------------------------------------------------------

def test_no_way_to_lock_enough_is_a_memlock_error_stating_need_limit_and_fix():
    with pytest.raises(MemlockError) as info:
        plan(2, soft=8 * MiB, hard=8 * MiB)
    err = info.value
    assert err.code == "memlock" and err.exit_code == 6
    assert "64 MiB" in err.message, "states the bytes needed in MiB"
    assert "8 MiB" in err.message, "states the current limit"
    assert "2 queue" in err.message
    assert "CAP_SYS_RESOURCE" in err.fix
    assert "--allow-ipc-lock" in err.fix
    assert re.search(r"limit", err.fix), "says the limit can be raised by the operator"
    assert "ulimit -l" in err.fix or "LimitMEMLOCK" in err.fix


def test_memlock_error_reports_soft_and_hard_limits_separately():
    with pytest.raises(MemlockError) as info:
        plan(1, soft=4 * MiB, hard=16 * MiB)
    assert "4 MiB" in info.value.message
    assert "16 MiB" in info.value.message


def test_memlock_error_text_includes_the_fix():
    with pytest.raises(MemlockError) as info:
        plan(1)
    assert "fix:" in str(info.value)
    assert info.value.to_dict()["code"] == "memlock"


# --- already locked ---------------------------------------------------------------------

def test_memory_already_locked_by_the_uid_adds_to_the_need():
    p = plan(1, soft=INFINITY, already_locked=10 * MiB)
    assert p.need == 42 * MiB


def test_already_locked_memory_can_make_an_otherwise_enough_limit_short():
    assert plan(1, soft=40 * MiB, hard=40 * MiB).action == "enough"
    with pytest.raises(MemlockError) as info:
        plan(1, soft=40 * MiB, hard=40 * MiB, already_locked=32 * MiB)
    assert "64 MiB" in info.value.message
    assert "32 MiB already locked" in info.value.message


def test_already_locked_memory_moves_enough_to_raise():
    assert plan(1, soft=40 * MiB, hard=128 * MiB, already_locked=32 * MiB).action == "raise"


# --- description ------------------------------------------------------------------------

def test_mib_formats_sizes_and_unlimited():
    assert memlock.mib(8 * MiB) == "8 MiB"
    assert memlock.mib(32 * MiB) == "32 MiB"
    assert memlock.mib(MiB // 2) == "0.5 MiB"
    assert memlock.mib(INFINITY) == "unlimited"


@pytest.mark.parametrize("kwargs, action, words", [
    (dict(soft=INFINITY, hard=INFINITY), "enough", ["unlimited", "32 MiB"]),
    (dict(soft=8 * MiB, hard=64 * MiB), "raise", ["8 MiB", "32 MiB"]),
    (dict(allow_ipc_lock=True), "ipc-lock", ["8 MiB", "32 MiB", "CAP_IPC_LOCK"]),
])
def test_plan_describes_itself(kwargs, action, words):
    p = plan(1, **kwargs)
    assert p.action == action
    summary = p.describe()
    for word in words:
        assert word in summary
    d = p.to_dict()
    assert d["action"] == action and d["need"] == 32 * MiB and d["summary"] == summary
