"""`vmnet helper`: the one long-lived privileged process.

It listens on a Unix SOCK_SEQPACKET socket, judges every request on the
peer's SO_PEERCRED (vmnet.priv.authz), and runs one verb from a fixed table.
Ports outlive the helper: their programs are pinned and their consumers
hold their own socket fds, so a helper killed with SIGKILL interrupts no
traffic; at start it reloads its records, keeps complete ports and removes
what a crash left half-made. The loop is single-threaded: a client that
connects and goes silent costs one fd until its idle timeout, nothing else.
"""

from __future__ import annotations

import array
import dataclasses
import errno
import grp
import logging
import os
import selectors
import signal
import socket
import time

from pyroute2 import IPRoute

from .. import protocol
from ..libvirt import domain
from ..config import Config
from ..errors import InvalidInput, KernelError, NotFound, PermissionDenied, VmnetError
from ..memlock import INFINITY, mib, plan_memlock
from ..model import PortSpec, validate_port_name
from . import authz, bpf, links, netns, ports, state, xsk
from .confine import apply_memlock

log = logging.getLogger("vmnet.helper")
SO_SNDBUFFORCE = 32      # not exported by Python's socket module


@dataclasses.dataclass
class Entry:
    record: dict
    sockets: list = dataclasses.field(default_factory=list)   # the helper's copies
    pending: list = dataclasses.field(default_factory=list)   # map keys whose socket waits for rings


