"""A port's fields and the rules for each: names, queue ranges, netns references, MACs, MTUs.

Pure, and light: nothing but `re`. The port model (vmnet.model) builds on
these rules; the consumer side (the wrapper, vmnet exec) checks the fields
of a helper's reply with them alone, without the model's dataclasses, whose
import costs every VM start more than the rest of its handoff.
"""

from __future__ import annotations

import re

from .errors import InvalidInput

# Ports are named by users; devices are derived from the name. Linux
# interface names hold at most 15 bytes: "vmn-" + 11 characters.
PORT_NAME_MAX = 11
_PORT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_NETNS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_PROC_NETNS = re.compile(r"/proc/[0-9]+/ns/net")
_INSTANCE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# all patterns are used with fullmatch: "$" would let a trailing newline through

# the inode of the host's (initial) network namespace on nsfs where the kernel fixes it
# (PROC_NET_INIT_INO; seen on 6.18 here); older kernels number it like any other netns,
# from 0xF0000000 up, so on no kernel does this number name another netns
HOST_NETNS_INO = 0xEFFFFFF9


def netns_id(path: str) -> str | None:
    """dev:inode of the namespace file at path, how vmnet names a netns (None: unreadable).
    One stat: the helper, the CNI plugin and the bind checks compare netns by it."""
    import os
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}"

QUEUES_MAX = 64
MODES = ("auto", "native", "skb")
# How a port's device is made (docs/backends.md). "auto" is resolved when the
# port is created: netkit when the kernel has it and skb mode will do, else veth.
BACKENDS = ("auto", "veth", "netkit", "netkit-lease")
# netkit has no native XDP (no ndo_bpf); its XSK program runs in generic mode
SKB_ONLY_BACKENDS = ("netkit",)
# backends whose port is a pair, with a host end (vmn-<port>) in the helper's netns;
# a netkit-lease port has only its consumer end (the NIC's queues are the other side)
PAIR_BACKENDS = ("veth", "netkit")


def has_host_end(record: dict) -> bool:
    """Whether a port (its record) has a host end: a device of its own in the helper's netns."""
    return record.get("backend") in PAIR_BACKENDS

# AF_XDP frames are 4 KiB UMEM chunks; the kernel keeps XDP_PACKET_HEADROOM
# (256 bytes) in front of the data in each, so a frame carries at most
# 3840 bytes of Ethernet frame: an MTU of 3826 without a VLAN tag.
UMEM_FRAME_SIZE = 4096
XDP_PACKET_HEADROOM = 256
ETH_HLEN = 14
MTU_MIN = 576
MTU_FRAME_MAX = UMEM_FRAME_SIZE - XDP_PACKET_HEADROOM - ETH_HLEN


