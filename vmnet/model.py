"""What a port is, validated: PortSpec (as requested) and Port (as created).

Pure: nothing here touches the kernel, so every rule about what vmnet
accepts can be tested anywhere and is applied before anything is created.
The rules for single fields live in vmnet.fields (re-exported here).
"""

from __future__ import annotations

import dataclasses

from .errors import InvalidInput
from .fields import (BACKENDS, MODES, bound_queues, default_mac, validate_backend, validate_ifname, validate_mac,
                     validate_mtu, validate_netns, validate_port_name, validate_queues)
from .network import Attachment


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
        return bound_queues(self.bind_queues, self.spec.start_queue, self.spec.queues)

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
