"""Bridge VLANs: an access port and a trunk on a bridge with VLAN filtering, against a peer on
the bridge's trunk side with real VLAN devices.

This needs bridge VLAN filtering and 802.1Q devices in the kernel: the host's 6.18 here has
neither, Debian's kernels have both. The tests skip saying so where the kernel lacks them, and
the kernel matrix (Debian's 6.12, VMNET_REQUIRE_BRIDGE_VLANS=1) turns such a skip into a failure.
"""

from __future__ import annotations

import os

import pytest
from helpers import required_or_skip
from guest_env import Guest, make_bridge, ping, run_in, veth_to

from vmnet import doctor

pytestmark = pytest.mark.netns
NOBODY = 65534


def require_bridge_vlans():
    state = doctor.kernel_config(os.uname().release, "BRIDGE_VLAN_FILTERING")
    if state == "y":
        return
    required_or_skip("VMNET_REQUIRE_BRIDGE_VLANS",
                     f"kernel {os.uname().release} shows CONFIG_BRIDGE_VLAN_FILTERING={state}",
                     f"kernel {os.uname().release} has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING="
                     f"{state or 'unknown'}): Debian's kernels in the kernel matrix run these")


@pytest.fixture
def trunk_peer(test_netns, spaces):
    """br0 with VLAN filtering; on its trunk side a peer with eth0.10 (10.70.10.1) and eth0.30
    (10.70.30.1), and another with eth0.20 (10.70.10.2: the same subnet on another VLAN, which
    must stay unreachable from VLAN 10; and 10.70.20.1). Each peer's netns answers for all of
    its addresses, hence two."""
    require_bridge_vlans()
    make_bridge("br0", vlan_filtering=True)
    peers = {}
    for dev, name, vlans in (("pt0", "vmnet-p", {10: ["10.70.10.1/24"], 30: ["10.70.30.1/24"]}),
                             ("pt1", "vmnet-q", {20: ["10.70.10.2/24", "10.70.20.1/24"]})):
        peer = peers[dev] = spaces.new(name)
        veth_to(peer, dev, master="br0")
        for vid, addrs in vlans.items():
            run_in(test_netns, "bridge", "vlan", "add", "vid", str(vid), "dev", dev)
            run_in(peer, "ip", "link", "add", "link", "eth0", "name", f"eth0.{vid}", "type", "vlan", "id", str(vid))
            for addr in addrs:
                run_in(peer, "ip", "addr", "add", addr, "dev", f"eth0.{vid}")
            run_in(peer, "ip", "link", "set", f"eth0.{vid}", "up")
    return peers["pt0"], peers["pt1"]


def start_guest(helper, port, consumer_netns, spaces, guests):
    g = Guest(helper, port, consumer_netns, spaces)
    guests.append(g)
    return g.start()


@pytest.fixture
def guests():
    made = []
    try:
        yield made
    finally:
        for g in made:
            g.close()


def test_an_access_vlan_is_untagged_to_the_vm_and_tagged_on_the_trunk(helper, consumer_netns, port_name,
                                                                       trunk_peer, spaces, guests, test_netns):
    helper.vmnet_json("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", str(NOBODY),
                      "--bridge", "br0", "--vlan", "10")
    vlans = run_in(test_netns, "bridge", "-j", "vlan", "show", "dev", "vmn-" + port_name).stdout
    assert '"vlan":10' in vlans.replace(" ", "") and "PVID" in vlans and "Egress Untagged" in vlans
    assert '"vlan":1,' not in vlans.replace(" ", "")           # the bridge's default VLAN is off the port
    g = start_guest(helper, port_name, consumer_netns, spaces, guests)
    g.address("10.70.10.5/24")
    peer10, peer20 = trunk_peer
    assert ping(g.ns, "10.70.10.1") == 3                        # reaches eth0.10: tagged 10 on the trunk
    assert ping(peer10, "10.70.10.5") == 3
    assert ping(g.ns, "10.70.10.2", count=2) == 0               # the same subnet on VLAN 20: not delivered
    assert ping(peer20, "10.70.10.5", count=2) == 0


def test_a_trunk_carries_its_vlans_tagged_to_the_vm_and_no_others(helper, consumer_netns, port_name,
                                                                   trunk_peer, spaces, guests):
    helper.vmnet_json("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", str(NOBODY),
                      "--bridge", "br0", "--trunk", "10,30")
    g = start_guest(helper, port_name, consumer_netns, spaces, guests)
    for vid, addr in ((10, "10.70.10.5/24"), (30, "10.70.30.5/24"), (20, "10.70.20.5/24")):
        g.run("ip", "link", "add", "link", "g0", "name", f"g0.{vid}", "type", "vlan", "id", str(vid))
        g.run("ip", "addr", "add", addr, "dev", f"g0.{vid}")
        g.run("ip", "link", "set", f"g0.{vid}", "up")
    peer10, peer20 = trunk_peer
    assert ping(g.ns, "10.70.10.1") == 3
    assert ping(g.ns, "10.70.30.1") == 3
    assert ping(peer10, "10.70.30.5") == 3
    assert ping(g.ns, "10.70.20.1", count=2) == 0               # VLAN 20 is not in the port's trunk
    assert ping(peer20, "10.70.20.5", count=2) == 0


def test_vlans_on_a_bridge_without_vlan_filtering_are_refused_with_the_fix(helper, consumer_netns, port_name):
    require_bridge_vlans()
    make_bridge("br0")
    out = helper.vmnet("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", str(NOBODY),
                       "--bridge", "br0", "--vlan", "10")
    assert out.returncode == 5 and "bridge br0 does not filter VLANs" in out.stderr
    assert "vlan_filtering 1" in out.stderr
    assert helper.vmnet_json("port", "list")["ports"] == []


def test_vlans_where_the_kernel_cannot_filter_them_are_refused(helper, consumer_netns, port_name):
    if doctor.kernel_config(os.uname().release, "BRIDGE_VLAN_FILTERING") == "y":
        pytest.skip("this kernel filters bridge VLANs: the refusal cannot happen here")
    make_bridge("br0")
    out = helper.vmnet("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", str(NOBODY),
                       "--bridge", "br0", "--vlan", "10")
    assert out.returncode == 5 and "this kernel's bridges cannot filter VLANs" in out.stderr
