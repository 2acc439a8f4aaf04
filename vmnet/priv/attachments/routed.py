"""Routed: the VM's addresses are host routes through the host end (as Calico routes pods).

For each address a route <address>/32 (/128) dev vmn-<port>, so the VM is
reachable through the host's routing table and whatever routing daemon
redistributes its kernel routes. The guest has a link-local gateway:
169.254.1.1 (answered by proxy ARP on the host end, which Linux does for
an address it has a route to through another device — its default route)
and fe80::1 (a proxy NDP entry on the host end). The host end forwards
(its own forwarding switch: the host's other devices are the operator's),
and nothing else of the host is changed. Removing the host end takes its
routes, proxy entries and settings along.

The host end's MAC is GATEWAY_MAC on every host (as Calico's ee:ee:ee:ee:ee:ee):
the guest's neighbour entry for its gateway stays right when the VM is live
migrated to another host, whose host end would otherwise have another MAC
and drop what the guest sends to the old one. A port made for an incoming
migration gets its routes only when the VM runs here (activate), and the
port it left loses them as soon as the VM has stopped there (withdraw);
activation also announces the addresses where the host proxies ARP for
them (vmnet.priv.announce).

The host end's IPv4 settings (forwarding, proxy ARP, no proxy delay) go by
rtnetlink, so a helper whose /proc/sys is read-only (vmnet's DaemonSet: a
container that is not privileged) sets them too. IPv6 has no rtnetlink setter
for a device's settings: they are written to /proc/sys only where the host's
defaults do not give them to a new device already, and where that is needed
and /proc/sys cannot be written an IPv6 port is refused, before anything is
made, with the host-wide settings that would serve.
"""

from __future__ import annotations

import errno
import ipaddress
import os

from ...errors import AlreadyExists, KernelError, NotFound, NotSupported
from ... import rawnl
from .. import links
from . import Kind, Prepared, of_record

GATEWAY_MAC = "ee:ee:ee:ee:ee:ee"       # every routed host end's, on every host
# the host end forwards and answers ARP for the guest's gateway at once (proxy_delay 0)
IPV4_SETTINGS = {rawnl.IPV4_DEVCONF_FORWARDING: 1, rawnl.IPV4_DEVCONF_PROXY_ARP: 1}


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


# the IPv6 settings of a routed host end: on, forwarding (a proxy NDP entry is answered only on a
# forwarding device), and proxy NDP (the device's or the host's `all`); as the host needs to set
# them so that its new devices inherit them, where vmnet cannot write them
IPV6_SETTINGS = (("disable_ipv6", "0", "net.ipv6.conf.default.disable_ipv6=0"),
                 ("forwarding", "1", "net.ipv6.conf.all.forwarding=1"),
                 ("proxy_ndp", "1", "net.ipv6.conf.all.proxy_ndp=1"))


def ipv6_unset(scope: str, read=_read) -> list[tuple[str, str, str]]:
    """The IPv6 settings of /proc/sys/net/ipv6/conf/<scope> a routed host end still needs
    (name, value, the host-wide setting that gives it to new devices); proxy NDP is on
    where the host's `all` has it."""
    base = "/proc/sys/net/ipv6/conf/"
    return [(name, want, host) for name, want, host in IPV6_SETTINGS
            if read(base + scope + "/" + name) != want
            and not (name == "proxy_ndp" and read(base + "all/proxy_ndp") == "1")]


def _ipv6_unsettable(unset) -> NotSupported:
    return NotSupported(
        "a routed port's IPv6 needs " + ", ".join(f"{name}={want}" for name, want, _ in unset) + " on its host "
        "end, and /proc/sys cannot be written here (a helper in a container that is not privileged)",
        fix="set them once on the host, for every new device: sysctl -w "
            + " ".join(host for _, _, host in unset) + " (and in /etc/sysctl.d); or give the port IPv4 "
            "addresses only")


