"""netdev generic netlink: queue-create, the request that leases NIC queues to netkit.

The netkit-lease backend gives a VM zero-copy AF_XDP through a netkit
device it can see in its own netns, on RX queues the kernel creates on that
device, each leased from a queue of a physical NIC it cannot see. The
request is NETDEV_CMD_QUEUE_CREATE on the "netdev" family (Linux 7.1 and
later; 7.0 and older lack it):

    ifindex = the netkit device, type = rx,
    lease = { ifindex = the physical NIC, queue = { id, type = rx } }

and the reply carries the new queue's id on the netkit device. The
request is built by a pure function checked byte for byte against the UAPI
(include/uapi/linux/netdev.h) in the unit tests; sending it and detecting
the operation at runtime (the family's op list) are the thin I/O part.
pyroute2 0.9.7 has no netdev family, so the message classes live here.
"""

from __future__ import annotations

import errno

from pyroute2.netlink import NLA_F_NESTED, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, ctrlmsg, genlmsg, nla
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import GenericNetlinkSocket

from ..errors import InvalidInput, KernelError, NotSupported

FAMILY = "netdev"
FAMILY_VERSION = 1                 # NETDEV_FAMILY_VERSION
NETDEV_CMD_QUEUE_GET = 10
NETDEV_CMD_QUEUE_CREATE = 16       # appended after NETDEV_CMD_BIND_TX = 15
NETDEV_QUEUE_TYPE_RX, NETDEV_QUEUE_TYPE_TX = 0, 1
# attribute set "queue"
NETDEV_A_QUEUE_ID = 1
NETDEV_A_QUEUE_IFINDEX = 2
NETDEV_A_QUEUE_TYPE = 3
NETDEV_A_QUEUE_LEASE = 8
# attribute set "lease"
NETDEV_A_LEASE_IFINDEX = 1
NETDEV_A_LEASE_QUEUE = 2
NETDEV_A_LEASE_NETNS_ID = 3

REQUIREMENT = ("Linux 7.1 or later (the netdev generic-netlink op queue-create, 16, and netkit "
               "single devices that take leases; e.g. Debian's trixie-backports kernel)")
NIC_REQUIREMENT = ("a NIC whose driver has queue management ops (mlx5, bnxt_en or gve in Debian's "
                   "kernels) and AF_XDP zero-copy")


class queue_msg(genlmsg):
    """The netdev family's "queue" attribute set, with the nested lease."""

    prefix = "NETDEV_A_QUEUE_"
    nla_map = (
        ("NETDEV_A_QUEUE_UNSPEC", "none"),
        ("NETDEV_A_QUEUE_ID", "uint32"),
        ("NETDEV_A_QUEUE_IFINDEX", "uint32"),
        ("NETDEV_A_QUEUE_TYPE", "uint32"),
        ("NETDEV_A_QUEUE_NAPI_ID", "uint32"),
        ("NETDEV_A_QUEUE_DMABUF", "uint32"),
        ("NETDEV_A_QUEUE_IO_URING", "hex"),
        ("NETDEV_A_QUEUE_XSK", "hex"),
        ("NETDEV_A_QUEUE_LEASE", "lease"),
    )

    class lease(nla):
        # genl validates strictly: a nest without NLA_F_NESTED is refused
        nla_flags = NLA_F_NESTED
        prefix = "NETDEV_A_LEASE_"
        nla_map = (
            ("NETDEV_A_LEASE_UNSPEC", "none"),
            ("NETDEV_A_LEASE_IFINDEX", "uint32"),
            ("NETDEV_A_LEASE_QUEUE", "queue_id"),
            ("NETDEV_A_LEASE_NETNS_ID", "int32"),
        )

        class queue_id(nla):
            """The "queue-id" subset of the queue attribute set: id and type."""

            nla_flags = NLA_F_NESTED
            prefix = "NETDEV_A_QUEUE_"
            nla_map = (
                ("NETDEV_A_QUEUE_UNSPEC", "none"),
                ("NETDEV_A_QUEUE_ID", "uint32"),
                ("NETDEV_A_QUEUE_IFINDEX", "uint32"),
                ("NETDEV_A_QUEUE_TYPE", "uint32"),
            )


class dev_msg(genlmsg):
    """The netdev family's "dev" attribute set (dev-get: a device's XDP features)."""

    prefix = "NETDEV_A_DEV_"
    nla_map = (
        ("NETDEV_A_DEV_UNSPEC", "none"),
        ("NETDEV_A_DEV_IFINDEX", "uint32"),
        ("NETDEV_A_DEV_PAD", "none"),
        ("NETDEV_A_DEV_XDP_FEATURES", "uint64"),
        ("NETDEV_A_DEV_XDP_ZC_MAX_SEGS", "uint32"),
        ("NETDEV_A_DEV_XDP_RX_METADATA_FEATURES", "uint64"),
        ("NETDEV_A_DEV_XSK_FEATURES", "uint64"),
    )


