"""The floor: a port's kernel work done by the most direct code there is.

One rtnetlink write for the veth pair: an RTM_NEWLINK creating both ends
with their queue counts, MAC and MTU (host end up), and, batched in the
same datagram, the RTM_NEWLINK that brings the consumer end up (veth
refuses to open an end before its pair is complete, so that cannot go in
the first message). Then one load of vmnet's XSK object
and one bpf_link through vmnet.priv.libbpf, then one socket(AF_XDP) and one
map update per queue. No helper, no state, no pins, no offload changes, no
second look at the devices. Removal is the mirror: close the fds (which
detaches the program) and one RTM_DELLINK. Whatever vmnet spends above this
is vmnet's overhead.

The netlink messages are packed by hand on purpose: any library would add
its own cost to what is meant to be the floor.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import struct
import time

from ..priv import bpf, libbpf
from ..xdp_abi import AF_XDP

NLMSG_ERROR = 2
RTM_NEWLINK, RTM_DELLINK = 16, 17
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO = 1, 3, 4, 18
IFLA_NUM_TX_QUEUES, IFLA_NUM_RX_QUEUES = 31, 32
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
NLA_F_NESTED = 0x8000
IFF_UP = 0x1
_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _ifinfo(flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, flags, change)


def _link_attrs(ifname: str, queues: int, mtu: int, mac: bytes | None = None) -> bytes:
    out = (_attr(IFLA_IFNAME, ifname.encode() + b"\0") + _attr(IFLA_MTU, struct.pack("=I", mtu))
           + _attr(IFLA_NUM_TX_QUEUES, struct.pack("=I", queues))
           + _attr(IFLA_NUM_RX_QUEUES, struct.pack("=I", queues)))
    return out + (_attr(IFLA_ADDRESS, mac) if mac else b"")


def veth_request(host: str, consumer: str, queues: int, mtu: int, mac: str) -> bytes:
    """Two RTM_NEWLINK messages in one datagram: create the pair, bring the consumer end up. Pure."""
    peer = _ifinfo() + _link_attrs(consumer, queues, mtu, bytes.fromhex(mac.replace(":", "")))
    info = _attr(IFLA_INFO_KIND, b"veth\0") + _attr(IFLA_INFO_DATA | NLA_F_NESTED, _attr(VETH_INFO_PEER, peer))
    body = _ifinfo(IFF_UP, IFF_UP) + _link_attrs(host, queues, mtu) + _attr(IFLA_LINKINFO | NLA_F_NESTED, info)
    up = _ifinfo(IFF_UP, IFF_UP) + _attr(IFLA_IFNAME, consumer.encode() + b"\0")
    return (_message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, 1)
            + _message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, up, 2))


def dellink_request(ifname: str) -> bytes:
    return _message(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, _ifinfo() + _attr(IFLA_IFNAME, ifname.encode() + b"\0"), 1)


def _message(kind: int, flags: int, body: bytes, seq: int) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def _transact(request: bytes):
    """Send one datagram of requests on a fresh rtnetlink socket; wait for every ack.

    The kernel stops at the first message that fails and acks only up to it.
    """
    pending = 0
    offset = 0
    while offset < len(request):
        pending += 1
        offset += _NLMSGHDR.unpack_from(request, offset)[0]
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as s:
        s.send(request)
        while pending:
            reply = s.recv(65536)
            offset = 0
            while offset < len(reply) and pending:
                size, kind, _, _, _ = _NLMSGHDR.unpack_from(reply, offset)
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", reply, offset + _NLMSGHDR.size)
                    if code:
                        raise OSError(-code, f"rtnetlink: {os.strerror(-code)}")
                    pending -= 1
                offset += (size + 3) & ~3


@dataclasses.dataclass
class FloorPort:
    host: str
    link_fd: int
    map_fd: int
    sockets: list
    steps: dict = dataclasses.field(default_factory=dict)     # ms per step of create()

    def remove(self, missing_ok: bool = False):
        for s in self.sockets:
            s.close()
        for fd in (self.link_fd, self.map_fd):
            if fd >= 0:
                os.close(fd)
        self.sockets, self.link_fd, self.map_fd = [], -1, -1
        try:
            _transact(dellink_request(self.host))
        except OSError as exc:
            if not (missing_ok and exc.errno in (errno.ENODEV, errno.ENOENT)):
                raise


def create(name: str, queues: int, mtu: int, mac: str) -> FloorPort:
    """The kernel work of one port in the current netns; see the module docstring."""
    host, consumer = "vmn-" + name, "vmc-" + name
    t0 = time.perf_counter()
    _transact(veth_request(host, consumer, queues, mtu, mac))
    t1 = time.perf_counter()
    port = FloorPort(host, -1, -1, [])
    try:
        with libbpf.BpfObject(bpf.object_path()) as obj:
            obj.resize_map(bpf.MAP_NAME, queues)
            obj.load()
            port.map_fd = os.dup(obj.map_fd(bpf.MAP_NAME))
            t2 = time.perf_counter()
            port.link_fd = libbpf.link_create_xdp(obj.program_fd(bpf.PROGRAM_NAME),
                                                  socket.if_nametoindex(consumer),
                                                  libbpf.XDP_FLAGS_DRV_MODE)
        t3 = time.perf_counter()
        for key in range(queues):
            s = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
            port.sockets.append(s)
            try:
                libbpf.map_update_u32(port.map_fd, key, s.fileno())
            except OSError as exc:      # Linux 7.x maps a socket only once it has rings
                if exc.errno != errno.ENOBUFS:
                    raise
        t4 = time.perf_counter()
        port.steps = {"netlink": (t1 - t0) * 1000, "load": (t2 - t1) * 1000,
                      "attach": (t3 - t2) * 1000, "sockets": (t4 - t3) * 1000}
        return port
    except BaseException:
        port.remove(missing_ok=True)
        raise
