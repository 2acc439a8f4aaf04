"""Raw rtnetlink requests, packed by hand, where pyroute2's message objects cost more than
the kernel's work on a port's create path, or where importing pyroute2 would cost a process
more than its whole job (the wrapper reads a placeholder tap's alias with `link`; ~100 ms of
imports against ~0.1 ms here): the anti-spoofing classifier (two messages in
one datagram), reading a bridge, a routed port's proxy NDP entry and its host end's
settings, making the host end a member and giving it its VLANs, a pair's
MTU, link state and alias, its host end's ifindex and max MTU, the veth pair itself, a
routed port's host routes and its gateway check (each ~0.5-1 ms of Python through pyroute2, ~0.05 ms here: see
docs/performance.md); and the benchmark's floor, which must carry no library's cost at all.
Everything else stays with pyroute2.

Each request goes on a fresh NETLINK_ROUTE socket of the calling thread's netns; every
change asks for an ack and the kernel's first error is raised as OSError.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLA_F_NESTED = 0x8000
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK, RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 16, 17, 18, 19, 24, 25, 26
IFLA_AF_SPEC, IFLA_BRIDGE_VLAN_INFO = 26, 2
RTM_NEWQDISC, RTM_NEWTFILTER = 36, 44
IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_INFO_KIND, IFLA_INFO_DATA = 3, 4, 10, 18, 1, 2
IFLA_IFALIAS, IFLA_MAX_MTU = 20, 51
IFLA_ADDRESS, IFLA_NET_NS_FD, IFLA_NUM_TX_QUEUES, IFLA_NUM_RX_QUEUES, VETH_INFO_PEER = 1, 28, 31, 32, 1
IFF_UP = 0x1
RTA_DST, RTA_OIF = 1, 4
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_LINK, RT_SCOPE_NOWHERE, RTN_UNICAST = 254, 4, 253, 255, 1
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_CLASSID, TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT = 3, 6, 7, 8, 1
TC_H_CLSACT, CLSACT_INGRESS, ETH_P_ALL = 0xFFFFFFF1, 0xFFFFFFF2, 0x0003
NLMSGHDR = struct.Struct("=IHHII")
TCMSG = struct.Struct("=BxxxiIII")
IFINFOMSG = struct.Struct("=BxHiII")
RTMSG = struct.Struct("=BBBBBBBBI")


def attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def message(kind: int, flags: int, body: bytes, seq: int) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """The attributes from `offset` to the end of `data`, by type (nested flag dropped). Pure."""
    out = {}
    while offset + 4 <= len(data):
        size, kind = struct.unpack_from("=HH", data, offset)
        if size < 4:
            break
        out[kind & ~NLA_F_NESTED] = data[offset + 4:offset + size]
        offset += (size + 3) & ~3
    return out


def set_master_request(ifindex: int, master: int) -> bytes:
    """Make device `ifindex` a member of `master` (0: of nothing). Pure."""
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0) + attr(IFLA_MASTER, struct.pack("=I", master))
    return message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, body, 1)


def bridge_vlans_request(kind: int, ifindex: int, entries: list[tuple[int, int]]) -> bytes:
    """Add (RTM_SETLINK) or remove (RTM_DELLINK) bridge port `ifindex`'s VLANs, each entry
    (flags, vid) a struct bridge_vlan_info (what `bridge vlan add|del` sends). Pure."""
    info = b"".join(attr(IFLA_BRIDGE_VLAN_INFO, struct.pack("=HH", flags, vid)) for flags, vid in entries)
    body = IFINFOMSG.pack(socket.AF_BRIDGE, 0, ifindex, 0, 0) + attr(IFLA_AF_SPEC | NLA_F_NESTED, info)
    return message(kind, NLM_F_REQUEST | NLM_F_ACK, body, 1)


def host_route_request(address: str, prefixlen: int, ifindex: int) -> bytes:
    """A static, link-scope route to address/prefixlen through device `ifindex` in the main
    table (what `ip route add ADDR/LEN dev D proto static scope link` sends); EEXIST when the
    table has one. Pure."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    rtm = RTMSG.pack(family, prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_LINK, RTN_UNICAST, 0)
    body = rtm + attr(RTA_DST, socket.inet_pton(family, address)) + attr(RTA_OIF, struct.pack("=I", ifindex))
    return message(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, 1)