NETDEV_CMD_DEV_GET = 1
NETDEV_XDP_ACT_XSK_ZEROCOPY = 8


def dev_get_request(ifindex: int) -> dev_msg:
    msg = dev_msg()
    msg["cmd"] = NETDEV_CMD_DEV_GET
    msg["version"] = FAMILY_VERSION
    msg["attrs"] = [("NETDEV_A_DEV_IFINDEX", ifindex)]
    return msg


def queue_get_request(ifindex: int) -> queue_msg:
    """A queue-get dump of one device's queues."""
    msg = queue_msg()
    msg["cmd"] = NETDEV_CMD_QUEUE_GET
    msg["version"] = FAMILY_VERSION
    msg["attrs"] = [("NETDEV_A_QUEUE_IFINDEX", ifindex)]
    return msg


class Session:
    """The netdev-family sockets of one piece of work (a port's creation), each bound once.

    Binding resolves the family by name (a request to nlctrl), which cost more than the
    requests a lease makes (10-20 ms each under TCG); a socket stays bound to the netns it
    was opened in, so a session lives inside one."""

    def __init__(self):
        self._socks: dict = {}

    def sock(self, cls) -> GenericNetlinkSocket:
        sock = self._socks.get(cls)
        if sock is None:
            sock = GenericNetlinkSocket()
            try:
                sock.bind(FAMILY, cls)
            except BaseException:
                sock.close()
                raise
            self._socks[cls] = sock
        return sock

    def close(self):
        for sock in self._socks.values():
            sock.close()
        self._socks = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _session(session: Session | None):
    import contextlib
    return contextlib.nullcontext(session) if session is not None else Session()


def _exchange(msg, cls, flags: int, what: str, session: Session | None = None) -> list:
    with _session(session) as ses:
        sock = ses.sock(cls)
        msg["header"]["type"] = sock.prid
        msg["header"]["flags"] = flags
        try:
            # the batch call: the sync nlm_request of pyroute2 0.9.7 trips over its own status
            return list(sock.nlm_request_batch([msg]))
        except NetlinkError as exc:
            raise KernelError(f"{what} failed", errno=exc.code) from None


def xdp_features(ifindex: int, session: Session | None = None) -> int:
    """The device's NETDEV_A_DEV_XDP_FEATURES (netdev_xdp_act bits)."""
    for reply in _exchange(dev_get_request(ifindex), dev_msg, NLM_F_REQUEST, f"dev-get of device {ifindex}",
                           session):
        value = reply.get_attr("NETDEV_A_DEV_XDP_FEATURES")
        if value is not None:
            return value
    return 0


def has_zero_copy(ifindex: int, session: Session | None = None) -> bool:
    """Whether the device does AF_XDP zero-copy (its xdp-features)."""
    return bool(xdp_features(ifindex, session) & NETDEV_XDP_ACT_XSK_ZEROCOPY)


def zero_copy_devices() -> dict[int, bool]:
    """ifindex -> whether it has AF_XDP zero-copy, for every device of this netns (dev-get dump)."""
    msg = dev_msg()
    msg["cmd"] = NETDEV_CMD_DEV_GET
    msg["version"] = FAMILY_VERSION
    out = {}
    for reply in _exchange(msg, dev_msg, NLM_F_REQUEST | NLM_F_DUMP, "dev-get dump"):
        ifindex = reply.get_attr("NETDEV_A_DEV_IFINDEX")
        if ifindex is not None:
            out[ifindex] = bool((reply.get_attr("NETDEV_A_DEV_XDP_FEATURES") or 0) & NETDEV_XDP_ACT_XSK_ZEROCOPY)
    return out


def rx_queues(ifindex: int, session: Session | None = None) -> dict[int, dict]:
    """The device's RX queues: id -> {"leased": bool, "xsk": bool} (queue-get dump)."""
    out = {}
    for reply in _exchange(queue_get_request(ifindex), queue_msg, NLM_F_REQUEST | NLM_F_DUMP,
                           f"queue-get of device {ifindex}", session):
        if reply.get_attr("NETDEV_A_QUEUE_ID") is None or \
                reply.get_attr("NETDEV_A_QUEUE_TYPE") != NETDEV_QUEUE_TYPE_RX:
            continue
        if reply.get_attr("NETDEV_A_QUEUE_IFINDEX") not in (None, ifindex):
            continue
        out[reply.get_attr("NETDEV_A_QUEUE_ID")] = {
            "leased": reply.get_attr("NETDEV_A_QUEUE_LEASE") is not None,
            "xsk": reply.get_attr("NETDEV_A_QUEUE_XSK") is not None}
    return out


