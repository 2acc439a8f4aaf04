"""The netkit RTM_NEWLINK requests and the backend rules, byte for byte, without a kernel.

Each expected message is packed here by hand from the UAPI numbers
(include/uapi/linux/if_link.h, rtnetlink.h), independently of pyroute2, so
a wrong attribute number or type in vmnet.priv.netkit shows up here even on
a kernel that has no netkit.
"""

from __future__ import annotations

import struct

import pytest

from vmnet.errors import InvalidInput
from vmnet.model import PortSpec
from vmnet.priv import netkit

pytestmark = pytest.mark.unit

IFLA_ADDRESS, IFLA_IFNAME, IFLA_LINKINFO = 1, 3, 18
IFLA_NET_NS_FD, IFLA_NUM_TX_QUEUES, IFLA_NUM_RX_QUEUES = 28, 31, 32
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFINFOMSG = struct.Struct("=BxHiII")      # family, pad, type, index, flags, change


def nla(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def u32(kind, value):
    return nla(kind, struct.pack("=I", value))


def string(kind, value):
    return nla(kind, value.encode() + b"\0")


def mac(kind, value):
    return nla(kind, bytes(int(b, 16) for b in value.split(":")))


def encoded(msg) -> bytes:
    msg.encode()
    return bytes(msg.data)[16:]          # drop the nlmsghdr: type/flags are set when sent


def test_pair_request_is_l2_forward_forward_with_the_peer_in_the_consumer_netns():
    got = encoded(netkit.pair_request("vmn-vm1", "vmc-vm1", "02:00:00:00:00:07", 4, netns_fd=9))
    peer = (IFINFOMSG.pack(0, 0, 0, 0, 0) + string(IFLA_IFNAME, "vmc-vm1")
            + mac(IFLA_ADDRESS, "02:00:00:00:00:07") + u32(IFLA_NUM_TX_QUEUES, 4)
            + u32(IFLA_NUM_RX_QUEUES, 4) + u32(IFLA_NET_NS_FD, 9))
    data = (u32(5, 0)            # IFLA_NETKIT_MODE = NETKIT_L2
            + u32(3, 0)          # IFLA_NETKIT_POLICY = NETKIT_PASS ("forward")
            + u32(4, 0)          # IFLA_NETKIT_PEER_POLICY = NETKIT_PASS
            + nla(1, peer))      # IFLA_NETKIT_PEER_INFO: an ifinfomsg + its attributes
    want = (IFINFOMSG.pack(0, 0, 0, 0, 0) + string(IFLA_IFNAME, "vmn-vm1")
            + u32(IFLA_NUM_TX_QUEUES, 4) + u32(IFLA_NUM_RX_QUEUES, 4)
            + nla(IFLA_LINKINFO, string(IFLA_INFO_KIND, "netkit") + nla(IFLA_INFO_DATA, data)))
    assert got == want


def test_pair_request_without_a_netns_leaves_the_peer_beside_the_primary():
    got = encoded(netkit.pair_request("vmn-a", "vmc-a", "02:00:00:00:00:01", 1))
    assert struct.pack("=HH", 8, IFLA_NET_NS_FD) not in got


def test_single_request_has_no_peer_and_room_for_the_leased_queues():
    got = encoded(netkit.single_request("vmc-vm1", "02:00:00:00:00:07", leased_queues=3))
    data = u32(5, 0) + u32(10, 1)    # IFLA_NETKIT_MODE = L2, IFLA_NETKIT_PAIRING = SINGLE
    want = (IFINFOMSG.pack(0, 0, 0, 0, 0) + string(IFLA_IFNAME, "vmc-vm1")
            + mac(IFLA_ADDRESS, "02:00:00:00:00:07") + u32(IFLA_NUM_TX_QUEUES, 1)
            + u32(IFLA_NUM_RX_QUEUES, 4)          # queue 0 is netkit's own
            + nla(IFLA_LINKINFO, string(IFLA_INFO_KIND, "netkit") + nla(IFLA_INFO_DATA, data)))
    assert got == want


def test_the_netkit_kind_decodes_what_the_kernel_reports():
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    raw = netkit.pair_request("vmn-a", "vmc-a", "02:00:00:00:00:01", 2)
    raw.encode()
    back = ifinfmsg(bytes(raw.data))
    back.decode()
    data = back.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    assert data.get_attr("IFLA_NETKIT_MODE") == netkit.NETKIT_L2
    assert data.get_attr("IFLA_NETKIT_PEER_INFO").get_attr("IFLA_IFNAME") == "vmc-a"


def test_l3_mode_is_refused_because_it_leaves_the_vm_without_a_mac():
    with pytest.raises(InvalidInput) as exc:
        netkit.pair_request("vmn-a", "vmc-a", "02:00:00:00:00:01", 1, mode="l3")
    assert "00:00:00:00:00:00" in exc.value.message
    assert "virtio-net" in exc.value.message
    assert "L2" in exc.value.fix


def test_netkit_backend_refuses_native_mode_before_anything_is_created():
    with pytest.raises(InvalidInput) as exc:
        PortSpec(name="vm1", backend="netkit", mode="native")
    assert "generic (skb)" in exc.value.message
    assert "--mode skb" in exc.value.fix


@pytest.mark.parametrize("mode", ["auto", "skb"])
def test_netkit_backend_accepts_auto_and_skb_mode(mode):
    assert PortSpec(name="vm1", backend="netkit", mode=mode).backend == "netkit"


def test_netkit_lease_needs_a_valid_physical_nic_and_others_refuse_one():
    with pytest.raises(InvalidInput) as exc:
        PortSpec(name="vm1", backend="netkit-lease")
    assert "--lease-from" in exc.value.fix
    with pytest.raises(InvalidInput):
        PortSpec(name="vm1", backend="netkit-lease", lease_from="eth0; rm")
    with pytest.raises(InvalidInput) as exc:
        PortSpec(name="vm1", backend="veth", lease_from="eth0")
    assert "netkit-lease" in exc.value.fix
    assert PortSpec(name="vm1", backend="netkit-lease", lease_from="eth0").lease_from == "eth0"


def test_port_record_keeps_the_requested_backend_and_the_reason():
    from vmnet.model import Port
    port = Port(spec=PortSpec(name="vm1", backend="netkit"), mode="skb", mtu=3826,
                host_ifindex=5, consumer_ifindex=6, backend_requested="auto",
                backend_reason="auto: the kernel has netkit")
    record = port.to_dict()
    assert (record["backend"], record["backend_requested"]) == ("netkit", "auto")
    again = Port.from_dict(record)
    assert again.spec.backend == "netkit"
    assert again.backend_requested == "auto"
    assert again.backend_reason == "auto: the kernel has netkit"


@pytest.mark.netns
def test_protocol_fixup_program_loads_from_its_committed_object_with_its_version_tag():
    import os
    from vmnet.priv import libbpf
    fd = netkit.load_fixup()
    try:
        info = libbpf.prog_info(fd)
        assert info.name.decode() == netkit.FIXUP_NAME
        assert info.type == 3                   # BPF_PROG_TYPE_SCHED_CLS
    finally:
        os.close(fd)