def host_route_delete_request(address: str, prefixlen: int, ifindex: int) -> bytes:
    """Delete the main table's route to address/prefixlen through device `ifindex`, whatever its
    scope and protocol (what `ip route del ADDR/LEN dev D` sends); ESRCH when there is none. Pure."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    rtm = RTMSG.pack(family, prefixlen, 0, 0, RT_TABLE_MAIN, 0, RT_SCOPE_NOWHERE, RTN_UNICAST, 0)
    body = rtm + attr(RTA_DST, socket.inet_pton(family, address)) + attr(RTA_OIF, struct.pack("=I", ifindex))
    return message(RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, body, 1)


def veth_request(host: str, peer: str, mac: str, queues: int, host_tx_queues: int, netns_fd: int | None,
                 host_index: int = 0, peer_index: int = 0) -> bytes:
    """Create a veth pair: `host` here with `queues` RX and `host_tx_queues` TX queues and
    ifindex host_index (0: the kernel's choice), its peer `peer` with the VM's MAC and
    `queues` queues each way, made in netns_fd with ifindex peer_index (what vmnet.priv.links
    explains). Pure."""
    def u32(kind, value):
        return attr(kind, struct.pack("=I", value))
    peer_attrs = (attr(IFLA_IFNAME, peer.encode() + b"\0") + attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))
                  + u32(IFLA_NUM_TX_QUEUES, queues) + u32(IFLA_NUM_RX_QUEUES, queues)
                  + (u32(IFLA_NET_NS_FD, netns_fd) if netns_fd is not None else b""))
    info = attr(IFLA_INFO_KIND, b"veth\0") + attr(IFLA_INFO_DATA | NLA_F_NESTED, attr(
        VETH_INFO_PEER, IFINFOMSG.pack(socket.AF_UNSPEC, 0, peer_index, 0, 0) + peer_attrs))
    body = (IFINFOMSG.pack(socket.AF_UNSPEC, 0, host_index, 0, 0) + attr(IFLA_IFNAME, host.encode() + b"\0")
            + u32(IFLA_NUM_TX_QUEUES, host_tx_queues) + u32(IFLA_NUM_RX_QUEUES, queues)
            + attr(IFLA_LINKINFO | NLA_F_NESTED, info))
    return message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, 1)


RTM_NEWNEIGH, RTM_DELNEIGH, NDA_DST, NUD_PERMANENT, NTF_PROXY = 28, 29, 1, 0x80, 0x08
NDMSG = struct.Struct("=BxxxiHBB")        # struct ndmsg, 12 bytes


def proxy_neighbour_request(kind: int, address: str, ifindex: int) -> bytes:
    """Add (RTM_NEWNEIGH) or delete (RTM_DELNEIGH) the proxy entry for `address` on device
    `ifindex` (what `ip neigh add|del proxy ADDR dev D` sends); a delete of none is ENOENT. Pure."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    body = NDMSG.pack(family, ifindex, NUD_PERMANENT, NTF_PROXY, 0) + attr(NDA_DST, socket.inet_pton(family, address))
    flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE if kind == RTM_NEWNEIGH else 0)
    return message(kind, flags, body, 1)


def alias_request(ifindex: int, alias: str) -> bytes:
    """Set device `ifindex`'s alias (IFLA_IFALIAS). Pure."""
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0) + attr(IFLA_IFALIAS, alias.encode() + b"\0")
    return message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, body, 1)


