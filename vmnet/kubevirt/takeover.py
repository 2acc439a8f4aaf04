"""Tap takeover: the wrapper swaps libvirt's tap netdev for the port's af-xdp one.

With KubeVirt's `domainAttachmentType: tap`, libvirt (as uid 107) opens
the placeholder tap the helper made for the pod's port and starts the
<emulator> — vmnet-qemu-wrapper — with it as a tap netdev, in the JSON
form libvirt 11 writes:

    -netdev {"type":"tap","fd":"23","vhost":true,"vhostfd":"24","id":"hostua-fast"}
    -netdev {"type":"tap","fds":"23:25","vhost":true,"vhostfds":"24:26","id":"hostua-fast"}

(or QEMU's key=value form, `tap,fds=23:25,id=...`). The wrapper asks each
fd which tap it is (TUNGETIFF, no capability needed), reads that tap's
alias in its own netns (what the helper wrote, spelt by vmnet.tap_alias:
the port's name; a pod cannot write aliases, it has no CAP_NET_ADMIN),
fetches the port's sockets, and replaces that one argument with the
af-xdp netdev of the same id — so libvirt's own -device (its PCI address,
MAC, `mq`/`vectors` for as many queues) keeps pointing at it. The tap and vhost fds are
closed before QEMU starts. Any other argument, and any tap that is not a
placeholder, is left exactly as it was.

The argv rules are pure; the two probes (TUNGETIFF, the alias) are at the
bottom.
"""

from __future__ import annotations

import errno
import fcntl
import json
import struct
from collections import namedtuple

from ..errors import InvalidInput
from ..qemu_args import parse_opts, render_opts
from ..tap_alias import ALIAS_PREFIX, alias_for, port_of_alias  # noqa: F401 (also takeover's names)

TUNGETIFF = 0x800454D2
IFF_TAP = 0x0002


class TapNetdev(namedtuple("TapNetdev", "id fds vhostfds json")):
    """A tap netdev of the argv: its id, the tap queue fds libvirt passed (a tuple), its
    vhost fds, and whether it was written as JSON (libvirt) or as key=value. (A named
    tuple: the wrapper imports this module on every VM start, and dataclasses is costly.)"""

    __slots__ = ()

    @property
    def all_fds(self) -> tuple[int, ...]:
        return self.fds + self.vhostfds


def _fd_list(value, what: str) -> tuple[int, ...]:
    if value in (None, ""):
        return ()
    text = str(value)
    parts = text.split(":")
    if not all(p.isdigit() for p in parts):
        raise InvalidInput(f"{what}={text!r} is not a list of fd numbers")
    return tuple(int(p) for p in parts)


def parse_netdev(text: str) -> dict | None:
    """A -netdev value as a dict (type, id, and the rest), or None when it is neither form."""
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None
    try:
        kind, opts = parse_opts(text)
    except InvalidInput:
        return None
    if "=" in kind:                 # type=tap,... rather than tap,...
        key, _, value = kind.partition("=")
        if key != "type":
            return None
        kind = value
    return dict(opts, type=opts.get("type", kind))


def tap_netdevs(argv: list[str]) -> list[TapNetdev]:
    """Every tap netdev that QEMU gets by fd (what libvirt writes for type='ethernet')."""
    found = []
    for i in range(len(argv) - 1):
        if argv[i] not in ("-netdev", "--netdev"):
            continue
        nd = parse_netdev(argv[i + 1])
        if nd is None or nd.get("type") != "tap" or not ("fd" in nd or "fds" in nd):
            continue
        fds = _fd_list(nd.get("fds", nd.get("fd")), "fds")
        vhost = _fd_list(nd.get("vhostfds", nd.get("vhostfd")), "vhostfds")
        if not nd.get("id") or not fds:
            continue
        found.append(TapNetdev(str(nd["id"]), fds, vhost, argv[i + 1].startswith("{")))
    return found


def might_take_over(argv: list[str]) -> bool:
    """Cheap first look (before importing anything): does any -netdev pass a tap by fd?"""
    for i in range(len(argv) - 1):
        if argv[i] in ("-netdev", "--netdev"):
            v = argv[i + 1]
            if ('"tap"' in v or v.startswith(("tap,", "type=tap"))) and "fd" in v:
                return True
    return False


def replace(argv: list[str], tap: TapNetdev, netdev: dict) -> list[str]:
    """argv with the tap netdev of id tap.id replaced by `netdev` (a QAPI af-xdp netdev of the
    same id), in the form libvirt used."""
    if netdev.get("id") != tap.id:
        raise InvalidInput(f"the af-xdp netdev must keep libvirt's id {tap.id!r}")
    at = [i + 1 for i in range(len(argv) - 1) if argv[i] in ("-netdev", "--netdev")
          and (nd := parse_netdev(argv[i + 1])) is not None and nd.get("type") == "tap"
          and str(nd.get("id")) == tap.id]
    if len(at) != 1:
        raise InvalidInput(f"the command line has {len(at)} tap netdevs of id {tap.id!r}, not one")
    value = json.dumps(netdev, separators=(",", ":")) if tap.json else render_opts(netdev)
    out = list(argv)
    out[at[0]] = value
    return out


def check_queues(tap: TapNetdev, record: dict) -> None:
    """libvirt opened one tap fd per queue the domain asks for; the port must have as many."""
    if len(tap.fds) != record["queues"]:
        raise InvalidInput(
            f"the domain's NIC {tap.id} has {len(tap.fds)} queue(s) (tap fds), port {record['name']} "
            f"has {record['queues']}",
            fix="give the port as many queues as the VM's NIC (the NAD's \"queues\"; KubeVirt opens "
                "one per vCPU with networkInterfaceMultiqueue), or turn multiqueue off")


# ---- probes -------------------------------------------------------------

def tap_name_of_fd(fd: int) -> str | None:
    """The name of the tap an open /dev/net/tun fd is attached to (as this process's netns
    knows it), or None for any other fd."""
    try:
        raw = fcntl.ioctl(fd, TUNGETIFF, b"\0" * 40)
    except OSError as exc:
        if exc.errno in (errno.EBADF, errno.ENOTTY, errno.EINVAL, errno.EBADFD):
            return None
        raise
    flags = struct.unpack("H", raw[16:18])[0]
    return raw[:16].split(b"\0", 1)[0].decode(errors="replace") if flags & IFF_TAP else None


def placeholder_port(tap: TapNetdev) -> tuple[str, str] | None:
    """(port, tap name) when every queue fd of this netdev is the same vmnet placeholder tap,
    None when it is some other tap; an error when its fds disagree."""
    names = {tap_name_of_fd(fd) for fd in tap.fds}
    if names == {None}:
        return None
    if len(names) != 1 or None in names:
        raise InvalidInput(f"the fds of netdev {tap.id} are not the queues of one tap "
                           f"({', '.join(sorted(map(str, names)))})")
    name = names.pop()
    from ..rawnl import link          # not pyroute2: its import alone is ~100 ms of every start
    found = link(name)
    if found is None:
        return None
    port = port_of_alias(found["alias"])
    return (port, name) if port else None