class Helper:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.state = state.StateDir(cfg.state_dir)
        admin_gid = _group_id(cfg.admin_group) if cfg.admin_group else None
        self.policy = authz.Policy(admin_gid)
        self.ports: dict[str, Entry] = {}
        self.verbs = {
            "port-create": self.port_create,
            "port-delete": self.port_delete,
            "port-list": self.port_list,
            "port-show": self.port_show,
            "fds-for-consumer": self.fds_for_consumer,
            "raise-memlock-for-peer": self.raise_memlock_for_peer,
            "status": self.status,
            "domain-prepare": self.domain_prepare,
            "domain-release": self.domain_release,
            "domain-check": self.domain_check,
        }
        assert set(self.verbs) == set(protocol.VERBS)

    # ---- recovery -------------------------------------------------------

    def recover(self) -> dict:
        """Keep complete ports, remove half-made ones. Returns what was done."""
        kept, removed = [], []
        self.state.ensure()
        for name in self.state.names():
            record = self.state.read(name)
            why = "its record is unreadable" if not record else self._incomplete(name)
            if not why:
                self.ports[name] = Entry(record)
                kept.append(name)
            else:
                log.warning("removing port %s: %s", name, why)
                ports.delete_port(name)
                self.state.remove(name)
                removed.append(name)
        removed += bpf.remove_abandoned_pins()
        for name in bpf.pinned_ports():
            if name not in self.ports and self._half_made_here(name):
                ports.delete_port(name)
                removed.append(name)
        for name in _vmnet_devices_here():
            if name not in self.ports and not bpf.pinned(name):
                ports.delete_port(name)
                removed.append(name)
        return {"kept": kept, "removed": sorted(set(removed))}

    def _incomplete(self, name: str) -> str | None:
        """Why a recorded port no longer works, or None when it does."""
        attached = bpf.open_pinned(name)
        if attached is None:
            return "its pins are gone"
        try:
            if attached.ids["ifindex"] == 0:
                return "its program lost its device"
        finally:
            attached.close()
        if links.link_state("vmn-" + name) is None:
            return "its host device is gone"
        return None

    def _half_made_here(self, name: str) -> bool:
        """Pins without a record: ours if the host end is here or the program lost its device.

        A live port whose host end is in another netns (a selftest's) is not ours to touch.
        """
        if links.link_state("vmn-" + name) is not None:
            return True
        attached = bpf.open_pinned(name)
        if attached is None:
            return True
        try:
            return attached.ids["ifindex"] == 0
        finally:
            attached.close()

    # ---- verbs ----------------------------------------------------------

    def _entry(self, peer, args) -> Entry:
        name = validate_port_name(protocol.require(args, "name", str))
        entry = self.ports.get(name)
        if entry is None or not self.policy.visible(peer, entry.record):
            raise NotFound(f"port {name} does not exist", fix="list ports with 'vmnet port list'")
        return entry

    def port_create(self, peer, args):
        self.policy.require_admin(peer, "create ports")
        known = {"name", "queues", "start_queue", "mode", "netns", "mac", "mtu", "backend",
                 "consumer_uid", "consumer_gid", "consumer_cgroup", "owner"}
        unknown = set(args) - known
        if unknown:
            raise InvalidInput(f"unknown port-create argument(s): {', '.join(sorted(unknown))}")
        consumer_uid = protocol.require(args, "consumer_uid", int)
        spec = PortSpec(name=protocol.require(args, "name", str),
                        queues=protocol.require(args, "queues", int, 1),
                        start_queue=protocol.require(args, "start_queue", int, 0),
                        mode=protocol.require(args, "mode", str, "auto"),
                        netns=protocol.require(args, "netns", str, None),
                        mac=protocol.require(args, "mac", str, None),
                        mtu=protocol.require(args, "mtu", int, None),
                        backend=protocol.require(args, "backend", str, "veth"),
                        consumer_uid=consumer_uid,
                        consumer_gid=protocol.require(args, "consumer_gid", int, None))
        cgroup = protocol.require(args, "consumer_cgroup", str, None)
        if cgroup is not None and (not cgroup.startswith("/") or ".." in cgroup.split("/")):
            raise InvalidInput(f"consumer cgroup {cgroup!r} is not an absolute cgroup path")
        owner = protocol.require(args, "owner", str, None)
        if owner is not None and len(owner) > 128:
            raise InvalidInput("owner is longer than 128 characters")
        if spec.name in self.ports:
            raise ports.AlreadyExists(f"port {spec.name} already exists",
                                      fix=f"delete it with 'vmnet port del {spec.name}' or pick another name")
        created = ports.create_port(spec)
        record = dict(created.port.to_dict(), consumer_cgroup=cgroup, owner=owner,
                      created=time.time(), created_by=peer.uid, handed_out=False)
        try:
            self.state.write(spec.name, record)
        except BaseException:
            created.close()
            ports.delete_port(spec.name)
            raise
        self.ports[spec.name] = Entry(record, created.sockets, created.pending)
        log.info("created port %s (%s, %d queue(s), consumer uid %s) for %s",
                 spec.name, created.port.mode, spec.queues, consumer_uid, peer.describe())
        return record, []

    def port_delete(self, peer, args):
        self.policy.require_admin(peer, "delete ports")
        name = protocol.require(args, "name", str)
        missing_ok = protocol.require(args, "missing_ok", bool, False)
        entry = self.ports.pop(name, None)
        if entry:
            for s in entry.sockets:
                s.close()
        found = ports.delete_port(name)
        found = self.state.remove(name) or found or entry is not None
        if not found and not missing_ok:
            raise NotFound(f"port {name} does not exist", fix="list ports with 'vmnet port list'")
        log.info("deleted port %s for %s", name, peer.describe())
        return {"name": name, "deleted": found}, []

    def port_list(self, peer, args):
        return {"ports": [e.record for _, e in sorted(self.ports.items())
                          if self.policy.visible(peer, e.record)]}, []

    def port_show(self, peer, args):
        entry = self._entry(peer, args)
        return self._live(entry), []

    def status(self, peer, args):
        return {"helper": {"pid": os.getpid(), "ports": len(self.ports)},
                "ports": [self._live(e) for _, e in sorted(self.ports.items())
                          if self.policy.visible(peer, e.record)]}, []

    # the libvirt hook's verbs: one request per domain, the raw domain XML
    def _domain_xml(self, peer, args, action: str) -> str:
        self.policy.require_admin(peer, action)
        unknown = set(args) - {"xml"}
        if unknown:
            raise InvalidInput(f"unknown argument(s): {', '.join(sorted(unknown))}")
        return protocol.require(args, "xml", str)

    def _call_as(self, peer):
        def call(verb, **args):
            return self.verbs[verb](peer, args)[0]
        return call

    def domain_prepare(self, peer, args):
        xml = self._domain_xml(peer, args, "create a domain's ports")
        return domain.prepare(self._call_as(peer), xml, self.cfg.libvirt_qemu_user), []

    def domain_release(self, peer, args):
        xml = self._domain_xml(peer, args, "delete a domain's ports")
        return domain.release(self._call_as(peer), xml), []

    def domain_check(self, peer, args):
        xml = self._domain_xml(peer, args, "check a domain's ports")
        return domain.check(self._call_as(peer), xml), []

    def store_pending(self) -> bool:
        """Store the sockets this kernel took only once their consumer set up its rings
        (Linux 7.x). True while some still wait."""
        waiting = False
        for name, entry in self.ports.items():
            if not entry.pending:
                continue
            try:
                entry.pending = ports.store_pending(name, entry.record["map_keys"], entry.sockets,
                                                    entry.pending)
            except VmnetError as exc:
                log.warning("port %s: %s", name, exc)
                entry.pending = []
            if entry.pending:
                waiting = True
            else:
                log.info("port %s: every socket is in the XSK map (its consumer set up its rings)", name)
        return waiting

    def _live(self, entry: Entry) -> dict:
        out = dict(entry.record)
        if entry.pending:
            out["waiting_for_rings"] = list(entry.pending)
        if entry.sockets:
            out["sockets"] = [dict(xsk.statistics(s.fileno()), queue=q)
                              for q, s in zip(entry.record["map_keys"], entry.sockets)]
        else:
            out["sockets"] = None
            out["sockets_note"] = "counters unavailable: the helper restarted after handing the sockets out"
        return out

    def fds_for_consumer(self, peer, args):
        entry = self._entry(peer, args)
        self.policy.require_consumer(peer, entry.record)
        if not entry.sockets:
            if entry.record.get("handed_out"):
                raise InvalidInput(
                    f"port {entry.record['name']}'s sockets were handed out before the helper restarted",
                    fix="its consumer still holds them; to start a new consumer, delete and re-create the port")
            entry.sockets, entry.pending = self._new_sockets(entry.record)
        if not entry.record.get("handed_out"):
            entry.record["handed_out"] = True
            self.state.write(entry.record["name"], entry.record)
        log.info("handed %d socket fd(s) of port %s to %s", len(entry.sockets),
                 entry.record["name"], peer.describe())
        return entry.record, [s.fileno() for s in entry.sockets]

    def _new_sockets(self, record: dict) -> tuple[list, list]:
        attached = bpf.open_pinned(record["name"])
        if attached is None:
            raise NotFound(f"port {record['name']} lost its pins", fix="delete and re-create the port")
        try:
            with netns.entered(record.get("netns")):
                return xsk.create_xsk_sockets(attached.map_fd, record["map_keys"])
        finally:
            attached.close()

    def raise_memlock_for_peer(self, peer, args):
        """Raise the peer's RLIMIT_MEMLOCK to cover every queue its uid consumes."""
        names = protocol.require(args, "ports", list)
        target = protocol.require(args, "pid", int, peer.pid)
        if target != peer.pid:
            # raising another process's limit (live attach into a running QEMU): admins only,
            # and only for a process running as the ports' consumer uid
            self.policy.require_admin(peer, "raise another process's memlock limit")
        mine = []
        for name in names:
            if not isinstance(name, str):
                raise InvalidInput("ports must be a list of port names")
            entry = self._entry(peer, {"name": name})
            self.policy.require_consumer(peer, entry.record)
            mine.append(entry.record)
        queues = sum(r["queues"] for r in mine)
        others = sum(e.record["queues"] for e in self.ports.values()
                     if e.record.get("consumer_uid") == peer.uid and e.record not in mine
                     and e.record.get("handed_out"))
        if target != peer.pid and any(_uid_of(target) != r.get("consumer_uid") for r in mine):
            raise PermissionDenied(f"pid {target} is not running as the consumer of {', '.join(names)}")
        try:
            soft, hard = _rlimit_of(target)
        except OSError as exc:
            raise KernelError(f"cannot read the memlock limit of pid {target}", errno=exc.errno) from None
        from ..caps import has_capability
        plan = plan_memlock(queues, soft=soft, hard=hard, can_raise_hard=has_capability("sys_resource"),
                            allow_ipc_lock=False, already_locked=others * 32 * 2**20)
        if plan.action == "raise":
            try:
                apply_memlock(plan, pid=target)
            except OSError as exc:
                raise KernelError(f"cannot raise the memlock limit of pid {target} to {mib(plan.need)}",
                                  errno=exc.errno) from None
            log.info("raised memlock of pid %d to %s for %s", target, mib(plan.need), peer.describe())
        return plan.to_dict(), []

    # ---- the loop -------------------------------------------------------

    def handle(self, peer, data: bytes, received_fds: list[int],
               truncated: bool = False) -> tuple[bytes, list[int]]:
        verb = "?"
        try:
            if received_fds:
                count = f"at least {len(received_fds)}" if truncated else str(len(received_fds))
                raise InvalidInput(f"the request carried {count} file descriptor(s); "
                                   "the helper accepts none (they were closed)")
            verb, args = protocol.decode_request(data)
            result, fds = self.verbs[verb](peer, args)
            return protocol.encode_reply(result), fds
        except VmnetError as exc:
            # the message may quote client input: keep it on one log line
            log.warning("refused %s from %s: %s", verb, peer.describe(), _one_line(exc.message))
            return protocol.encode_reply(error=exc), []
        except Exception as exc:      # a bug must not take the helper down
            log.exception("internal error in %s from %s", verb, peer.describe())
            return protocol.encode_reply(error=VmnetError(f"internal error in {verb}: {exc}")), []

    def serve(self, ready=None):
        listener = _listen(self.cfg)
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ)
        conns: dict[socket.socket, tuple[float, int]] = {}   # last activity, peer uid
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        signal.signal(signal.SIGINT, lambda *_: stop.append(1))
        log.info("listening on %s with %d port(s)", self.cfg.socket, len(self.ports))
        if ready:
            ready()
        try:
            waiting = False
            while not stop:
                # while a socket waits for its consumer's rings, look again every 20 ms
                for key, _ in sel.select(timeout=0.02 if waiting else 1.0):
                    try:
                        if key.fileobj is listener:
                            self._accept(listener, sel, conns)
                        else:
                            self._serve_one(key.fileobj, sel, conns)
                    except Exception:       # one bad connection must not stop the helper
                        log.exception("error while serving a connection")
                        if key.fileobj is not listener:
                            _drop(key.fileobj, sel, conns)
                waiting = self.store_pending()
                now = time.monotonic()
                for conn, (last, _) in list(conns.items()):
                    if now - last > self.cfg.idle_timeout:
                        _drop(conn, sel, conns)
        finally:
            for conn in list(conns):
                _drop(conn, sel, conns)
            sel.close()
            listener.close()
            try:
                os.unlink(self.cfg.socket)
            except FileNotFoundError:
                pass
            for entry in self.ports.values():
                for s in entry.sockets:
                    s.close()

    def _accept(self, listener, sel, conns):
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if len(conns) >= self.cfg.max_clients:
            log.warning("refused a connection: %d clients already connected", len(conns))
            conn.close()
            return
        peer = authz.peer_of(conn)
        if sum(1 for p in conns.values() if p[1] == peer.uid) >= self.cfg.max_clients_per_uid:
            # one user holding every slot with silent connections must not lock out QEMU
            log.warning("refused a connection from %s: it already has %d", peer.describe(),
                        self.cfg.max_clients_per_uid)
            conn.close()
            return
        conn.setblocking(False)
        try:
            conn.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, protocol.MAX_REPLY)
        except OSError:
            pass
        sel.register(conn, selectors.EVENT_READ)
        conns[conn] = (time.monotonic(), peer.uid)

    def _serve_one(self, conn, sel, conns):
        try:
            data, anc, flags, _ = conn.recvmsg(protocol.MAX_MESSAGE + 1,
                                               socket.CMSG_SPACE(protocol.MAX_FDS * 4))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            _drop(conn, sel, conns)
            return
        received = _fds_from(anc)
        for fd in received:
            os.close(fd)
        if not data and not anc:
            _drop(conn, sel, conns)          # orderly close
            return
        conns[conn] = (time.monotonic(), conns[conn][1])
        peer = authz.peer_of(conn)
        if flags & socket.MSG_TRUNC or len(data) > protocol.MAX_MESSAGE:
            reply, fds = protocol.encode_reply(error=InvalidInput(
                f"request is over the {protocol.MAX_MESSAGE}-byte limit")), []
            log.warning("refused an oversized request from %s", peer.describe())
        else:
            reply, fds = self.handle(peer, data, received, truncated=bool(flags & socket.MSG_CTRUNC))
        try:
            anc_out = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            conn.sendmsg([reply], anc_out)
        except OSError as exc:
            log.warning("could not reply to %s: %s", peer.describe(), exc)
            _drop(conn, sel, conns)