IFLA_INET_CONF, IPV4_DEVCONF_FORWARDING, IPV4_DEVCONF_PROXY_ARP = 1, 1, 3


def address_request(ifindex: int, mac: str, ipv4_conf: dict[int, int] | None = None) -> bytes:
    """Set device `ifindex`'s MAC address (IFLA_ADDRESS) and, in the same message, IPv4
    settings of the device (IPV4_DEVCONF_* -> value: IFLA_INET_CONF, the same values as
    /proc/sys/net/ipv4/conf/D/*, which a container that is not privileged cannot write). Pure."""
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0) + attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))
    if ipv4_conf:
        conf = b"".join(attr(key, struct.pack("=I", value)) for key, value in sorted(ipv4_conf.items()))
        inet = attr(socket.AF_INET | NLA_F_NESTED, attr(IFLA_INET_CONF | NLA_F_NESTED, conf))
        body += attr(IFLA_AF_SPEC | NLA_F_NESTED, inet)
    return message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, body, 1)


RTM_SETNEIGHTBL, NDTA_NAME, NDTA_PARMS, NDTPA_IFINDEX, NDTPA_PROXY_DELAY = 67, 1, 6, 1, 13


def proxy_delay_request(ifindex: int, msecs: int) -> bytes:
    """Set how long device `ifindex` waits before a proxy ARP answer (the ARP table's parameter
    proxy_delay, /proc/sys/net/ipv4/neigh/D/proxy_delay). Pure."""
    parms = attr(NDTA_PARMS | NLA_F_NESTED, attr(NDTPA_IFINDEX, struct.pack("=I", ifindex))
                 + attr(NDTPA_PROXY_DELAY, struct.pack("=Q", msecs)))
    body = struct.pack("=Bxxx", socket.AF_INET) + attr(NDTA_NAME, b"arp_cache\0") + parms
    return message(RTM_SETNEIGHTBL, NLM_F_REQUEST | NLM_F_ACK, body, 2)


IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE = 8, 1


def no_ipv6_address_request(ifindex: int) -> bytes:
    """Give device `ifindex` no IPv6 link-local address when it comes up (`ip link set D addrgenmode
    none`): a device with none sends no DAD, router solicitation or MLD of its own. Pure."""
    inet6 = attr(socket.AF_INET6 | NLA_F_NESTED, attr(IFLA_INET6_ADDR_GEN_MODE, bytes([IN6_ADDR_GEN_MODE_NONE])))
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, 0, 0) + attr(IFLA_AF_SPEC | NLA_F_NESTED, inet6)
    return message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, body, 1)


def mtu_up_request(ifindex: int, mtu: int) -> bytes:
    """Set device `ifindex`'s MTU and bring it up (what `ip link set D mtu M up` sends). Pure."""
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, ifindex, IFF_UP, IFF_UP) + attr(IFLA_MTU, struct.pack("=I", mtu))
    return message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, body, 1)


def link(ifname: str) -> dict | None:
    """ifindex, MTU, max MTU, master, alias, kind and the kind's data attributes (by type) of
    device `ifname` in this netns, or None when there is none."""
    body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, ifname.encode() + b"\0")
    reply = _query(message(RTM_GETLINK, NLM_F_REQUEST, body, 1))
    if reply is None:
        return None
    _, _, ifindex, _, _ = IFINFOMSG.unpack_from(reply)
    top = attrs(reply, IFINFOMSG.size)
    info = attrs(top.get(IFLA_LINKINFO, b""))
    kind = info.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode() or None

    def u32(value):
        return struct.unpack("=I", value[:4])[0] if value else None
    alias = top.get(IFLA_IFALIAS, b"").rstrip(b"\0").decode(errors="replace") or None
    return {"ifindex": ifindex, "mtu": u32(top.get(IFLA_MTU)), "max_mtu": u32(top.get(IFLA_MAX_MTU)),
            "master": u32(top.get(IFLA_MASTER)) or None,
            "alias": alias, "kind": kind, "data": attrs(info.get(IFLA_INFO_DATA, b""))}


