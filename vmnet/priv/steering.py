"""Steering a VM's traffic to its queues on a physical NIC: an RSS context + an ntuple rule.

The phys and netkit-lease backends give a VM a range of a real NIC's RX
queues. The NIC must then deliver that VM's frames to those queues, and
only there: an additional RSS context spreads over exactly the port's
queues, and an ntuple (n-tuple classification) rule sends frames for the
VM's destination MAC (or IPv4 address) into that context. Both are removed
when the port goes.

Neither has a request in pyroute2 0.9.7, and ntuple rules have no ethtool
netlink message at all, so the requests are the SIOCETHTOOL structures of
include/uapi/linux/ethtool.h (ETHTOOL_GRSSH/SRSSH, ETHTOOL_SRXCLSRLINS/
SRXCLSRLDEL), built by pure functions below (unit-tested against the C
layout) and sent through pyroute2's ethtool ioctl socket.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import ipaddress
import struct

from pyroute2.ethtool.ioctl import IoctlEthtool, NoSuchDevice, NotSupportedError

from ..errors import InvalidInput, KernelError, NotFound, NotSupported
from ..fields import validate_ifname, validate_mac

ETHTOOL_SRXCLSRLDEL = 0x31
ETHTOOL_SRXCLSRLINS = 0x32
ETHTOOL_GRSSH = 0x46
ETHTOOL_SRSSH = 0x47
ETH_RXFH_CONTEXT_ALLOC = 0xFFFFFFFF
RX_CLS_LOC_ANY = 0xFFFFFFFF
FLOW_RSS = 0x20000000
ETHER_FLOW = 0x12
IP_USER_FLOW = 0x0D
ETH_RX_NFC_IP4 = 1

RXFH = struct.Struct("=IIIIBB2xI")        # struct ethtool_rxfh, before rss_config[]
RXNFC_SIZE = 192                          # sizeof(struct ethtool_rxnfc), x86-64
FS_OFFSET = 16                            # offsetof(struct ethtool_rxnfc, fs)
RXNFC_RSS_CONTEXT = 184                   # offsetof(struct ethtool_rxnfc, rss_context)
FS_H_U, FS_M_U = 4, 76                    # offsetof(struct ethtool_rx_flow_spec, h_u / m_u)
FS_RING_COOKIE, FS_LOCATION = 152, 160
NIC_FIX = ("use a NIC whose driver supports additional RSS contexts and ntuple rules "
           "(e.g. mlx5, ice, bnxt_en), or the netkit or veth backend")


@dataclasses.dataclass(frozen=True)
class Match:
    """What the ntuple rule matches: the VM's destination MAC, or its IPv4 address."""

    dst_mac: str | None = None
    dst_ipv4: str | None = None

    def __post_init__(self):
        if (self.dst_mac is None) == (self.dst_ipv4 is None):
            raise InvalidInput("a steering rule matches exactly one of a destination MAC or IPv4 address",
                               fix="give the VM's MAC (or its IPv4 address)")
        if self.dst_mac is not None:
            validate_mac(self.dst_mac)
        else:
            try:
                ipaddress.IPv4Address(self.dst_ipv4)
            except ValueError:
                raise InvalidInput(f"{self.dst_ipv4!r} is not an IPv4 address") from None


@dataclasses.dataclass
class Steering:
    """What a port's steering consists of on its NIC: remove both to undo it."""

    ifname: str
    context: int
    location: int


# ---- requests (pure) ---------------------------------------------------------

def _queue_list(queues) -> list[int]:
    queues = list(queues)
    if not queues or any(isinstance(q, bool) or not isinstance(q, int) or not 0 <= q < 4096
                         for q in queues):
        raise InvalidInput(f"queues {queues!r} cannot make an RSS context",
                           fix="give one or more queue ids from 0 to 4095")
    return queues


def rss_sizes_request() -> bytearray:
    """ETHTOOL_GRSSH on the default context: the kernel fills in indir_size and key_size."""
    return bytearray(RXFH.pack(ETHTOOL_GRSSH, 0, 0, 0, 0, 0, 0))