def _set_ipv6(ifname: str) -> None:
    """Give host end `ifname` the IPv6 settings it lacks (none, where the host's defaults have them)."""
    unset = ipv6_unset(ifname)
    for name, want, _ in unset:
        try:
            with open(f"/proc/sys/net/ipv6/conf/{ifname}/{name}", "w") as f:
                f.write(want)
        except OSError as exc:
            if exc.errno in links.SYSCTL_READ_ONLY:
                raise _ipv6_unsettable(unset) from None
            raise KernelError(f"cannot set net.ipv6.conf.{ifname}.{name} to {want}", errno=exc.errno) from None


def host_route_oif(ip, address: str) -> int | None:
    """The device (ifindex) of the main table's host route for `address`, or None."""
    iface = ipaddress.ip_interface(address)
    for msg in ip.get_routes(family=10 if iface.version == 6 else 2, table=254):
        if msg.get("RTA_DST") == str(iface.ip) and msg["dst_len"] == iface.network.prefixlen:
            return msg.get("RTA_OIF")
    return None


def _ifname(ip, ifindex: int) -> str:
    found = ip.get_links(ifindex) if ifindex else []
    return found[0].get("IFLA_IFNAME") if found else str(ifindex)


def gateway_routable(gateway: str, ifindex: int | None = None) -> bool:
    """Whether the host routes `gateway` through a device other than the port's (what proxy
    ARP needs to answer for it)."""
    try:
        oif = rawnl.route_oif(gateway)
    except OSError:
        return False
    return oif is not None and oif != ifindex


