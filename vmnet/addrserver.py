"""vmnet's address server: tells one guest its addresses, and nothing else, unprivileged.

Why not dnsmasq, which libvirt runs for its networks: dnsmasq answers on an
interface that has an address in the guest's subnet (a routed host end and
an operator's L2 bridge have none), sees what arrives at the IP stack (a
bridge member's frames are the bridge's), and keeps CAP_NET_ADMIN (it writes
the ARP cache to reach an unconfigured client) and CAP_NET_RAW (router
advertisements) in the host's network namespace. This server needs none of
that: the helper gives it one packet socket bound to the port's host end,
with a locked filter that lets through only the guest's DHCPv4, router
solicitations and DHCPv6 (vmnet.cbpf), and starts it as an unprivileged
user with no capabilities. Before it reads a frame it sets no_new_privs and
a seccomp filter that leaves it unable to open a socket, bind, send
anywhere but where its socket is bound, exec, or signal another process.
What it says is vmnet.dhcp's (pure); a guest that subverts it can answer
itself, and nobody else.

It exits when its host end goes (the socket reports ENETDOWN), and with the
helper (PR_SET_PDEATHSIG): the helper starts it again for every port that
needs one when it starts.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import signal
import socket
import sys
import time

ANNOUNCE_EVERY = 60.0          # seconds between unsolicited router advertisements
PR_SET_PDEATHSIG = 1


def _log(port: str, text: str) -> None:
    print(f"vmnet-addr-server[{port}]: {text}", file=sys.stderr, flush=True)


def confine_self(parent: int) -> None:
    """Die with the helper, refuse to run privileged, then seccomp."""
    from .caps import process_credentials
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:          # the helper died before the line above
        sys.exit(0)
    creds = process_credentials()
    if creds["uid"] == 0 or creds["effective"] or creds["permitted"]:
        raise SystemExit(f"vmnet addr-server: refusing to run with uid {creds['uid']} and capabilities "
                         f"{creds['effective'] or 'none'}: the helper starts it unprivileged")
    from .cbpf import install_seccomp
    install_seccomp()


def serve(fd: int, conf: dict, port: str, parent: int) -> int:
    from .dhcp import AddressServer, GuestConfig
    server = AddressServer(GuestConfig.from_dict(conf))
    sock = socket.socket(fileno=fd)
    confine_self(parent)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    _log(port, f"serving {conf.get('mac')}")
    announce_at = time.monotonic()
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    while not stop:
        now = time.monotonic()
        if now >= announce_at:
            _send(sock, server.announcements())
            announce_at = now + ANNOUNCE_EVERY
        try:
            events = poller.poll(max(0.0, announce_at - now) * 1000)
        except InterruptedError:
            continue
        if not events:
            continue
        try:
            frame = sock.recv(9216)
        except OSError as exc:
            if exc.errno in (errno.ENETDOWN, errno.ENXIO, errno.ENODEV):
                _log(port, "its host end is gone; exiting")
                return 0
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                continue
            raise
        _send(sock, server.handle(frame))
    _log(port, f"stopped: {json.dumps(server.counters, sort_keys=True)}")
    return 0


def _send(sock, frames) -> None:
    for frame in frames:
        try:
            sock.send(frame)
        except OSError:
            pass            # a full queue or a device going down: the guest asks again


def main(argv=None) -> int:
    """`python -m vmnet.addrserver FD PORT PARENT_PID` with the guest's configuration (JSON) on stdin."""
    argv = sys.argv[1:] if argv is None else argv
    fd, port, parent = int(argv[0]), argv[1], int(argv[2])
    conf = json.loads(sys.stdin.read(1 << 16))
    os.close(0)
    return serve(fd, conf, port, parent)


if __name__ == "__main__":
    sys.exit(main())
