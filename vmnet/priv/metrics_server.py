"""The metrics endpoint's HTTP server: one thread, a bounded number of connections, a deadline each.

prometheus_client's start_http_server gives every connection a thread of its
own and never times one out, so a thousand half-open connections (`GET /
HTTP/1.1` and nothing more) took a thousand threads and fds from the
helper, whose sockets then had none left. This server cannot be made to
take more than it is given:

- at most `max_connections` connections at once; while that many are open
  it stops accepting, so the rest wait in the kernel's listen backlog (no fd
  and no thread of the helper's) and the kernel refuses what does not fit;
- each connection has `deadline` seconds from accept to the last byte of
  its reply, and a request (line and headers) of at most 8 KiB: a silent,
  slow or endless client is cut off and its slot goes to the next;
- one thread, whatever the load; the helper's socket loop never waits on it.

It answers GET and HEAD of /metrics (and /) with what `render(view)` gives,
and names what it refuses (404, 405, 400). Who is asking picks the view:
on a unix socket the peer's credentials (SO_PEERCRED), on TCP the same view
for everyone (vmnet.priv.metrics decides what each view shows).
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import threading
import time

log = logging.getLogger("vmnet.helper")
MAX_REQUEST = 8192
BACKLOG = 16


class _Conn:
    __slots__ = ("sock", "deadline", "inbox", "out", "view")

    def __init__(self, sock, deadline, view):
        self.sock, self.deadline, self.view = sock, deadline, view
        self.inbox = b""
        self.out = None


class MetricsServer:
    def __init__(self, listener: socket.socket, render, view_of, *, max_connections: int = 16,
                 deadline: float = 5.0):
        """render(view) -> (content type, body); view_of(connected socket) -> a view."""
        self.listener, self.render, self.view_of = listener, render, view_of
        self.max_connections, self.deadline = max_connections, deadline
        self.listener.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.conns: dict[socket.socket, _Conn] = {}
        self.accepting = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stop = False
        self.thread = threading.Thread(target=self._run, name="vmnet-metrics", daemon=True)

    def start(self) -> "MetricsServer":
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._accepting(True)
        self.thread.start()
        return self

    def close(self) -> None:
        self._stop = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self.thread.is_alive():
            self.thread.join(10)
        for sock in list(self.conns):
            self._drop(sock)
        self.sel.close()
        self.listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ---- the loop -------------------------------------------------------

    def _accepting(self, on: bool) -> None:
        if on and not self.accepting:
            self.sel.register(self.listener, selectors.EVENT_READ, "listener")
        elif not on and self.accepting:
            self.sel.unregister(self.listener)
        self.accepting = on

    def _run(self) -> None:
        while not self._stop:
            now = time.monotonic()
            timeout = min((c.deadline for c in self.conns.values()), default=now + 1.0) - now
            for key, events in self.sel.select(timeout=max(timeout, 0.0)):
                try:
                    if key.data == "wake":
                        continue
                    if key.data == "listener":
                        self._accept()
                    else:
                        self._serve(key.fileobj, events)
                except Exception:           # a bad client must not end the endpoint
                    log.exception("metrics: error while serving a connection")
                    if key.data not in ("wake", "listener"):
                        self._drop(key.fileobj)
            now = time.monotonic()
            for sock, c in list(self.conns.items()):
                if now >= c.deadline:
                    self._drop(sock)
            self._accepting(len(self.conns) < self.max_connections)

    def _accept(self) -> None:
        while len(self.conns) < self.max_connections:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # out of fds or memory: leave the rest in the backlog, look again next turn
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("metrics: cannot accept a connection: %s", exc.strerror)
                    return
                raise
            sock.setblocking(False)
            try:
                view = self.view_of(sock)
            except OSError:
                sock.close()
                continue
            self.conns[sock] = _Conn(sock, time.monotonic() + self.deadline, view)
            self.sel.register(sock, selectors.EVENT_READ, "conn")

    def _serve(self, sock, events) -> None:
        c = self.conns.get(sock)
        if c is None:
            return
        if c.out is None:
            try:
                data = sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop(sock)
                return
            if not data:
                self._drop(sock)
                return
            c.inbox += data
            end = c.inbox.find(b"\r\n\r\n")
            if end < 0:
                end = c.inbox.find(b"\n\n")
            if end < 0:
                if len(c.inbox) > MAX_REQUEST:
                    c.out = _response(431, "text/plain", b"request headers over 8 KiB\n")
                    self.sel.modify(sock, selectors.EVENT_WRITE, "conn")
                return
            c.out = self._respond(c.inbox[:end], c.view)
            c.inbox = b""
            self.sel.modify(sock, selectors.EVENT_WRITE, "conn")
            return
        try:
            sent = sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(sock)
            return
        c.out = c.out[sent:]
        if not c.out:
            self._drop(sock)

    def _respond(self, head: bytes, view) -> bytes:
        line = head.split(b"\n", 1)[0].strip().split()
        if len(line) != 3 or not line[2].startswith(b"HTTP/"):
            return _response(400, "text/plain", b"not an HTTP request\n")
        method, target = line[0], line[1].split(b"?", 1)[0]
        if target not in (b"/metrics", b"/"):
            return _response(404, "text/plain", b"not found: the metrics are at /metrics\n")
        if method not in (b"GET", b"HEAD"):
            return _response(405, "text/plain", b"only GET and HEAD\n", allow="GET, HEAD")
        kind, body = self.render(view)
        return _response(200, kind, body, head_only=method == b"HEAD")

    def _drop(self, sock) -> None:
        self.conns.pop(sock, None)
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large"}


def _response(status: int, kind: str, body: bytes, head_only: bool = False, allow: str | None = None) -> bytes:
    head = [f"HTTP/1.1 {status} {_REASONS[status]}", f"Content-Type: {kind}",
            f"Content-Length: {len(body)}", "Connection: close"]
    if allow:
        head.append(f"Allow: {allow}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + (b"" if head_only else body)