class Routed(Kind):
    name = "routed"

    def prepare(self, spec, ctx):
        att = spec.attachment
        # a host route that is there already is found when the port's is added (EEXIST)
        if att.ipv4 and not gateway_routable(att.gateway4):
            raise NotFound(f"the host has no route for the guest's gateway {att.gateway4}: proxy ARP (how "
                           "the host answers the guest for it) needs one through another device",
                           fix="a default route provides it (ip route add default via ROUTER); or give "
                               f"{att.gateway4} a route of its own, e.g. ip route add {att.gateway4}/32 dev lo")
        if att.ipv6:
            if not os.path.isdir("/proc/sys/net/ipv6"):
                raise NotSupported("this kernel runs without IPv6 (booted with ipv6.disable=1?): it cannot "
                                   "route the port's IPv6 addresses", fix="give the port IPv4 addresses only")
            # IPv6 has no rtnetlink setter for a device's settings: where /proc/sys is read-only,
            # the host's defaults must give a new device what it needs, or nothing is made
            unset = ipv6_unset("default")
            if unset and not os.access("/proc/sys/net/ipv6/conf/default/forwarding", os.W_OK):
                raise _ipv6_unsettable(unset)
        return Prepared(att)

    def plug(self, port, prepared, ctx):
        att = prepared.attachment
        ifname, ifindex = port.spec.host_ifname, port.host_ifindex
        # the MAC and IPv4's settings in one rtnetlink datagram: no /proc/sys write, which a
        # helper in a container that is not privileged could not make
        request = rawnl.address_request(ifindex, GATEWAY_MAC, IPV4_SETTINGS if att.ipv4 else None)
        if att.ipv4:
            request += rawnl.proxy_delay_request(ifindex, 0)
        try:
            rawnl.transact(request)
        except OSError as exc:
            raise KernelError(f"cannot give {ifname} the gateway's MAC {GATEWAY_MAC}"
                              + (", forwarding and proxy ARP" if att.ipv4 else ""), errno=exc.errno) from None
        if att.ipv6:
            _set_ipv6(ifname)
        if port.spec.incoming:
            # nothing draws the VM's traffic here before it runs here; but an address the host
            # routes elsewhere is refused now, not when the VM arrives
            with links.netlink(ctx.ip) as ip:
                for address in att.addresses:
                    self._refuse_routed(ip, address)
            routes = []
        else:
            routes = self._route(att.addresses, ifname, ifindex, ctx)
        if att.ipv6:
            try:
                rawnl.transact(rawnl.proxy_neighbour_request(rawnl.RTM_NEWNEIGH, att.gateway6, ifindex))
            except OSError as exc:
                raise KernelError(f"cannot answer for {att.gateway6} on {ifname} (proxy NDP)",
                                  errno=exc.errno) from None
        return {"routes": routes, "gateway4": att.gateway4, "gateway6": att.gateway6}

    @staticmethod
    def _refuse_routed(ip, address: str, oif: int | None = None) -> None:
        oif = oif or host_route_oif(ip, address)
        if oif:
            raise AlreadyExists(f"{address} is already routed through {_ifname(ip, oif)}",
                                fix="give the VM an address the host does not route elsewhere, or "
                                    "delete the port or route that has it")

    def _route(self, addresses, ifname: str, ifindex: int, ctx) -> list[str]:
        routes = []
        for address in addresses:
            iface = ipaddress.ip_interface(address)
            try:
                rawnl.transact(rawnl.host_route_request(str(iface.ip), iface.network.prefixlen, ifindex))
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    with links.netlink(ctx.ip) as ip:
                        oif = host_route_oif(ip, address)
                        if oif == ifindex:
                            routes.append(address)      # activated twice
                            continue
                        self._refuse_routed(ip, address, oif)
                    raise AlreadyExists(f"{address} is already routed",
                                        fix="give the VM an address the host does not route elsewhere, or "
                                            "delete the port or route that has it") from None
                raise KernelError(f"cannot route {address} through {ifname}", errno=exc.errno) from None
            routes.append(address)
        return routes

    def activate(self, record, ctx):
        from .. import announce
        att = of_record(record)
        routes = self._route(att.addresses, record["host_ifname"], record["host_ifindex"], ctx)
        return {"routes": routes, "announced_on": announce.announce(routes)}

    def withdraw(self, record, ctx):
        return self._unroute(record["name"], of_record(record), ctx, proxy=False)

    def unplug(self, name, record, ctx):
        return self._unroute(name, of_record(record), ctx, proxy=True)

    def _unroute(self, name, att, ctx, proxy: bool) -> bool:
        found = False
        host = rawnl.link("vmn-" + name)        # one request by name, not a dump of every link
        if host is None:
            return False            # its routes and proxy entries went with it
        for address in att.addresses:
            iface = ipaddress.ip_interface(address)
            try:
                rawnl.transact(rawnl.host_route_delete_request(str(iface.ip), iface.network.prefixlen,
                                                               host["ifindex"]))
                found = True
            except OSError as exc:
                if exc.errno not in (errno.ESRCH, errno.ENOENT):
                    raise KernelError(f"cannot delete the route to {address}", errno=exc.errno) from None
        if att.gateway6 and proxy:
            try:
                rawnl.transact(rawnl.proxy_neighbour_request(rawnl.RTM_DELNEIGH, att.gateway6, host["ifindex"]))
            except OSError:
                pass                # none there (ENOENT): nothing to remove
        return found

    def describe(self, record, ctx):
        att = of_record(record)
        out = {"plugged": True, "routes": list(att.addresses)}
        ifindex = record.get("host_ifindex")
        notes = []
        with links.netlink(ctx.ip) as ip:
            missing = [a for a in att.addresses if host_route_oif(ip, a) != ifindex]
            if att.ipv4 and not gateway_routable(att.gateway4, ifindex):
                notes.append(f"no route covers the guests' gateway {att.gateway4} (proxy ARP needs one)")
        if missing and record.get("migration") == "incoming":
            out["plugged"] = False
            out["waiting"] = "its routes wait for the VM to run here (incoming migration)"
        elif missing:
            out["plugged"] = False
            out["missing"] = "no host route for " + ", ".join(missing)
        if att.ipv4 and _read("/proc/sys/net/ipv4/ip_forward") == "0":
            notes.append("the host does not forward IPv4 (net.ipv4.ip_forward = 0): the VM is reachable from "
                         "this host only")
        if att.ipv6 and _read("/proc/sys/net/ipv6/conf/all/forwarding") == "0":
            notes.append("the host does not forward IPv6 (net.ipv6.conf.all.forwarding = 0): the VM is "
                         "reachable from this host only")
        if notes:
            out["notes"] = notes
        return out
