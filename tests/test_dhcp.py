"""The address server's answers, frame by frame (vmnet.dhcp), and what hostile frames do to it.

A real client talks to it in tests/test_networks.py (busybox udhcpc, dhcpcd, the kernel's
router discovery); here each answer is taken apart byte by byte with a parser of the test's
own, and mutated frames are thrown at it to show it never raises and answers only its guest.
"""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from vmnet.dhcp import AddressServer, GuestConfig, classless_route
from vmnet.errors import InvalidInput
from vmnet.packets import _pseudo, checksum, checksum_ok

pytestmark = pytest.mark.unit

GUEST, HOST = "02:00:00:00:00:05", "02:00:00:00:00:01"
G, H = bytes.fromhex("020000000005"), bytes.fromhex("020000000001")
ROUTED = {"mac": GUEST, "server_mac": HOST, "ipv4": "10.1.2.3/32", "gateway4": "169.254.1.1", "mtu": 3506,
          "dns": ["10.0.0.53", "fd00::53"], "search": ["vm.test"], "hostname": "web1",
          "ipv6": ["fd00::3/128"], "gateway6": "fe80::1"}
BRIDGED = {"mac": GUEST, "server_mac": HOST, "ipv4": "10.20.0.5/24", "gateway4": "10.20.0.1",
           "routes4": [["10.8.0.0/16", "10.20.0.254"]]}


def dhcp4(kind: int, mac: bytes = G, options: bytes = b"", flags: int = 0, ciaddr=b"\0" * 4, src=G,
          src_ip=b"\0" * 4, dst_ip=b"\xff" * 4) -> bytes:
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x1234, 0, flags, ciaddr, b"\0" * 4,
                        b"\0" * 4, b"\0" * 4, mac + bytes(10), b"", b"") + b"\x63\x82\x53\x63"
    body = bootp + bytes([53, 1, kind]) + options + b"\xff"
    udp = struct.pack("!HHHH", 68, 67, 8 + len(body), 0) + body
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src_ip, dst_ip))
    ip[10:12] = checksum(bytes(ip))
    return b"\xff" * 6 + src + b"\x08\x00" + bytes(ip) + udp


def parse4(frame: bytes) -> dict:
    assert frame[12:14] == b"\x08\x00"
    ip = frame[14:]
    ihl = (ip[0] & 15) * 4
    assert checksum_ok(ip[:ihl])
    udp = ip[ihl:struct.unpack_from("!H", ip, 2)[0]]
    assert checksum_ok(_pseudo(ip[12:16], ip[16:20], 17, len(udp)) + udp)
    assert struct.unpack_from("!HH", udp) == (67, 68)
    msg = udp[8:]
    assert len(msg) >= 300 and msg[0] == 2 and msg[236:240] == b"\x63\x82\x53\x63"
    opts, i = {}, 240
    while msg[i] != 255:
        if msg[i] == 0:
            i += 1
            continue
        opts[msg[i]] = msg[i + 2:i + 2 + msg[i + 1]]
        i += 2 + msg[i + 1]
    return {"dst_mac": frame[:6], "src_mac": frame[6:12], "src": str(ipaddress.IPv4Address(ip[12:16])),
            "dst": str(ipaddress.IPv4Address(ip[16:20])), "yiaddr": str(ipaddress.IPv4Address(msg[16:20])),
            "xid": msg[4:8], "opts": opts}


def test_discover_request_on_a_routed_port():
    s = AddressServer(GuestConfig.from_dict(ROUTED))
    (offer,) = s.handle(dhcp4(1))
    o = parse4(offer)
    assert (o["dst_mac"], o["src_mac"], o["src"], o["dst"]) == (G, H, "169.254.1.1", "10.1.2.3")
    assert o["yiaddr"] == "10.1.2.3" and o["xid"] == struct.pack("!I", 0x1234)
    opts = o["opts"]
    assert opts[53] == b"\x02" and opts[54] == bytes([169, 254, 1, 1]) and opts[51] == b"\xff" * 4
    assert opts[1] == b"\xff" * 4 and opts[3] == bytes([169, 254, 1, 1]) and 28 not in opts
    assert opts[121] == bytes([32, 169, 254, 1, 1, 0, 0, 0, 0, 0, 169, 254, 1, 1])
    assert opts[6] == bytes([10, 0, 0, 53]) and opts[15] == b"vm.test" and opts[119] == b"\x02vm\x04test\x00"
    assert opts[12] == b"web1" and opts[26] == struct.pack("!H", 3506) and 58 not in opts
    (ack,) = s.handle(dhcp4(3, options=bytes([50, 4, 10, 1, 2, 3, 54, 4, 169, 254, 1, 1])))
    assert parse4(ack)["opts"][53] == b"\x05"
    (nak,) = s.handle(dhcp4(3, options=bytes([50, 4, 10, 1, 2, 4])))
    n = parse4(nak)
    assert n["opts"][53] == b"\x06" and n["dst"] == "255.255.255.255" and n["yiaddr"] == "0.0.0.0"
    # a REQUEST for another server is not ours to answer; RELEASE and DECLINE are counted
    assert s.handle(dhcp4(3, options=bytes([50, 4, 10, 1, 2, 3, 54, 4, 10, 9, 9, 9]))) == []
    assert s.handle(dhcp4(7)) == [] and s.counters["release"] == 1


