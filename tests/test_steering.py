"""RSS context + ntuple steering: the SIOCETHTOOL requests, and a real NIC where one exists.

The layouts are checked twice: against numbers written here from
include/uapi/linux/ethtool.h, and (where a C compiler and the kernel
headers are installed, as install.sh provides) against offsetof() of the
real structures. This machine has no NIC with RSS contexts: the end-to-end
test needs VMNET_TEST_RSS_NIC and skips saying so; what a device without
RSS contexts answers is tested on a real veth.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess

import pytest
from pyroute2 import IPRoute

from vmnet.errors import InvalidInput, NotSupported
from vmnet.priv import steering

C_LAYOUT = r"""
#include <stdio.h>
#include <stddef.h>
#include <linux/ethtool.h>
int main(void) {
    printf("%zu %zu %zu %zu %zu %zu %zu %zu %zu %zu %zu\n",
           sizeof(struct ethtool_rxfh), offsetof(struct ethtool_rxfh, rss_config),
           sizeof(struct ethtool_rxnfc), offsetof(struct ethtool_rxnfc, fs),
           offsetof(struct ethtool_rxnfc, rss_context),
           offsetof(struct ethtool_rx_flow_spec, h_u), offsetof(struct ethtool_rx_flow_spec, m_u),
           offsetof(struct ethtool_rx_flow_spec, ring_cookie),
           offsetof(struct ethtool_rx_flow_spec, location),
           offsetof(struct ethtool_usrip4_spec, ip4dst), offsetof(struct ethtool_usrip4_spec, ip_ver));
    return 0;
}
"""


@pytest.mark.unit
def test_layouts_match_the_kernel_headers(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not os.path.exists("/usr/include/linux/ethtool.h"):
        pytest.skip("needs a C compiler and linux/ethtool.h (apt-get install gcc linux-libc-dev)")
    src = tmp_path / "layout.c"
    src.write_text(C_LAYOUT)
    subprocess.run([cc, "-o", str(tmp_path / "layout"), str(src)], check=True)
    got = [int(x) for x in subprocess.run([str(tmp_path / "layout")], capture_output=True,
                                          text=True, check=True).stdout.split()]
    assert got == [steering.RXFH.size, steering.RXFH.size, steering.RXNFC_SIZE, steering.FS_OFFSET,
                   steering.RXNFC_RSS_CONTEXT, steering.FS_H_U, steering.FS_M_U,
                   steering.FS_RING_COOKIE, steering.FS_LOCATION, 4, 13]


@pytest.mark.unit
def test_rss_context_request_allocates_a_context_spread_over_the_ports_queues_only():
    buf = steering.rss_context_create_request(8, [4, 5, 6])
    cmd, ctx, indir, key, hfunc, xfrm, rsvd32 = steering.RXFH.unpack_from(buf)
    assert (cmd, ctx, indir, key, hfunc, xfrm, rsvd32) == (0x47, 0xFFFFFFFF, 8, 0, 0, 0, 0)
    assert list(struct.unpack_from("=8I", buf, 24)) == [4, 5, 6, 4, 5, 6, 4, 5]
    assert len(buf) == 24 + 8 * 4


@pytest.mark.unit
def test_the_hosts_default_table_spreads_over_the_queues_not_leased_and_resets_when_none_is():
    buf = steering.default_table_request(8, [0, 3])
    cmd, ctx, indir, *_ = steering.RXFH.unpack_from(buf)
    assert (cmd, ctx, indir) == (0x47, 0, 8)           # ETHTOOL_SRSSH on the device's own context
    assert list(struct.unpack_from("=8I", buf, 24)) == [0, 3, 0, 3, 0, 3, 0, 3]
    assert bytes(steering.default_table_request(8, [])) == struct.pack("=IIIIBB2xI", 0x47, 0, 0, 0, 0, 0, 0)


@pytest.mark.unit
def test_rss_context_delete_is_an_empty_table_on_that_context():
    buf = steering.rss_context_delete_request(3)
    assert bytes(buf) == struct.pack("=IIIIBB2xI", 0x47, 3, 0, 0, 0, 0, 0)
    with pytest.raises(InvalidInput):
        steering.rss_context_delete_request(0)        # the device's own table, never deleted


@pytest.mark.unit
def test_ntuple_rule_for_the_vms_mac_goes_to_its_context():
    buf = steering.ntuple_insert_request(steering.Match(dst_mac="02:00:00:00:00:07"), context=3)
    assert len(buf) == 192
    assert struct.unpack_from("=II", buf, 0) == (0x32, 0)                  # ETHTOOL_SRXCLSRLINS
    assert struct.unpack_from("=I", buf, 16)[0] == 0x12 | 0x20000000       # ETHER_FLOW | FLOW_RSS
    assert bytes(buf[20:26]) == bytes.fromhex("020000000007")              # h_u.ether_spec.h_dest
    assert bytes(buf[26:34]) == b"\0" * 8                                  # h_source, h_proto: any
    assert bytes(buf[92:98]) == b"\xff" * 6                                # m_u: match h_dest only
    assert bytes(buf[98:106]) == b"\0" * 8
    assert struct.unpack_from("=QI", buf, 168) == (0, 0xFFFFFFFF)          # ring_cookie, RX_CLS_LOC_ANY
    assert struct.unpack_from("=I", buf, 184)[0] == 3                      # rss_context


@pytest.mark.unit
def test_ntuple_rule_for_the_vms_ipv4_address():
    buf = steering.ntuple_insert_request(steering.Match(dst_ipv4="198.18.0.2"), context=1)
    assert struct.unpack_from("=I", buf, 16)[0] == 0x0D | 0x20000000       # IP_USER_FLOW | FLOW_RSS
    assert bytes(buf[24:28]) == bytes([198, 18, 0, 2])                     # ip4dst
    assert buf[20 + 13] == 1                                               # ip_ver = ETH_RX_NFC_IP4
    assert bytes(buf[96:100]) == b"\xff" * 4 and buf[92 + 13] == 0


@pytest.mark.unit
def test_ntuple_delete_names_the_rule_location():
    buf = steering.ntuple_delete_request(1023)
    assert struct.unpack_from("=I", buf, 0)[0] == 0x31
    assert steering.parse_rule_location(buf) == 1023


@pytest.mark.unit
@pytest.mark.parametrize("kwargs", [{}, {"dst_mac": "02:00:00:00:00:01", "dst_ipv4": "10.0.0.1"},
                                    {"dst_mac": "01:00:00:00:00:01"}, {"dst_ipv4": "300.1.1.1"}])
def test_a_rule_matches_exactly_one_valid_destination(kwargs):
    with pytest.raises(InvalidInput):
        steering.Match(**kwargs)


@pytest.mark.unit
@pytest.mark.parametrize("queues", [[], [-1], [True], [4096]])
def test_impossible_queue_sets_are_refused(queues):
    with pytest.raises(InvalidInput):
        steering.rss_context_create_request(128, queues)


@pytest.mark.netns
def test_a_device_without_rss_contexts_is_refused_naming_it(test_netns):
    with IPRoute() as ip:
        ip.link("add", ifname="vmn-rss", kind="veth", peer="vmc-rss")
    try:
        with pytest.raises(NotSupported) as exc:
            steering.create_steering("vmn-rss", [0], steering.Match(dst_mac="02:00:00:00:00:01"))
        assert "vmn-rss" in exc.value.message
        assert "RSS contexts" in exc.value.fix
    finally:
        with IPRoute() as ip:
            ip.link("del", ifname="vmn-rss")


@pytest.mark.netns
def test_steering_on_a_real_multiqueue_nic():
    nic = os.environ.get("VMNET_TEST_RSS_NIC")
    if not nic:
        pytest.skip("needs a multi-queue NIC whose driver supports RSS contexts and ntuple rules: "
                    "set VMNET_TEST_RSS_NIC=IFNAME (this machine has none)")
    s = steering.create_steering(nic, [2, 3], steering.Match(dst_mac="02:00:00:00:00:42"))
    try:
        assert s.context > 0
    finally:
        assert steering.remove_steering(s) is True
    steering.remove_steering(s)          # idempotent: removing what is gone does not raise
