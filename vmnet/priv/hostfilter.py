"""Anti-spoofing on a port's host end: the instance's host filter (bpf/host_filter.c).

What a VM sends reaches the host end of its port; before anything on the
host sees it (a bridge, Open vSwitch, routing), the filter drops frames
whose source MAC is not the port's and, where the port has addresses,
IPv4, ARP, IPv6 and neighbour advertisements from other addresses. It is
one program per helper instance, like the XSK program (one load, then a
bpf_link per port), with the port's settings keyed by its host end's
ifindex; drops are counted per port and reason.

Why BPF on the host end rather than nftables (the CNI bridge plugin's
macspoofchk): one mechanism for every attachment — a bridge member, an Open
vSwitch port or a routed device — in vmnet's own BPF stack, with counters
the helper reads like its XSK counters, and the same program on XDP where a
packet socket would see frames before tc (Open vSwitch's userspace
datapath). docs/networks.md has the rules.

On tc the filter is a cls_bpf classifier on the host end's clsact qdisc
(it goes with the device); on XDP a bpf_link pinned beside the port's XSK
link (<port>/filter), so removing the port's pins detaches it. Pins:
<instance root>/+hostfilter/{tc,xdp,ports,addrs,stats}.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from importlib import resources

from ..errors import KernelError
from .. import rawnl
from . import bpf, libbpf

PROGRAMS = {"tc": "vmnet_hf_tc_v1", "xdp": "vmnet_hf_xdp_v1"}     # the version tag
MAPS = {"ports": "vmnet_hf_ports", "addrs": "vmnet_hf_addrs", "stats": "vmnet_hf_stats"}
PINS = tuple(PROGRAMS) + tuple(MAPS)
ENFORCE_IPV4, ENFORCE_IPV6 = 1, 2
PORT = struct.Struct("6sH")
ADDR = struct.Struct("II16s")
IFINDEX = struct.Struct("I")
STATS = struct.Struct("5Q")
REASONS = ("mac", "arp", "ipv4", "ipv6", "nd")


def pin_dir(root: str) -> str:
    return os.path.join(root, "+hostfilter")


def object_path() -> str:
    return str(resources.files("vmnet.bpf") / "host_filter.o")


def _mac(mac: str) -> bytes:
    return bytes(int(b, 16) for b in mac.split(":"))


def rules(mac: str, addresses, enforce: tuple[bool, bool]) -> tuple[bytes, list[bytes]]:
    """(the port's value, its address keys without the ifindex) for the maps. Pure."""
    flags = (ENFORCE_IPV4 if enforce[0] else 0) | (ENFORCE_IPV6 if enforce[1] else 0)
    addrs = []
    for text in addresses:
        ip = ipaddress.ip_interface(text).ip
        addrs.append((ip.version, ip.packed.ljust(16, b"\0")))
    return PORT.pack(_mac(mac), flags), addrs


class HostFilter:
    def __init__(self, root: str, fds: dict[str, int]):
        self.root, self.fds = root, fds

    @classmethod
    def ensure(cls, root: str) -> "HostFilter":
        bpf.require_bpffs()
        fds = bpf.open_shared(pin_dir(root), PINS, "tc", PROGRAMS["tc"])
        if fds is None:
            fds = bpf.load_object(object_path(), PROGRAMS, MAPS, "vmnet's host filter (anti-spoofing)")
            try:
                fds = bpf.pin_shared(root, pin_dir(root), fds, "tc", PROGRAMS["tc"])
            except BaseException:
                bpf.close_fds(fds)
                raise
        return cls(root, fds)

    @classmethod
    def opened(cls, root: str) -> "HostFilter | None":
        fds = bpf.open_shared(pin_dir(root), PINS, "tc", PROGRAMS["tc"])
        return None if fds is None else cls(root, fds)

    def pin(self) -> "HostFilter":
        """Pin again (after the last port took the pins along)."""
        self.fds = bpf.pin_shared(self.root, pin_dir(self.root), self.fds, "tc", PROGRAMS["tc"])
        return self

    def close(self):
        bpf.close_fds(self.fds)
        self.fds = {}

    def set_port(self, ifindex: int, mac: str, addresses, enforce: tuple[bool, bool]) -> None:
        """The rules of the port whose host end has this ifindex (replacing earlier ones)."""
        value, addrs = rules(mac, addresses, enforce)
        try:
            for family, packed in addrs:
                libbpf.map_update(self.fds["addrs"], ADDR.pack(ifindex, family, packed), b"\1")
            libbpf.map_update(self.fds["stats"], IFINDEX.pack(ifindex), STATS.pack(0, 0, 0, 0, 0) * libbpf.possible_cpus())
            libbpf.map_update(self.fds["ports"], IFINDEX.pack(ifindex), value)
        except OSError as exc:
            self.clear_port(ifindex)
            raise KernelError(f"cannot store the anti-spoofing rules of ifindex {ifindex}", errno=exc.errno) from None

    def clear_port(self, ifindex: int, addresses=None) -> bool:
        """Forget a port's rules and counters; idempotent. Without its addresses (a crash's
        leftovers) every address key is looked at."""
        found = libbpf.map_delete_key(self.fds["ports"], IFINDEX.pack(ifindex))
        libbpf.map_delete_key(self.fds["stats"], IFINDEX.pack(ifindex))
        if addresses is not None:
            keys = [ADDR.pack(ifindex, family, packed) for family, packed in rules("00:00:00:00:00:00",
                                                                                   addresses, (0, 0))[1]]
        else:
            keys = [k for k in libbpf.map_keys(self.fds["addrs"], ADDR.size) if ADDR.unpack(k)[0] == ifindex]
        for key in keys:
            found = libbpf.map_delete_key(self.fds["addrs"], key) or found
        return found

    def attach(self, ifindex: int, ifname: str, hook: str) -> int:
        """Put the filter on a device of the current netns. hook "tc": a cls_bpf classifier in
        direct-action mode on the device's clsact ingress, which belongs to the device and goes
        with it: -1. "xdp": a bpf_link on generic XDP: its fd, to pin.

        Not a tcx link: attaching one waits for an RCU grace period (the kernel swaps the
        device's program array and synchronizes), 7-20 ms per port here; the classifier costs
        a fraction of a millisecond, sent as one raw request (docs/performance.md)."""
        try:
            if hook == "xdp":
                return libbpf.link_create_xdp(self.fds["xdp"], ifindex, libbpf.XDP_FLAGS_SKB_MODE)
            rawnl.transact(rawnl.classifier_request(ifindex, self.fds["tc"], PROGRAMS["tc"]))
            return -1
        except OSError as exc:
            raise KernelError(f"cannot attach vmnet's anti-spoofing filter to {ifname} ({hook})", errno=exc.errno,
                              fix="tc needs the kernel's clsact qdisc and cls_bpf (CONFIG_NET_SCH_INGRESS, "
                                  "CONFIG_NET_CLS_BPF): check 'vmnet doctor', or turn anti-spoofing off for "
                                  "this port (--no-spoofcheck)") from None

    def stats(self, ifindex: int) -> dict | None:
        """Frames dropped on this host end, by reason (all CPUs), or None when it has no rules."""
        cpus = libbpf.possible_cpus()
        raw = libbpf.map_lookup(self.fds["stats"], IFINDEX.pack(ifindex), STATS.size * cpus)
        if raw is None:
            return None
        return dict(zip(REASONS, map(sum, zip(*STATS.iter_unpack(raw[:STATS.size * cpus])))))

    def ports(self) -> list[int]:
        """ifindexes of every host end with rules (the helper's recovery)."""
        return [IFINDEX.unpack(k)[0] for k in libbpf.map_keys(self.fds["ports"], IFINDEX.size)]

    def unpin_if_unused(self) -> bool:
        if libbpf.map_any_key(self.fds["ports"], IFINDEX.size):
            return False
        bpf.unpin_shared(self.root, pin_dir(self.root), PINS)
        return True
