"""Attachments as vmnet accepts them, before anything is made: the pure rules of vmnet.network,
the CLI's, the metadata's and the CNI plugin's spellings of them, and the pure requests the
attachment kinds send (bridge VLANs, Open vSwitch columns, routed settings, MTU choice)."""

from __future__ import annotations

import pytest

from vmnet.errors import InvalidInput
from vmnet.model import PortSpec
from vmnet.network import Attachment, attachment_from_options, parse_libvirt_network_status, parse_trunk

pytestmark = pytest.mark.unit


def test_each_kind_with_what_it_needs():
    assert Attachment().describe() == "not attached"
    assert attachment_from_options(bridge="br0", vlan=10).describe() == "bridge br0, VLAN 10"
    assert attachment_from_options(ovs="br-int", vlan=5, trunk="20-30,10").describe() == \
        "Open vSwitch bridge br-int, native VLAN 5, trunk 10,20-30"
    routed = attachment_from_options(routed=True, addresses=["10.1.2.3", "fd00::3"])
    assert routed.addresses == ("10.1.2.3/32", "fd00::3/128")
    assert (routed.gateway4, routed.gateway6) == ("169.254.1.1", "fe80::1")
    net = attachment_from_options(network="default")
    assert net.kind == "network" and net.describe() == "libvirt network default"


@pytest.mark.parametrize("options, words", [
    ({"bridge": "br0", "ovs": "br1"}, "bridge and ovs were both given"),
    ({"routed": True}, "a routed port needs the VM's address"),
    ({"routed": True, "addresses": ["10.1.2.0/24"]}, "is not a host address"),
    ({"routed": True, "addresses": ["10.1.2.3"], "vlan": 3}, "carries no VLAN tags"),
    ({"network": "default", "vlan": 3}, "a libvirt network's VLANs are its own"),
    ({"bridge": "br0", "vlan": 4095}, "4095 is not a VLAN id"),
    ({"bridge": "br0", "vlan": 10, "trunk": "5-15"}, "both the native VLAN and in the trunk"),
    ({"bridge": "br0", "trunk": "10,8-12"}, "names VLAN 10 twice"),
    ({"bridge": "br0", "trunk": "30-20"}, "runs backwards"),
    ({"bridge": "br0", "addresses": ["224.0.0.1/24"]}, "cannot be a VM's address"),
    ({"bridge": "br0", "addresses": ["10.0.0.0/24"]}, "network or broadcast address"),
    ({"bridge": "br0", "addresses": ["10.0.0.5/24"], "gateway4": "10.9.0.1"}, "outside the VM's IPv4 subnets"),
    ({"bridge": "br0", "gateway4": "10.0.0.1"}, "but no IPv4 address"),
    ({"bridge": "br0", "iface_id": "x"}, "applies only to Open vSwitch ports"),
    ({"bridge": "a-bridge-name-too-long"}, "bridge name"),
    ({"network": "bad/name"}, "libvirt network name"),
    ({"bridge": "br0", "hostname": "-bad-"}, "is not a DNS name"),
    ({"bridge": "br0", "addresses": ["10.0.0.5/24"], "routes": ["10.0.0.0/8 via fd00::1"]}, "not an IPv4 address"),
])
def test_what_cannot_be_built_is_refused_with_the_reason(options, words):
    with pytest.raises(InvalidInput) as exc:
        attachment_from_options(**options)
    assert words in exc.value.message


def test_an_attachment_survives_the_record_and_the_wire():
    att = attachment_from_options(ovs="br-int", trunk=[[20, 30], [10]], vlan=5, addresses=["10.0.0.5/24"],
                                  gateway4="10.0.0.1", routes=["10.8.0.0/16 via 10.0.0.254"], dns="10.0.0.53 fd00::53",
                                  search=["a.test"], hostname="web", iface_id="lsp-1", vm_uuid="u-1")
    data = att.to_dict()
    assert data["trunk"] == [[10, 10], [20, 30]] and data["routes"] == [{"dst": "10.8.0.0/16", "gw": "10.0.0.254"}]
    assert Attachment.from_dict(data) == att
    spec = PortSpec(name="p", attachment=data)
    assert PortSpec(**spec.to_dict()) == spec and spec.to_dict()["attachment"] == data
    with pytest.raises(InvalidInput, match="unknown attachment field"):
        Attachment.from_dict({"kind": "bridge", "bridge": "br0", "colour": "red"})


