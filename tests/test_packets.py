"""The responder's frame handling, checked against frames built independently here.

Checksums are verified with this file's own RFC 1071 implementation
(big-endian 16-bit words), not with vmnet.packets' helpers.
"""

from __future__ import annotations

import socket
import struct

import pytest

from vmnet import packets
from vmnet.packets import Responder

pytestmark = pytest.mark.unit

R_MAC = "02:00:00:00:00:aa"
R_IP = "10.0.0.2"
C_MAC = "02:00:00:00:00:bb"
C_IP = "10.0.0.1"
OTHER_IP = "10.0.0.3"
BROADCAST = b"\xff" * 6


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def ip(text: str) -> bytes:
    return socket.inet_aton(text)


# --- an independent RFC 1071 ----------------------------------------------------

def rfc1071(data: bytes) -> int:
    """The Internet checksum of data (checksum field zeroed), as a host integer."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def sums_to_zero(data: bytes) -> bool:
    """A received header/segment (checksum included) verifies."""
    return rfc1071(data) == 0


def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    return src + dst + struct.pack("!BBH", 0, proto, length)


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """What CHECKSUM_PARTIAL leaves in the L4 checksum field: the folded pseudo-header sum."""
    return ~rfc1071(pseudo(src, dst, proto, length)) & 0xFFFF


# --- frame builders ---------------------------------------------------------------

def eth(dst: bytes, src: bytes, etype: int, payload: bytes) -> bytes:
    return struct.pack("!6s6sH", dst, src, etype) + payload


def arp_request(target_ip: str, sender_mac=C_MAC, sender_ip=C_IP, op=1) -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op,
                       mac(sender_mac), ip(sender_ip), b"\0" * 6, ip(target_ip))
    return eth(BROADCAST, mac(sender_mac), 0x0806, body + b"\0" * 18)   # padded to 60 bytes


def ipv4(proto: int, payload: bytes, src=C_IP, dst=R_IP, *, ident=0x1234, frag=0x4000,
         ttl=64, options=b"", csum=None) -> bytes:
    ihl = (20 + len(options)) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(payload), ident, frag, ttl,
                      proto, 0, ip(src), ip(dst)) + options
    if csum is None:
        csum = rfc1071(hdr)
    hdr = hdr[:10] + struct.pack("!H", csum) + hdr[12:]
    return hdr + payload


def icmp_echo(ident=0x4242, seq=7, data=b"vmnet ping payload", type_=8, csum=None) -> bytes:
    msg = struct.pack("!BBHHH", type_, 0, 0, ident, seq) + data
    if csum is None:
        csum = rfc1071(msg)
    return msg[:2] + struct.pack("!H", csum) + msg[4:]


def udp(sport, dport, data: bytes, src=C_IP, dst=R_IP, csum=None) -> bytes:
    seg = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    if csum is None:
        csum = rfc1071(pseudo(ip(src), ip(dst), 17, len(seg)) + seg) or 0xFFFF
    return seg[:6] + struct.pack("!H", csum) + seg[8:]


def tcp(sport, dport, seq, flags, data=b"", ack=0, src=C_IP, dst=R_IP, csum=None) -> bytes:
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 64240, 0, 0) + data
    if csum is None:
        csum = rfc1071(pseudo(ip(src), ip(dst), 6, len(seg)) + seg)
    return seg[:16] + struct.pack("!H", csum) + seg[18:]


def ip_frame(l3: bytes) -> bytes:
    return eth(mac(R_MAC), mac(C_MAC), 0x0800, l3)


def icmp_frame(**kw) -> bytes:
    return ip_frame(ipv4(1, icmp_echo(**kw)))


def udp_frame(sport=40000, dport=7, data=b"hello, echo", **kw) -> bytes:
    return ip_frame(ipv4(17, udp(sport, dport, data, **kw)))


def tcp_frame(seq=1000, flags=0x02, dport=80, **kw) -> bytes:
    return ip_frame(ipv4(6, tcp(51000, dport, seq, flags, **kw)))


@pytest.fixture
def responder() -> Responder:
    return Responder(R_MAC, R_IP, udp_port=7)


# --- reply parsing helpers --------------------------------------------------------

def split_ip_reply(frame: bytes):
    """Check the Ethernet + IPv4 header of a reply; return (ip header, L4 bytes)."""
    dst, src, etype = struct.unpack_from("!6s6sH", frame)
    assert dst == mac(C_MAC), "reply goes back to the sender's MAC"
    assert src == mac(R_MAC), "reply comes from the responder's MAC"
    assert etype == 0x0800
    l3 = frame[14:]
    vihl, _, total, _, frag, ttl, proto, _, saddr, daddr = struct.unpack_from("!BBHHHBBH4s4s", l3)
    assert vihl == 0x45
    ihl = 20
    assert total == len(l3), "IPv4 total length covers exactly the reply"
    assert sums_to_zero(l3[:ihl]), "IPv4 header checksum is valid"
    assert frag & 0x1FFF == 0 and not frag & 0x2000, "reply is not a fragment"
    assert ttl > 0
    assert saddr == ip(R_IP) and daddr == ip(C_IP)
    return l3[:ihl], proto, l3[ihl:]


# === checksum() against known vectors ===================================================

RFC_HEADER = bytes.fromhex("45000073000040004011" "0000" "c0a80001c0a800c7")


def test_checksum_of_the_classic_ipv4_header_example_is_b861():
    assert packets.checksum(RFC_HEADER) == b"\xb8\x61"


def test_checksum_ok_accepts_the_classic_header_with_its_checksum():
    hdr = RFC_HEADER[:10] + b"\xb8\x61" + RFC_HEADER[12:]
    assert packets.checksum_ok(hdr)
    assert not packets.checksum_ok(hdr[:10] + b"\xb8\x62" + hdr[12:])


def test_checksum_of_the_rfc1071_section_3_example():
    # RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2 -> checksum 220d
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert packets.checksum(data) == b"\x22\x0d"
    assert rfc1071(data) == 0x220D


@pytest.mark.parametrize("data, expected", [
    (b"", b"\xff\xff"),
    (b"\x00\x00", b"\xff\xff"),
    (b"\xff\xff", b"\x00\x00"),
    (b"\x01", b"\xfe\xff"),                 # odd length: padded with a zero byte
    (b"\x12\x34\x56", b"\x97\xcb"),         # 1234 + 5600 = 6834 -> ~ = 97cb
])
def test_checksum_of_short_and_odd_length_inputs(data, expected):
    assert packets.checksum(data) == expected
    assert struct.pack("!H", rfc1071(data)) == expected


@pytest.mark.parametrize("length", [1, 2, 3, 17, 63, 64, 65, 1499, 1500, 3825])
def test_checksum_matches_rfc1071_for_odd_and_even_lengths(length):
    data = bytes((i * 37 + 11) & 0xFF for i in range(length))
    assert packets.checksum(data) == struct.pack("!H", rfc1071(data))


def test_checksum_carries_are_folded_more_than_once():
    data = b"\xff\xff" * 70000      # sum overflows 16 bits many times over
    assert packets.checksum(data) == struct.pack("!H", rfc1071(data))


def test_checksum_ok_is_true_for_data_with_its_own_checksum_inserted():
    data = bytearray(bytes(range(40)))
    data[10:12] = b"\0\0"
    data[10:12] = packets.checksum(bytes(data))
    assert packets.checksum_ok(bytes(data))


# === ARP =============================================================================

def test_arp_request_for_the_responder_ip_gets_a_reply(responder):
    verdict = responder.handle(arp_request(R_IP))
    assert verdict.kind == "arp"
    assert verdict.reply is not None
    frame = verdict.reply
    dst, src, etype = struct.unpack_from("!6s6sH", frame)
    assert (dst, src, etype) == (mac(C_MAC), mac(R_MAC), 0x0806)
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = struct.unpack_from("!HHBBH6s4s6s4s", frame, 14)
    assert (htype, ptype, hlen, plen) == (1, 0x0800, 6, 4)
    assert op == 2
    assert sha == mac(R_MAC) and spa == ip(R_IP)
    assert tha == mac(C_MAC) and tpa == ip(C_IP)


def test_arp_request_for_another_ip_gets_no_reply(responder):
    verdict = responder.handle(arp_request(OTHER_IP))
    assert verdict.kind == "arp"
    assert verdict.reply is None


def test_arp_reply_is_not_answered(responder):
    assert responder.handle(arp_request(R_IP, op=2)).reply is None


def test_truncated_arp_is_not_answered_and_does_not_raise(responder):
    frame = arp_request(R_IP)[:14 + 20]
    verdict = responder.handle(frame)
    assert verdict.kind == "arp" and verdict.reply is None


# === ICMP ============================================================================

@pytest.mark.parametrize("data", [b"", b"x", b"odd payload", b"even payload", bytes(range(256)) * 5])
def test_icmp_echo_request_gets_an_echo_reply_with_the_same_id_seq_and_payload(responder, data):
    verdict = responder.handle(icmp_frame(ident=0xBEEF, seq=513, data=data))
    assert verdict.kind == "icmp" and verdict.checksum_ok
    assert verdict.reply is not None
    _, proto, msg = split_ip_reply(verdict.reply)
    assert proto == 1
    type_, code, _, ident, seq = struct.unpack_from("!BBHHH", msg)
    assert (type_, code) == (0, 0)
    assert (ident, seq) == (0xBEEF, 513)
    assert msg[8:] == data
    assert sums_to_zero(msg), "ICMP checksum is valid"


def test_icmp_echo_request_to_another_ip_gets_no_reply(responder):
    verdict = responder.handle(ip_frame(ipv4(1, icmp_echo(), dst=OTHER_IP)))
    assert verdict.kind == "icmp" and verdict.checksum_ok and verdict.reply is None


def test_icmp_echo_reply_is_not_answered(responder):
    verdict = responder.handle(ip_frame(ipv4(1, icmp_echo(type_=0))))
    assert verdict.checksum_ok and verdict.reply is None


def test_icmp_echo_request_with_ip_options_is_answered(responder):
    frame = ip_frame(ipv4(1, icmp_echo(), options=b"\x01\x01\x01\x00"))   # NOP NOP NOP EOL
    verdict = responder.handle(frame)
    assert verdict.checksum_ok and verdict.reply is not None


def test_icmp_frame_with_ethernet_padding_is_answered_without_the_padding(responder):
    frame = icmp_frame(data=b"ab") + b"\0" * 12
    verdict = responder.handle(frame)
    assert verdict.checksum_ok
    _, _, msg = split_ip_reply(verdict.reply)
    assert msg[8:] == b"ab"


# === UDP =============================================================================

@pytest.mark.parametrize("data", [b"hello, echo", b"odd", b"", bytes(range(256)) * 4 + b"!"])
def test_udp_to_the_echo_port_is_echoed_with_ports_swapped_and_a_valid_checksum(responder, data):
    verdict = responder.handle(udp_frame(sport=40000, dport=7, data=data))
    assert verdict.kind == "udp" and verdict.checksum_ok
    assert verdict.reply is not None
    _, proto, seg = split_ip_reply(verdict.reply)
    assert proto == 17
    sport, dport, ulen, csum = struct.unpack_from("!HHHH", seg)
    assert (sport, dport) == (7, 40000)
    assert ulen == len(seg) == 8 + len(data)
    assert seg[8:] == data
    assert csum != 0, "a computed UDP checksum of 0 is sent as ffff"
    assert sums_to_zero(pseudo(ip(R_IP), ip(C_IP), 17, ulen) + seg), "UDP checksum is valid"


def test_udp_echo_port_is_configurable():
    responder = Responder(R_MAC, R_IP, udp_port=9999)
    assert responder.handle(udp_frame(dport=9999)).reply is not None
    assert responder.handle(udp_frame(dport=7)).reply is None


def test_udp_to_another_port_is_not_answered(responder):
    verdict = responder.handle(udp_frame(dport=53))
    assert verdict.kind == "udp" and verdict.checksum_ok and verdict.reply is None


def test_udp_to_another_ip_is_not_answered(responder):
    verdict = responder.handle(ip_frame(ipv4(17, udp(40000, 7, b"x", dst=OTHER_IP), dst=OTHER_IP)))
    assert verdict.checksum_ok and verdict.reply is None


def test_udp_with_checksum_zero_is_accepted_and_echoed(responder):
    verdict = responder.handle(udp_frame(data=b"no checksum", csum=0))
    assert verdict.checksum_ok
    assert verdict.reply is not None
    _, _, seg = split_ip_reply(verdict.reply)
    assert seg[8:] == b"no checksum"
    assert sums_to_zero(pseudo(ip(R_IP), ip(C_IP), 17, len(seg)) + seg)


def test_udp_reply_whose_checksum_computes_to_zero_is_sent_as_ffff():
    # Search for a payload whose reply checksum is 0 (one in 65536): the
    # responder must send ffff then, never 0 ("no checksum").
    responder = Responder(R_MAC, R_IP)
    base = struct.pack("!HHHH", 7, 40000, 10, 0)
    for word in range(65536):
        data = struct.pack("!H", word)
        if rfc1071(pseudo(ip(R_IP), ip(C_IP), 17, 10) + base + data) == 0:
            break
    else:
        pytest.fail("no payload found")
    _, _, seg = split_ip_reply(responder.handle(udp_frame(data=data)).reply)
    assert seg[6:8] == b"\xff\xff"
    assert sums_to_zero(pseudo(ip(R_IP), ip(C_IP), 17, len(seg)) + seg)


# === TCP =============================================================================

@pytest.mark.parametrize("seq", [1000, 0, 0xFFFFFFFF])
def test_tcp_syn_gets_rst_ack_acknowledging_the_syn(responder, seq):
    verdict = responder.handle(tcp_frame(seq=seq, flags=0x02))
    assert verdict.kind == "tcp" and verdict.checksum_ok
    assert verdict.reply is not None
    _, proto, seg = split_ip_reply(verdict.reply)
    assert proto == 6
    sport, dport, rseq, ack, off, flags, _, _, _ = struct.unpack_from("!HHIIBBHHH", seg)
    assert (sport, dport) == (80, 51000)
    assert flags == 0x14, "RST|ACK"
    assert rseq == 0
    assert ack == (seq + 1) & 0xFFFFFFFF
    assert off >> 4 == 5 and len(seg) == 20
    assert sums_to_zero(pseudo(ip(R_IP), ip(C_IP), 6, len(seg)) + seg), "TCP checksum is valid"


@pytest.mark.parametrize("flags", [0x10, 0x12, 0x04, 0x14, 0x18, 0x01])
def test_tcp_segment_that_is_not_a_bare_syn_gets_no_reply(responder, flags):
    verdict = responder.handle(tcp_frame(flags=flags))
    assert verdict.kind == "tcp" and verdict.checksum_ok and verdict.reply is None


def test_tcp_syn_to_another_ip_gets_no_reply(responder):
    frame = ip_frame(ipv4(6, tcp(51000, 80, 1, 0x02, dst=OTHER_IP), dst=OTHER_IP))
    verdict = responder.handle(frame)
    assert verdict.checksum_ok and verdict.reply is None


# === corrupted checksums ============================================================

def flip(frame: bytes, offset: int) -> bytes:
    return frame[:offset] + bytes([frame[offset] ^ 0x01]) + frame[offset + 1:]


ETH_LEN, IP_LEN = 14, 20
CORRUPTIONS = {
    # frame builder, offset of a byte inside the checksum field
    "ipv4-header-icmp": (lambda: icmp_frame(), ETH_LEN + 10),
    "ipv4-header-udp": (lambda: udp_frame(), ETH_LEN + 11),
    "ipv4-header-tcp": (lambda: tcp_frame(), ETH_LEN + 10),
    "icmp": (lambda: icmp_frame(), ETH_LEN + IP_LEN + 2),
    "udp": (lambda: udp_frame(), ETH_LEN + IP_LEN + 7),
    "tcp": (lambda: tcp_frame(), ETH_LEN + IP_LEN + 16),
    # payload bytes instead of the checksum field itself
    "icmp-payload": (lambda: icmp_frame(), ETH_LEN + IP_LEN + 9),
    "udp-payload": (lambda: udp_frame(), ETH_LEN + IP_LEN + 9),
    "tcp-header": (lambda: tcp_frame(), ETH_LEN + IP_LEN + 4),
    "ipv4-source-address": (lambda: icmp_frame(), ETH_LEN + 12),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_frame_with_one_corrupted_byte_is_flagged_and_not_answered(responder, case):
    build, offset = CORRUPTIONS[case]
    good = build()
    assert responder.handle(good).reply is not None, "the uncorrupted frame is answered"
    verdict = responder.handle(flip(good, offset))
    assert verdict.checksum_ok is False
    assert verdict.reply is None


def test_udp_with_partial_checksum_from_tx_offload_is_flagged(responder):
    seg_len = 8 + len(b"offloaded")
    partial = pseudo_sum(ip(C_IP), ip(R_IP), 17, seg_len)
    verdict = responder.handle(udp_frame(data=b"offloaded", csum=partial))
    assert verdict.kind == "udp"
    assert verdict.checksum_ok is False
    assert verdict.reply is None


def test_tcp_with_partial_checksum_from_tx_offload_is_flagged(responder):
    partial = pseudo_sum(ip(C_IP), ip(R_IP), 6, 20)
    verdict = responder.handle(tcp_frame(csum=partial))
    assert verdict.kind == "tcp"
    assert verdict.checksum_ok is False
    assert verdict.reply is None


def test_udp_partial_checksum_to_another_port_is_still_flagged(responder):
    partial = pseudo_sum(ip(C_IP), ip(R_IP), 17, 8 + 3)
    verdict = responder.handle(udp_frame(dport=53, data=b"abc", csum=partial))
    assert verdict.checksum_ok is False


# === truncated and odd frames ============================================================

def truncations() -> list:
    # an ARP frame is complete at 42 bytes (the rest is Ethernet padding)
    frames = {"arp": arp_request(R_IP)[:42], "icmp": icmp_frame(), "udp": udp_frame(),
              "tcp": tcp_frame()}
    params = []
    for name, frame in frames.items():
        for cut in sorted({0, 1, 13, 14, 15, 33, 34, 35, 41, 42, 53, len(frame) - 1}):
            if cut < len(frame):
                params.append(pytest.param(frame[:cut], id=f"{name}-{cut}"))
    return params


@pytest.mark.parametrize("frame", truncations())
def test_truncated_frames_do_not_raise_and_get_no_reply(responder, frame):
    verdict = responder.handle(frame)
    assert verdict.reply is None


@pytest.mark.parametrize("l3", [
    ipv4(1, icmp_echo())[:10],                        # shorter than an IPv4 header
])
def test_short_ipv4_is_flagged(responder, l3):
    verdict = responder.handle(ip_frame(l3))
    assert verdict.checksum_ok is False and verdict.reply is None


def test_ipv4_whose_total_length_exceeds_the_frame_is_flagged(responder):
    frame = icmp_frame()
    verdict = responder.handle(frame[:-4])
    assert verdict.kind == "icmp"
    assert verdict.checksum_ok is False and verdict.reply is None


@pytest.mark.parametrize("vihl", [0x44, 0x65, 0x40, 0x4F])
def test_ipv4_with_bad_version_or_header_length_is_flagged(responder, vihl):
    l3 = bytearray(ipv4(1, icmp_echo()))
    l3[0] = vihl
    l3[10:12] = b"\0\0"
    l3[10:12] = struct.pack("!H", rfc1071(bytes(l3[:20])))
    verdict = responder.handle(ip_frame(bytes(l3)))
    assert verdict.checksum_ok is False and verdict.reply is None


def test_ipv4_fragment_is_not_answered(responder):
    frame = ip_frame(ipv4(1, icmp_echo(), frag=0x2000))      # more fragments
    verdict = responder.handle(frame)
    assert verdict.checksum_ok and verdict.reply is None


def test_non_ip_non_arp_frame_is_other(responder):
    verdict = responder.handle(eth(BROADCAST, mac(C_MAC), 0x86DD, b"\0" * 40))
    assert verdict.kind == "other" and verdict.reply is None


def test_unpadded_arp_request_is_answered(responder):
    assert responder.handle(arp_request(R_IP)[:42]).reply is not None


def test_empty_frame_does_not_raise(responder):
    assert responder.handle(b"").reply is None


def test_mac_bytes_parses_colon_notation():
    assert packets.mac_bytes("02:00:00:00:00:AA") == b"\x02\0\0\0\0\xaa"
