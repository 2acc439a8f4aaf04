"""The fence around the address server: what its packet socket lets through, and what its
seccomp filter leaves it able to do — tried as a guest that took the server over would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from guest_env import Namespaces, veth_to

from vmnet.priv import addrserver, netns

pytestmark = pytest.mark.netns
GUEST = "02:00:00:00:00:05"


@pytest.fixture
def wire(test_netns):
    """A veth pair: 'hostend' here (where the server's socket is bound), 'eth0' in a peer netns
    that plays the guest."""
    spaces = Namespaces()
    try:
        peer = spaces.new("vmnet-p")
        veth_to(peer, "hostend")
        yield peer
    finally:
        spaces.close()


def frames_from_guest() -> dict[str, bytes]:
    g, other = bytes.fromhex(GUEST.replace(":", "")), bytes.fromhex("020000000009")
    ip_udp = lambda dport: (bytes.fromhex("4500002c00000000401100000000000000ffffffff")[:20]    # noqa: E731
                            + (68).to_bytes(2, "big") + dport.to_bytes(2, "big") + bytes(20))
    ip6 = lambda nh, payload: (bytes.fromhex("60000000") + len(payload).to_bytes(2, "big") + bytes([nh, 255])  # noqa: E731
                               + bytes.fromhex("fe80" + "00" * 13 + "05") + bytes.fromhex("ff02" + "00" * 13 + "02")
                               + payload)
    bcast = b"\xff" * 6
    return {
        "dhcp": bcast + g + b"\x08\x00" + ip_udp(67),
        "dhcp-other-mac": bcast + other + b"\x08\x00" + ip_udp(67),
        "udp-53": bcast + g + b"\x08\x00" + ip_udp(53),
        "arp": bcast + g + b"\x08\x06" + bytes(28),
        "tagged-dhcp": bcast + g + b"\x81\x00\x00\x0a\x08\x00" + ip_udp(67),
        "rs": b"\x33\x33\x00\x00\x00\x02" + g + b"\x86\xdd" + ip6(58, bytes([133]) + bytes(15)),
        "dhcpv6": b"\x33\x33\x00\x01\x00\x02" + g + b"\x86\xdd" + ip6(17, (546).to_bytes(2, "big")
                                                                       + (547).to_bytes(2, "big") + bytes(12)),
        "icmpv6-echo": b"\x33\x33\x00\x00\x00\x02" + g + b"\x86\xdd" + ip6(58, bytes([128]) + bytes(15)),
    }


def test_the_servers_socket_sees_only_its_guests_address_requests(wire):
    sock = addrserver.open_socket("hostend", socket.if_nametoindex("hostend"), GUEST)
    sock.settimeout(0.5)
    try:
        sent = frames_from_guest()
        with netns.entered(wire):
            tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            tx.bind(("eth0", 0))
            for frame in sent.values():
                tx.send(frame)
            tx.close()
        got = []
        while True:
            try:
                got.append(sock.recv(4096))
            except TimeoutError:
                break
        names = sorted(name for name, frame in sent.items() if any(g[:len(frame)] == frame for g in got))
        assert names == ["dhcp", "dhcpv6", "rs"]
        # a locked filter: not even its owner may take it off
        with pytest.raises(PermissionError):
            sock.setsockopt(socket.SOL_SOCKET, 27, 0)             # SO_DETACH_FILTER
    finally:
        sock.close()


ESCAPES = r"""
import json, os, socket, sys
from vmnet.cbpf import install_seccomp
fd = int(sys.argv[1])
sock = socket.socket(fileno=fd)
os.setgid(65534); os.setuid(65534)
install_seccomp()
tried = {}
def attempt(name, fn):
    try:
        fn(); tried[name] = "allowed"
    except OSError as exc:
        tried[name] = exc.errno
attempt("send-where-bound", lambda: sock.send(b"\xff" * 6 + b"\x02" * 6 + b"\x08\x00" + bytes(46)))
attempt("bind-elsewhere", lambda: sock.bind(("lo", 0)))
attempt("sendto-elsewhere", lambda: sock.sendto(bytes(60), ("lo", 0)))
attempt("sendmsg", lambda: sock.sendmsg([bytes(60)]))
attempt("new-socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
attempt("setsockopt", lambda: sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20))
attempt("kill-parent", lambda: os.kill(os.getppid(), 0))
attempt("exec", lambda: os.execv("/bin/true", ["/bin/true"]))
print(json.dumps(tried))
"""


def test_a_subverted_server_can_answer_its_guest_and_nothing_else(wire):
    sock = addrserver.open_socket("hostend", socket.if_nametoindex("hostend"), GUEST)
    try:
        out = subprocess.run([sys.executable, "-I", "-c", ESCAPES, str(sock.fileno())], pass_fds=(sock.fileno(),),
                             capture_output=True, text=True, timeout=60, cwd="/")
    finally:
        sock.close()
    assert out.returncode == 0, out.stderr
    tried = json.loads(out.stdout)
    assert tried.pop("send-where-bound") == "allowed"
    assert set(tried.values()) == {1}, tried          # EPERM, every one


def test_the_server_exits_when_its_host_end_goes(wire):
    from vmnet.dhcp import GuestConfig
    ifindex = socket.if_nametoindex("hostend")
    conf = GuestConfig(mac=GUEST, server_mac="02:00:00:00:00:01", ipv4="10.0.0.5/24").to_dict()
    running = addrserver.start("t1", "hostend", ifindex, conf, "nobody")
    try:
        time.sleep(1.0)
        assert running.alive()
        from vmnet.caps import process_credentials
        creds = process_credentials(running.pid)
        assert creds["uid"] == 65534 and not creds["effective"] and creds["no_new_privs"]
        os.system("ip link del hostend")
        running.proc.wait(15)
        assert running.proc.returncode == 0
    finally:
        running.stop()