def test_a_netkit_lease_port_has_nothing_to_attach():
    with pytest.raises(InvalidInput, match="no host end to attach"):
        PortSpec(name="p", backend="netkit-lease", lease_from="eth1", attachment={"kind": "bridge", "bridge": "br0"})


def test_trunk_spellings():
    assert parse_trunk("10;20-22 30") == ((10, 10), (20, 22), (30, 30))
    assert parse_trunk([[1, 4094]]) == ((1, 4094),)


STATUS = """<networkstatus>
  <class_id bitmap='0-2'/>
  <floor sum='0'/>
  <network>
    <name>default</name>
    <forward mode='nat'/>
    <bridge name='virbr0' stp='on' delay='0'/>
    <mtu size='1400'/>
    <ip address='192.168.122.1' netmask='255.255.255.0'><dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp></ip>
  </network>
</networkstatus>"""


def test_a_libvirt_networks_status_names_its_bridge_and_mtu():
    assert parse_libvirt_network_status(STATUS, "default") == {"bridge": "virbr0", "forward": "nat", "ovs": False,
                                                               "mtu": 1400}
    ovs = STATUS.replace("<forward mode='nat'/>", "<forward mode='bridge'/><virtualport type='openvswitch'/>")
    assert parse_libvirt_network_status(ovs, "o")["ovs"]
    with pytest.raises(InvalidInput, match="hands out host devices"):
        parse_libvirt_network_status(STATUS.replace("mode='nat'", "mode='passthrough'"), "d")
    with pytest.raises(InvalidInput, match="has no bridge"):
        parse_libvirt_network_status(STATUS.replace("<bridge name='virbr0' stp='on' delay='0'/>", ""), "d")


# ---- the kinds' pure requests -----------------------------------------------

def test_bridge_vlan_membership():
    from vmnet.priv.attachments.bridge import VLAN_PVID, VLAN_RANGE_BEGIN, VLAN_RANGE_END, VLAN_UNTAGGED, vlan_entries
    assert vlan_entries(10, ()) == [(VLAN_PVID | VLAN_UNTAGGED, 10)]
    assert vlan_entries(None, ((20, 20), (30, 39))) == [(0, 20), (VLAN_RANGE_BEGIN, 30), (VLAN_RANGE_END, 39)]


def test_open_vswitch_columns_and_external_ids():
    from vmnet.priv.attachments.ovs import external_ids, vlan_columns
    from vmnet.priv.instance import Instance
    assert vlan_columns(10, ()) == {"tag": 10}
    assert vlan_columns(None, ((20, 21),)) == {"trunks": [20, 21], "vlan_mode": "trunk"}
    assert vlan_columns(5, ((20, 20),)) == {"trunks": [20], "vlan_mode": "native-untagged", "tag": 5}
    ids = external_ids("web1", "02:00:00:00:00:01", None, "u-1", Instance("t1"))
    assert ids == {"iface-id": "web1", "attached-mac": "02:00:00:00:00:01", "iface-status": "active",
                   "vm-uuid": "u-1", "vmnet-port": "web1", "vmnet-instance": "t1"}


def test_a_routed_host_end_writes_only_the_ipv6_settings_the_hosts_defaults_lack():
    from vmnet.priv.attachments.routed import ipv6_unset
    base = "/proc/sys/net/ipv6/conf/"
    fresh = {base + "default/disable_ipv6": "0", base + "default/forwarding": "0",
             base + "default/proxy_ndp": "0", base + "all/proxy_ndp": "0"}
    assert [name for name, _, _ in ipv6_unset("default", fresh.get)] == ["forwarding", "proxy_ndp"]
    router = dict(fresh, **{base + "default/forwarding": "1", base + "all/proxy_ndp": "1"})
    assert ipv6_unset("default", router.get) == []
    off = dict(router, **{base + "default/disable_ipv6": "1"})
    assert ipv6_unset("default", off.get) == [("disable_ipv6", "0", "net.ipv6.conf.default.disable_ipv6=0")]
    assert len(ipv6_unset("default", {}.get)) == 3         # nothing readable: nothing assumed


