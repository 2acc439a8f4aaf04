"""The netkit backend on real kernel objects: the L2 pair, its program, traffic, teardown.

Every test here needs a kernel with netkit (>= 6.7, CONFIG_NETKIT). On one
without it (this project's 6.18 host) they skip saying netkit is absent; on
one with it a skip is a failure (netkit_gate). The kernel-matrix runner
(scripts/kernel-matrix) runs them inside Debian's 6.12 kernel under QEMU.
"""

from __future__ import annotations

import os

import pytest
from pyroute2.ethtool import Ethtool

from netkit_gate import require_netkit
from vmnet import selftest
from vmnet.model import PortSpec
from vmnet.priv import bpf, links, netkit, netns, ports, xsk

pytestmark = pytest.mark.netns

NOBODY = selftest.consumer_identity("nobody")


@pytest.fixture(autouse=True)
def _netkit_kernel():
    require_netkit()


def test_netkit_port_is_an_l2_forwarding_pair_with_the_program_on_the_peer(
        test_netns, consumer_netns, port_name, instance):
    c = ports.create_port(PortSpec(name=port_name, queues=4, backend="netkit", netns=consumer_netns), instance)
    try:
        spec = c.port.spec
        assert (c.port.spec.backend, c.port.backend_requested) == ("netkit", "netkit")
        assert c.port.mode == "skb"                       # netkit has no native XDP
        assert c.port.mtu == 3826                         # what one 4 KiB frame carries in skb mode
        assert len(c.sockets) == 4
        host = netkit.link_info(spec.host_ifname)
        assert host["kind"] == "netkit" and host["primary"] == 1
        assert host["mode"] == netkit.NETKIT_L2
        assert host["policy"] == netkit.NETKIT_PASS and host["peer_policy"] == netkit.NETKIT_PASS
        assert netkit.fixup_attached(spec.host_ifname)    # or the VM's frames die as protocol 0
        assert netkit.link_info(spec.consumer_ifname) is None   # the peer is not here...
        with netns.entered(consumer_netns):                     # ...but in the consumer's netns
            peer = netkit.link_info(spec.consumer_ifname)
            state = links.link_state(spec.consumer_ifname)
        assert peer["kind"] == "netkit" and peer["primary"] == 0
        assert peer["address"] == spec.mac
        assert state["num_rx_queues"] == 4
        assert state["xdp_mode"] == "skb" and state["xdp_skb_prog_id"] == c.port.prog_id
        assert bpf.is_vmnet_program(c.port.prog_id)                # the instance's shared program
        assert sorted(os.listdir(bpf.pin_dir(port_name, instance.pin_root))) == ["link"]
        assert xsk.statistics(c.sockets[0].fileno())["rx_dropped"] == 0
    finally:
        c.close()
        assert ports.delete_port(port_name, instance) is True
    assert not bpf.pinned(port_name, instance.pin_root)
    assert links.link_state("vmn-" + port_name) is None
    with netns.entered(consumer_netns):
        assert links.link_state("vmc-" + port_name) is None    # the pair went as one


def test_offloads_are_off_on_the_netkit_primary(test_netns, port_name, instance):
    c = ports.create_port(PortSpec(name=port_name, backend="netkit"), instance)
    try:
        eth = Ethtool()
        try:
            feats = eth.get_features(c.port.spec.host_ifname).features
        finally:
            eth.close()
        for name in ("tx-checksum-ip-generic", "tx-tcp-segmentation", "tx-generic-segmentation",
                     "tx-vlan-hw-insert"):
            assert feats[name].enable is False, name
    finally:
        c.close()
        ports.delete_port(port_name, instance)


def test_auto_backend_picks_netkit_on_a_kernel_with_it_and_says_why(test_netns, port_name, instance):
    c = ports.create_port(PortSpec(name=port_name, backend="auto"), instance)
    try:
        assert c.port.spec.backend == "netkit"
        assert c.port.backend_requested == "auto"
        assert c.port.backend_reason == "auto: the kernel has netkit"
        assert netkit.link_info(c.port.spec.host_ifname)["kind"] == "netkit"
        assert c.port.to_dict()["backend_reason"] == "auto: the kernel has netkit"
    finally:
        c.close()
        ports.delete_port(port_name, instance)


def test_auto_backend_with_native_mode_keeps_veth(test_netns, port_name, instance):
    c = ports.create_port(PortSpec(name=port_name, backend="auto", mode="native"), instance)
    try:
        assert (c.port.spec.backend, c.port.mode) == ("veth", "native")
        assert "native XDP was asked for" in c.port.backend_reason
    finally:
        c.close()
        ports.delete_port(port_name, instance)


def test_an_existing_netkit_port_is_refused_and_left_intact(test_netns, port_name, instance):
    c = ports.create_port(PortSpec(name=port_name, backend="netkit"), instance)
    try:
        with pytest.raises(ports.AlreadyExists):
            ports.create_port(PortSpec(name=port_name, backend="netkit"), instance)
        assert netkit.link_info("vmn-" + port_name)["kind"] == "netkit"
        assert bpf.pinned(port_name, instance.pin_root)
    finally:
        c.close()
        ports.delete_port(port_name, instance)


def test_netkit_port_is_removable_after_its_consumer_netns_is_gone(test_netns, port_name, instance):
    other = "vmnet-gone" + port_name[1:]
    netns.create_named(other)
    try:
        c = ports.create_port(PortSpec(name=port_name, backend="netkit", netns=other), instance)
        c.close()
    finally:
        netns.remove_named(other)   # the kernel removes the pair when it tears the netns down (later)
    assert ports.delete_port(port_name, instance) is True   # the pins were still there
    assert not ports.port_exists(port_name, instance)


def test_l3_netkit_really_leaves_the_device_without_a_mac(test_netns):
    """Why vmnet refuses L3: the kernel gives an L3 netkit no MAC address at all."""
    msg = netkit.pair_request("vmn-l3probe", "vmc-l3probe", "02:00:00:00:00:09", 1)
    data = msg["attrs"][-1][1]["attrs"][1][1]["attrs"]
    data[0] = ("IFLA_NETKIT_MODE", netkit.NETKIT_L3)
    peer = data[-1][1]["attrs"]
    peer[:] = [a for a in peer if a[0] != "IFLA_ADDRESS"]   # the kernel refuses a MAC in L3
    netkit._send_newlink(msg, "netkit L3 probe pair", "l3probe")
    try:
        for name in ("vmn-l3probe", "vmc-l3probe"):
            info = netkit.link_info(name)
            assert info["mode"] == netkit.NETKIT_L3
            assert info["address"] in (None, "00:00:00:00:00:00")
    finally:
        links.delete_link("vmn-l3probe")


@pytest.mark.parametrize("queues", [1, 4])
def test_responder_in_the_peer_netns_answers_ping_udp_and_tcp_from_the_primary(test_netns, queues):
    row = selftest.run_case("skb", queues, uid=NOBODY[0], gid=NOBODY[1], allow_ipc_lock=True,
                            tag=str(os.getpid() % 10000), backend="netkit")
    assert row.problems == []
    assert row.credentials["uid"] == NOBODY[0]
    assert set(row.credentials["effective"]) <= {"ipc_lock"}
    assert row.pings == "5/5"
    assert row.udp == "32/32"           # 16 small + 16 MTU-sized datagrams
    assert row.tcp == "16/16"
    assert row.mtu == 3826
    assert len(row.per_queue_rx) == queues and sum(row.per_queue_rx) > 0
    assert row.bad_checksum == 0 and row.oversized == 0
