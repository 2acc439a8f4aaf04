"""netkit devices for ports: the L2 pair, and the single device queues are leased to.

pyroute2 (0.9.7) knows no netkit link kind and iproute2 6.1 cannot create
one, so this module registers the kind with pyroute2 (IFLA_NETKIT_*, from
include/uapi/linux/if_link.h) and builds the RTM_NEWLINK request itself.
The request is built by pure functions (unit-tested byte for byte against
the UAPI numbers) and sent by a thin I/O layer.

What vmnet needs from netkit, and why:
- **L2 mode.** L3 mode gives both devices no MAC address at all
  (00:00:00:00:00:00) and marks them NOARP; a VM's virtio-net sends and
  expects Ethernet frames addressed to its MAC, so L3 is refused.
- **Policy forward (NETKIT_PASS) on both sides**, so frames flow without a
  netkit BPF program: the XSK program is an XDP program, not a netkit one.
- **The peer is created directly inside the consumer's netns**, with the
  VM's MAC and one RX queue per port queue; it carries the XSK program,
  in generic (skb) mode: netkit has no native XDP (no ndo_bpf).
- **A protocol fix-up on the primary's ingress.** AF_XDP transmits (copy
  mode) by building an skb without setting skb->protocol, which veth fixes
  (eth_type_trans) on its way through but netkit does not: without help the
  host stack drops every frame the VM sends through a netkit peer (seen on
  Debian's 6.12). A tc program (bpf/netkit_fixup.c) on the primary re-injects
  protocol-0 frames with bpf_redirect(self, BPF_F_INGRESS), whose path
  runs eth_type_trans; it lives in the device's clsact qdisc and goes with
  the device.
- For netkit-lease, a **single device** (IFLA_NETKIT_PAIRING=SINGLE) whose
  queue 0 is its own and whose further RX queues are created by netdev
  queue-create, each leased from a physical NIC queue.
"""

from __future__ import annotations

import errno
import os
from importlib import resources

from pyroute2 import IPRoute
from pyroute2.netlink import nla
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg, ifinfveth

from ..errors import InvalidInput, KernelError, NotFound, NotSupported
from ..model import PortSpec
from . import libbpf, links
from . import netns as _netns

KIND = "netkit"

# include/uapi/linux/if_link.h
IFLA_NETKIT_PEER_INFO = 1
IFLA_NETKIT_PRIMARY = 2
IFLA_NETKIT_POLICY = 3
IFLA_NETKIT_PEER_POLICY = 4
IFLA_NETKIT_MODE = 5
IFLA_NETKIT_SCRUB = 6
IFLA_NETKIT_PEER_SCRUB = 7
IFLA_NETKIT_HEADROOM = 8
IFLA_NETKIT_TAILROOM = 9
IFLA_NETKIT_PAIRING = 10
NETKIT_L2, NETKIT_L3 = 0, 1
NETKIT_PASS, NETKIT_DROP = 0, 2                 # iproute2 calls them forward, blackhole
NETKIT_DEVICE_PAIR, NETKIT_DEVICE_SINGLE = 0, 1

MODES = {"l2": NETKIT_L2, "l3": NETKIT_L3}
MIN_KERNEL = "Linux 6.7 built with CONFIG_NETKIT"
L3_REFUSAL = ("netkit L3 mode gives the device no MAC address (00:00:00:00:00:00) and no ARP, "
              "so a VM's virtio-net, which sends and expects Ethernet frames addressed to its "
              "MAC, gets no traffic")


class netkit_data(nla):
    """IFLA_INFO_DATA of kind "netkit"; the peer is an ifinfomsg, as veth's."""

    prefix = "IFLA_"
    nla_map = (
        ("IFLA_NETKIT_UNSPEC", "none"),
        ("IFLA_NETKIT_PEER_INFO", "info_peer"),
        ("IFLA_NETKIT_PRIMARY", "uint8"),
        ("IFLA_NETKIT_POLICY", "uint32"),
        ("IFLA_NETKIT_PEER_POLICY", "uint32"),
        ("IFLA_NETKIT_MODE", "uint32"),
        ("IFLA_NETKIT_SCRUB", "uint32"),
        ("IFLA_NETKIT_PEER_SCRUB", "uint32"),
        ("IFLA_NETKIT_HEADROOM", "uint16"),
        ("IFLA_NETKIT_TAILROOM", "uint16"),
        ("IFLA_NETKIT_PAIRING", "uint32"),
    )

    @staticmethod
    def info_peer(self, *argv, **kwarg):
        return ifinfveth


def register_link_kind() -> None:
    """Teach pyroute2 to encode and decode kind "netkit" (idempotent)."""
    if ifinfmsg.ifinfo.data_map.get(KIND) is not netkit_data:
        ifinfmsg.ifinfo.register_link_kind(module={KIND: netkit_data})


register_link_kind()


def mode_value(mode: str) -> int:
    if mode == "l3":
        raise InvalidInput(L3_REFUSAL, fix="use netkit in L2 mode (vmnet's default)")
    if mode not in MODES:
        raise InvalidInput(f"netkit mode {mode!r} is not known", fix="use l2")
    return MODES[mode]


