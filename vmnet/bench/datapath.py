"""The data path: ping RTT through a port to an unprivileged consumer.

With no af-xdp QEMU at hand (VMNET_TEST_QEMU unset), the consumer is
vmnet's responder, set up by vmnet.selftest.run_case exactly as QEMU would
be (same handoff, no capabilities but CAP_IPC_LOCK where memlock cannot be
raised). The QEMU comparison the issue asks for (guest ping and TCP bulk
through af-xdp vs QEMU's tap backend) is not implemented yet; when
VMNET_TEST_QEMU is set the report says so.
"""

from __future__ import annotations

import os

from .. import selftest


def measure(tag: str, pings: int, user: str = "nobody") -> dict:
    uid, gid = selftest.consumer_identity(user)
    out = {"consumer": "vmnet responder", "mode": "native", "queues": 1, "pings": pings}
    if os.environ.get("VMNET_TEST_QEMU"):
        out["qemu"] = "VMNET_TEST_QEMU is set, but the guest ping/TCP bulk comparison is not implemented yet"
    row = selftest.run_case("native", 1, uid=uid, gid=gid, allow_ipc_lock=True, tag=tag,
                            pings=pings, flows=4)
    out.update(ok=row.ok, rtt_avg_ms=None if row.rtt_ms is None else round(row.rtt_ms, 3),
               ping=row.pings, memlock=row.memlock, problems=row.problems)
    return out