def test_a_bridged_guest_gets_its_subnet_router_and_routes():
    s = AddressServer(GuestConfig.from_dict(BRIDGED))
    o = parse4(s.handle(dhcp4(1, flags=0x8000))[0])
    assert o["dst"] == "255.255.255.255" and o["src"] == "10.20.0.1"         # broadcast flag honoured
    assert o["opts"][1] == bytes([255, 255, 255, 0]) and o["opts"][28] == bytes([10, 20, 0, 255])
    assert o["opts"][121] == classless_route("0.0.0.0/0", "10.20.0.1") + classless_route("10.8.0.0/16", "10.20.0.254")
    renew = parse4(s.handle(dhcp4(3, ciaddr=bytes([10, 20, 0, 5]), src_ip=bytes([10, 20, 0, 5])))[0])
    assert renew["opts"][53] == b"\x05" and renew["dst"] == "10.20.0.5"
    inform = parse4(s.handle(dhcp4(8, ciaddr=bytes([10, 20, 0, 5])))[0])
    assert inform["yiaddr"] == "0.0.0.0" and 51 not in inform["opts"] and inform["opts"][3] == bytes([10, 20, 0, 1])
    assert classless_route("10.0.0.0/8", None) == bytes([8, 10, 0, 0, 0, 0])


def test_only_the_guest_is_answered():
    s = AddressServer(GuestConfig.from_dict(ROUTED))
    other = bytes.fromhex("020000000009")
    assert s.handle(dhcp4(1, mac=other, src=other)) == []
    assert s.handle(dhcp4(1, mac=other)) == []                 # its chaddr is someone else's
    assert s.handle(dhcp4(1, src=other)) == []                 # from someone else's MAC
    assert s.counters["ignored_foreign_mac"] == 3 and s.counters.get("offer", 0) == 0


def rs(src: str = "fe80::5", hop: int = 255) -> bytes:
    body = bytearray(struct.pack("!BBHI", 133, 0, 0, 0) + bytes([1, 1]) + G)
    srcb, dst = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address("ff02::2").packed
    body[2:4] = checksum(_pseudo(srcb, dst, 58, len(body)) + bytes(body))
    return b"\x33\x33\x00\x00\x00\x02" + G + b"\x86\xdd" + struct.pack("!IHBB16s16s", 6 << 28, len(body), 58, hop,
                                                                         srcb, dst) + bytes(body)


def test_a_router_solicitation_gets_a_managed_advertisement_from_the_gateway():
    s = AddressServer(GuestConfig.from_dict(ROUTED))
    (ra,) = s.handle(rs())
    ip = ra[14:]
    assert ra[:6] == G and ra[6:12] == H and ip[7] == 255
    assert ip[8:24] == ipaddress.IPv6Address("fe80::1").packed and ip[24:40] == ipaddress.IPv6Address("fe80::5").packed
    icmp = ip[40:]
    assert checksum_ok(_pseudo(ip[8:24], ip[24:40], 58, len(icmp)) + icmp)
    assert icmp[0] == 134 and icmp[5] == 0xC0 and struct.unpack_from("!H", icmp, 6)[0] == 1800
    kinds, i = [], 16
    while i < len(icmp):
        kinds.append(icmp[i])
        i += icmp[i + 1] * 8
    assert kinds == [1, 5, 25]          # source link-layer, MTU, name servers: no prefix for a /128
    assert s.handle(rs(hop=64)) == [] and s.handle(rs(src="fd00::9")) == []
    assert s.announcements()[0][:6] == b"\x33\x33\x00\x00\x00\x01"
    assert AddressServer(GuestConfig.from_dict(BRIDGED)).announcements() == []


