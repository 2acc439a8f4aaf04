"""The helper's socket loop: accept, judge each message's sender, answer, watch holders.

Single-threaded, so nothing a client does may block it:
- fds sent to the helper are refused by the kernel (SO_PASSRIGHTS = 0 on
  the listener, Linux >= 6.16, inherited by every connection); on older
  kernels they are received and closed by a closer thread, never here:
  closing the last reference of a TCP socket with SO_LINGER and an
  undrained send queue sleeps. Either way the connection is dropped.
- every message must carry SCM_CREDENTIALS (SO_PASSCRED) equal to the
  connection's SO_PEERCRED: a process handed someone else's connection
  is refused and dropped.
- netns references are checked before anything could block on them
  (vmnet.priv.netns), a silent client is dropped after idle_timeout, and
  connection slots are counted per tenant in pools kept apart
  (vmnet.priv.budget): admins, other local users, and consumers by pod.
The loop also watches the pidfd of every port's holder and tells the
helper when one exits.

Two listeners: the admin socket, and the consumer socket (cfg.consumer_socket,
what gets mounted into pods), whose connections are served
fds-for-consumer and raise-memlock-for-peer only, and make nobody an admin
(vmnet.priv.authz).
"""

from __future__ import annotations

import array
import dataclasses
import errno
import logging
import os
import queue
import selectors
import signal
import socket
import struct
import threading
import time

from .. import protocol
from ..config import Config
from ..errors import InvalidInput, KernelError, PermissionDenied
from . import authz, budget, queuewatch
from .daemon import Helper, one_line
from ..pod import pod_uids

log = logging.getLogger("vmnet.helper")
SO_SNDBUFFORCE = 32      # not exported by Python's socket module
SO_PASSRIGHTS = 83       # Linux >= 6.16
BACKLOG = 512            # connections waiting to be accepted (the kernel caps it at somaxconn)
SCM_MAX_FD = 253         # the most fds one message can carry
ANCILLARY = socket.CMSG_SPACE(SCM_MAX_FD * 4) + socket.CMSG_SPACE(12)
CLOSER_THREADS = 16


@dataclasses.dataclass
class Conn:
    peer: authz.Peer
    last: float
    tenant: budget.Tenant | None = None

    def close(self):
        if self.peer.pidfd is not None:
            os.close(self.peer.pidfd)


class Closer:
    """Closes fds clients sent, on threads of its own: a close may sleep for as long
    as the sender's SO_LINGER says. At most CLOSER_THREADS sleep at once; the rest wait."""

    def __init__(self):
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = 0
        self.busy = 0
        self.lock = threading.Lock()

    def close(self, fds: list[int]):
        self.queue.put(fds)
        with self.lock:
            if self.busy == self.threads and self.threads < CLOSER_THREADS:
                self.threads += 1
                threading.Thread(target=self._run, name="vmnet-closer", daemon=True).start()

    def _run(self):
        while True:
            fds = self.queue.get()
            with self.lock:
                self.busy += 1
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            with self.lock:
                self.busy -= 1


