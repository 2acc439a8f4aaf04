"""The two classic BPF programs that fence in vmnet's address server.

The address server (vmnet.addrserver) parses packets its guest controls, so
it runs unprivileged and holds one packet socket bound to its port's host
end. A packet socket can be bound anew, and send to any device, without
any capability: two filters take that away.

- socket_filter(mac): attached by the helper to the socket and locked
  (SO_LOCK_FILTER), it lets through only what the guest sends to a DHCPv4,
  router-solicitation or DHCPv6 server, from the port's MAC, untagged: the
  server sees nothing else of the host end, even rebound elsewhere.
- seccomp_filter(): installed by the server on itself before it reads a
  single frame, it refuses the calls that would reach further — new sockets,
  bind/connect, sendmsg/sendmmsg and sendto with an address (so a frame
  goes only where the socket is bound), setsockopt, exec, ptrace, signals
  to other processes, namespaces, io_uring, bpf.

Pure builders; install_seccomp() is the one call that touches the process.
"""

from __future__ import annotations

import ctypes
import platform
import struct

from .errors import NotSupported

# classic BPF opcodes (linux/filter.h)
LD, LDX, JMP, RET = 0x00, 0x01, 0x05, 0x06
W, H, B = 0x00, 0x08, 0x10
ABS, IND, MSH = 0x20, 0x40, 0xA0
JEQ, JGE, JSET = 0x10, 0x30, 0x40
K = 0x00
SKF_AD_OFF = -0x1000
SKF_AD_PKTTYPE, SKF_AD_VLAN_TAG_PRESENT = 4, 48
PACKET_OUTGOING = 4


def ins(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)


def _program(items: list) -> bytes:
    """Assemble a list of (code, k, target_true, target_false) with labels: targets are
    label names (str) or None (next instruction); a str item is a label."""
    labels, out, pos = {}, [], 0
    for item in items:
        if isinstance(item, str):
            labels[item] = pos
        else:
            pos += 1
    pos = 0
    for item in items:
        if isinstance(item, str):
            continue
        code, k, jt, jf = (tuple(item) + (None, None))[:4]
        rel = lambda target: 0 if target is None else labels[target] - pos - 1   # noqa: E731
        out.append(ins(code, k, rel(jt), rel(jf)))
        pos += 1
    return b"".join(out)


def socket_filter(mac: str) -> bytes:
    """Frames from `mac`, untagged, incoming: IPv4 UDP to port 67 (unfragmented), ICMPv6 router
    solicitations, IPv6 UDP to port 547 (no extension headers). Everything else is dropped."""
    m = bytes(int(b, 16) for b in mac.split(":"))
    return _program([
        (LD | W | ABS, SKF_AD_OFF + SKF_AD_PKTTYPE),
        (JMP | JEQ | K, PACKET_OUTGOING, "drop", None),
        (LD | W | ABS, SKF_AD_OFF + SKF_AD_VLAN_TAG_PRESENT),
        (JMP | JEQ | K, 0, None, "drop"),
        (LD | W | ABS, 6), (JMP | JEQ | K, int.from_bytes(m[:4], "big"), None, "drop"),
        (LD | H | ABS, 10), (JMP | JEQ | K, int.from_bytes(m[4:], "big"), None, "drop"),
        (LD | H | ABS, 12),
        (JMP | JEQ | K, 0x0800, "ipv4", None),
        (JMP | JEQ | K, 0x86DD, "ipv6", "drop"),
        "ipv4",
        (LD | B | ABS, 23), (JMP | JEQ | K, 17, None, "drop"),
        (LD | H | ABS, 20), (JMP | JSET | K, 0x3FFF, "drop", None),     # MF or an offset: a fragment
        (LDX | B | MSH, 14),                                            # X = IPv4 header length
        (LD | H | IND, 14 + 2), (JMP | JEQ | K, 67, "accept", "drop"),
        "ipv6",
        (LD | B | ABS, 20),
        (JMP | JEQ | K, 58, None, "udp6"),
        (LD | B | ABS, 54), (JMP | JEQ | K, 133, "accept", "drop"),
        "udp6",
        (JMP | JEQ | K, 17, None, "drop"),
        (LD | H | ABS, 56), (JMP | JEQ | K, 547, "accept", "drop"),
        "accept", (RET | K, 0xFFFF),
        "drop", (RET | K, 0),
    ])


# ---- seccomp -----------------------------------------------------------------

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, SECCOMP_RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
EPERM = 1
# x86_64 numbers of what the address server must never call
DENIED_X86_64 = {
    "socket": 41, "connect": 42, "sendmsg": 46, "bind": 49, "listen": 50, "socketpair": 53,
    "setsockopt": 54, "execve": 59, "kill": 62, "ptrace": 101, "mount": 165, "tkill": 200,
    "tgkill": 234, "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272,
    "perf_event_open": 298, "open_by_handle_at": 304, "sendmmsg": 307, "setns": 308,
    "process_vm_readv": 310, "process_vm_writev": 311, "bpf": 321, "execveat": 322,
    "userfaultfd": 323, "pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "pidfd_open": 434, "pidfd_getfd": 438,
}
SENDTO_X86_64 = 44
ARG4 = 16 + 4 * 8           # offsetof(struct seccomp_data, args[4])


def seccomp_filter() -> bytes:
    """Deny-list for x86_64: the calls above fail with EPERM, sendto only without an address,
    any other architecture or the x32 ABI kills the process."""
    items: list = [
        (LD | W | ABS, 4), (JMP | JEQ | K, AUDIT_ARCH_X86_64, None, "kill"),
        (LD | W | ABS, 0), (JMP | JGE | K, X32_SYSCALL_BIT, "kill", None),
    ]
    for nr in sorted(DENIED_X86_64.values()):
        items.append((JMP | JEQ | K, nr, "deny", None))
    items += [
        (JMP | JEQ | K, SENDTO_X86_64, None, "allow"),
        (LD | W | ABS, ARG4), (JMP | JEQ | K, 0, None, "deny"),
        (LD | W | ABS, ARG4 + 4), (JMP | JEQ | K, 0, "allow", "deny"),
        "allow", (RET | K, SECCOMP_RET_ALLOW),
        "deny", (RET | K, SECCOMP_RET_ERRNO | EPERM),
        "kill", (RET | K, SECCOMP_RET_KILL_PROCESS),
    ]
    return _program(items)


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def fprog(program: bytes) -> tuple[SockFprog, ctypes.Array]:
    """struct sock_fprog for `program` (keep the buffer alive while it is used)."""
    buf = ctypes.create_string_buffer(program, len(program))
    return SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p)), buf


PR_SET_NO_NEW_PRIVS = 38
SYS_SECCOMP_X86_64 = 317
SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC = 1, 1


def install_seccomp() -> None:
    """no_new_privs, then the filter, on every thread of this process."""
    if platform.machine() != "x86_64":
        raise NotSupported(f"vmnet's address server confines itself with seccomp on x86_64 only, not "
                           f"{platform.machine()}", fix="serve the guest's addresses from the network's own "
                                                        "DHCP server (dhcp=false)")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    prog, _buf = fprog(seccomp_filter())
    if libc.syscall(SYS_SECCOMP_X86_64, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC,
                    ctypes.byref(prog)) != 0:
        raise OSError(ctypes.get_errno(), "seccomp(SECCOMP_SET_MODE_FILTER)")