def dhcp6(kind: int, options: bytes) -> bytes:
    body = bytes([kind]) + b"\x00\x00\x07" + options
    udp = bytearray(struct.pack("!HHHH", 546, 547, 8 + len(body), 0) + body)
    src, dst = ipaddress.IPv6Address("fe80::5").packed, ipaddress.IPv6Address("ff02::1:2").packed
    udp[6:8] = checksum(_pseudo(src, dst, 17, len(udp)) + bytes(udp))
    return b"\x33\x33\x00\x01\x00\x02" + G + b"\x86\xdd" + struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 1,
                                                                         src, dst) + bytes(udp)


def opt6(code: int, value: bytes) -> bytes:
    return struct.pack("!HH", code, len(value)) + value


def parse6(frame: bytes) -> tuple[int, dict]:
    udp = frame[54:]
    msg = udp[8:]
    opts, i = {}, 4
    while i < len(msg):
        code, length = struct.unpack_from("!HH", msg, i)
        opts[code] = msg[i + 4:i + 4 + length]
        i += 4 + length
    return msg[0], opts


def test_dhcpv6_hands_out_the_address():
    s = AddressServer(GuestConfig.from_dict(ROUTED))
    client = opt6(1, b"\x00\x03\x00\x01" + G)
    ia = opt6(3, b"IAID" + bytes(8))
    kind, opts = parse6(s.handle(dhcp6(1, client + ia))[0])
    assert kind == 2 and opts[1] == b"\x00\x03\x00\x01" + G and opts[2] == b"\x00\x03\x00\x01" + H
    assert opts[3][:4] == b"IAID" and ipaddress.IPv6Address(opts[3][16:32]) == ipaddress.IPv6Address("fd00::3")
    assert opts[23] == ipaddress.IPv6Address("fd00::53").packed
    kind, opts = parse6(s.handle(dhcp6(1, client + ia + opt6(14, b"")))[0])
    assert kind == 7 and 14 in opts                                   # rapid commit
    kind, _ = parse6(s.handle(dhcp6(3, client + ia + opt6(2, b"\x00\x03\x00\x01" + H)))[0])
    assert kind == 7
    assert s.handle(dhcp6(3, client + ia + opt6(2, b"\x00\x03\x00\x01" + bytes(6)))) == []   # another server
    kind, opts = parse6(s.handle(dhcp6(11, b""))[0])
    assert kind == 7 and 3 not in opts


def test_hostile_frames_never_raise_and_are_answered_only_for_the_guest():
    rng = random.Random(7)
    valid = [dhcp4(1), dhcp4(3, options=bytes([50, 4, 10, 1, 2, 3])), rs(),
             dhcp6(1, opt6(1, b"\x00\x03\x00\x01" + G) + opt6(3, b"IAID" + bytes(8)))]
    s = AddressServer(GuestConfig.from_dict(ROUTED))
    for i in range(20_000):
        frame = bytearray(rng.choice(valid))
        how = rng.randrange(6)
        if how == 0:
            frame = frame[:rng.randrange(len(frame))]
        elif how == 1:
            for _ in range(rng.randrange(1, 8)):
                frame[rng.randrange(len(frame))] = rng.randrange(256)
        elif how == 2:
            frame += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9000 - len(frame))))
        elif how == 3 and len(frame) > 300:       # an option's length lies
            frame[rng.randrange(282, len(frame))] = 255
        elif how == 4:
            frame = frame[:14] + bytes(rng.randrange(256) for _ in range(rng.randrange(600)))
        for reply in s.handle(bytes(frame)):
            assert reply[:6] in (G, b"\x33\x33\x00\x00\x00\x01") and reply[6:12] == H
    assert s.counters.get("malformed", 0) > 1000


@pytest.mark.parametrize("change, words", [
    ({"ipv4": "10.1.2.300/32"}, "not valid"),
    ({"gateway6": "fd00::1"}, "link-local"),
    ({"mtu": 100}, "out of range"),
    ({"colour": "red"}, "unknown guest configuration"),
    ({"mac": "nope"}, "not valid"),
])
def test_a_bad_configuration_is_refused(change, words):
    with pytest.raises(InvalidInput, match=words):
        GuestConfig.from_dict(dict(ROUTED, **change))
