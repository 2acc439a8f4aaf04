"""A device's offload features through the SIOCETHTOOL ioctl, packed by hand.

AF_XDP carries no offload metadata, so a port's host end has its checksum,
segmentation and VLAN offloads turned off (vmnet.priv.links). pyroute2's
IoctlEthtool reads the kernel's feature names again for every call, which
cost about half of a port's whole create; the names (ETH_SS_FEATURES) are
the kernel's, the same for every device, so they are read once here, and a
create costs two feature reads and one write (docs/performance.md).
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct

SIOCETHTOOL = 0x8946
ETHTOOL_GSTRINGS, ETHTOOL_GSSET_INFO, ETHTOOL_GFEATURES, ETHTOOL_SFEATURES = 0x1B, 0x37, 0x3A, 0x3B
ETH_SS_FEATURES, ETH_GSTRING_LEN = 4, 32
IFNAMSIZ = 16

_names: list[str] | None = None


def _ioctl(ifname: str, buf: ctypes.Array) -> None:
    """SIOCETHTOOL on `ifname` with `buf` as the ethtool command (read and written in place)."""
    ifreq = struct.pack(f"{IFNAMSIZ}sP", ifname.encode(), ctypes.addressof(buf)) + bytes(40 - IFNAMSIZ - 8)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, bytearray(ifreq))


def feature_names(ifname: str) -> list[str]:
    """The kernel's feature names, bit by bit (read once per process)."""
    global _names
    if _names is None:
        info = ctypes.create_string_buffer(struct.pack("=IIQI", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0))
        _ioctl(ifname, info)
        (count,) = struct.unpack_from("=I", info.raw, 16)
        strings = ctypes.create_string_buffer(struct.pack("=III", ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count)
                                              + bytes(count * ETH_GSTRING_LEN))
        _ioctl(ifname, strings)
        raw = strings.raw[12:]
        _names = [raw[i * ETH_GSTRING_LEN:(i + 1) * ETH_GSTRING_LEN].split(b"\0", 1)[0].decode()
                  for i in range(count)]
    return _names


def _blocks(count: int) -> int:
    return (count + 31) // 32


def get_features(ifname: str) -> tuple[int, int]:
    """(available, active) feature bits of a device, as integers (bit i: feature_names()[i])."""
    n = _blocks(len(feature_names(ifname)))
    buf = ctypes.create_string_buffer(struct.pack("=II", ETHTOOL_GFEATURES, n) + bytes(16 * n))
    _ioctl(ifname, buf)
    available = active = 0
    for i in range(n):
        a, _requested, act, _never = struct.unpack_from("=IIII", buf.raw, 8 + 16 * i)
        available |= a << (32 * i)
        active |= act << (32 * i)
    return available, active


def set_features(ifname: str, valid: int, requested: int) -> None:
    """Ask for the features in `valid` to be as in `requested` (bits as in get_features)."""
    n = _blocks(len(feature_names(ifname)))
    body = b"".join(struct.pack("=II", (valid >> (32 * i)) & 0xFFFFFFFF, (requested >> (32 * i)) & 0xFFFFFFFF)
                    for i in range(n))
    _ioctl(ifname, ctypes.create_string_buffer(struct.pack("=II", ETHTOOL_SFEATURES, n) + body))