def _linkinfo(data: list) -> tuple:
    return ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", KIND),
                                        ("IFLA_INFO_DATA", {"attrs": data})]})


def pair_request(host_ifname: str, peer_ifname: str, mac: str, queues: int,
                 netns_fd: int | None = None, mode: str = "l2", peer_index: int = 0,
                 host_index: int = 0) -> ifinfmsg:
    """RTM_NEWLINK for a netkit pair: primary here, peer (the VM's side) in netns_fd.

    Both get `queues` RX and TX queues so the primary's TX queue choice
    spreads flows over the peer's RX queues, as with veth. peer_index and
    host_index: the ifindexes both get (0: the kernel's choice); as for
    veth, the kernel honours the peer's only when the primary's is given.
    """
    peer = links.peer_attrs(peer_ifname, mac, queues, netns_fd)
    msg = ifinfmsg()
    msg["family"] = 0
    msg["index"] = host_index
    msg["attrs"] = [
        ("IFLA_IFNAME", host_ifname),
        ("IFLA_NUM_TX_QUEUES", queues), ("IFLA_NUM_RX_QUEUES", queues),
        _linkinfo([("IFLA_NETKIT_MODE", mode_value(mode)),
                   ("IFLA_NETKIT_POLICY", NETKIT_PASS),
                   ("IFLA_NETKIT_PEER_POLICY", NETKIT_PASS),
                   ("IFLA_NETKIT_PEER_INFO", {"index": peer_index, "attrs": peer})]),
    ]
    return msg


def single_request(ifname: str, mac: str, leased_queues: int, index: int = 0) -> ifinfmsg:
    """RTM_NEWLINK for a single netkit device with room for leased RX queues.

    netkit starts a device with one real RX queue (its own, id 0); each
    queue-create adds the next one, up to IFLA_NUM_RX_QUEUES. The kernel
    refuses peer attributes and a policy other than forward in this mode.
    index: the ifindex it gets (0: the kernel's choice).
    """
    msg = ifinfmsg()
    msg["family"] = 0
    msg["index"] = index
    msg["attrs"] = [
        ("IFLA_IFNAME", ifname), ("IFLA_ADDRESS", mac),
        ("IFLA_NUM_TX_QUEUES", 1), ("IFLA_NUM_RX_QUEUES", 1 + leased_queues),
        _linkinfo([("IFLA_NETKIT_MODE", NETKIT_L2),
                   ("IFLA_NETKIT_PAIRING", NETKIT_DEVICE_SINGLE)]),
    ]
    return msg


class NetkitUnavailable(NotSupported):
    """The running kernel does not know link kind netkit (or refuses this pair)."""

    def __init__(self, message: str, *, why: str, **kw):
        super().__init__(message, **kw)
        self.why = why          # one line for `--backend auto`'s reason


def _send_newlink(msg: ifinfmsg, what: str, port: str, queues: int = 1, peer_index: int = 0,
                  ip: IPRoute | None = None, peer: tuple[str, str | None] | None = None) -> None:
    try:
        links.send_newlink(msg, port, what, peer_index, ip, peer)
    except NetlinkError as exc:
        if exc.code == errno.EOPNOTSUPP:
            # rtnl_newlink answers EOPNOTSUPP for a link kind it has no driver for; Linux
            # 7.x's netkit (seen on 7.3) answers it too for more than one TX queue, and
            # an AF_XDP socket needs a TX queue for every queue id it binds to
            if queues > 1:
                raise NetkitUnavailable(
                    f"cannot create {what}: the kernel refused netkit with {queues} queues "
                    "(EOPNOTSUPP): it has no netkit, or its netkit allows one TX queue only "
                    "(Linux 7.x), and AF_XDP needs a TX queue per queue",
                    errno=exc.code, fix="use one queue with netkit, or the veth backend",
                    why=f"the kernel refused netkit with {queues} queues (no netkit, or one TX "
                        "queue only as in Linux 7.x)") from None
            raise NetkitUnavailable(
                f"cannot create {what}: the kernel does not know link kind netkit",
                errno=exc.code, fix=f"use the veth backend, or boot {MIN_KERNEL}",
                why=f"the kernel has no netkit (RTM_NEWLINK kind netkit: EOPNOTSUPP; "
                    f"netkit needs {MIN_KERNEL})") from None
        raise KernelError(f"cannot create {what}", errno=exc.code) from None


def create_pair(spec: PortSpec, mode: str = "l2", peer_index: int = 0, host_index: int = 0) -> None:
    """Primary vmn-<port> here, peer vmc-<port> (MAC, queues, ifindex) in spec.netns."""
    queues = spec.start_queue + spec.queues
    nsfd = _netns.open_netns(spec.netns) if spec.netns else None
    try:
        msg = pair_request(spec.host_ifname, spec.consumer_ifname, spec.mac, queues, nsfd, mode, peer_index,
                           host_index)
        _send_newlink(msg, f"netkit pair {spec.host_ifname}/{spec.consumer_ifname}", spec.name, queues,
                      peer_index or host_index, peer=(spec.consumer_ifname, spec.netns))
    finally:
        if nsfd is not None:
            os.close(nsfd)
    try:
        attach_fixup(spec.host_ifname)
    except BaseException:
        _delete(spec.host_ifname)
        raise


