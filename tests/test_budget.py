"""Connection slots per tenant (vmnet.priv.budget): the rules, without a helper."""

from __future__ import annotations

import pytest

from vmnet.priv.budget import Limits, judge, tenant_of

pytestmark = pytest.mark.unit


def held(*tenants):
    return [(t, float(i), f"slot{i}") for i, t in enumerate(tenants)]


def test_pods_of_one_uid_are_tenants_apart():
    a, b = tenant_of("consumer", 107, "pod-a"), tenant_of("consumer", 107, "pod-b")
    limits = Limits(capacity=100, per_tenant=2, per_uid=2)
    slots = held(a, a)
    assert not judge(a, slots, limits).admit
    assert judge(b, slots, limits).admit            # per_uid counts uids outside pods only


def test_a_uid_outside_pods_is_capped_across_its_cgroups():
    q1, q2, q3 = (tenant_of("consumer", 64055, None, f"/machine.slice/qemu-{i}") for i in range(3))
    limits = Limits(capacity=100, per_tenant=8, per_uid=2)
    verdict = judge(q3, held(q1, q2), limits)
    assert not verdict.admit and "uid 64055 already has 2" in verdict.why


def test_a_full_pool_frees_the_oldest_slot_of_the_tenant_holding_the_most():
    a, b, c = (tenant_of("consumer", 107, p) for p in ("a", "b", "c"))
    slots = held(b, a, a, a, b)
    verdict = judge(c, slots, Limits(capacity=5, per_tenant=8, per_uid=None))
    assert verdict.admit and verdict.evict == "slot1"          # a's oldest
    # a tenant already holding as many as anyone is not let in at another's expense
    assert not judge(a, held(a, b), Limits(capacity=2, per_tenant=8, per_uid=None)).admit


def test_admins_and_local_users_are_pools_of_their_own():
    assert tenant_of("admin", 0).pool == "admin" and tenant_of("local", 1000).key == ("uid", 1000)
    assert tenant_of("consumer", 107, "p").describe() == "pod p (uid 107)"
