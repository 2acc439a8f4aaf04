"""Frames the responder understands: parse, verify checksums, build replies.

Pure. The responder must notice when the host hands the consumer a frame
the way AF_XDP cannot carry it (a partial checksum left for offload, a
segment larger than the MTU), so every IPv4/ICMP/UDP/TCP checksum of every
received frame is verified, and the answers it builds carry full checksums.
"""

from __future__ import annotations

import array
import dataclasses
import socket
import struct

ETH_P_IP, ETH_P_ARP, ETH_P_8021Q = 0x0800, 0x0806, 0x8100
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP = 1, 6, 17
_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_IP = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_TCP = struct.Struct("!HHIIBBHHH")
TCP_SYN, TCP_RST, TCP_ACK = 0x02, 0x04, 0x10


def _fold(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(array.array("H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum_ok(data: bytes) -> bool:
    """True when the one's-complement sum over data (checksum included) is all ones."""
    return _fold(data) == 0xFFFF


def checksum(data: bytes) -> bytes:
    """The two checksum bytes, in wire order, for data with a zeroed checksum field."""
    value = ~_fold(data) & 0xFFFF
    return struct.pack("=H", value)


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    return src + dst + struct.pack("!BBH", 0, proto, length)


@dataclasses.dataclass
class Verdict:
    kind: str                 # arp, icmp, udp, tcp, other
    checksum_ok: bool = True
    reply: bytes | None = None


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


class Responder:
    """Answers ARP for ip, ICMP echo, UDP on udp_port (echo) and TCP SYN (RST)."""

    def __init__(self, mac: str, ip: str, udp_port: int = 7):
        self.mac, self.ip, self.udp_port = mac_bytes(mac), socket.inet_aton(ip), udp_port

    def handle(self, frame: bytes) -> Verdict:
        if len(frame) < _ETH.size:
            return Verdict("other")
        dst, src, etype = _ETH.unpack_from(frame)
        if etype == ETH_P_ARP:
            return self._arp(src, frame[_ETH.size:])
        if etype == ETH_P_IP:
            return self._ipv4(src, frame[_ETH.size:])
        return Verdict("other")

    def _eth(self, dst: bytes, etype: int) -> bytes:
        return _ETH.pack(dst, self.mac, etype)

    def _arp(self, src: bytes, body: bytes) -> Verdict:
        if len(body) < _ARP.size:
            return Verdict("arp")
        htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(body)
        if op != 1 or tpa != self.ip:
            return Verdict("arp")
        reply = _ARP.pack(htype, ptype, hlen, plen, 2, self.mac, self.ip, sha, spa)
        return Verdict("arp", reply=self._eth(src, ETH_P_ARP) + reply)

    def _ipv4(self, src_mac: bytes, pkt: bytes) -> Verdict:
        if len(pkt) < _IP.size:
            return Verdict("other", checksum_ok=False)
        vihl, tos, total, ident, frag, ttl, proto, _, saddr, daddr = _IP.unpack_from(pkt)
        ihl = (vihl & 0x0F) * 4
        kind = {IPPROTO_ICMP: "icmp", IPPROTO_UDP: "udp", IPPROTO_TCP: "tcp"}.get(proto, "other")
        if vihl >> 4 != 4 or ihl < 20 or total > len(pkt) or total < ihl:
            return Verdict(kind, checksum_ok=False)
        pkt = pkt[:total]
        ok = checksum_ok(pkt[:ihl])
        payload = pkt[ihl:]
        if frag & 0x3FFF:           # a fragment: the L4 checksum spans other frames
            return Verdict(kind, checksum_ok=ok)
        if proto == IPPROTO_ICMP:
            ok = ok and checksum_ok(payload)
            if ok and daddr == self.ip and len(payload) >= 8 and payload[0] == 8:
                body = b"\0\0\0\0" + payload[4:]
                body = body[:2] + checksum(body) + body[4:]
                return Verdict(kind, True, self._ip_reply(src_mac, saddr, IPPROTO_ICMP, body))
            return Verdict(kind, ok)
        if proto == IPPROTO_UDP and len(payload) >= 8:
            sport, dport, ulen, csum = _UDP.unpack_from(payload)
            if not 8 <= ulen <= len(payload):
                return Verdict(kind, False)
            if csum:
                ok = ok and checksum_ok(_pseudo(saddr, daddr, proto, len(payload)) + payload)
            if ok and daddr == self.ip and dport == self.udp_port:
                data = payload[8:ulen]
                body = _UDP.pack(dport, sport, 8 + len(data), 0) + data
                csum = checksum(_pseudo(self.ip, saddr, proto, len(body)) + body)
                if csum == b"\0\0":
                    csum = b"\xff\xff"
                body = body[:6] + csum + body[8:]
                return Verdict(kind, True, self._ip_reply(src_mac, saddr, proto, body))
            return Verdict(kind, ok)
        if proto == IPPROTO_TCP and len(payload) >= 20:
            ok = ok and checksum_ok(_pseudo(saddr, daddr, proto, len(payload)) + payload)
            sport, dport, seq, ack, off, flags, *_ = _TCP.unpack_from(payload)
            if ok and daddr == self.ip and flags & TCP_SYN and not flags & (TCP_RST | TCP_ACK):
                # nobody listens: refuse the connection, so the client learns at once
                data_len = len(payload) - (off >> 4) * 4
                body = _TCP.pack(dport, sport, 0, (seq + 1 + max(0, data_len)) & 0xFFFFFFFF, 5 << 4,
                                 TCP_RST | TCP_ACK, 0, 0, 0)
                body = body[:16] + checksum(_pseudo(self.ip, saddr, proto, len(body)) + body) + body[18:]
                return Verdict(kind, True, self._ip_reply(src_mac, saddr, proto, body))
            return Verdict(kind, ok)
        return Verdict(kind, ok)

    def _ip_reply(self, dst_mac: bytes, daddr: bytes, proto: int, body: bytes) -> bytes:
        hdr = _IP.pack(0x45, 0, 20 + len(body), 0, 0x4000, 64, proto, 0, self.ip, daddr)
        hdr = hdr[:10] + checksum(hdr) + hdr[12:]
        return self._eth(dst_mac, ETH_P_IP) + hdr + body




def arp_announcement(sender_mac: str, address: str) -> bytes:
    """A gratuitous ARP request (RFC 5227's announcement) for IPv4 `address` at `sender_mac`: the
    ARP part of the frame, for a packet socket that adds the Ethernet header. Neighbours that
    hold an entry for the address take the new MAC (Linux does whatever its arp_accept)."""
    ip = socket.inet_aton(address)
    return struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac_bytes(sender_mac) + ip + bytes(6) + ip
