"""Connection slots: who may hold how many of the helper's connections, so no tenant starves another.

Pure. Every virt-launcher runs as uid 107, so counting slots per uid let one
pod hold every slot its uid had and lock every other VM's QEMU out; eight
pods with uids of their own locked out root, and CNI ADD failed for the
node. Slots are now counted per verified identity, in pools kept apart:

- `admin`: root and the admin group on the admin socket (the CNI plugin,
  the libvirt hook, operators) — `admin_clients` slots nobody else can take;
- `local`: other users on the admin socket (status, list, show), per uid;
- `consumer`: the consumer socket, per tenant: a pod (the pod UID its
  cgroup names, which no process can claim without being put in that
  cgroup by root) or, outside pods, a uid in one cgroup (one QEMU of
  libvirt's), with a cap per uid on top for the latter.

Within a pool each tenant may hold `per_tenant` slots (and, for uids
outside pods, `per_uid`). A full pool does not simply refuse the next
client: it takes the least recently used slot of the tenant holding the
most, as long as that tenant holds more than the newcomer — so a tenant
below its fair share always gets in, whatever the others do.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Tenant:
    pool: str               # "admin", "local" or "consumer"
    key: tuple              # who, within the pool
    uid: int

    def describe(self) -> str:
        kind = self.key[0]
        if kind == "pod":
            return f"pod {self.key[1]} (uid {self.uid})"
        if kind == "cgroup":
            return f"uid {self.uid} in cgroup {self.key[2]}"
        return f"uid {self.uid}"


@dataclasses.dataclass(frozen=True)
class Limits:
    capacity: int           # slots in the pool
    per_tenant: int         # slots one tenant may hold
    per_uid: int | None     # slots one uid may hold across its tenants (None: no cap)


@dataclasses.dataclass
class Verdict:
    admit: bool
    evict: object = None    # the slot (as given in `held`) to free first
    why: str = ""


def tenant_of(pool: str, uid: int, pod_uid: str | None = None, cgroup: str | None = None) -> Tenant:
    if pool != "consumer":
        return Tenant(pool, ("uid", uid), uid)
    if pod_uid:
        return Tenant(pool, ("pod", pod_uid), uid)
    return Tenant(pool, ("cgroup", uid, cgroup or "?"), uid)


def judge(tenant: Tenant, held: list[tuple[Tenant, float, object]], limits: Limits) -> Verdict:
    """Whether tenant gets a slot, given what the pool's slots hold: (tenant, last use, slot)."""
    mine = sum(1 for t, _, _ in held if t == tenant)
    if mine >= limits.per_tenant:
        return Verdict(False, why=f"{tenant.describe()} already has {mine} connection(s)")
    by_uid = tenant.key[0] == "cgroup" and limits.per_uid is not None
    if by_uid:
        uid_held = sum(1 for t, _, _ in held if t.uid == tenant.uid and t.key[0] == "cgroup")
        if uid_held >= limits.per_uid:
            return Verdict(False, why=f"uid {tenant.uid} already has {uid_held} connection(s)")
    if len(held) < limits.capacity:
        return Verdict(True)
    counts: dict[Tenant, int] = {}
    for t, _, _ in held:
        counts[t] = counts.get(t, 0) + 1
    most = max(counts.values())
    if most <= mine:
        return Verdict(False, why=f"all {limits.capacity} connection slots are taken, none by a tenant "
                                  f"holding more than {tenant.describe()}")
    # among the tenants holding the most, the slot used longest ago
    _, _, slot = min(((t, last, s) for t, last, s in held if counts[t] == most), key=lambda x: x[1])
    return Verdict(True, evict=slot, why=f"all {limits.capacity} slots taken: freed one of a tenant with {most}")
