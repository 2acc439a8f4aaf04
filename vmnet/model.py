"""What a port is, validated: names, queue ranges, netns references, MACs.

Pure: nothing here touches the kernel, so every rule about what vmnet
accepts can be tested anywhere and is applied before anything is created.
"""

from __future__ import annotations

import dataclasses
import re

from .errors import InvalidInput
from .network import Attachment

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


@dataclasses.dataclass(frozen=True)
class PortSpec:
    """A port as requested. Devices: host end 'vmn-<name>', consumer end 'vmc-<name>'."""

    name: str
    queues: int = 1
    start_queue: int = 0
    backend: str = "veth"
    mode: str = "auto"
    netns: str | None = None      # where the consumer end and sockets go
    mac: str | None = None        # the VM's MAC (virtio-net device)
    mtu: int | None = None        # None: the largest one frame carries
    consumer_uid: int | None = None
    consumer_gid: int | None = None
    lease_from: str | None = None  # netkit-lease: the physical NIC whose queues are leased
    # netkit-lease on a NIC without XSK zero-copy: frames arrive, but what the consumer sends
    # never leaves; allowed only when asked for, and never for QEMU
    receive_only: bool = False
    # the consumer end's name when it is not vmc-<name>: a pod's interface (CNI_IFNAME)
    consumer_name: str | None = None
    # a tap of this name, owned by the consumer, in the consumer's netns, that carries no
    # traffic: what libvirt opens for <interface type='ethernet'> until the wrapper swaps
    # it for the port (KubeVirt's domainAttachmentType: tap; docs/kubevirt.md)
    placeholder_tap: str | None = None
    # where the host end is plugged and what the guest is told (vmnet.network)
    attachment: Attachment = Attachment()
    # made for a VM that is migrating here: what draws its traffic to this host (a routed
    # port's host routes) waits until it runs here (docs/migration.md)
    incoming: bool = False

    def __post_init__(self):
        validate_port_name(self.name)
        validate_queues(self.queues, self.start_queue)
        if self.backend not in BACKENDS:
            raise InvalidInput(f"backend {self.backend!r} is not available",
                               fix=f"use one of: {', '.join(BACKENDS)}")
        if self.mode not in MODES:
            raise InvalidInput(f"XDP mode {self.mode!r} is not known",
                               fix=f"use one of: {', '.join(MODES)}")
        if not isinstance(self.receive_only, bool):
            raise InvalidInput("receive_only must be true or false")
        validate_backend(self.backend, self.mode, self.lease_from, self.queues, self.receive_only)
        object.__setattr__(self, "netns", validate_netns(self.netns))
        object.__setattr__(self, "mac", validate_mac(self.mac) if self.mac else default_mac(self.name))
        validate_mtu(self.mtu)
        for label, ifname in (("consumer interface name", self.consumer_name),
                              ("placeholder tap name", self.placeholder_tap)):
            if ifname is None:
                continue
            validate_ifname(ifname)
            if ifname.startswith(("vmn-", "vmc-")) and ifname != "vmc-" + self.name:
                raise InvalidInput(f"{label} {ifname!r} starts like another port's device",
                                   fix="vmn- and vmc- names belong to vmnet's ports: pick another name")
        if self.placeholder_tap is not None and self.placeholder_tap in (
                self.consumer_ifname, self.host_ifname):
            raise InvalidInput(f"placeholder tap {self.placeholder_tap!r} has the name of the port's own "
                               "device", fix="give the tap a name of its own (KubeVirt's tap<hash>)")
        if self.placeholder_tap is not None and self.consumer_uid is None:
            raise InvalidInput("a placeholder tap belongs to the port's consumer: name the consumer uid",
                               fix="give consumer_uid (107 for KubeVirt's virt-launcher)")
        if self.consumer_name is not None and self.netns is None:
            raise InvalidInput(f"consumer interface name {self.consumer_name!r} needs a netns of the "
                               "consumer's own", fix="give the netns (--netns), or leave the name out "
                                                    f"to get vmc-{self.name}")
        object.__setattr__(self, "attachment", Attachment.from_dict(self.attachment))
        if self.attachment != Attachment() and self.backend == "netkit-lease":
            raise InvalidInput(f"a netkit-lease port has no host end to attach ({self.attachment.describe()}): "
                               "the NIC it leases from is its network",
                               fix="leave the attachment options out, or use --backend veth")
        for label, ident in (("consumer uid", self.consumer_uid), ("consumer gid", self.consumer_gid)):
            if ident is not None and (isinstance(ident, bool) or not isinstance(ident, int)
                                      or not 0 <= ident < 2**32 - 1):
                raise InvalidInput(f"{label} {ident!r} is not a valid id",
                                   fix="give a numeric id from 0 to 4294967294")

    @property
    def host_ifname(self) -> str:
        return "vmn-" + self.name

    @property
    def consumer_ifname(self) -> str:
        return self.consumer_name or "vmc-" + self.name

    @property
    def map_keys(self) -> list[int]:
        return [self.start_queue + i for i in range(self.queues)]

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["attachment"] = self.attachment.to_dict()
        return out


