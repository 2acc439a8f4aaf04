"""The placeholder tap: what libvirt opens for a pod's NIC until the wrapper swaps it.

KubeVirt's `domainAttachmentType: tap` makes virt-launcher write
`<interface type='ethernet'><target dev='tap<hash>' managed='no'/>`, and
libvirt, as uid 107 with no capabilities, can only open a tap that already
exists and belongs to that uid (TUNSETIFF on an existing tap checks its
owner and group). So the helper makes one with the port, in the port's
netns: persistent, owned by the consumer's uid and gid, multi-queue when
the port is (libvirt asks for IFF_MULTI_QUEUE exactly when it opens more
than one queue, and the kernel refuses a mismatch), down, and marked with
an alias that names the port. It never carries traffic: the wrapper finds
the tap behind libvirt's fds (TUNGETIFF), reads that alias in its own
netns, and hands QEMU the port's AF_XDP sockets instead.
"""

from __future__ import annotations

import errno

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import AlreadyExists, KernelError
from ..tap_alias import alias_for, port_of_alias
from . import links


def create(ifname: str, port: str, uid: int, gid: int | None, multi_queue: bool, ip: IPRoute) -> int:
    """Make the placeholder in the current netns (the caller has entered the port's, and `ip`
    is bound to it); returns its ifindex. Refuses a name that is taken: TUNSETIFF on an
    existing tap would attach to it, and a device vmnet did not make is never its to mark
    or delete."""
    if links.get_link(ifname, ip) is not None:
        raise AlreadyExists(f"placeholder tap {ifname} of port {port}: a device of that name already "
                            "exists in the port's netns", fix="remove it, or name another tap")
    flags = {"no_pi": True, "vnet_hdr": True, "multi_queue": multi_queue}
    try:
        # pyroute2 makes taps with TUNSETIFF/OWNER/GROUP/PERSIST on /dev/net/tun, opened in the
        # calling thread's netns
        ip.link("add", ifname=ifname, kind="tuntap", mode="tap", uid=uid,
                gid=gid if gid is not None else uid, ifr=flags)
    except (NetlinkError, OSError) as exc:
        code = getattr(exc, "code", None) or getattr(exc, "errno", None)
        if code == errno.ENOENT:
            raise KernelError(f"cannot create placeholder tap {ifname} of port {port}: there is no "
                              "/dev/net/tun", errno=code,
                              fix="load the tun module (modprobe tun; CONFIG_TUN)") from None
        raise KernelError(f"cannot create placeholder tap {ifname} of port {port}", errno=code) from None
    try:
        ip.link("set", ifname=ifname, ifalias=alias_for(port))
        return ip.link_lookup(ifname=ifname)[0]
    except BaseException:
        delete(ifname, port, ip)
        raise


def delete(ifname: str, port: str, ip: IPRoute | None = None) -> bool:
    """Delete the placeholder here if it is this port's (its alias says so); idempotent."""
    with links.netlink(ip) as sock:
        msg = links.get_link(ifname, sock)
        if msg is None or port_of_alias(msg.get("IFLA_IFALIAS")) != port:
            return False
        try:
            sock.link("del", index=msg["index"])
            return True
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT):
                return False
            raise KernelError(f"cannot delete placeholder tap {ifname}", errno=exc.code) from None
