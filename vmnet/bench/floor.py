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

A port with anti-spoofing (vmnet's default) carries one more piece of
kernel work, and so does its floor when given the host filter's object
(loaded once by the caller, as vmnet's helper loads its filter once): the
pair is made with its host end down, the port's rules go into the filter's
maps, and one datagram adds the clsact qdisc and the cls_bpf classifier and
brings the host end up — the classifier on a device that is down, where
the kernel adds it in a third of the time, as vmnet does.

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

from .. import rawnl
from ..priv import bpf, hostfilter, libbpf
from ..xdp_abi import AF_XDP

RTM_NEWLINK, RTM_DELLINK = 16, 17
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO = 1, 3, 4, 18
IFLA_NUM_TX_QUEUES, IFLA_NUM_RX_QUEUES = 31, 32
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFF_UP = 0x1
_IFINFOMSG = struct.Struct("=BxHiII")


def _ifinfo(flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, flags, change)


def _link_attrs(ifname: str, queues: int, mtu: int, mac: bytes | None = None) -> bytes:
    out = (rawnl.attr(IFLA_IFNAME, ifname.encode() + b"\0") + rawnl.attr(IFLA_MTU, struct.pack("=I", mtu))
           + rawnl.attr(IFLA_NUM_TX_QUEUES, struct.pack("=I", queues))
           + rawnl.attr(IFLA_NUM_RX_QUEUES, struct.pack("=I", queues)))
    return out + (rawnl.attr(IFLA_ADDRESS, mac) if mac else b"")


def up_request(ifname: str, seq: int = 1) -> bytes:
    """An RTM_NEWLINK that brings device `ifname` up. Pure."""
    return rawnl.message(RTM_NEWLINK, rawnl.NLM_F_REQUEST | rawnl.NLM_F_ACK,
                         _ifinfo(IFF_UP, IFF_UP) + rawnl.attr(IFLA_IFNAME, ifname.encode() + b"\0"), seq)


def veth_request(host: str, consumer: str, queues: int, mtu: int, mac: str, host_up: bool = True) -> bytes:
    """Two RTM_NEWLINK messages in one datagram: create the pair (its host end up, unless
    host_up is False), bring the consumer end up. Pure."""
    peer = _ifinfo() + _link_attrs(consumer, queues, mtu, bytes.fromhex(mac.replace(":", "")))
    info = rawnl.attr(IFLA_INFO_KIND, b"veth\0") + rawnl.attr(IFLA_INFO_DATA | rawnl.NLA_F_NESTED, rawnl.attr(VETH_INFO_PEER, peer))
    body = (_ifinfo(IFF_UP, IFF_UP) if host_up else _ifinfo()) + _link_attrs(host, queues, mtu) \
        + rawnl.attr(IFLA_LINKINFO | rawnl.NLA_F_NESTED, info)
    return (rawnl.message(RTM_NEWLINK, rawnl.NLM_F_REQUEST | rawnl.NLM_F_ACK | rawnl.NLM_F_CREATE | rawnl.NLM_F_EXCL, body, 1)
            + up_request(consumer, 2))


def dellink_request(ifname: str) -> bytes:
    return rawnl.message(RTM_DELLINK, rawnl.NLM_F_REQUEST | rawnl.NLM_F_ACK, _ifinfo() + rawnl.attr(IFLA_IFNAME, ifname.encode() + b"\0"), 1)


@dataclasses.dataclass
class FloorPort:
    host: str
    link_fd: int
    map_fd: int
    sockets: list
    steps: dict = dataclasses.field(default_factory=dict)     # ms per step of create()
    filtered: tuple | None = None           # (the host filter's fds, the host end's ifindex)

    def remove(self, missing_ok: bool = False):
        for s in self.sockets:
            s.close()
        for fd in (self.link_fd, self.map_fd):
            if fd >= 0:
                os.close(fd)
        self.sockets, self.link_fd, self.map_fd = [], -1, -1
        try:
            rawnl.transact(dellink_request(self.host))
        except OSError as exc:
            if not (missing_ok and exc.errno in (errno.ENODEV, errno.ENOENT)):
                raise
        finally:
            if self.filtered:           # the classifier went with the device; its rules stay in the maps
                hostfilter.HostFilter("", self.filtered[0]).clear_port(self.filtered[1])
                self.filtered = None


def load_filter() -> dict:
    """The host filter's object for floor ports, loaded once by the caller and never pinned:
    its programs' and maps' fds (bpf.close_fds when done)."""
    return bpf.load_object(hostfilter.object_path(), hostfilter.PROGRAMS, hostfilter.MAPS,
                           "vmnet's host filter (the floor's)")


def create(name: str, queues: int, mtu: int, mac: str, filter_fds: dict | None = None,
           addresses=(), enforce: tuple[bool, bool] = (False, False)) -> FloorPort:
    """The kernel work of one port in the current netns; see the module docstring. With the
    host filter's fds, also its anti-spoofing for `mac` and `addresses`."""
    host, consumer = "vmn-" + name, "vmc-" + name
    t0 = time.perf_counter()
    rawnl.transact(veth_request(host, consumer, queues, mtu, mac, host_up=filter_fds is None))
    t1 = time.perf_counter()
    port = FloorPort(host, -1, -1, [])
    try:
        tf = t1
        if filter_fds is not None:
            ifindex = socket.if_nametoindex(host)
            port.filtered = (filter_fds, ifindex)
            hostfilter.HostFilter("", filter_fds).set_port(ifindex, mac, addresses, enforce)
            rawnl.transact(rawnl.classifier_request(ifindex, filter_fds["tc"], hostfilter.PROGRAMS["tc"])
                           + up_request(host, 3))
            tf = time.perf_counter()
            port.steps["filter"] = (tf - t1) * 1000
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
        port.steps.update(netlink=(t1 - t0) * 1000, load=(t2 - tf) * 1000, attach=(t3 - t2) * 1000,
                          sockets=(t4 - t3) * 1000)
        return port
    except BaseException:
        port.remove(missing_ok=True)
        raise