def _delete(ifname: str) -> None:
    with IPRoute() as ip:
        try:
            ip.link("del", ifname=ifname)
        except NetlinkError as exc:
            if exc.code not in (errno.ENODEV, errno.ENOENT):
                raise KernelError(f"cannot delete device {ifname}", errno=exc.code) from None


# ---- the protocol fix-up program -------------------------------------------

FIXUP_NAME = "vmnet_nkfix_v1"       # the version tag: vmnet recognises its program by name
TC_H_CLSACT_INGRESS = "ffff:fff2"


def load_fixup() -> int:
    """Load bpf/netkit_fixup.o through the system libbpf (CAP_BPF + CAP_NET_ADMIN); its fd."""
    path = str(resources.files("vmnet.bpf") / "netkit_fixup.o")
    try:
        with libbpf.BpfObject(path) as obj:
            obj.load()
            return os.dup(obj.program_fd(FIXUP_NAME))
    except OSError as exc:
        raise KernelError("the kernel refused to load the netkit protocol fix-up program",
                          errno=exc.errno,
                          fix="run 'vmnet doctor': loading needs CAP_BPF and CAP_NET_ADMIN") from None


def attach_fixup(ifname: str) -> None:
    """Put the fix-up on ingress of `ifname` (a clsact qdisc, owned by the device)."""
    fd = load_fixup()
    try:
        with IPRoute() as ip:
            idx = ip.link_lookup(ifname=ifname)
            if not idx:
                raise KernelError(f"device {ifname} vanished before its fix-up was attached")
            ip.tc("add", "clsact", index=idx[0])
            ip.tc("add-filter", "bpf", index=idx[0], handle=":1", fd=fd, name=FIXUP_NAME,
                  parent=TC_H_CLSACT_INGRESS, classid=1, direct_action=True)
    except NetlinkError as exc:
        raise KernelError(f"cannot attach the netkit protocol fix-up to {ifname}", errno=exc.code) from None
    finally:
        os.close(fd)


def fixup_attached(ifname: str) -> bool:
    """Whether vmnet's fix-up program is on ingress of `ifname`."""
    with IPRoute() as ip:
        idx = ip.link_lookup(ifname=ifname)
        if not idx:
            return False
        for msg in ip.get_filters(index=idx[0], parent=TC_H_CLSACT_INGRESS):
            opts = msg.get_attr("TCA_OPTIONS")
            if opts is not None and FIXUP_NAME in str(opts.get_attr("TCA_BPF_NAME") or ""):
                return True
    return False


def create_single(spec: PortSpec, ip: IPRoute | None = None, index: int = 0) -> None:
    """The netkit-lease device, here, as vmc-<port> (it moves after its queues are leased, and
    takes the consumer end's name then: a name of vmnet's own until it leaves this netns)."""
    ifname = "vmc-" + spec.name
    msg = single_request(ifname, spec.mac, spec.queues, index)
    _send_newlink(msg, f"netkit device {ifname}", spec.name, peer_index=index, ip=ip)


def move_to_netns(ifname: str, netns_ref: str, ip: IPRoute | None = None, new_name: str | None = None) -> None:
    """Move a device into the consumer's netns, renamed to new_name there when given (leases
    stay with it; its ifindex too, unless that one is taken there)."""
    nsfd = _netns.open_netns(netns_ref)
    try:
        with links.netlink(ip) as sock:
            if new_name and new_name != ifname:
                found = sock.link_lookup(ifname=ifname)
                if not found:
                    raise NotFound(f"device {ifname} is gone before its move into netns {netns_ref}")
                sock.link("set", index=found[0], ifname=new_name, net_ns_fd=nsfd)
            else:
                sock.link("set", ifname=ifname, net_ns_fd=nsfd)
    except NetlinkError as exc:
        raise KernelError(f"cannot move {ifname} into netns {netns_ref}", errno=exc.code) from None
    finally:
        os.close(nsfd)


def link_info(ifname: str) -> dict | None:
    """Kind and netkit attributes of a device here (None when absent)."""
    msg = links.get_link(ifname)
    if msg is None:
        return None
    info = msg.get("IFLA_LINKINFO") or {}
    data = info.get("IFLA_INFO_DATA") if info else None
    out = {"kind": info.get("IFLA_INFO_KIND") if info else None, "address": msg.get("IFLA_ADDRESS"),
           "flags": msg["flags"]}
    if out["kind"] == KIND and data is not None and hasattr(data, "get"):
        out.update(primary=data.get("IFLA_NETKIT_PRIMARY"), policy=data.get("IFLA_NETKIT_POLICY"),
                   peer_policy=data.get("IFLA_NETKIT_PEER_POLICY"), mode=data.get("IFLA_NETKIT_MODE"),
                   pairing=data.get("IFLA_NETKIT_PAIRING"))
    return out