def validate_port_name(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidInput("port name is empty", fix="name the port, e.g. 'vm1'")
    if len(name) > PORT_NAME_MAX:
        raise InvalidInput(
            f"port name {name!r} is {len(name)} characters long; the limit is {PORT_NAME_MAX}",
            fix=f"use at most {PORT_NAME_MAX} characters: device names are 'vmn-<port>' and Linux allows 15",
        )
    if not _PORT_NAME.fullmatch(name):
        raise InvalidInput(
            f"port name {name!r} has characters vmnet does not accept",
            fix="use lower-case letters, digits, '-' and '_', starting with a letter or digit",
        )
    return name


def validate_instance(name: str) -> str:
    """A helper instance name ("" is the default instance, vmnet.priv.instance)."""
    if name and (not isinstance(name, str) or not _INSTANCE.fullmatch(name)):
        raise InvalidInput(f"helper instance name {name!r} is not valid",
                           fix="use 1-32 lower-case letters, digits, '-' and '_', or leave it empty "
                               "for the default instance")
    return name


def validate_ifname(name: str) -> str:
    if not isinstance(name, str) or not _IFNAME.fullmatch(name):
        raise InvalidInput(
            f"interface name {name!r} is not valid",
            fix="use 1-15 characters from letters, digits, '.', '-', '_'",
        )
    return name


def validate_queues(queues, start_queue=0) -> tuple[int, int]:
    for label, value, low, high in (("queue count", queues, 1, QUEUES_MAX),
                                     ("start queue", start_queue, 0, 1023)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidInput(f"{label} {value!r} is out of range",
                               fix=f"give a {label} from {low} to {high}")
    return queues, start_queue


def validate_netns(ref: str | None) -> str | None:
    """Accept /proc/<pid>/ns/net, /run/netns/<name> or a bare <name>."""
    if ref is None or ref == "":
        return None
    if not isinstance(ref, str):
        raise InvalidInput(f"netns reference {ref!r} is not a string",
                           fix="give /proc/<pid>/ns/net or /run/netns/<name>")
    if _PROC_NETNS.fullmatch(ref):
        return ref
    for prefix in ("/run/netns/", "/var/run/netns/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
            break
    if _NETNS_NAME.fullmatch(ref) and ref not in (".", ".."):
        return "/run/netns/" + ref
    raise InvalidInput(
        f"netns reference {ref!r} is not one vmnet accepts",
        fix="give /proc/<pid>/ns/net, /run/netns/<name> or a name made by 'ip netns add'",
    )


def validate_mac(mac: str) -> str:
    mac = mac.lower() if isinstance(mac, str) else mac
    if not isinstance(mac, str) or not _MAC.fullmatch(mac):
        raise InvalidInput(f"MAC address {mac!r} is not valid", fix="write it as 02:00:00:00:00:01")
    if mac == "00:00:00:00:00:00":
        raise InvalidInput("MAC address 00:00:00:00:00:00 is not usable (QEMU treats it as unset)",
                           fix="leave the MAC out to get one derived from the port name")
    if int(mac[:2], 16) & 1:
        raise InvalidInput(f"MAC address {mac} is a multicast address",
                           fix="clear the lowest bit of the first byte")
    return mac


def default_mac(port_name: str) -> str:
    """A stable, locally administered unicast MAC derived from the port name."""
    import hashlib      # here, not at the top: the wrapper imports this module on every VM start
    digest = hashlib.sha256(port_name.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02,) + tuple(digest[:5]))


def parse_lease_from(lease_from: str, queues: int) -> tuple[str, list[int] | None]:
    """IFNAME or IFNAME:Q[,Q...] -> (the NIC, its queues to lease or None: the next free)."""
    nic, sep, listed = lease_from.partition(":")
    validate_ifname(nic)
    if not sep:
        return nic, None
    try:
        ids = [int(q) for q in listed.split(",")]
    except ValueError:
        raise InvalidInput(f"--lease-from {lease_from!r}: queue ids must be numbers, e.g. eth0:4,5") from None
    if any(q < 0 or q > 1023 for q in ids) or len(set(ids)) != len(ids):
        raise InvalidInput(f"--lease-from {lease_from!r}: queue ids must be distinct, from 0 to 1023")
    if len(ids) != queues:
        raise InvalidInput(f"--lease-from {lease_from!r} names {len(ids)} queue(s) for a port of {queues}",
                           fix=f"name {queues} queue(s), or give only the NIC to lease the next free ones")
    return nic, ids


def validate_backend(backend: str, mode: str, lease_from: str | None, queues: int = 1,
                     receive_only: bool = False) -> None:
    """The combinations of backend, XDP mode and lease source vmnet can build."""
    if backend in SKB_ONLY_BACKENDS and mode == "native":
        raise InvalidInput(
            f"backend {backend} cannot run the XSK program in native mode: netkit has no native "
            "XDP, only generic (skb) XDP",
            fix="use --mode skb or --mode auto with netkit, or --backend veth for native XDP")
    if backend == "netkit-lease":
        if lease_from is None:
            raise InvalidInput("backend netkit-lease needs the physical NIC whose queues it leases",
                               fix="name it with --lease-from IFNAME")
        if mode == "skb":
            raise InvalidInput("backend netkit-lease runs the XSK program on the NIC in native mode",
                               fix="use --mode native or auto")
        parse_lease_from(lease_from, queues)
    elif lease_from is not None:
        raise InvalidInput(f"--lease-from applies only to backend netkit-lease, not {backend}",
                           fix="leave --lease-from out, or use --backend netkit-lease")
    if receive_only and backend != "netkit-lease":
        raise InvalidInput(f"--receive-only applies only to backend netkit-lease, not {backend}",
                           fix="leave --receive-only out")


def validate_mtu(mtu) -> int | None:
    if mtu is None:
        return None
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not MTU_MIN <= mtu <= MTU_FRAME_MAX:
        raise InvalidInput(
            f"MTU {mtu!r} is out of range",
            fix=f"give {MTU_MIN}-{MTU_FRAME_MAX}: an AF_XDP frame is one 4 KiB UMEM chunk",
        )
    return mtu


def bound_queues(bind_queues, start_queue: int, queues: int) -> list[int]:
    """The queue ids a port's consumer binds, in socket order (the first is QEMU's
    start-queue): the ones the helper chose (bind_queues), else start_queue onwards."""
    return list(bind_queues) if bind_queues is not None else [start_queue + i for i in range(queues)]


def record_queue_ids(record: dict) -> list[int]:
    """bound_queues() of a port record as the helper reports it."""
    return bound_queues(record.get("bind_queues"), record["start_queue"], record["queues"])