def parse_rss_sizes(buf: bytes) -> tuple[int, int]:
    _, _, indir_size, key_size, *_ = RXFH.unpack_from(buf)
    return indir_size, key_size


def rss_context_create_request(indir_size: int, queues) -> bytearray:
    """ETHTOOL_SRSSH allocating a new context whose table spreads over `queues` only.

    The table must have the device's own size; the hash key and function
    stay the device's (key_size 0, hfunc 0).
    """
    return _table_request(ETH_RXFH_CONTEXT_ALLOC, indir_size, queues)


def default_table_request(indir_size: int, host_queues) -> bytearray:
    """ETHTOOL_SRSSH on the default context (0): spread over `host_queues` only, so the
    host's own traffic stays off the queues leased to VMs. With no host_queues given,
    indir_size 0: back to the device's default table."""
    if not host_queues:
        return bytearray(RXFH.pack(ETHTOOL_SRSSH, 0, 0, 0, 0, 0, 0))
    return _table_request(0, indir_size, host_queues)


def _table_request(context: int, indir_size: int, queues) -> bytearray:
    """ETHTOOL_SRSSH setting context `context`'s table to spread over `queues`."""
    queues = _queue_list(queues)
    if not isinstance(indir_size, int) or not 0 < indir_size <= 65536:
        raise InvalidInput(f"RSS indirection table size {indir_size!r} is not usable")
    table = [queues[i % len(queues)] for i in range(indir_size)]
    return bytearray(RXFH.pack(ETHTOOL_SRSSH, context, indir_size, 0, 0, 0, 0) + struct.pack(f"={indir_size}I", *table))


def parse_rss_context(buf: bytes) -> int:
    """The context id the kernel wrote back into rss_context."""
    return RXFH.unpack_from(buf)[1]


def rss_context_delete_request(context: int) -> bytearray:
    """ETHTOOL_SRSSH with indir_size 0 on a non-default context deletes it."""
    if not isinstance(context, int) or not 0 < context < ETH_RXFH_CONTEXT_ALLOC:
        raise InvalidInput(f"RSS context {context!r} cannot be deleted (0 is the device's own)")
    return bytearray(RXFH.pack(ETHTOOL_SRSSH, context, 0, 0, 0, 0, 0))


def ntuple_insert_request(match: Match, context: int, location: int = RX_CLS_LOC_ANY) -> bytearray:
    """ETHTOOL_SRXCLSRLINS: frames matching `match` go to RSS context `context`."""
    if not isinstance(context, int) or not 0 < context < ETH_RXFH_CONTEXT_ALLOC:
        raise InvalidInput(f"RSS context {context!r} is not one a rule can steer to")
    buf = bytearray(RXNFC_SIZE)
    fs = FS_OFFSET
    if match.dst_mac is not None:
        flow = ETHER_FLOW
        mac = bytes(int(b, 16) for b in match.dst_mac.split(":"))
        buf[fs + FS_H_U:fs + FS_H_U + 6] = mac                   # struct ethhdr.h_dest
        buf[fs + FS_M_U:fs + FS_M_U + 6] = b"\xff" * 6
    else:
        flow = IP_USER_FLOW
        dst = ipaddress.IPv4Address(match.dst_ipv4).packed
        buf[fs + FS_H_U + 4:fs + FS_H_U + 8] = dst               # ethtool_usrip4_spec.ip4dst
        buf[fs + FS_H_U + 13] = ETH_RX_NFC_IP4                   # .ip_ver (its mask stays 0)
        buf[fs + FS_M_U + 4:fs + FS_M_U + 8] = b"\xff" * 4
    struct.pack_into("=II", buf, 0, ETHTOOL_SRXCLSRLINS, 0)
    struct.pack_into("=I", buf, fs, flow | FLOW_RSS)
    struct.pack_into("=Q", buf, fs + FS_RING_COOKIE, 0)        # offset within the context
    struct.pack_into("=I", buf, fs + FS_LOCATION, location)
    struct.pack_into("=I", buf, RXNFC_RSS_CONTEXT, context)
    return buf


def parse_rule_location(buf: bytes) -> int:
    return struct.unpack_from("=I", buf, FS_OFFSET + FS_LOCATION)[0]


