"""Network devices of a port: the veth pair, its MTU and offloads.

The host end stays in the caller's netns; the consumer end (the one QEMU
binds, and the one carrying the XSK program) is created directly inside
the consumer's netns. AF_XDP carries no offload metadata, so everything
that would let the host hand the consumer a frame with an unfinished
checksum, a segmentation job or an out-of-band VLAN tag is turned off on
the host end, whose transmitted frames are what the XSK program receives.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from ..errors import AlreadyExists, IfindexTaken, KernelError, NotFound
from ..model import PortSpec
from . import ethtool
from . import netns as _netns

# IFLA_XDP_ATTACHED, as a number or as pyroute2 names it
XDP_ATTACHED = {0: None, 1: "native", 2: "skb", 3: "hw", 4: "multi",
                "xdp": "native", "xdpgeneric": "skb", "xdpoffload": "hw", "xdpmulti": "multi"}


def _offload_feature(name: str) -> bool:
    return (name.startswith("tx-checksum") or name.endswith("segmentation")
            or name in ("tx-gso-list", "tx-vlan-hw-insert", "tx-vlan-stag-hw-insert"))


@functools.lru_cache(maxsize=4)
def _offloads(names: tuple) -> tuple[int, list[str]]:
    """The offload features among the kernel's feature names: (their bits, their names sorted)."""
    return (sum(1 << i for i, n in enumerate(names) if _offload_feature(n)),
            sorted(n for n in names if _offload_feature(n)))


def netlink(ip: IPRoute | None):
    """The caller's open socket (bound to the netns it was opened in), or a new one."""
    return contextlib.nullcontext(ip) if ip is not None else IPRoute()


_netlink = netlink


def peer_attrs(ifname: str, mac: str, queues: int, netns_fd: int | None) -> list:
    """The attributes of a pair's consumer end (veth's or netkit's peer): its name, MAC and
    queues, and the netns it is made in. Pure."""
    attrs = [("IFLA_IFNAME", ifname), ("IFLA_ADDRESS", mac),
             ("IFLA_NUM_TX_QUEUES", queues), ("IFLA_NUM_RX_QUEUES", queues)]
    if netns_fd is not None:
        attrs.append(("IFLA_NET_NS_FD", netns_fd))
    return attrs


def create_veth(spec: PortSpec, ip: IPRoute | None = None, peer_index: int = 0,
                host_index: int = 0) -> None:
    """Create host end vmn-<port> here and consumer end vmc-<port> in spec.netns.

    In skb (generic XDP) mode the host end gets one transmit queue more than the port has:
    veth then passes a frame sent on transmit queue k up its peer's stack, where generic
    XDP reads the transmit queue as a recorded receive queue, k - 1 (0 for k = 0) — so with
    as many transmit queues as queues, the port's last queue would never receive (seen on
    6.18: transmit queues 0-3 reach queues 0, 0, 1, 2). In native mode veth hands transmit
    queue k to its peer's queue k, and a transmit queue past the peer's would bypass XDP.

    One raw request (vmnet.rawnl): pyroute2's message objects cost more than the kernel's
    work here (docs/performance.md).
    """
    from .. import rawnl
    nsfd = _netns.open_netns(spec.netns) if spec.netns else None
    queues = spec.start_queue + spec.queues
    request = rawnl.veth_request(spec.host_ifname, spec.consumer_ifname, spec.mac, queues,
                                 queues + 1 if spec.mode == "skb" else queues, nsfd, host_index, peer_index)
    what = f"veth pair {spec.host_ifname}/{spec.consumer_ifname}"
    try:
        rawnl.transact(request)
    except OSError as exc:
        newlink_refused(exc.errno, spec.name, what, host_index, spec.host_ifname, peer_index,
                        (spec.consumer_ifname, spec.netns), ip)
        raise KernelError(f"cannot create {what}", errno=exc.errno) from None
    finally:
        if nsfd is not None:
            os.close(nsfd)


def send_newlink(msg: ifinfmsg, port: str, what: str, peer_index: int = 0, ip: IPRoute | None = None,
                 peer: tuple[str, str | None] | None = None):
    """Send an RTM_NEWLINK that creates port `port`'s devices (`what`). The refusals every
    backend meets become vmnet's errors (newlink_refused); any other NetlinkError is the
    caller's to explain."""
    host_index, name = msg["index"], msg.get_attr("IFLA_IFNAME")
    msg["header"]["type"] = RTM_NEWLINK
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    try:
        with _netlink(ip) as sock:
            # the batch call: the sync nlm_request of pyroute2 0.9.7 trips over its own status
            sock.nlm_request_batch([msg])
    except NetlinkError as exc:
        newlink_refused(exc.code, port, what, host_index, name, peer_index, peer, ip)
        raise