class Server:
    def __init__(self, helper: Helper, cfg: Config):
        self.helper, self.cfg = helper, cfg
        self.conns: dict[socket.socket, Conn] = {}
        self.closer = Closer()
        self.sel = selectors.DefaultSelector()
        # processes watched for their exit: Holder -> (its pidfd's copy, what it is); the loop
        # registers a copy of its own, so a pidfd the helper closes (and whose number a later one
        # reuses) never leaves the selector with a registration it cannot remove
        self.watching: dict = {}
        self.watched_version = None         # the helper's watch_version at the last pass
        self.passrights_off = False
        self.last_accept_error = 0.0

    def serve(self, ready=None):
        listener = self.listen()
        self.sel.register(listener, selectors.EVENT_READ, "listener")
        consumer = None
        if self.cfg.consumer_socket_path:
            try:
                # for every consumer, wherever it runs: each request is judged on its own
                consumer = self._listen(self.cfg.consumer_socket_path, 0o666, None)
            except BaseException:
                listener.close()
                os.unlink(self.cfg.socket)
                raise
            self.sel.register(consumer, selectors.EVENT_READ, "consumer-listener")
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        signal.signal(signal.SIGINT, lambda *_: stop.append(1))
        log.info("listening on %s (consumers: %s) with %d port(s); fds sent to it are %s", self.cfg.socket,
                 self.cfg.consumer_socket_path or "no socket", len(self.helper.ports),
                 "refused by the kernel (SO_PASSRIGHTS)" if self.passrights_off
                 else "received and closed off the main loop (this kernel has no SO_PASSRIGHTS)")
        if ready:
            ready()
        try:
            waiting = False
            watching_queues = False
            while not stop:
                try:
                    self._watch_holders()
                except Exception:       # a process it cannot watch must not stop the helper
                    log.exception("error while watching consumers")
                # while a socket waits for its consumer's rings, or a port for its migrating VM,
                # look again every 10 ms; while a multi-queue port has a consumer, every
                # queuewatch.TICK
                timeout = 0.01 if waiting else (queuewatch.TICK if watching_queues else 1.0)
                for key, _ in self.sel.select(timeout=timeout):
                    try:
                        if key.data == "listener":
                            self._accept(listener)
                        elif key.data == "consumer-listener":
                            self._accept(consumer, consumer_only=True)
                        elif key.data == "conn":
                            self._serve_one(key.fileobj)
                            self.helper.run_after_reply()
                        else:
                            self._holder_exited(key.data[1])
                    except Exception:       # one bad connection must not stop the helper
                        log.exception("error while serving a connection")
                        if key.data == "conn":
                            self._drop(key.fileobj)
                waiting = self.helper.store_pending()
                waiting = self.helper.watch_incoming() or waiting
                try:
                    watching_queues = self.helper.watch_queues()
                except Exception:       # noqa: BLE001 (steering is best effort; the port still works)
                    log.exception("error while watching multi-queue ports")
                now = time.monotonic()
                for conn, c in list(self.conns.items()):
                    if now - c.last > self.cfg.idle_timeout:
                        self._drop(conn)
        finally:
            for conn in list(self.conns):
                self._drop(conn)
            for holder in list(self.watching):
                self._unwatch(holder)
            self.sel.close()
            for sock, path in ((listener, self.cfg.socket), (consumer, self.cfg.consumer_socket_path)):
                if sock is None:
                    continue
                sock.close()
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    # ---- holders --------------------------------------------------------

    def _watch_holders(self):
        now = self.helper.watched()
        version = getattr(self.helper, "watch_version", None)
        if version is not None and version == self.watched_version:
            return          # nothing changed since the last pass: no pass over every holder
        self.watched_version = version
        for holder in [h for h in self.watching if h not in now]:
            self._unwatch(holder)
        for holder, what in now.items():
            if holder in self.watching:
                continue
            try:
                fd = os.dup(holder.pidfd)
            except OSError as exc:
                log.warning("cannot watch %s of port %s: %s", what[0], what[1], exc)
                continue
            self.sel.register(fd, selectors.EVENT_READ, ("holder", holder))
            self.watching[holder] = (fd, what)

    def _unwatch(self, holder):
        fd, _ = self.watching.pop(holder)
        try:
            self.sel.unregister(fd)
        except (KeyError, ValueError):
            pass
        os.close(fd)

    def _holder_exited(self, holder):
        if holder not in self.watching:
            return
        _, what = self.watching[holder]
        self._unwatch(holder)
        self.helper.process_exited(*what)

    # ---- connections ----------------------------------------------------

    def listen(self) -> socket.socket:
        return self._listen(self.cfg.socket, self.cfg.socket_mode, self.cfg.socket_group)

    def _listen(self, path: str, mode: int, group: str | None) -> socket.socket:
        if not claim_unix_path(path, socket.SOCK_SEQPACKET):
            raise KernelError(f"another helper is already listening on {path}",
                              fix="stop it first ('systemctl stop vmnet-helper')")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        # both are inherited by every connection, from the moment a client connects
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        try:
            listener.setsockopt(socket.SOL_SOCKET, SO_PASSRIGHTS, 0)
            self.passrights_off = True
        except OSError:
            self.passrights_off = False
        listener.bind(path)
        os.chmod(path, mode)
        if group:
            from .daemon import _group_id
            os.chown(path, 0, _group_id(group))
        # room for a boot storm's hooks and wrappers while a request is being served; each waits
        # in its connect (vmnet.client) rather than failing
        listener.listen(BACKLOG)
        listener.setblocking(False)
        return listener

    def _accept(self, listener, consumer_only: bool = False):
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                raise
            # out of fds: the client waits in the backlog; say so once a second, and do not spin
            now = time.monotonic()
            if now - self.last_accept_error > 1.0:
                log.warning("cannot accept a connection: %s", exc.strerror)
                self.last_accept_error = now
            time.sleep(0.01)
            return
        peer = authz.peer_of(conn, consumer_only)
        try:
            tenant = self._tenant(peer)
        except Exception:
            Conn(peer, 0).close()
            conn.close()
            raise
        held = [(c.tenant, c.last, s) for s, c in self.conns.items() if c.tenant.pool == tenant.pool]
        verdict = budget.judge(tenant, held, self._limits(tenant.pool))
        if not verdict.admit:
            # one tenant holding its slots with silent connections must not lock out anyone else
            log.warning("refused a connection from %s: %s", peer.describe(), verdict.why)
            Conn(peer, 0).close()
            conn.close()
            return
        if verdict.evict is not None:
            victim = self.conns[verdict.evict]
            log.warning("dropped a connection of %s (%s) for one of %s: %s", victim.peer.describe(),
                        victim.tenant.describe(), tenant.describe(), verdict.why)
            self._drop(verdict.evict)
        conn.setblocking(False)
        try:
            conn.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, protocol.MAX_REPLY)
        except OSError:
            pass
        self.sel.register(conn, selectors.EVENT_READ, "conn")
        self.conns[conn] = Conn(peer, time.monotonic(), tenant)

    def _tenant(self, peer: authz.Peer) -> budget.Tenant:
        if not peer.consumer_only:
            return budget.tenant_of("admin" if self.helper.policy.is_admin(peer) else "local", peer.uid)
        paths = peer.cgroups()
        pods = pod_uids(paths)
        return budget.tenant_of("consumer", peer.uid, next(iter(pods)) if len(pods) == 1 else None,
                                peer.cgroup())

    def _limits(self, pool: str) -> budget.Limits:
        cfg = self.cfg
        if pool == "admin":
            return budget.Limits(cfg.admin_clients, cfg.admin_clients, None)
        if pool == "local":
            return budget.Limits(cfg.max_clients, cfg.max_clients_per_uid, None)
        return budget.Limits(cfg.max_clients, cfg.max_clients_per_tenant, cfg.max_clients_per_uid)

    def _serve_one(self, conn):
        try:
            data, anc, flags, _ = conn.recvmsg(protocol.MAX_MESSAGE + 1, ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        received, creds = _ancillary(anc)
        if received:
            self.closer.close(received)
        if not data and not received:
            # an orderly close, or an empty message (which carries credentials, SO_PASSCRED):
            # it cannot be told from the peer hanging up, so it closes the connection (one that
            # carried fds is answered below: the helper accepts none)
            self._drop(conn)
            return
        c = self.conns[conn]
        c.last = time.monotonic()
        peer = c.peer
        drop = False
        if received:
            count = f"at least {len(received)}" if flags & socket.MSG_CTRUNC else str(len(received))
            error = InvalidInput(f"the request carried {count} file descriptor(s); the helper accepts "
                                 "none (they were closed, and the connection is dropped)")
            drop = True
        elif creds != (peer.pid, peer.uid, peer.gid):
            sender = f"pid {creds[0]} uid {creds[1]} gid {creds[2]}" if creds else "an unknown sender"
            error = PermissionDenied(f"the request was sent by {sender}, not by the process that opened "
                                     f"this connection ({peer.describe()})",
                                     fix="open a connection of your own: connections cannot be handed on")
            drop = True
        elif flags & socket.MSG_TRUNC or len(data) > protocol.MAX_MESSAGE:
            error = InvalidInput(f"request is over the {protocol.MAX_MESSAGE}-byte limit")
        else:
            error = None
        if error is not None:
            log.warning("refused a request from %s: %s", peer.describe(), one_line(error.message))
            reply, fds = protocol.encode_reply(error=error), []
        else:
            reply, fds = self.helper.handle(peer, data)
        try:
            anc_out = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            conn.sendmsg([reply], anc_out)
        except OSError as exc:
            log.warning("could not reply to %s: %s", peer.describe(), exc)
            drop = True
        if drop:
            self._drop(conn)

    def _drop(self, conn):
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        c = self.conns.pop(conn, None)
        if c is not None:
            c.close()
        conn.close()


def claim_unix_path(path: str, kind: int) -> bool:
    """Make path free for a listening unix socket: False while a live process listens there,
    else True with a stale socket file removed (and its directory made)."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    probe = socket.socket(socket.AF_UNIX, kind)
    try:
        probe.connect(path)
        return False
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return True


def _ancillary(anc) -> tuple[list[int], tuple[int, int, int] | None]:
    """(fds received, the sender's (pid, uid, gid) from SCM_CREDENTIALS)."""
    fds = array.array("i")
    creds = None
    for level, kind, data in anc:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
        elif kind == socket.SCM_CREDENTIALS and len(data) >= 12:
            creds = struct.unpack("3i", data[:12])
    return list(fds), creds