def _one_line(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")


def _fds_from(anc) -> list[int]:
    fds = array.array("i")
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return list(fds)


def _drop(conn, sel, conns):
    try:
        sel.unregister(conn)
    except (KeyError, ValueError):
        pass
    conns.pop(conn, None)
    conn.close()


def _listen(cfg: Config) -> socket.socket:
    os.makedirs(os.path.dirname(cfg.socket), mode=0o755, exist_ok=True)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(cfg.socket)
        raise KernelError(f"another helper is already listening on {cfg.socket}",
                          fix="stop it first ('systemctl stop vmnet-helper')")
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    finally:
        probe.close()
    try:
        os.unlink(cfg.socket)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    listener.bind(cfg.socket)
    os.chmod(cfg.socket, cfg.socket_mode)
    if cfg.socket_group:
        os.chown(cfg.socket, 0, _group_id(cfg.socket_group))
    listener.listen(64)
    listener.setblocking(False)
    return listener


def _group_id(name: str) -> int:
    if name.isascii() and name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise InvalidInput(f"group {name!r} does not exist",
                           fix="create it (groupadd) or change the helper's configuration") from None


def _rlimit_of(pid: int) -> tuple[int, int]:
    """RLIMIT_MEMLOCK of another process. prlimit() would need CAP_SYS_RESOURCE
    just to read it; /proc/<pid>/limits is world-readable."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max locked memory"):
                soft, hard = line.split()[3:5]
                return tuple(INFINITY if v == "unlimited" else int(v) for v in (soft, hard))
    raise OSError(errno.ENOENT, "no memlock line")


def _uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("Uid:")).split()[1])


def _vmnet_devices_here() -> list[str]:
    with IPRoute() as ip:
        names = [m.get("IFLA_IFNAME") for m in ip.get_links()]
    return sorted(n[4:] for n in names if n and n.startswith("vmn-"))


def run(cfg: Config, ready=None):
    logging.basicConfig(level=logging.INFO, format="vmnet-helper: %(levelname)s %(message)s")
    helper = Helper(cfg)
    report = helper.recover()
    log.info("recovered: kept %s, removed %s", report["kept"] or "none", report["removed"] or "none")
    helper.serve(ready)