def newlink_refused(code: int, port: str, what: str, host_index: int, name: str, peer_index: int = 0,
                    peer: tuple[str, str | None] | None = None, ip: IPRoute | None = None) -> None:
    """Raise vmnet's error for an RTM_NEWLINK that created port `port`'s devices (`what`) and
    was refused with errno `code`, when it is one every backend meets; return otherwise.

    A pair's EEXIST is about either name: peer = (consumer end's name, its netns) lets the
    error say which — a consumer end named like a device already there (a pod's CNI_IFNAME
    taken by another attachment) is no port that exists.

    An ifindex vmnet chose that is taken: rtnetlink takes a request naming an existing
    ifindex here for a change of that device, which NLM_F_EXCL refuses with EEXIST, and
    answers EBUSY for a peer's ifindex taken in the peer's netns.
    """
    if peer_index and (code == errno.EBUSY or
                       code == errno.EEXIST and host_index and index_taken(host_index, name, ip)):
        raise IfindexTaken(f"ifindex {host_index} or {peer_index}, which vmnet gives {what}, is taken "
                           "(here, or in the consumer's netns)",
                           fix="delete the device that has it, or retry (the next port gets another)") from None
    if code == errno.EEXIST and peer is not None and get_link(name, ip) is None:
        where = f"network namespace {peer[1]}" if peer[1] else "the helper's network namespace"
        raise AlreadyExists(f"device {peer[0]} already exists in {where}: port {port}'s consumer end "
                            "cannot have its name",
                            fix="give the port another consumer interface name (--ifname; a pod's "
                                "CNI_IFNAME), or remove that device") from None
    if code == errno.EEXIST:
        raise AlreadyExists(f"port {port} already exists ({what} is present)",
                            fix=f"delete it with 'vmnet port del {port}' or pick another port name") from None


def index_taken(ifindex: int, ifname: str, ip: IPRoute | None = None) -> bool:
    """Whether a device other than `ifname` has this ifindex here."""
    with _netlink(ip) as ip:
        try:
            msg = ip.link("get", index=ifindex)[0]
        except NetlinkError:
            return False
    return msg.get("IFLA_IFNAME") != ifname


def delete_link(ifname: str) -> bool:
    """Delete a device here; True if it existed. Idempotent."""
    with IPRoute() as ip:
        try:
            ip.link("del", ifname=ifname)
            return True
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return False
            raise KernelError(f"cannot delete device {ifname}", errno=exc.code) from None


def get_link(ifname: str, ip: IPRoute | None = None):
    """The RTM_NEWLINK message of a device here, or None when there is none."""
    with _netlink(ip) as ip:
        try:
            return ip.link("get", ifname=ifname)[0]
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise KernelError(f"cannot read device {ifname}", errno=exc.code) from None


def link_state(ifname: str, ip: IPRoute | None = None) -> dict | None:
    """ifindex, MTU, max MTU and XDP attachment of a device here, or None."""
    msg = get_link(ifname, ip)
    if msg is None:
        return None
    xdp = msg.get("IFLA_XDP")
    return {
        "ifname": ifname,
        "ifindex": msg["index"],
        "mtu": msg.get("IFLA_MTU"),
        "max_mtu": msg.get("IFLA_MAX_MTU"),
        "address": msg.get("IFLA_ADDRESS"),
        "xdp_mode": XDP_ATTACHED.get(xdp.get("IFLA_XDP_ATTACHED")) if xdp else None,
        "xdp_prog_id": (xdp.get("IFLA_XDP_PROG_ID") or 0) if xdp else 0,
        "xdp_drv_prog_id": (xdp.get("IFLA_XDP_DRV_PROG_ID") or 0) if xdp else 0,
        "xdp_skb_prog_id": (xdp.get("IFLA_XDP_SKB_PROG_ID") or 0) if xdp else 0,
        "num_rx_queues": msg.get("IFLA_NUM_RX_QUEUES"),
        "alias": msg.get("IFLA_IFALIAS"),
    }


def require_link(ifname: str, ip: IPRoute | None = None) -> dict:
    state = link_state(ifname, ip)
    if state is None:
        raise NotFound(f"device {ifname} does not exist")
    return state


def set_alias_raw(ifindex: int, ifname: str, alias: str) -> None:
    """set_alias by ifindex in the calling thread's netns, in one raw request (vmnet.rawnl)."""
    from .. import rawnl
    try:
        rawnl.transact(rawnl.alias_request(ifindex, alias))
    except OSError as exc:
        raise KernelError(f"cannot set the alias of {ifname}", errno=exc.errno) from None