def ntuple_delete_request(location: int) -> bytearray:
    if not isinstance(location, int) or not 0 <= location < RX_CLS_LOC_ANY - 4:
        raise InvalidInput(f"rule location {location!r} is not a rule's location")
    buf = bytearray(RXNFC_SIZE)
    struct.pack_into("=I", buf, 0, ETHTOOL_SRXCLSRLDEL)
    struct.pack_into("=I", buf, FS_OFFSET + FS_LOCATION, location)
    return buf


# ---- I/O ---------------------------------------------------------------------

def _ioctl(ifname: str, buf: bytearray, what: str) -> bytearray:
    """SIOCETHTOOL with `buf` as ifr_data, through pyroute2's ethtool ioctl socket."""
    raw = (ctypes.c_char * len(buf)).from_buffer(buf)
    eth = IoctlEthtool(ifname)
    try:
        eth.ifreq.gstrings = ctypes.cast(raw, ctypes.c_void_p)
        eth.ioctl()
    except NoSuchDevice:
        raise NotFound(f"device {ifname} does not exist", fix="name a NIC of this netns") from None
    except NotSupportedError:
        raise NotSupported(f"device {ifname} cannot {what}", errno=errno.EOPNOTSUPP, fix=NIC_FIX) from None
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise NotSupported(f"device {ifname} refused to {what}", errno=exc.errno, fix=NIC_FIX) from None
        raise KernelError(f"device {ifname} failed to {what}", errno=exc.errno) from None
    finally:
        del raw
        eth.close()
    return buf


def _indir_size(ifname: str) -> int:
    """The size of the NIC's RSS indirection table; NotSupported for a NIC without one."""
    indir_size, _ = parse_rss_sizes(_ioctl(ifname, rss_sizes_request(), "report its RSS indirection table size"))
    if indir_size == 0:
        raise NotSupported(f"device {ifname} has no RSS indirection table", fix=NIC_FIX)
    return indir_size


def create_steering(ifname: str, queues, match: Match) -> Steering:
    """An RSS context over `queues` of NIC `ifname` and a rule sending `match` to it."""
    validate_ifname(ifname)
    queues = _queue_list(queues)
    indir_size = _indir_size(ifname)
    created = _ioctl(ifname, rss_context_create_request(indir_size, queues),
                     f"create an RSS context over queues {queues}")
    context = parse_rss_context(created)
    try:
        rule = _ioctl(ifname, ntuple_insert_request(match, context),
                      "insert an ntuple rule into an RSS context (is rx-ntuple-filter on?)")
    except BaseException:
        _ioctl(ifname, rss_context_delete_request(context), f"delete RSS context {context}")
        raise
    return Steering(ifname=ifname, context=context, location=parse_rule_location(rule))


def remove_steering(steering: Steering) -> bool:
    """Remove a port's rule and context; idempotent (gone is fine)."""
    found = False
    for buf, what in ((ntuple_delete_request(steering.location), f"delete ntuple rule {steering.location}"),
                      (rss_context_delete_request(steering.context), f"delete RSS context {steering.context}")):
        try:
            _ioctl(steering.ifname, buf, what)
            found = True
        except NotFound:
            return found
        except (NotSupported, KernelError) as exc:
            if exc.errno not in (errno.ENOENT, errno.EINVAL, errno.EOPNOTSUPP):
                raise
    return found


def keep_host_off(ifname: str, queue_count: int, leased) -> str:
    """Make the NIC's default RSS table spread the host's traffic over the queues not leased
    (all of them again once none is). What was done, for status."""
    leased = set(leased)
    host = [q for q in range(queue_count) if q not in leased]
    indir_size = _indir_size(ifname)
    if not host:
        raise InvalidInput(f"every queue of {ifname} would be leased: the host keeps none",
                           fix="keep at least one queue for the host (lease_reserved_queues)")
    _ioctl(ifname, default_table_request(indir_size, host if leased else []),
           "set its default RSS table")
    return f"the host's RSS table spreads over queues {host}" if leased else "the host's RSS table is the default"
