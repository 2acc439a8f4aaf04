"""Starting and stopping a port's address server (vmnet.addrserver), the privileged half.

The helper opens the packet socket — the one thing that needs CAP_NET_RAW —
with the filter that confines it attached and locked before it is bound, so
no frame outside the filter is ever queued on it; then it starts the server
as the configured unprivileged user (addr_server_user, nobody by default:
no capabilities, no supplementary groups, a session of its own) with only
that socket. One server per port: a guest that subverts its own sees only
its own port. The helper watches each through a pidfd and starts it again
if it dies; at delete it stops it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import pwd
import socket
import subprocess
import sys
import time

from ..cbpf import fprog, socket_filter
from ..errors import InvalidInput, KernelError
from ..fields import has_host_end
from ..network import Attachment
from .holders import Holder

log = logging.getLogger("vmnet.helper")
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER, SO_LOCK_FILTER = 26, 44


def guest_config(record: dict, server_mac: str) -> dict:
    """What the guest of a port (its record) is told: vmnet.dhcp.GuestConfig's fields. Pure."""
    att = Attachment.from_dict(record.get("attachment"))
    v4 = att.ipv4
    routed = att.kind == "routed"
    conf = {"mac": record["mac"], "server_mac": server_mac, "mtu": record["mtu"],
            "dns": list(att.dns), "search": list(att.search),
            "routes4": [[dst, gw] for dst, gw in att.routes if ":" not in dst]}
    if v4:
        conf.update(ipv4=str(v4[0]), gateway4=att.gateway4)
    if routed and att.ipv6:
        conf.update(ipv6=[str(a) for a in att.ipv6], gateway6=att.gateway6)
    if att.hostname:
        conf["hostname"] = att.hostname
    return conf


def needs_server(record: dict, att=None) -> bool:
    """att: the record's Attachment, when the caller has it already."""
    att = att or Attachment.from_dict(record.get("attachment"))
    return bool(att.dhcp) and has_host_end(record) and bool(att.ipv4 or (att.kind == "routed" and att.ipv6))


def open_socket(ifname: str, ifindex: int, guest_mac: str) -> socket.socket:
    """A packet socket on the host end that receives only the guest's address requests."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    try:
        prog, buf = fprog(socket_filter(guest_mac))
        blob = bytes(ctypes.string_at(ctypes.addressof(prog), ctypes.sizeof(prog)))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, blob)
        del buf
        sock.setsockopt(socket.SOL_SOCKET, SO_LOCK_FILTER, 1)
        sock.bind((ifname, ETH_P_ALL))
    except OSError as exc:
        sock.close()
        raise KernelError(f"cannot open the address server's socket on {ifname}", errno=exc.errno) from None
    return sock


def server_user(name: str) -> tuple[int, int]:
    try:
        pw = pwd.getpwuid(int(name)) if name.isascii() and name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise InvalidInput(f"addr_server_user {name!r} does not exist",
                           fix="create it, or set addr_server_user in vmnet.toml to an unprivileged user") from None
    if pw.pw_uid == 0:
        raise InvalidInput("addr_server_user must not be root: the address server parses what guests send",
                           fix="set addr_server_user to an unprivileged user (nobody by default)")
    return pw.pw_uid, pw.pw_gid


class Running:
    """A running address server: its process (the helper reaps it) and a pidfd to watch."""

    def __init__(self, proc: subprocess.Popen, holder: Holder):
        self.proc, self.holder = proc, holder
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Kill and reap it (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                log.warning("address server pid %d did not exit", self.proc.pid)
        self.holder.close()

    def to_dict(self) -> dict:
        return {"pid": self.proc.pid, "alive": self.alive()}


def start(port: str, ifname: str, ifindex: int, conf: dict, user: str) -> Running:
    """Start the address server of `port`."""
    uid, gid = server_user(user)
    sock = open_socket(ifname, ifindex, conf["mac"])
    try:
        os.set_inheritable(sock.fileno(), True)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "vmnet.addrserver", str(sock.fileno()), port, str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, pass_fds=(sock.fileno(),), close_fds=True,
            user=uid, group=gid, extra_groups=[], start_new_session=True, cwd="/",
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"})
    except OSError as exc:
        raise KernelError(f"cannot start the address server of port {port}", errno=exc.errno) from None
    finally:
        sock.close()
    try:
        proc.stdin.write(json.dumps(conf).encode())
        proc.stdin.close()
    except OSError:
        pass                # it died at once: the watch sees it exit
    pidfd = os.pidfd_open(proc.pid)
    os.set_inheritable(pidfd, False)
    return Running(proc, Holder(proc.pid, 0, pidfd))