def set_alias(ifname: str, alias: str, ip: IPRoute | None = None) -> None:
    """IFLA_IFALIAS: the helper instance's marker on the devices it makes."""
    with _netlink(ip) as ip:
        try:
            ip.link("set", ifname=ifname, ifalias=alias)
        except NetlinkError as exc:
            raise KernelError(f"cannot set the alias of {ifname}", errno=exc.code) from None


def set_mtu_up(ifname: str, mtu: int, ip: IPRoute | None = None) -> None:
    with _netlink(ip) as ip:
        try:
            ip.link("set", ifname=ifname, mtu=mtu, state="up")
        except NetlinkError as exc:
            raise KernelError(f"cannot set MTU {mtu} on {ifname}", errno=exc.code,
                              fix="choose a smaller MTU for the port") from None


def set_mtu_up_raw(ifindex: int, ifname: str, mtu: int, silent: bool = False) -> None:
    """set_mtu_up by ifindex in the calling thread's netns, in one raw request (vmnet.rawnl).
    silent: the device comes up with no IPv6 address (so its own stack sends nothing)."""
    from .. import rawnl
    try:
        rawnl.transact((rawnl.no_ipv6_address_request(ifindex) if silent else b"")
                       + rawnl.mtu_up_request(ifindex, mtu))
    except OSError as exc:
        raise KernelError(f"cannot set MTU {mtu} on {ifname}", errno=exc.errno,
                          fix="choose a smaller MTU for the port") from None


# how a write to /proc/sys fails where it is mounted read-only (a container that is not privileged)
SYSCTL_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def disable_ipv6(ifname: str) -> bool:
    """Turn IPv6 off on device `ifname` of the calling thread's netns, before it comes up;
    whether it is off.

    It then gets no address and no route, and sends nothing of its own (DAD, router
    solicitation, MLD). Its routes would also cost every later port: the kernel walks the
    whole IPv6 table of a netns on each device's MTU change and link up, and every device
    adds its own ff00::/8 and fe80::/64 — at 1,000 ports most of a create's growth
    (docs/performance.md). A kernel without IPv6 has nothing to turn off.

    Where /proc/sys is read-only (a helper in a container that is not privileged, as
    vmnet's DaemonSet runs it) IPv6 stays on: the port works as well, a consumer end still
    sends nothing (it has no address), and creates slow down as ports accumulate. That is
    said once in the log.
    """
    try:
        # /proc/sys/net is the netns of the thread that opens it
        with open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "w") as f:
            f.write("1")
        return True
    except FileNotFoundError:
        if os.path.isdir("/proc/sys/net/ipv6/conf"):
            raise KernelError(f"cannot turn IPv6 off on {ifname}: the device is gone") from None
        return True
    except OSError as exc:
        if exc.errno in SYSCTL_READ_ONLY:
            _sysctl_read_only(exc.strerror)
            return False
        raise KernelError(f"cannot turn IPv6 off on {ifname}: {exc.strerror}", errno=exc.errno) from None


@functools.cache
def _sysctl_read_only(why: str) -> None:
    import logging
    logging.getLogger("vmnet.helper").warning(
        "ports keep IPv6 on their devices: /proc/sys cannot be written here (%s; a container that is "
        "not privileged). They work as well; creates slow down as ports accumulate (docs/backends.md)", why)


def disable_offloads(ifname: str) -> list[str]:
    """Turn off checksum/segmentation/VLAN offloads; return the offload features (now off).

    Straight through SIOCETHTOOL (vmnet.priv.ethtool), with the kernel's feature names
    read once: the ethtool object of pyroute2 opens a generic-netlink socket per use, and
    its ioctl one reads every name again per call, each costing more than the rest of a
    port's creation.
    """
    try:
        names = ethtool.feature_names(ifname)
        offload, offload_names = _offloads(tuple(names))
        available, _ = ethtool.get_features(ifname)
        ethtool.set_features(ifname, offload & available, 0)
        _, active = ethtool.get_features(ifname)
    except OSError as exc:
        raise KernelError(f"cannot change offloads of {ifname}: {exc.strerror or exc}", errno=exc.errno) from None
    left = [n for i, n in enumerate(names) if (offload & active) >> i & 1]
    if left:
        raise KernelError(f"offloads {', '.join(left)} stay enabled on {ifname}",
                          fix="AF_XDP cannot carry offloaded frames; this driver cannot be used")
    return list(offload_names)


def add_address(ifname: str, address: str, prefixlen: int) -> None:
    with IPRoute() as ip:
        idx = ip.link_lookup(ifname=ifname)
        if not idx:
            raise NotFound(f"device {ifname} does not exist")
        ip.addr("add", index=idx[0], address=address, prefixlen=prefixlen)
        ip.link("set", index=idx[0], state="up")


def bring_up(ifname: str) -> None:
    with IPRoute() as ip:
        ip.link("set", ifname=ifname, state="up")
