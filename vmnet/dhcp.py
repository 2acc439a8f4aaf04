"""What a port's guest is told about its addresses: DHCPv4, router advertisements, DHCPv6.

Pure: frames in, frames out. vmnet's address server (vmnet.addrserver) reads
the frames its guest sends on the port's host end and writes back what this
module answers, for that guest's MAC only. Addresses are static (vmnet
knows them: a routed port's, an IPAM's, the operator's), so leases are
infinite unless asked otherwise and there is no pool: a guest gets its own
address or nothing.

The guest controls every byte it sends: parsing is bounded by the frame,
never raises, and anything malformed or not addressed to this server is
dropped and counted. Nothing is answered to a frame whose Ethernet source
is not the guest's MAC.

Written here rather than taken from a library: pyroute2 (vmnet's netlink
library) encodes DHCPv4 messages for its client but has neither the
classless-route option a link-local gateway needs (121), nor DHCPv6, nor
router advertisements; a server is a few hundred lines of the three RFCs.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

from .errors import InvalidInput
from .packets import _pseudo, checksum, checksum_ok, mac_bytes

ETH_IP, ETH_IP6 = 0x0800, 0x86DD
INFINITE = 0xFFFFFFFF
COOKIE = b"\x63\x82\x53\x63"
BOOTP_MIN = 300                    # RFC 1542: some clients drop shorter BOOTP messages
# DHCPv4 message types
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
# DHCPv6 message types and options
SOLICIT, ADVERTISE, REQUEST6, CONFIRM, RENEW, REBIND, REPLY, RELEASE6, DECLINE6 = 1, 2, 3, 4, 5, 6, 7, 8, 9
INFORMATION_REQUEST = 11
OPT6_CLIENTID, OPT6_SERVERID, OPT6_IA_NA, OPT6_IAADDR, OPT6_STATUS = 1, 2, 3, 5, 13
OPT6_RAPID_COMMIT, OPT6_DNS, OPT6_DOMAINS = 14, 23, 24
ALL_NODES = ipaddress.IPv6Address("ff02::1")
MAX_OPTIONS = 128


def _dns_name(name: str) -> bytes:
    """A domain name in DNS wire form (RFC 1035 3.1), without compression."""
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\0"


@dataclasses.dataclass(frozen=True)
class GuestConfig:
    mac: str                      # the guest's MAC
    server_mac: str               # the host end's MAC: the source of every reply
    ipv4: str | None = None       # "10.1.2.3/32", "10.0.0.5/24"
    gateway4: str | None = None
    server_id4: str | None = None  # option 54 and the replies' source; default: gateway4, else the subnet's first host
    routes4: tuple = ()           # ((dst, gw or None), ...)
    dns: tuple = ()
    search: tuple = ()
    mtu: int = 1500
    hostname: str | None = None
    ipv6: tuple = ()              # "fd00::3/128", served by DHCPv6
    gateway6: str | None = None   # link-local: source of router advertisements and DHCPv6 replies
    lease_seconds: int = INFINITE

    @classmethod
    def from_dict(cls, data: dict) -> "GuestConfig":
        if not isinstance(data, dict):
            raise InvalidInput("the guest's configuration must be an object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise InvalidInput(f"unknown guest configuration field(s): {', '.join(sorted(unknown))}")
        data = dict(data)
        for key in ("routes4", "dns", "search", "ipv6"):
            data[key] = tuple(tuple(v) if isinstance(v, list) else v for v in data.get(key) or ())
        conf = cls(**data)
        try:
            mac_bytes(conf.mac), mac_bytes(conf.server_mac)
            if conf.ipv4:
                ipaddress.IPv4Interface(conf.ipv4)
            for a in (conf.gateway4, conf.server_id4):
                if a:
                    ipaddress.IPv4Address(a)
            for dst, gw in conf.routes4:
                ipaddress.IPv4Network(dst, strict=False)
                if gw:
                    ipaddress.IPv4Address(gw)
            for a in conf.dns:
                ipaddress.ip_address(a)
            for a in conf.ipv6:
                ipaddress.IPv6Interface(a)
            if conf.gateway6 and not ipaddress.IPv6Address(conf.gateway6).is_link_local:
                raise ValueError("gateway6 must be link-local")
            for name in conf.search + ((conf.hostname,) if conf.hostname else ()):
                _dns_name(name)
        except (ValueError, TypeError, IndexError, UnicodeEncodeError) as exc:
            raise InvalidInput(f"the guest's configuration is not valid ({exc})") from None
        if not (576 <= conf.mtu <= 65535) or not (0 < conf.lease_seconds <= INFINITE):
            raise InvalidInput("the guest's MTU or lease time is out of range")
        return conf

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        return out


# ---- frames --------------------------------------------------------------------

def _ipv4_frame(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    csum = checksum(_pseudo(src, dst, 17, len(udp)) + udp)
    udp = udp[:6] + (csum if csum != b"\0\0" else b"\xff\xff") + udp[8:]
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, dst))
    ip[10:12] = checksum(bytes(ip))
    return dst_mac + src_mac + struct.pack("!H", ETH_IP) + bytes(ip) + udp


def _ipv6_frame(dst_mac: bytes, src_mac: bytes, src: bytes, dst: bytes, nh: int, payload: bytes, hop: int) -> bytes:
    """payload: an ICMPv6 message (checksum at 2) or a UDP datagram (checksum at 6), zeroed."""
    at = 2 if nh == 58 else 6
    csum = checksum(_pseudo(src, dst, nh, len(payload)) + payload)
    payload = payload[:at] + csum + payload[at + 2:]
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(payload), nh, hop, src, dst)
    return dst_mac + src_mac + struct.pack("!H", ETH_IP6) + ip + payload


def _options4(data: bytes) -> dict[int, bytes] | None:
    """DHCPv4 options (first occurrence of each), or None when they run off the message."""
    out: dict[int, bytes] = {}
    i, seen = 0, 0
    while i < len(data):
        code = data[i]
        if code == 255:
            return out
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(data) or i + 2 + data[i + 1] > len(data):
            return None
        seen += 1
        if seen > MAX_OPTIONS:
            return None
        out.setdefault(code, data[i + 2:i + 2 + data[i + 1]])
        i += 2 + data[i + 1]
    return out


def _options6(data: bytes) -> dict[int, bytes] | None:
    out: dict[int, bytes] = {}
    i, seen = 0, 0
    while i < len(data):
        if i + 4 > len(data):
            return None
        code, length = struct.unpack_from("!HH", data, i)
        if i + 4 + length > len(data):
            return None
        seen += 1
        if seen > MAX_OPTIONS:
            return None
        out.setdefault(code, data[i + 4:i + 4 + length])
        i += 4 + length
    return out


def _opt4(code: int, value: bytes) -> bytes:
    return bytes([code, len(value)]) + value


def _opt6(code: int, value: bytes) -> bytes:
    return struct.pack("!HH", code, len(value)) + value


def classless_route(dst: str, gw: str | None) -> bytes:
    """One RFC 3442 route: prefix length, the significant octets, the router (0.0.0.0: on-link)."""
    net = ipaddress.IPv4Network(dst, strict=False)
    width = (net.prefixlen + 7) // 8
    return bytes([net.prefixlen]) + net.network_address.packed[:width] + \
        ipaddress.IPv4Address(gw or "0.0.0.0").packed


class AddressServer:
    def __init__(self, conf: GuestConfig):
        self.conf = conf
        self.mac, self.server_mac = mac_bytes(conf.mac), mac_bytes(conf.server_mac)
        self.counters: dict[str, int] = {}
        self.v4 = ipaddress.IPv4Interface(conf.ipv4) if conf.ipv4 else None
        if self.v4 is not None:
            sid = conf.server_id4 or conf.gateway4 or str(next(iter(self.v4.network.hosts()), self.v4.ip))
            if ipaddress.IPv4Address(sid) == self.v4.ip:
                sid = str(self.v4.network.network_address + 1 if self.v4.network.prefixlen < 31 else self.v4.ip)
            self.server_id = ipaddress.IPv4Address(sid).packed
        self.v6 = [ipaddress.IPv6Interface(a) for a in conf.ipv6] if conf.gateway6 else []
        self.router6 = ipaddress.IPv6Address(conf.gateway6).packed if conf.gateway6 else b""
        self.duid = struct.pack("!HH", 3, 1) + self.server_mac       # DUID-LL

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    # ---- dispatch ----------------------------------------------------------

    def handle(self, frame: bytes) -> list[bytes]:
        try:
            return self._handle(frame)
        except (IndexError, struct.error, ValueError):     # a bound the checks missed: drop it
            self._count("malformed")
            return []

    def _handle(self, frame: bytes) -> list[bytes]:
        if len(frame) < 14 or len(frame) > 9216:
            self._count("malformed")
            return []
        if frame[6:12] != self.mac:
            self._count("ignored_foreign_mac")
            return []
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        if ethertype == ETH_IP and self.v4 is not None:
            return self._ipv4(frame, frame[14:])
        if ethertype == ETH_IP6 and self.v6:
            return self._ipv6(frame, frame[14:])
        self._count("other")
        return []

    # ---- DHCPv4 --------------------------------------------------------------

    def _ipv4(self, frame: bytes, ip: bytes) -> list[bytes]:
        if len(ip) < 20 or ip[0] >> 4 != 4:
            return self._bad()
        ihl = (ip[0] & 0xF) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        if ihl < 20 or total < ihl + 8 or total > len(ip) or struct.unpack_from("!H", ip, 6)[0] & 0x3FFF:
            return self._bad()
        if ip[9] != 17:
            self._count("other")
            return []
        udp = ip[ihl:total]
        sport, dport, ulen = struct.unpack_from("!HHH", udp)
        if dport != 67:
            self._count("other")
            return []
        if ulen < 8 or ulen > len(udp):
            return self._bad()
        msg = udp[8:ulen]
        if len(msg) < 240 or msg[0] != 1 or msg[1] != 1 or msg[2] != 6 or msg[236:240] != COOKIE:
            return self._bad()
        if msg[28:34] != self.mac or msg[24:28] != b"\0\0\0\0":      # another client, or through a relay
            self._count("ignored_foreign_mac" if msg[28:34] != self.mac else "other")
            return []
        opts = _options4(msg[240:])
        if opts is None or len(opts.get(53, b"")) != 1:
            return self._bad()
        kind = opts[53][0]
        xid, flags, ciaddr = msg[4:8], struct.unpack_from("!H", msg, 10)[0], msg[12:16]
        mine = self.v4.ip.packed
        if kind == DISCOVER:
            self._count("discover")
            return [self._reply4(OFFER, xid, flags, ciaddr)]
        if kind == REQUEST:
            self._count("request")
            sid = opts.get(54)
            if sid is not None and sid != self.server_id:
                return []                                   # the client chose another server
            asked = opts.get(50) or ciaddr
            if asked == mine:
                return [self._reply4(ACK, xid, flags, ciaddr)]
            return [self._reply4(NAK, xid, flags, ciaddr)]
        if kind == INFORM:
            self._count("inform")
            return [self._reply4(ACK, xid, flags, ciaddr, inform=True)]
        self._count({RELEASE: "release", DECLINE: "decline"}.get(kind, "other"))
        return []

    def _bad(self) -> list[bytes]:
        self._count("malformed")
        return []

    def _reply4(self, kind: int, xid: bytes, flags: int, ciaddr: bytes, inform: bool = False) -> bytes:
        conf, v4 = self.conf, self.v4
        self._count({OFFER: "offer", ACK: "ack", NAK: "nak"}[kind])
        yiaddr = b"\0" * 4 if kind == NAK or inform else v4.ip.packed
        bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 2, 1, 6, 0, int.from_bytes(xid, "big"), 0,
                            flags & 0x8000, ciaddr if inform else b"\0" * 4, yiaddr, b"\0" * 4, b"\0" * 4,
                            self.mac + bytes(10), b"", b"") + COOKIE
        opts = _opt4(53, bytes([kind])) + _opt4(54, self.server_id)
        if kind != NAK:
            if not inform:
                opts += _opt4(51, struct.pack("!I", conf.lease_seconds))
                if conf.lease_seconds != INFINITE:
                    opts += _opt4(58, struct.pack("!I", conf.lease_seconds // 2))
                    opts += _opt4(59, struct.pack("!I", conf.lease_seconds * 7 // 8))
            opts += _opt4(1, v4.network.netmask.packed)
            if v4.network.prefixlen < 31:
                opts += _opt4(28, v4.network.broadcast_address.packed)
            routes = b""
            if conf.gateway4:
                gw = ipaddress.IPv4Address(conf.gateway4)
                opts += _opt4(3, gw.packed)
                if gw not in v4.network:            # a link-local gateway: reach it first (RFC 3442)
                    routes += classless_route(f"{gw}/32", None)
                if routes or conf.routes4:          # a client that reads 121 ignores option 3
                    routes += classless_route("0.0.0.0/0", str(gw))
            for dst, gw in conf.routes4:
                routes += classless_route(dst, gw)
            if routes:
                opts += _opt4(121, routes)
            dns4 = b"".join(ipaddress.IPv4Address(d).packed for d in conf.dns if ":" not in d)
            if dns4:
                opts += _opt4(6, dns4)
            if conf.search:
                opts += _opt4(15, conf.search[0].encode("ascii"))
                opts += _opt4(119, b"".join(_dns_name(s) for s in conf.search)[:255])
            if conf.hostname:
                opts += _opt4(12, conf.hostname.encode("ascii")[:63])
            opts += _opt4(26, struct.pack("!H", conf.mtu))
        body = bootp + opts + b"\xff"
        body += bytes(max(0, BOOTP_MIN - len(body)))
        # to the client's MAC in every case: the raw socket needs no ARP (RFC 2131 4.1)
        broadcast = flags & 0x8000 or kind == NAK or (inform and ciaddr == b"\0" * 4)
        dst = b"\xff" * 4 if broadcast else (ciaddr if inform else yiaddr)
        return _ipv4_frame(self.mac, self.server_mac, self.server_id, dst, 67, 68, body)

    # ---- IPv6: router solicitations and DHCPv6 -------------------------------

    def _ipv6(self, frame: bytes, ip: bytes) -> list[bytes]:
        if len(ip) < 40 or ip[0] >> 4 != 6:
            return self._bad()
        plen, nh, hop = struct.unpack_from("!HBB", ip, 4)
        src, dst = ip[8:24], ip[24:40]
        if 40 + plen > len(ip):
            return self._bad()
        payload = ip[40:40 + plen]
        src_addr = ipaddress.IPv6Address(src)
        if nh == 58:
            if len(payload) < 8 or payload[0] != 133:
                self._count("other")
                return []
            if hop != 255 or payload[1] != 0 or not (src_addr.is_link_local or src_addr.is_unspecified) \
                    or not checksum_ok(_pseudo(src, dst, 58, len(payload)) + payload):
                return self._bad()
            self._count("rs")
            to_mac = self.mac if src_addr.is_link_local else b"\x33\x33\x00\x00\x00\x01"
            to = src if src_addr.is_link_local else ALL_NODES.packed
            return [self._ra(to_mac, to)]
        if nh == 17 and len(payload) >= 8:
            sport, dport, ulen = struct.unpack_from("!HHH", payload)
            if dport != 547:
                self._count("other")
                return []
            if ulen < 12 or ulen > len(payload) or not src_addr.is_link_local \
                    or not checksum_ok(_pseudo(src, dst, 17, ulen) + payload[:ulen]):
                return self._bad()
            return self._dhcp6(src, payload[8:ulen])
        self._count("other")
        return []

    def announcements(self) -> list[bytes]:
        """An unsolicited router advertisement to all nodes (none without IPv6 to serve)."""
        if not self.v6:
            return []
        return [self._ra(b"\x33\x33\x00\x00\x00\x01", ALL_NODES.packed)]

    def _ra(self, to_mac: bytes, to: bytes) -> bytes:
        self._count("ra")
        conf = self.conf
        # hop limit 64, Managed and Other: addresses and options come from DHCPv6
        body = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0xC0, 1800, 0, 0)
        body += struct.pack("!BB", 1, 1) + self.server_mac                  # source link-layer address
        body += struct.pack("!BBHI", 5, 1, 0, conf.mtu)                     # MTU
        for a in self.v6:
            if a.network.prefixlen < 128:                                   # on-link; addresses by DHCPv6
                body += struct.pack("!BBBBIII16s", 3, 4, a.network.prefixlen, 0x80, INFINITE, INFINITE, 0,
                                    a.network.network_address.packed)
        dns6 = [ipaddress.IPv6Address(d).packed for d in conf.dns if ":" in d]
        if dns6:
            body += struct.pack("!BBHI", 25, 1 + 2 * len(dns6), 0, INFINITE) + b"".join(dns6)
        return _ipv6_frame(to_mac, self.server_mac, self.router6, to, 58, body, 255)

    def _dhcp6(self, client: bytes, msg: bytes) -> list[bytes]:
        kind, xid = msg[0], msg[1:4]
        opts = _options6(msg[4:])
        if opts is None or OPT6_CLIENTID not in opts and kind != INFORMATION_REQUEST:
            return self._bad()
        sid = opts.get(OPT6_SERVERID)
        if kind in (REQUEST6, RENEW, RELEASE6, DECLINE6) and sid != self.duid:
            return []                                       # for another server
        if kind == SOLICIT and sid is not None:
            return self._bad()
        names = {SOLICIT: "solicit", REQUEST6: "dhcpv6_request", CONFIRM: "confirm", RENEW: "renew",
                 REBIND: "rebind", INFORMATION_REQUEST: "information_request", RELEASE6: "release6",
                 DECLINE6: "decline6"}
        if kind not in names:
            self._count("other")
            return []
        self._count(names[kind])
        out = b""
        if OPT6_CLIENTID in opts:
            out += _opt6(OPT6_CLIENTID, opts[OPT6_CLIENTID])
        out += _opt6(OPT6_SERVERID, self.duid)
        reply = REPLY
        if kind in (RELEASE6, DECLINE6):
            out += _opt6(OPT6_STATUS, struct.pack("!H", 0) + b"released")
        elif kind != INFORMATION_REQUEST:
            if kind == SOLICIT:
                if OPT6_RAPID_COMMIT in opts:
                    out += _opt6(OPT6_RAPID_COMMIT, b"")
                else:
                    reply = ADVERTISE
            iana = opts.get(OPT6_IA_NA)
            if iana is not None and len(iana) >= 12:
                lease = self.conf.lease_seconds
                addrs = b"".join(_opt6(OPT6_IAADDR, a.ip.packed + struct.pack("!II", lease, lease)) for a in self.v6)
                out += _opt6(OPT6_IA_NA, iana[:4] + struct.pack("!II", 0, 0) + addrs)
        dns6 = [ipaddress.IPv6Address(d).packed for d in self.conf.dns if ":" in d]
        if dns6:
            out += _opt6(OPT6_DNS, b"".join(dns6))
        if self.conf.search:
            out += _opt6(OPT6_DOMAINS, b"".join(_dns_name(s) for s in self.conf.search))
        self._count("reply" if reply == REPLY else "advertise")
        udp = struct.pack("!HHHH", 547, 546, 8 + 4 + len(out), 0) + bytes([reply]) + xid + out
        return [_ipv6_frame(self.mac, self.server_mac, self.router6, client, 17, udp, 255)]
