"""Traffic from ordinary host sockets towards a port's consumer.

What a user would try by hand against a VM: ping, a UDP echo, TCP
connection attempts. UDP and TCP use many source ports so that the
host's transmit-queue hash spreads them over every queue of the port.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time

from .packets import checksum


def ping(dst: str, count: int = 5, timeout: float = 1.0, size: int = 56) -> dict:
    """ICMP echo from a raw socket (root); RTTs in milliseconds."""
    ident = os.getpid() & 0xFFFF
    rtts, lost = [], 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        s.settimeout(timeout)
        for seq in range(count):
            body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + os.urandom(size)
            body = body[:2] + checksum(body) + body[4:]
            start = time.perf_counter()
            s.sendto(body, (dst, 0))
            while True:
                try:
                    data, addr = s.recvfrom(65535)
                except socket.timeout:
                    lost += 1
                    break
                ihl = (data[0] & 0x0F) * 4
                typ, _, _, rid, rseq = struct.unpack_from("!BBHHH", data, ihl)
                if addr[0] == dst and typ == 0 and rid == ident and rseq == seq:
                    if data[ihl + 8:] != body[8:]:
                        lost += 1
                    else:
                        rtts.append((time.perf_counter() - start) * 1000)
                    break
    return {"sent": count, "received": len(rtts), "lost": lost,
            "rtt_min_ms": min(rtts) if rtts else None,
            "rtt_avg_ms": sum(rtts) / len(rtts) if rtts else None}


def udp_echo(dst: str, port: int, flows: int = 16, size: int = 64, timeout: float = 1.0) -> dict:
    ok = 0
    for flow in range(flows):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            payload = os.urandom(size)
            s.sendto(payload, (dst, port))
            try:
                data, _ = s.recvfrom(65535)
                ok += data == payload
            except socket.timeout:
                pass
    return {"sent": flows, "echoed": ok, "size": size}


def tcp_connect(dst: str, port: int, attempts: int = 8, timeout: float = 1.0) -> dict:
    """Connection attempts; the responder refuses them, so 'refused' is success."""
    refused = 0
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            err = s.connect_ex((dst, port))
            refused += err == errno.ECONNREFUSED
    return {"attempts": attempts, "refused": refused}
