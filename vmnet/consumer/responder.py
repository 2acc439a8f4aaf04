"""vmnet's own consumer: an AF_XDP endpoint that plays QEMU's part exactly.

It takes the same -netdev af-xdp and -device strings vmnet generates for
QEMU, inherits the socket fds the same way, resolves ifname= in its own
netns, refuses a port whose program is not attached in mode= (as QEMU <=
10.0 does; --no-program-check as 10.1 and later), binds every queue like QEMU, and answers ARP, ICMP echo, a UDP
echo port and TCP SYNs (with RST) for one MAC/IP. It counts per queue what
it received, bad checksums and oversized frames, and prints JSON lines:
"ready" once bound (with its credentials), "stats" on SIGUSR1 and at exit.

Signal SIGRTMIN+k makes it read only its first k queues, as QEMU does once
its guest enables k queue pairs (`ethtool -L eth0 combined k`): the other
queues' frames stay on their rings until it reads them again.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import sys

from pyroute2 import IPRoute

from ..caps import process_credentials
from ..errors import CheckFailed, InvalidInput, NotFound, PermissionDenied
from ..fields import ETH_HLEN
from ..packets import Responder
from ..qemu_args import parse_af_xdp_netdev, parse_opts
from .afxdp import XskQueue

XDP_ATTACHED_PROG_ATTR = {"native": "IFLA_XDP_DRV_PROG_ID", "skb": "IFLA_XDP_SKB_PROG_ID"}


def _emit(kind: str, **data):
    print(json.dumps({"event": kind, **data}), flush=True)


def check_program_mode(ifname: str, mode: str):
    """What QEMU <= 10.0 checks with bpf_xdp_query_id(ifindex, mode flags)."""
    with IPRoute() as ip:
        msg = ip.link("get", ifname=ifname)[0]
    xdp = msg.get("IFLA_XDP") or {}
    prog_id = xdp.get(XDP_ATTACHED_PROG_ATTR[mode])
    if not prog_id:
        raise CheckFailed(f"no XDP program loaded on '{ifname}' in {mode} mode",
                          fix="the port's mode= must match how its program is attached")


def check_unprivileged(allow_privileged: bool) -> dict:
    creds = process_credentials()
    extra = [c for c in creds["effective"] + creds["permitted"] + creds["bounding"] if c != "ipc_lock"]
    if not allow_privileged and (creds["uid"] == 0 or extra or not creds["no_new_privs"]):
        raise PermissionDenied(
            f"the responder must run unprivileged, but it has uid {creds['uid']}, "
            f"capabilities {sorted(set(extra)) or 'none'}, no_new_privs={creds['no_new_privs']}",
            fix="start it through vmnet (selftest or exec), or pass --allow-privileged to debug by hand")
    return creds


class Counters(dict):
    def __init__(self, queue: int):
        super().__init__(queue=queue, rx=0, tx=0, arp=0, icmp=0, udp=0, tcp=0, other=0,
                         bad_checksum=0, oversized=0)


class Serving:
    """Which queues are read (a prefix, like a guest's enabled queue pairs), changed by signal."""

    def __init__(self, poller, queues: list):
        self.poller, self.queues = poller, queues
        self.count = self.want = len(queues)
        for q in queues:
            poller.register(q.fd, select.POLLIN)
        for k in range(1, len(queues) + 1):
            signal.signal(signal.SIGRTMIN + k, lambda _sig, _frame, k=k: setattr(self, "want", k))

    def update(self):
        if self.want == self.count:
            return
        for i, q in enumerate(self.queues):
            if self.want <= i < self.count:
                self.poller.unregister(q.fd)
            elif self.count <= i < self.want:
                self.poller.register(q.fd, select.POLLIN)
        self.count = self.want
        _emit("serving", queues=[q.queue_id for q in self.queues[:self.count]])


def relay(queues: list, tap_fd: int, mtu: int, counters: list, stop: list) -> None:
    """Pass frames between the port's queues and a tap device, as QEMU passes them between
    af-xdp and its guest's virtio-net: the tap's network namespace then stands in for the
    guest, with the kernel's own stack (ping, TCP, a DHCP client, VLAN devices) behind the
    port. What the tap sends goes out on the first queue."""
    import os
    os.set_blocking(tap_fd, False)
    poller = select.poll()
    by_fd = {q.fd: (q, c) for q, c in zip(queues, counters)}
    serving = Serving(poller, queues)
    poller.register(tap_fd, select.POLLIN)
    while not stop:
        serving.update()
        try:
            events = poller.poll(100)
        except InterruptedError:
            continue
        for fd, _ in events:
            if fd == tap_fd:
                frames = []
                while len(frames) < 64:
                    try:
                        frames.append(os.read(tap_fd, 65536))
                    except BlockingIOError:
                        break
                frames = [f for f in frames if len(f) <= mtu + ETH_HLEN + 4]
                if frames:
                    counters[0]["tx"] += queues[0].transmit(frames)
                continue
            q, c = by_fd[fd]
            for _, frame in q.receive():
                c["rx"] += 1
                c["other"] += 1
                try:
                    os.write(tap_fd, frame)
                except OSError:
                    pass
        for q in queues:
            q.reclaim()


def run(netdev: str, device: str, ip: str, udp_port: int = 7, allow_privileged: bool = False,
        program_check: bool = True, tap_fd: int | None = None) -> int:
    creds = check_unprivileged(allow_privileged)
    nd = parse_af_xdp_netdev(netdev)
    _, dev = parse_opts(device)
    mac, mtu = dev["mac"], int(dev.get("host_mtu", "1500"))
    try:
        ifindex = socket.if_nametoindex(nd["ifname"])
    except OSError:
        raise NotFound(f"failed to get ifindex for '{nd['ifname']}' in the responder's netns",
                       fix="the sockets and the interface must live in the consumer's netns") from None
    if not all(fd.isascii() and fd.isdigit() for fd in nd["sock_fds"]):
        raise InvalidInput("the responder has no QMP monitor: sock-fds must be fd numbers",
                           fix="pass inherited fd numbers, as vmnet exec does")
    queues = []
    for i, fd in enumerate(int(fd) for fd in nd["sock_fds"]):
        queues.append(XskQueue(fd, ifindex, nd["start_queue"] + i, nd["force_copy"]))
    if program_check:       # QEMU <= 10.0 with inhibit=on; 10.1 and later skip it
        check_program_mode(nd["ifname"], nd["mode"])
    responder = Responder(mac, ip, udp_port)
    counters = [Counters(q.queue_id) for q in queues]

    def stats():
        return [dict(c, **{"kernel": q.statistics()}) for c, q in zip(counters, queues)]

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGUSR1, lambda *_: _emit("stats", queues=stats()))
    _emit("ready", ifname=nd["ifname"], ifindex=ifindex, mode=nd["mode"], mac=mac, ip=ip, mtu=mtu,
          queues=[q.queue_id for q in queues], credentials=creds)
    if tap_fd is not None:
        relay(queues, tap_fd, mtu, counters, stop)
        _emit("stats", queues=stats(), final=True)
        for q in queues:
            q.close()
        return 0
    poller = select.poll()
    by_fd = {q.fd: (q, c) for q, c in zip(queues, counters)}
    serving = Serving(poller, queues)
    while not stop:
        serving.update()
        try:
            events = poller.poll(100)
        except InterruptedError:
            continue
        for fd, _ in events:
            q, c = by_fd[fd]
            replies = []
            for _, frame in q.receive():
                c["rx"] += 1
                if len(frame) > mtu + ETH_HLEN:
                    c["oversized"] += 1
                verdict = responder.handle(frame)
                c[verdict.kind] += 1
                if not verdict.checksum_ok:
                    c["bad_checksum"] += 1
                if verdict.reply:
                    replies.append(verdict.reply)
            if replies:
                c["tx"] += q.transmit(replies)
        for q in queues:
            q.reclaim()
    _emit("stats", queues=stats(), final=True)
    for q in queues:
        q.close()
    return 0


if __name__ == "__main__":
    sys.exit(run(*sys.argv[1:]))