def free_queues(queues: dict[int, dict], reserved: int) -> list[int]:
    """The RX queues (from rx_queues) a lease may take: above the `reserved` the host keeps,
    neither leased nor carrying an AF_XDP socket; lowest first. Pure."""
    return [q for q in sorted(queues) if q >= reserved and not queues[q]["leased"] and not queues[q]["xsk"]]


def queue_create_request(ifindex: int, lease_ifindex: int, lease_queue: int) -> queue_msg:
    """Create one RX queue on `ifindex` (netkit) leased from `lease_queue` of `lease_ifindex`."""
    for label, value, low in (("netkit ifindex", ifindex, 1), ("physical ifindex", lease_ifindex, 1),
                              ("physical queue", lease_queue, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value < 2**31:
            raise InvalidInput(f"{label} {value!r} is out of range for queue-create")
    msg = queue_msg()
    msg["cmd"] = NETDEV_CMD_QUEUE_CREATE
    msg["version"] = FAMILY_VERSION
    msg["attrs"] = [
        ("NETDEV_A_QUEUE_IFINDEX", ifindex),
        ("NETDEV_A_QUEUE_TYPE", NETDEV_QUEUE_TYPE_RX),
        ("NETDEV_A_QUEUE_LEASE", {"attrs": [
            ("NETDEV_A_LEASE_IFINDEX", lease_ifindex),
            ("NETDEV_A_LEASE_QUEUE", {"attrs": [("NETDEV_A_QUEUE_ID", lease_queue),
                                                ("NETDEV_A_QUEUE_TYPE", NETDEV_QUEUE_TYPE_RX)]}),
        ]}),
    ]
    return msg


def queue_create_reply_id(reply: queue_msg) -> int:
    qid = reply.get_attr("NETDEV_A_QUEUE_ID")
    if qid is None:
        raise KernelError("the kernel's queue-create reply carries no queue id")
    return qid


def family_ops() -> set[int] | None:
    """Operation numbers of the netdev family, or None when there is no such family."""
    sock = GenericNetlinkSocket()
    try:
        sock.asyncore.module_err_level = "debug"   # a missing family is an answer
        sock.bind("nlctrl", ctrlmsg)
        try:
            family = sock.discovery(FAMILY)
        except NetlinkError as exc:
            if exc.code == errno.ENOENT:
                return None
            raise KernelError("cannot list the netdev generic-netlink family", errno=exc.code) from None
        return {op.get_attr("CTRL_ATTR_OP_ID") for op in family.get_attr("CTRL_ATTR_OPS", [])}
    finally:
        sock.close()


_supported: tuple[bool, str] | None = None


def queue_create_supported() -> tuple[bool, str]:
    """(supported, why) from the running kernel's netdev family (asked once per process:
    the kernel does not change under it)."""
    global _supported
    if _supported is None:
        _supported = _queue_create_supported()
    return _supported


def _queue_create_supported() -> tuple[bool, str]:
    ops = family_ops()
    if ops is None:
        return False, "the kernel has no netdev generic-netlink family (Linux < 6.3)"
    if NETDEV_CMD_QUEUE_CREATE in ops:
        return True, f"the netdev family has queue-create (op {NETDEV_CMD_QUEUE_CREATE})"
    return False, (f"the netdev family has no queue-create op {NETDEV_CMD_QUEUE_CREATE} "
                   f"(its ops: {', '.join(map(str, sorted(ops)))})")


def require_queue_create() -> None:
    ok, why = queue_create_supported()
    if not ok:
        raise NotSupported(f"queue leasing is not available: {why}",
                           fix=f"use the netkit or veth backend; netkit-lease needs {REQUIREMENT}")


def lease_queue(ifindex: int, lease_ifindex: int, lease_queue_id: int, session: Session | None = None) -> int:
    """Send queue-create; return the new queue's id on the netkit device."""
    msg = queue_create_request(ifindex, lease_ifindex, lease_queue_id)
    try:
        with _session(session) as ses:
            sock = ses.sock(queue_msg)
            msg["header"]["type"] = sock.prid
            msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
            replies = list(sock.nlm_request_batch([msg]))
    except NetlinkError as exc:
        if exc.code == errno.EOPNOTSUPP:
            raise NotSupported(f"device {ifindex} cannot lease queue {lease_queue_id} of "
                               f"device {lease_ifindex}", errno=exc.code,
                               fix=f"leasing needs {REQUIREMENT}, and {NIC_REQUIREMENT}") from None
        raise KernelError(f"queue-create on device {ifindex} (lease of queue {lease_queue_id} "
                          f"of device {lease_ifindex}) failed", errno=exc.code) from None
    for reply in replies:
        if reply.get_attr("NETDEV_A_QUEUE_ID") is not None:
            return queue_create_reply_id(reply)
    raise KernelError("the kernel's queue-create reply carries no queue id")
