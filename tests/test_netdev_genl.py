"""netdev queue-create (queue leasing): the request against the UAPI, detection, refusal.

The expected bytes are packed here from include/uapi/linux/netdev.h of the
queue-leasing series ("net: Add queue-create operation"):
NETDEV_CMD_QUEUE_CREATE = 16; queue attributes ID=1, IFINDEX=2, TYPE=3,
LEASE=8; lease attributes IFINDEX=1, QUEUE=2, NETNS_ID=3; NETDEV_QUEUE_TYPE_RX
= 0. Nests carry NLA_F_NESTED because generic netlink validates strictly.
queue-create is in Linux 7.1 and later; no kernel these machines run has it,
so the end-to-end lease skips with that reason; the detection and the
refusal run against the real kernel.
"""

from __future__ import annotations

import os
import struct

import pytest

from vmnet.errors import InvalidInput, NotSupported
from vmnet.model import PortSpec
from vmnet.priv import netdev_genl, ports

NLA_F_NESTED = 1 << 15


def nla(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def u32(kind, value):
    return nla(kind, struct.pack("=I", value))


@pytest.mark.unit
def test_queue_create_request_matches_the_uapi_byte_for_byte():
    msg = netdev_genl.queue_create_request(ifindex=7, lease_ifindex=3, lease_queue=5)
    msg.encode()
    got = bytes(msg.data)[16:]               # after the nlmsghdr (type = the family id)
    queue_id = u32(1, 5) + u32(3, 0)         # NETDEV_A_QUEUE_ID = 5, NETDEV_A_QUEUE_TYPE = rx
    lease = u32(1, 3) + nla(2 | NLA_F_NESTED, queue_id)   # LEASE_IFINDEX, LEASE_QUEUE
    want = (struct.pack("=BBH", 16, 1, 0)    # genlmsghdr: cmd queue-create, version 1
            + u32(2, 7)                      # NETDEV_A_QUEUE_IFINDEX: the netkit device
            + u32(3, 0)                      # NETDEV_A_QUEUE_TYPE: rx
            + nla(8 | NLA_F_NESTED, lease))  # NETDEV_A_QUEUE_LEASE
    assert got == want


@pytest.mark.unit
def test_queue_create_reply_yields_the_new_queue_id():
    reply = netdev_genl.queue_msg()
    reply["cmd"] = netdev_genl.NETDEV_CMD_QUEUE_CREATE
    reply["attrs"] = [("NETDEV_A_QUEUE_ID", 1)]
    reply.encode()
    back = netdev_genl.queue_msg(bytes(reply.data))
    back.decode()
    assert netdev_genl.queue_create_reply_id(back) == 1


@pytest.mark.unit
@pytest.mark.parametrize("args", [(0, 3, 5), (7, 0, 5), (7, 3, -1), (True, 3, 5), (7, 3, "5")])
def test_queue_create_refuses_impossible_numbers(args):
    with pytest.raises(InvalidInput):
        netdev_genl.queue_create_request(*args)


@pytest.mark.netns
def test_detection_reads_the_running_kernels_netdev_family():
    ok, why = netdev_genl.queue_create_supported()
    ops = netdev_genl.family_ops()
    assert ok == (ops is not None and netdev_genl.NETDEV_CMD_QUEUE_CREATE in ops)
    assert ("has queue-create" in why) if ok else ("no queue-create" in why or "no netdev" in why)


@pytest.mark.netns
def test_netkit_lease_is_refused_naming_the_kernel_requirement(test_netns, port_name):
    if netdev_genl.queue_create_supported()[0]:
        pytest.skip("this kernel has queue-create: the refusal cannot be shown here")
    with pytest.raises(NotSupported) as exc:
        ports.create_port(PortSpec(name=port_name, backend="netkit-lease", lease_from="lo"))
    assert exc.value.code == "not-supported"
    assert "queue-create" in exc.value.message
    assert "Linux 7.1 or later" in exc.value.fix and "queue-create, 16" in exc.value.fix
    assert not ports.port_exists(port_name)


@pytest.mark.netns
def test_lease_of_a_nic_queue_to_netkit_end_to_end(test_netns):
    ok, why = netdev_genl.queue_create_supported()
    if not ok:
        pytest.skip(f"queue leasing needs {netdev_genl.REQUIREMENT}; this kernel: {why}")
    nic = os.environ.get("VMNET_TEST_LEASE_NIC")
    if not nic:
        pytest.skip("queue leasing needs a physical NIC whose driver has queue management ops: "
                    "set VMNET_TEST_LEASE_NIC=IFNAME")
    pytest.fail("this kernel has queue-create but vmnet's netkit-lease port path stops at "
                "feature detection (docs/backends.md): finish it before this test can pass")