@dataclasses.dataclass
class Port:
    """A port as created: the spec plus what the kernel decided."""

    spec: PortSpec
    mode: str                   # "native" or "skb": how the program is attached
    mtu: int
    host_ifindex: int
    consumer_ifindex: int
    prog_id: int = 0
    link_id: int = 0
    map_id: int = 0
    backend_requested: str = ""     # what was asked for ("auto" or spec.backend)
    backend_reason: str = ""        # why spec.backend was chosen, for status/doctor
    # layout 1: a program and XSK map of the port's own (keys = queue ids; made by vmnet
    # before the shared program); layout 2: the instance's shared program, one slot per queue
    layout: int = 1
    slots: list = dataclasses.field(default_factory=list)
    bind_queues: list | None = None     # queue ids the consumer binds (None: spec.map_keys)
    xdp: dict = dataclasses.field(default_factory=dict)   # where the program is attached
    extra: dict = dataclasses.field(default_factory=dict)  # what the backend adds (leases, ...)
    attached: dict = dataclasses.field(default_factory=dict)  # what the attachment did (vmnet.network)
    mtu_reason: str = ""                                      # why the MTU is what it is
    filter: dict | None = None      # anti-spoofing on the host end: {"hook": "tc"|"xdp"}, or None

    @property
    def queue_ids(self) -> list[int]:
        """The queue ids the consumer binds, in socket order; the first is QEMU's start-queue."""
        return list(self.bind_queues) if self.bind_queues is not None else self.spec.map_keys

    @classmethod
    def from_dict(cls, record: dict) -> "Port":
        """Rebuild a port from the helper's record of it."""
        names = {f.name for f in dataclasses.fields(PortSpec)}
        spec = PortSpec(**{k: v for k, v in record.items() if k in names and k != "mode"},
                        mode=record.get("mode_requested", "auto"))
        return cls(spec=spec, mode=record["mode"], mtu=record["mtu"],
                   host_ifindex=record.get("host_ifindex", 0),
                   consumer_ifindex=record.get("consumer_ifindex", 0),
                   prog_id=record.get("prog_id", 0), link_id=record.get("link_id", 0),
                   map_id=record.get("map_id", 0),
                   backend_requested=record.get("backend_requested", spec.backend),
                   backend_reason=record.get("backend_reason", ""),
                   layout=record.get("layout", 1), slots=list(record.get("slots") or []),
                   bind_queues=record.get("bind_queues"), xdp=dict(record.get("xdp") or {}),
                   extra=dict(record.get("extra") or {}), attached=dict(record.get("attached") or {}),
                   mtu_reason=record.get("mtu_reason", ""), filter=record.get("filter"))

    def to_dict(self) -> dict:
        out = self.spec.to_dict()
        out.update(mode_requested=self.spec.mode, mode=self.mode, mtu=self.mtu,
                   host_ifname=self.spec.host_ifname, consumer_ifname=self.spec.consumer_ifname,
                   host_ifindex=self.host_ifindex, consumer_ifindex=self.consumer_ifindex,
                   map_keys=self.queue_ids, prog_id=self.prog_id, link_id=self.link_id,
                   map_id=self.map_id, backend_requested=self.backend_requested or self.spec.backend,
                   backend_reason=self.backend_reason, layout=self.layout, slots=list(self.slots),
                   bind_queues=self.queue_ids, xdp=dict(self.xdp), extra=dict(self.extra),
                   attached=dict(self.attached), mtu_reason=self.mtu_reason, filter=self.filter)
        return out