def route_oif(address: str) -> int | None:
    """The device the main routing decides `address` goes out of (`ip route get`), or None
    when it is unreachable."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    raw = socket.inet_pton(family, address)
    body = RTMSG.pack(family, len(raw) * 8, 0, 0, 0, 0, 0, 0, 0) + attr(RTA_DST, raw)
    reply = _query(message(RTM_GETROUTE, NLM_F_REQUEST, body, 1), missing=(errno.ENETUNREACH, errno.EHOSTUNREACH,
                                                                        errno.ENODEV))
    if reply is None:
        return None
    oif = attrs(reply, RTMSG.size).get(RTA_OIF)
    return struct.unpack("=I", oif)[0] if oif else None


def _query(request: bytes, missing=(errno.ENODEV,)) -> bytes | None:
    """One GET request: the body of the kernel's answer, None on an error in `missing`."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as s:
        s.send(request)
        while True:
            reply = s.recv(65536)
            offset = 0
            while offset < len(reply):
                size, kind, _, _, _ = NLMSGHDR.unpack_from(reply, offset)
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", reply, offset + NLMSGHDR.size)
                    if -code in missing:
                        return None
                    raise OSError(-code, f"rtnetlink: {os.strerror(-code)}")
                return reply[offset + NLMSGHDR.size:offset + size]


def classifier_request(ifindex: int, prog_fd: int, name: str) -> bytes:
    """A clsact qdisc on device `ifindex` (unless it has one) and, on its ingress, a cls_bpf
    classifier in direct-action mode running program `prog_fd`, preference 1 (before
    classifiers added without one, which the kernel numbers from 49152 down), handle 1 (what
    `tc qdisc add dev D clsact; tc filter add dev D ingress pref 1 handle 1 bpf da fd F` sends),
    in one datagram. Pure."""
    create = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    # the device's clsact may be there already (netkit's protocol fix-up lives in it): kept
    qdisc = TCMSG.pack(socket.AF_UNSPEC, ifindex, 0xFFFF0000, TC_H_CLSACT, 0) + attr(TCA_KIND, b"clsact\0")
    options = (attr(TCA_BPF_FD, struct.pack("=I", prog_fd)) + attr(TCA_BPF_NAME, name.encode() + b"\0")
               + attr(TCA_BPF_FLAGS, struct.pack("=I", TCA_BPF_FLAG_ACT_DIRECT))
               + attr(TCA_BPF_CLASSID, struct.pack("=I", 1)))
    classifier = (TCMSG.pack(socket.AF_UNSPEC, ifindex, 1, CLSACT_INGRESS, (1 << 16) | socket.htons(ETH_P_ALL))
                  + attr(TCA_KIND, b"bpf\0") + attr(TCA_OPTIONS, options))
    return (message(RTM_NEWQDISC, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE, qdisc, 1)
            + message(RTM_NEWTFILTER, create, classifier, 2))


def transact(request: bytes) -> None:
    """Send one datagram of requests on a fresh rtnetlink socket; wait for every ack.

    The kernel runs every message of the datagram and answers each; the first error is
    raised (the messages after the failed one may still have been applied).
    """
    pending = 0
    offset = 0
    while offset < len(request):
        pending += 1
        offset += NLMSGHDR.unpack_from(request, offset)[0]
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as s:
        s.send(request)
        while pending:
            reply = s.recv(65536)
            offset = 0
            while offset < len(reply) and pending:
                size, kind, _, _, _ = NLMSGHDR.unpack_from(reply, offset)
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", reply, offset + NLMSGHDR.size)
                    if code:
                        raise OSError(-code, f"rtnetlink: {os.strerror(-code)}")
                    pending -= 1
                offset += (size + 3) & ~3
