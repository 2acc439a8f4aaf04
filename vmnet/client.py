"""A client of the helper: one request, one reply, fds by SCM_RIGHTS.

Used by the CLI (`vmnet port …`, `status`), `vmnet exec`, the QEMU
wrapper and the libvirt hook. Imports nothing privileged. It uses the C
module `_socket` that `socket` wraps: the hook runs on every VM start, and
importing `socket` (its enums, selectors) costs it 7-13 ms; this client needs
none of what `socket` adds.
"""

from __future__ import annotations

import _socket as socket
import array
import os
import struct

from . import protocol
from .errors import HelperUnavailable, VmnetError


class Client:
    def __init__(self, path: str, timeout: float = 30.0):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.last_reply = b""           # the raw reply of the last call that succeeded
        # A blocking connect waits, up to SO_SNDTIMEO, for room in the helper's backlog, which a
        # boot storm fills; with a Python timeout set the socket is non-blocking, and a full
        # backlog would fail the connect at once (EAGAIN).
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                             struct.pack("@ll", int(timeout), int(timeout % 1 * 1e6)))
        try:
            self.sock.connect(path)
        except BlockingIOError:
            self.sock.close()
            raise HelperUnavailable(f"the helper on {path} accepted no connection for {timeout:g} s "
                                    "(its backlog stayed full)",
                                    fix="the helper is overloaded or stuck: check its log and its CPU") from None
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self.sock.close()
            raise HelperUnavailable(
                f"no vmnet helper is listening on {path}", errno=exc.errno,
                fix="start it ('systemctl start vmnet-helper', or 'vmnet helper' as root), "
                    "or point VMNET_SOCKET at its socket") from None
        except PermissionError as exc:
            self.sock.close()
            raise HelperUnavailable(f"no permission to connect to {path}", errno=exc.errno,
                                    fix="ask for membership of the helper socket's group") from None
        except BaseException:
            self.sock.close()
            raise
        self.sock.settimeout(timeout)

    def call(self, verb: str, **args) -> tuple[dict, list[int]]:
        """Send one request; return its result and any fds (close-on-exec)."""
        try:
            self.sock.sendmsg([protocol.encode_request(verb, **args)])
            data, anc, flags, _ = self.sock.recvmsg(protocol.MAX_REPLY,
                                                    socket.CMSG_SPACE(protocol.MAX_FDS * 4))
        except TimeoutError:
            raise HelperUnavailable(f"the helper did not answer {verb} in time") from None
        except OSError as exc:
            raise HelperUnavailable(f"the connection to the helper broke during {verb}",
                                    errno=exc.errno, fix="check the helper's log") from None
        fds = array.array("i")
        for level, kind, blob in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(blob[:len(blob) - len(blob) % fds.itemsize])
        for fd in fds:
            os.set_inheritable(fd, False)
        if flags & socket.MSG_CTRUNC:
            for fd in fds:
                os.close(fd)
            raise VmnetError(f"the helper's answer to {verb} carried more fds than the {protocol.MAX_FDS} "
                             "a reply ever carries", fix="check that the socket is the vmnet helper's")
        if not data:
            raise HelperUnavailable("the helper closed the connection without answering")
        try:
            result = protocol.decode_reply(data)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        self.last_reply = data
        return result, list(fds)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def call(path: str, verb: str, **args) -> dict:
    """One request that hands out no fds."""
    with Client(path) as c:
        result, fds = c.call(verb, **args)
    for fd in fds:
        os.close(fd)
    return result