@pytest.mark.parametrize("asked, network, want", [
    (None, None, (3506, "the largest one frame carries")),
    (None, (1500, "bridge br0"), (1500, "the MTU of bridge br0")),
    (1400, (1500, "bridge br0"), (1400, "asked for (below bridge br0's 1500: larger frames from it are dropped)")),
    (1500, (1500, "bridge br0"), (1500, "asked for")),
])
def test_a_port_takes_its_networks_mtu(asked, network, want):
    from vmnet.priv.backends.pair import choose_mtu
    assert choose_mtu(PortSpec(name="p", mtu=asked), 3506, network) == want


@pytest.mark.parametrize("asked, network, words", [
    (None, (9000, "bridge br9"), "bridge br9 has MTU 9000, and port p carries at most 3506"),
    (2000, (1500, "bridge br0"), "MTU 2000 of port p is larger than the MTU of bridge br0 (1500)"),
])
def test_a_network_mtu_the_port_cannot_match_is_refused_naming_both(asked, network, words):
    from vmnet.priv.backends.pair import choose_mtu
    with pytest.raises(InvalidInput) as exc:
        choose_mtu(PortSpec(name="p", mtu=asked), 3506, network)
    assert words in exc.value.message and exc.value.fix


# ---- the spellings ----------------------------------------------------------

def test_metadata_attributes_round_trip():
    from vmnet.libvirt.domain_xml import attachment_attrs, port_option
    port = port_option("web1,bridge=br0,vlan=10,trunk=20-30;40,address=10.0.0.5/24;fd00::5/64,"
                       "gateway=10.0.0.1,dns=10.0.0.53,search=a.test,hostname=web,route=10.8.0.0/16 via 10.0.0.254,"
                       "spoofcheck=no")
    att = Attachment.from_dict(port["attachment"])
    assert att.bridge == "br0" and att.vlan == 10 and att.trunk == ((20, 30), (40, 40)) and not att.spoofcheck
    attrs = attachment_attrs(port["attachment"])
    assert attrs["address"] == "10.0.0.5/24 fd00::5/64" and attrs["gateway"] == "10.0.0.1"
    assert attrs["route"] == "10.8.0.0/16 via 10.0.0.254" and attrs["spoofcheck"] == "no"
    routed = port_option("web2,routed=yes,address=10.1.2.3")
    assert attachment_attrs(routed["attachment"]) == {"routed": "yes", "address": "10.1.2.3/32"}
    with pytest.raises(InvalidInput, match="is not yes or no"):
        port_option("web3,routed=maybe,address=10.1.2.3")


def test_cni_keys_and_an_ipam_result_become_the_attachment():
    from vmnet.kubevirt import cni
    conf = {"name": "n", "bridge": "br1", "vlan": 10, "vlanTrunk": [{"id": 20}, {"minID": 30, "maxID": 32}],
            "macspoofchk": False}
    ipam = {"ips": [{"address": "10.30.0.2/24", "gateway": "10.30.0.1"}, {"address": "fd30::2/64"}],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.40.0.0/16"}, {"dst": "fd40::/64"}],
            "dns": {"nameservers": ["10.30.0.53"], "domain": "a.test"}}
    att = cni.attachment(conf, ipam)
    assert att.to_dict() == {"kind": "bridge", "bridge": "br1", "vlan": 10, "trunk": [[20, 20], [30, 32]],
                             "addresses": ["10.30.0.2/24", "fd30::2/64"], "gateway4": "10.30.0.1",
                             "routes": [{"dst": "10.40.0.0/16", "gw": "10.30.0.1"}], "dns": ["10.30.0.53"],
                             "search": ["a.test"], "spoofcheck": False}
    routed = cni.attachment({"name": "n", "routed": True}, ipam)
    assert routed.addresses == ("10.30.0.2/32", "fd30::2/128") and routed.gateway4 == "169.254.1.1"
    with pytest.raises(cni.CniError, match="vlanTrunk entry"):
        cni.attachment({"name": "n", "bridge": "b", "vlanTrunk": [{"id": 1, "maxID": 3}]})
