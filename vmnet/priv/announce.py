"""Telling a LAN that a routed VM's address is reached through this host now.

A routed port's addresses are host routes (vmnet.priv.attachments.routed).
Where the host answers ARP for them on a LAN by proxy ARP (proxy_arp on its
uplink, a flat routed network without a routing daemon), the LAN's
neighbours keep the MAC of the host that answered first: after a live
migration they would go on sending the VM's traffic to the host it left
until their entries expire. When the VM starts running here, the helper
sends one gratuitous ARP for each of its IPv4 addresses on every device of
the host that proxies ARP — not the ports' own host ends, not loopback.
Setups that move the route by a routing daemon (BGP, OSPF) need none of
this: the daemon sees the kernel route appear and withdraw.
"""

from __future__ import annotations

import logging
import socket

from ..packets import arp_announcement

log = logging.getLogger("vmnet.helper")
ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


def _proxies_arp(ifname: str) -> bool:
    for scope in (ifname, "all"):
        try:
            with open(f"/proc/sys/net/ipv4/conf/{scope}/proxy_arp") as f:
                if f.read().strip() != "0":
                    return True
        except OSError:
            pass
    return False


def uplinks() -> list[str]:
    """The devices of this netns that proxy ARP, but vmnet's host ends and loopback."""
    return [name for _, name in socket.if_nameindex()
            if name != "lo" and not name.startswith("vmn-") and _proxies_arp(name)]


def _mac_of(sock: socket.socket, ifname: str) -> str | None:
    import fcntl
    import struct
    try:
        raw = fcntl.ioctl(sock.fileno(), 0x8927, struct.pack("256s", ifname.encode()))   # SIOCGIFHWADDR
    except OSError:
        return None
    return ":".join(f"{b:02x}" for b in raw[18:24])


def announce(addresses: list[str]) -> list[str]:
    """Gratuitous ARP for each IPv4 address (a.b.c.d or a.b.c.d/32) on each uplink(); the devices
    it went out of. A device that is down or refuses is skipped and logged."""
    v4 = [a.split("/")[0] for a in addresses if ":" not in a]
    if not v4:
        return []
    sent = []
    with socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ARP)) as s:
        for ifname in uplinks():
            mac = _mac_of(s, ifname)
            if mac is None:
                continue
            try:
                for address in v4:
                    s.sendto(arp_announcement(mac, address), (ifname, ETH_P_ARP, 0, 0, BROADCAST))
                sent.append(ifname)
            except OSError as exc:
                log.info("cannot announce %s on %s: %s", ", ".join(v4), ifname, exc.strerror)
    return sent
