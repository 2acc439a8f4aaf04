"""`vmnet helper`: the one long-lived privileged process — its ports and its verbs.

Requests reach it through vmnet.priv.server, which judges every message on
credentials the kernel vouches for (vmnet.priv.authz) and runs one verb from
the fixed table here. Ports outlive the helper: their programs are pinned
and their consumers hold their own socket fds, so a helper killed with
SIGKILL interrupts no traffic; at start it reloads its records, keeps
complete ports and removes what a crash left half-made — only its own
instance's (vmnet.priv.instance).

A port's sockets go to one live consumer process at a time (its holder,
vmnet.priv.holders); when the holder exits the helper puts fresh sockets
in the port's map for the next one. Every socket is confined to its own
queue by the kernel's bind guard where the kernel can run it
(vmnet.priv.bindguard); where it cannot, a port's consumer netns may hold
no other device unless the operator allowed it.
"""

from __future__ import annotations

import dataclasses
import errno
import grp
import logging
import os
import re
import threading
import time

from pyroute2 import IPRoute

from .. import domain, protocol, requests
from ..config import Config
from ..errors import InUse, InvalidInput, KernelError, NotFound, PermissionDenied, VmnetError
from ..memlock import INFINITY, UMEM_BYTES_PER_QUEUE, MemlockPlan, mib, plan_memlock
from ..fields import validate_port_name
from ..model import PortSpec
from . import (addrserver, attachments, authz, backends, bindguard, bpf, hostfilter, netns, nichook, ports,
               queuewatch, state, xsk, xskprog)
from .confine import apply_memlock
from .holders import Holder
from .instance import Instance

log = logging.getLogger("vmnet.helper")
_SCOPE = re.compile(r"[A-Za-z0-9_.\\-]{1,128}")


@dataclasses.dataclass
class Entry:
    record: dict
    sockets: list = dataclasses.field(default_factory=list)   # the helper's copies
    pending: list = dataclasses.field(default_factory=list)   # map keys whose socket waits for rings
    holder: Holder | None = None                              # the live process that has the sockets
    addr: addrserver.Running | None = None                    # the port's address server
    addr_restarts: list = dataclasses.field(default_factory=list)   # when it was last restarted
    parsed: object = None                                     # the record's Attachment, once parsed
    queues: queuewatch.QueueWatch | None = None               # which queues its consumer reads

    @property
    def attachment(self):
        """The record's attachment (it never changes after create), parsed once: status asks for
        it of every port."""
        if self.parsed is None:
            self.parsed = attachments.of_record(self.record)
        return self.parsed


class Helper:
    def __init__(self, cfg: Config, protection: bindguard.Protection | None = None):
        self.cfg = cfg
        self.instance = Instance(cfg.instance)
        self.state = state.StateDir(cfg.state_dir)
        admin_gid = _group_id(cfg.admin_group) if cfg.admin_group else None
        self.policy = authz.Policy(admin_gid)
        self.protection = protection or bindguard.Protection.detect(cfg.allow_unconfined)
        self.ports: dict[str, Entry] = {}
        self.program: xskprog.XskProgram | None = None      # the instance's shared XSK program
        self.host_filter: hostfilter.HostFilter | None = None   # the instance's anti-spoofing filter
        self.started = time.time()
        self.starts = 1                                     # of this instance, this one included
        # held while a request or an event changes state; a metrics scrape (another thread) reads
        # under it
        self.lock = threading.RLock()
        # what the server's loop looks at between requests (sockets waiting for rings, incoming
        # ports, watched queues, holders), kept up to date port by port rather than looked for
        # on every pass of the loop over every port (at 1,000 ports that cost each request about
        # a millisecond). Whatever changes a port's entry marks it (changed(name)); None: all.
        self._dirty: set[str] | None = None
        self._lists: dict = {}
        self._holders_of: dict[str, list] = {}
        self.watch_version = 0          # bumped whenever the lists may have changed
        # work a request leaves for after its reply is sent (vmnet.priv.server calls run_after_reply):
        # (the port it changes, a function)
        self.after_reply: list = []
        self.metrics = None                                 # vmnet.priv.metrics.Metrics when serving
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
            "domain-incoming": self.domain_incoming,
            "domain-stopped": self.domain_stopped,
        }
        # owners (domain uuids) whose migration here the hook announced: their ports are made
        # incoming at prepare; kept for INCOMING_TTL seconds
        self.incoming_owners: dict[str, float] = {}
        self.queues_looked = 0.0                            # when the multi-queue rings were last read
        assert set(self.verbs) == set(protocol.VERBS) == set(requests.VERBS)

    @property
    def root(self) -> str:
        return self.instance.pin_root

    # ---- recovery -------------------------------------------------------

    def recover(self) -> dict:
        """Keep complete ports, remove half-made ones (of this instance only)."""
        kept, removed = [], []
        self.state.ensure()
        self.starts = self.state.count_start()
        self.program = xskprog.XskProgram.ensure(self.root)
        self.program.hold_in_dispatcher()
        self.host_filter = hostfilter.HostFilter.ensure(self.root)
        for name, intent in self.state.intents().items():
            if self.state.read(name) is None:
                log.warning("removing port %s: the helper stopped while making it", name)
                self._delete(name, intent)
                removed.append(name)
            self.state.remove_intent(name)
        for name in self.state.names():
            record = self.state.read(name)
            why = "its record is unreadable" if not record else ports.why_broken(record, self.instance)
            if not why:
                entry = Entry(record, holder=Holder.from_record(record.get("holder")))
                if record.get("holder") and entry.holder is None:
                    record["holder"] = None         # it exited while no helper watched
                    self.state.write(name, record)
                self.ports[name] = entry
                self.changed(name)
                kept.append(name)
            else:
                log.warning("removing port %s: %s", name, why)
                self._delete(name, record or None)
                self.state.remove(name)
                removed.append(name)
        removed += bpf.remove_abandoned_pins(self.root)
        for name in sorted(set(bpf.pinned_ports(self.root)) | ports.claimed_ports(self.instance)):
            if name not in self.ports:
                self._delete(name, None)
                removed.append(name)
        for name in self._my_devices_here():
            if name not in self.ports:
                self._delete(name, None)
                removed.append(name)
        removed += self._collect_attachments()
        removed += self._collect_nic_hooks()
        kept_ifindexes = {e.record.get("host_ifindex") for e in self.ports.values()}
        for ifindex in self.host_filter.ports():
            if ifindex not in kept_ifindexes:
                self.host_filter.clear_port(ifindex)
        self.program.unpin_if_unused()
        self.host_filter.unpin_if_unused()
        for name, entry in self.ports.items():
            self._start_addr_server(name, entry)
            if entry.record.get("migration") == "incoming" and entry.holder is not None:
                # the TX ring that tells when the VM runs here was read through sockets this
                # helper no longer has
                self._activate(name, entry, "the helper restarted while its VM was migrating here, "
                                            "and cannot tell whether it runs yet")
        return {"kept": kept, "removed": sorted(set(removed))}

    def _delete(self, name: str, record: dict | None) -> bool:
        return ports.delete_port(name, self.instance, record=record, program=self.program, config=self.cfg,
                                 host_filter=self.host_filter)

    def _collect_attachments(self) -> list[str]:
        """What plugging left behind of ports this helper no longer has (an OVSDB row after a
        crash): found by this instance's markers, never anyone else's."""
        ctx = attachments.Context(self.instance, self.cfg)
        found = []
        for kind in attachments.KINDS:
            try:
                found += attachments.get(kind).collect(set(self.ports), ctx)
            except VmnetError as exc:
                log.warning("cannot look for what %s attachments left behind: %s", kind, exc.message)
        if found:
            log.warning("removed what a crash left plugged of port(s) %s", ", ".join(found))
        return found

    def _collect_nic_hooks(self) -> list[str]:
        """vmnet's components on NIC XDP hooks that no kept port needs (vmnet.priv.nichook)."""
        leased = {(e.record.get("extra") or {}).get("nic_ifindex") for e in self.ports.values()} - {None}
        try:
            found = nichook.collect(self.instance, self.program, leased)
        except VmnetError as exc:
            log.warning("cannot look for what crashes left on NIC XDP hooks: %s", exc.message)
            return []
        if found:
            log.warning("removed vmnet's XDP components no port needs: %s", ", ".join(found))
        return found

    def _my_devices_here(self) -> list[str]:
        with IPRoute() as ip:
            found = [(m.get("IFLA_IFNAME"), m.get("IFLA_IFALIAS")) for m in ip.get_links()]
        return sorted(n[4:] for n, alias in found
                      if n and n.startswith("vmn-") and self.instance.owns_device(alias))

    # ---- verbs ----------------------------------------------------------

    def _entry(self, peer, name: str) -> Entry:
        validate_port_name(name)
        entry = self.ports.get(name)
        if entry is None or not self.policy.visible(peer, entry.record):
            raise NotFound(f"port {name} does not exist", fix="list ports with 'vmnet port list'")
        return entry

    def port_create(self, peer, args):
        self.policy.require_admin(peer, "create ports")
        consumer_uid = args.consumer_uid
        spec = PortSpec(name=args.name, queues=args.queues, start_queue=args.start_queue, mode=args.mode,
                        netns=args.netns, mac=args.mac, mtu=args.mtu, backend=args.backend,
                        lease_from=args.lease_from, receive_only=args.receive_only, consumer_uid=consumer_uid,
                        consumer_gid=args.consumer_gid, consumer_name=args.consumer_name,
                        placeholder_tap=args.placeholder_tap, attachment=args.attachment,
                        incoming=args.incoming)
        pod = args.pod
        netns_id = None
        if pod is not None:
            from ..pod import validate_pod
            pod = validate_pod(pod)
            if spec.netns is None:
                raise InvalidInput("a pod's port needs the pod's network namespace",
                                   fix="give netns (CNI_NETNS)")
            fd = netns.open_netns(spec.netns)
            try:
                netns_id = authz.netns_id_of_fd(fd)
                netns.require_pod_netns(fd, spec.netns, pod, [e.record for e in self.ports.values()])
            finally:
                os.close(fd)
        cgroup = args.consumer_cgroup
        if cgroup is not None and (not cgroup.startswith("/") or ".." in cgroup.split("/")):
            raise InvalidInput(f"consumer cgroup {cgroup!r} is not an absolute cgroup path")
        scope = args.consumer_scope
        if scope is not None and not all(_SCOPE.fullmatch(s) for s in scope):
            raise InvalidInput("consumer_scope must be 1-8 cgroup directory names",
                               fix="give the names of the cgroup the consumer runs in, e.g. "
                                   "qemu-1-web.libvirt-qemu")
        owner = args.owner
        if spec.name in self.ports:
            raise ports.AlreadyExists(f"port {spec.name} already exists",
                                      fix=f"delete it with 'vmnet port del {spec.name}' or pick another name")
        self.protection.check(spec)
        # lazily: a helper that confines binds never looks at the others (1,000 of them on a node)
        self.protection.check_neighbours(spec, (e.record for e in self.ports.values()))
        # what to remove should the helper stop before the port is complete
        started = time.perf_counter()
        self.state.write_intent(spec.name, {"name": spec.name, "netns": spec.netns, "backend": spec.backend,
                                            "consumer_ifname": spec.consumer_ifname,
                                            "placeholder_tap": spec.placeholder_tap,
                                            "attachment": spec.attachment.to_dict()})
        try:
            created = ports.create_port(spec, self.instance, self.protection.guard, self.program, self.cfg,
                                        self.host_filter)
        except BaseException:
            self.state.remove_intent(spec.name)
            raise
        record = dict(created.port.to_dict(), consumer_cgroup=cgroup, consumer_scope=scope, owner=owner,
                      consumer_pod=pod, consumer_netns_id=netns_id,
                      created=time.time(), created_by=peer.uid, holder=None,
                      confined=self.protection.guard is not None,
                      migration="incoming" if spec.incoming else None)
        try:
            self.state.write(spec.name, record)
        except BaseException:
            created.close()
            self._delete(spec.name, record)
            raise
        finally:
            self.state.remove_intent(spec.name)
        entry = self.ports[spec.name] = Entry(record, created.sockets, created.pending)
        # after the reply: starting a process (fork, exec) costs the create several ms, and the
        # guest cannot ask for its address before its consumer has taken the sockets
        self.after_reply.append((spec.name, lambda: self._start_addr_server(spec.name, entry)
                                 if self.ports.get(spec.name) is entry and entry.addr is None else None))
        if self.metrics is not None:
            self.metrics.create.observe(time.perf_counter() - started)
        log.info("created port %s (%s, %d queue(s), consumer uid %s) for %s",
                 spec.name, created.port.mode, spec.queues, consumer_uid, peer.describe())
        return record, []

    def port_delete(self, peer, args):
        self.policy.require_admin(peer, "delete ports")
        name = validate_port_name(args.name)
        missing_ok = args.missing_ok
        started = time.perf_counter()
        entry = self.ports.pop(name, None)
        if entry:
            _close_sockets(entry)
            if entry.holder:
                entry.holder.close()
            if entry.addr:
                entry.addr.stop()
        found = self._delete(name, entry.record if entry else None)
        found = self.state.remove(name) or found or entry is not None
        if not found and not missing_ok:
            raise NotFound(f"port {name} does not exist", fix="list ports with 'vmnet port list'")
        if found and self.metrics is not None:
            self.metrics.delete.observe(time.perf_counter() - started)
        log.info("deleted port %s for %s", name, peer.describe())
        return {"name": name, "deleted": found}, []

    def port_list(self, peer, args):
        return {"ports": [e.record for _, e in sorted(self.ports.items())
                          if self.policy.visible(peer, e.record)]}, []

    def port_show(self, peer, args):
        entry = self._entry(peer, args.name)
        out = self._live(entry)
        out["health"] = ports.why_broken(entry.record, self.instance)      # None: whole
        return out, []

    def status(self, peer, args):
        return {"helper": {"pid": os.getpid(), "ports": len(self.ports),
                           "instance": self.instance.describe(), "started": self.started,
                           "consumer_socket": self.cfg.consumer_socket_path,
                           "protection": self.protection.describe()},
                "ports": [self._live(e) for _, e in sorted(self.ports.items())
                          if self.policy.visible(peer, e.record)]}, []

    # the libvirt hook's verbs: one request per domain, the raw domain XML
    def _domain_xml(self, peer, args, action: str) -> str:
        self.policy.require_admin(peer, action)
        return args.xml

    def _call_as(self, peer):
        def call(verb, **args):
            return self.verbs[verb](peer, requests.parse(verb, args))[0]
        return call

    def domain_prepare(self, peer, args):
        xml = self._domain_xml(peer, args, "create a domain's ports")
        return domain.prepare(self._call_as(peer), xml, self.cfg.libvirt_qemu_user,
                              incoming=lambda owner: self.incoming_owners.pop(owner, None) is not None), []

    def domain_release(self, peer, args):
        xml = self._domain_xml(peer, args, "delete a domain's ports")
        return domain.release(self._call_as(peer), xml), []

    def domain_check(self, peer, args):
        xml = self._domain_xml(peer, args, "check a domain's ports")
        return domain.check(self._call_as(peer), xml), []

    INCOMING_TTL = 600.0            # from the hook's migrate to its prepare, at most

    def domain_incoming(self, peer, args):
        """libvirt's `migrate begin` on the destination: refuse now what prepare would refuse
        (the migration is then aborted before anything starts here), and remember that this
        domain's ports are to be made incoming."""
        xml = self._domain_xml(peer, args, "take a domain's ports in")
        result = domain.incoming(self._call_as(peer), xml, self.cfg.libvirt_qemu_user)
        now = time.monotonic()
        self.incoming_owners = {o: t for o, t in self.incoming_owners.items() if now - t < self.INCOMING_TTL}
        self.incoming_owners[result["owner"]] = now
        return result, []

    def domain_stopped(self, peer, args):
        """libvirt's `stopped end`: the domain's QEMU is gone (on a migration's source, the VM
        runs on the destination now). Its ports are kept until `release`, but what draws its
        traffic here is withdrawn at once."""
        xml = self._domain_xml(peer, args, "stop a domain's ports")
        owner = domain.parse(xml, bind=False)[1]
        stopped = []
        for name, entry in sorted(self.ports.items()):
            record = entry.record
            if record.get("owner") != owner or not self.policy.visible(peer, record):
                continue
            try:
                attachments.get(attachments.of_record(record).kind).withdraw(
                    record, attachments.Context(self.instance, self.cfg))
            except VmnetError as exc:
                log.warning("port %s: cannot withdraw its routes: %s", name, exc.message)
            record["migration"] = "stopped"
            self.state.write(name, record)
            stopped.append(name)
        if stopped:
            log.info("port(s) %s of %s: the VM stopped here; kept until libvirt's release", ", ".join(stopped), owner)
        return {"owner": owner, "stopped": stopped}, []

    # ---- live migration: the destination's ports wait for their VM ------------

    def watch_incoming(self) -> bool:
        """Activate each incoming port whose consumer has sent its first frame (the destination
        QEMU announces the VM as soon as it runs here). True while some port still waits."""
        with self.lock:
            waiting = False
            for name in list(self.watch_lists()["incoming"]):
                entry = self.ports.get(name)
                if entry is None or entry.record.get("migration") != "incoming":
                    continue
                if any(xsk.tx_produced(s) for s in entry.sockets):
                    self._activate(name, entry, "its VM sent its first frame here")
                else:
                    waiting = True
            return waiting

    def _activate(self, name: str, entry: Entry, why: str) -> None:
        record = entry.record
        try:
            done = attachments.get(attachments.of_record(record).kind).activate(
                record, attachments.Context(self.instance, self.cfg))
        except VmnetError as exc:
            log.warning("port %s: the VM runs here, but %s", name, exc.message)
            done = {"error": exc.message}
        record["migration"] = None
        record["arrived"] = dict(done, at=time.time())
        self.changed(name)
        self.state.write(name, record)
        if self.metrics is not None:
            self.metrics.changed()
        log.info("port %s: active (%s)%s", name, why,
                 f"; routes {', '.join(done['routes'])}" if done.get("routes") else "")

    # ---- multi-queue ports: the host end sends to the queues the consumer reads -------

    def watch_queues(self) -> bool:
        """Read the rings of every multi-queue port a consumer holds (each queuewatch.TICK) and
        steer its host end to the queues that are read. True while some port is watched."""
        with self.lock:
            watched = [(n, self.ports[n]) for n in self.watch_lists()["queues"]
                       if n in self.ports and self.ports[n].queues is not None]
            now = time.monotonic()
            if not watched or now - self.queues_looked < queuewatch.TICK:
                return bool(watched)
            self.queues_looked = now
            for name, entry in watched:
                served = entry.queues.tick(now)
                if served is not None:
                    self._steer(name, entry, served)
            return True

    def _steer(self, name: str, entry: Entry, served: int | None) -> None:
        """Steer port `name`'s host end to its first `served` queues (None: all of them, as when
        a consumer starts or leaves); recorded as queues_served, for status and the metrics."""
        record = entry.record
        if not queuewatch.applies(record):
            return
        if served is not None and served >= record["queues"]:
            served = None
        if served == record.get("queues_served"):
            return
        try:
            queuewatch.steer(record, served)
        except VmnetError as exc:
            log.warning("port %s: %s", name, exc.message)
            return
        record["queues_served"] = served
        self.state.write(name, record)
        if self.metrics is not None:
            self.metrics.changed()
        if served is None:
            log.info("port %s: its host end sends to every queue again", name)
        else:
            log.info("port %s: its consumer reads %d of %d queues (queue %s holds frames no one takes): "
                     "its host end sends to those only", name, served, record["queues"],
                     record["map_keys"][served])

    # ---- the handoff ----------------------------------------------------

    def fds_for_consumer(self, peer, args):
        entry = self._entry(peer, args.name)
        record = entry.record
        self.policy.require_consumer(peer, record)
        placeholder = args.placeholder
        if placeholder is not None and placeholder != record.get("placeholder_tap"):
            # the wrapper found this port named on a tap: that tap must be the port's own
            raise PermissionDenied(
                f"tap {placeholder} is not the placeholder of port {record['name']} "
                f"({record.get('placeholder_tap') or 'it has none'})",
                fix="give the domain the tap the port was made with (CNI ADD made it)")
        holder_pid = args.holder_pid
        if holder_pid is not None:
            # live attach: an admin hands the sockets to a running QEMU through libvirt
            self.policy.require_admin(peer, "hand a port's sockets to another process")
        if entry.holder is not None and holder_pid is not None and holder_pid == entry.holder.pid \
                and entry.holder.alive() and entry.sockets:
            # an admin handing the same process its sockets again (a live attach that failed
            # after the hand-off, retried): the same sockets, the same holder
            log.info("handing the sockets of port %s to pid %d again", record["name"], holder_pid)
            return record, [s.fileno() for s in entry.sockets]
        if entry.holder is not None:
            if entry.holder.alive():
                raise InUse(f"port {record['name']}'s sockets are held by pid {entry.holder.pid}, "
                            "which is still running",
                            fix="a port's sockets go to one live consumer at a time: stop that one first "
                                "(a restarted VM gets fresh sockets as soon as its old QEMU has exited)")
            self.consumer_exited(record["name"])
        if not entry.sockets:
            if record.get("handed_out") and "holder" not in record:
                raise InvalidInput(
                    f"port {record['name']}'s sockets were handed out, by an older helper, to a process "
                    "it did not record", fix="delete and re-create the port to start a new consumer")
            entry.sockets, entry.pending = ports.new_sockets(record, self.instance, self.protection.guard,
                                                             self.program)
        self.protection.check_record(record)
        holder = Holder.of_pid(holder_pid) if holder_pid is not None else Holder.of_peer(peer)
        entry.holder = holder
        record["holder"] = holder.to_dict()
        if queuewatch.applies(record):
            # a new consumer starts with every queue (an earlier helper may have left it steered)
            self._steer(record["name"], entry, None)
            entry.queues = queuewatch.QueueWatch(entry.sockets)
        self.state.write(record["name"], record)
        if self.metrics is not None:
            self.metrics.handoffs.inc()
        log.info("handed %d socket fd(s) of port %s to pid %d (for %s)", len(entry.sockets),
                 record["name"], holder.pid, peer.describe())
        return record, [s.fileno() for s in entry.sockets]

    def watched(self) -> dict:
        """Holder -> ("holder" | "addr", port) of every process the server's loop watches: the
        holders of ports' sockets, and the ports' address servers. Keyed by the Holder object,
        not its pidfd's number, which a later pidfd may get once this one is closed."""
        with self.lock:
            return self.watch_lists()["watched"]

    def process_exited(self, kind: str, name: str) -> None:
        if self.metrics is not None:
            self.metrics.changed()
        if kind == "holder":
            self.consumer_exited(name)
        else:
            self.addr_server_exited(name)

    # ---- address servers --------------------------------------------------

    ADDR_RESTARTS = 5               # at most this many restarts of one port's server ...
    ADDR_RESTART_WINDOW = 60.0      # ... in this many seconds

    def _start_addr_server(self, name: str, entry: Entry) -> None:
        if not addrserver.needs_server(entry.record):
            return
        record = entry.record
        try:
            from . import links
            host = links.require_link(record["host_ifname"])
            entry.addr = addrserver.start(name, record["host_ifname"], host["ifindex"],
                                          addrserver.guest_config(record, host["address"]),
                                          self.cfg.addr_server_user)
            log.info("port %s: address server started (pid %d)", name, entry.addr.pid)
        except VmnetError as exc:
            log.warning("port %s: cannot start its address server: %s", name, exc)
            entry.addr = None

    def run_after_reply(self) -> None:
        """What requests left for after their replies (see after_reply); errors are logged."""
        with self.lock:
            work, self.after_reply = self.after_reply, []
            for name, fn in work:
                self.changed(name)
                try:
                    fn()
                except Exception:       # noqa: BLE001 (the helper goes on; the port says what is missing)
                    log.exception("deferred work failed")

    def addr_server_exited(self, name: str) -> None:
        with self.lock:
            self.changed(name)
            entry = self.ports.get(name)
            if entry is None or entry.addr is None:
                return
            code = entry.addr.proc.wait()
            entry.addr.stop()
            entry.addr = None
            now = time.monotonic()
            entry.addr_restarts = [t for t in entry.addr_restarts if now - t < self.ADDR_RESTART_WINDOW]
            if len(entry.addr_restarts) >= self.ADDR_RESTARTS:
                log.warning("port %s: its address server exited (status %s) %d times in %d s; not starting "
                            "it again until the helper restarts", name, code, len(entry.addr_restarts),
                            self.ADDR_RESTART_WINDOW)
                return
            entry.addr_restarts.append(now)
            log.warning("port %s: its address server exited (status %s); starting it again", name, code)
            self._start_addr_server(name, entry)

    def consumer_exited(self, name: str) -> None:
        """The holder of port `name` is gone: fresh sockets for the next consumer."""
        with self.lock:
            self.changed(name)
            self._consumer_exited(name)

    def _consumer_exited(self, name: str) -> None:
        entry = self.ports.get(name)
        if entry is None or entry.holder is None:
            return
        log.info("port %s: its consumer (pid %d) exited; putting fresh sockets in its map",
                 name, entry.holder.pid)
        if self.metrics is not None:
            self.metrics.exits.inc()
        entry.holder.close()
        entry.holder = None
        entry.record["holder"] = None
        _close_sockets(entry)
        self._steer(name, entry, None)
        try:
            entry.sockets, entry.pending = ports.new_sockets(entry.record, self.instance,
                                                             self.protection.guard, self.program)
        except VmnetError as exc:
            log.warning("port %s: no fresh sockets (%s); the next consumer's request tries again",
                        name, exc.message)
        self.state.write(name, entry.record)

    def store_pending(self) -> bool:
        """Store the sockets this kernel took only once their consumer set up its rings
        (Linux 7.x). True while some still wait."""
        with self.lock:
            return self._store_pending()

    def _store_pending(self) -> bool:
        waiting = False
        for name in self.watch_lists()["pending"]:
            entry = self.ports.get(name)
            if entry is None or not entry.pending:
                continue
            self.changed(name)
            try:
                entry.pending = ports.store_pending(entry.record, entry.sockets, entry.pending,
                                                    self.instance, self.program)
            except VmnetError as exc:
                log.warning("port %s: %s", name, exc)
                entry.pending = []
            if entry.pending:
                waiting = True
            else:
                log.info("port %s: every socket is in the XSK map (its consumer set up its rings)", name)
        return waiting

    def queue_counters(self, name: str) -> list[dict] | None:
        """The XSK program's per-queue counters of port `name` (for metrics)."""
        entry = self.ports.get(name)
        return ports.queue_stats(entry.record, self.instance, self.program) if entry else None

    def _live(self, entry: Entry) -> dict:
        out = dict(entry.record)
        if entry.pending:
            out["waiting_for_rings"] = list(entry.pending)
        out["holder"] = (dict(entry.holder.to_dict(), alive=entry.holder.alive())
                         if entry.holder is not None else None)
        out["queue_counters"] = ports.queue_stats(entry.record, self.instance, self.program)
        out.update(backends.get(entry.record.get("backend", "veth")).describe(entry.record, self.instance))
        out["network"] = self._network_state(entry)
        guard = self.protection.guard
        if entry.sockets:
            out["sockets"] = []
            for q, s in zip(entry.record["map_keys"], entry.sockets):
                stats = dict(xsk.statistics(s.fileno()), queue=q)
                if guard is not None:
                    rule = guard.rule(s)
                    stats["bind_only_to"] = {"ifindex": rule[1], "queue": rule[2]} if rule else None
                out["sockets"].append(stats)
        else:
            out["sockets"] = None
            out["sockets_note"] = "counters unavailable: the helper restarted after handing the sockets out"
        return out

    def _network_state(self, entry: Entry) -> dict:
        """Where the port is plugged, live; what anti-spoofing dropped; its address server."""
        record = entry.record
        att = entry.attachment
        out = {"attachment": att.describe(), "kind": att.kind}
        try:
            out.update(attachments.get(att.kind).describe(record, attachments.Context(self.instance, self.cfg)))
        except VmnetError as exc:
            out.update(plugged=False, missing=exc.message)
        if record.get("filter") and self.host_filter is not None:
            out["spoofed"] = self.host_filter.stats(record.get("host_ifindex") or 0)
        else:
            out["spoofed"] = None
        if addrserver.needs_server(record, att):
            out["addr_server"] = entry.addr.to_dict() if entry.addr else {"alive": False}
        return out

    def raise_memlock_for_peer(self, peer, args):
        """Raise the peer's RLIMIT_MEMLOCK to cover the ports it holds (and its uid's other live ones)."""
        names = args.ports
        target = args.pid if args.pid is not None else peer.pid
        if target != peer.pid:
            # raising another process's limit (live attach into a running QEMU): admins only,
            # and only for the process that holds the ports' sockets
            self.policy.require_admin(peer, "raise another process's memlock limit")
        mine = []
        for name in dict.fromkeys(names):               # a port named twice counts once
            entry = self._entry(peer, name)
            self.policy.require_consumer(peer, entry.record)
            if entry.holder is None or entry.holder.pid != target or not entry.holder.alive():
                raise PermissionDenied(f"pid {target} does not hold the sockets of port {name}",
                                       fix="ask for the port's sockets (fds-for-consumer) first")
            mine.append(entry)
        charged = {e.record["consumer_uid"] for e in mine}
        queues = sum(e.record["queues"] for e in mine)
        others = sum(e.record["queues"] for e in self.ports.values()
                     if e not in mine and e.record.get("consumer_uid") in charged
                     and e.holder is not None and e.holder.alive())
        process = authz.Peer(target, 0, 0, (), mine[0].holder.pidfd)
        try:
            soft, hard = _rlimit_of(process)
        except OSError as exc:
            raise KernelError(f"cannot read the memlock limit of pid {target}", errno=exc.errno) from None
        from ..caps import has_capability, parse_status
        need = others * UMEM_BYTES_PER_QUEUE + queues * UMEM_BYTES_PER_QUEUE
        status = process.read("status")
        if status and "ipc_lock" in parse_status(status)["effective"] and not (soft == INFINITY or soft >= need):
            # the process locks without being counted: there is nothing to raise (a QEMU that
            # libvirt left CAP_IPC_LOCK; whether a wrapper may keep it is the wrapper's call)
            return MemlockPlan("ipc-lock", need, soft, hard).to_dict(), []
        plan = plan_memlock(queues, soft=soft, hard=hard, can_raise_hard=has_capability("sys_resource"),
                            allow_ipc_lock=False, already_locked=others * UMEM_BYTES_PER_QUEUE)
        if plan.action == "raise":
            try:
                apply_memlock(plan, pid=target)
            except OSError as exc:
                raise KernelError(f"cannot raise the memlock limit of pid {target} to {mib(plan.need)}",
                                  errno=exc.errno) from None
            log.info("raised memlock of pid %d to %s for %s", target, mib(plan.need), peer.describe())
        return plan.to_dict(), []

    # ---- requests -------------------------------------------------------

    def handle(self, peer, data: bytes) -> tuple[bytes, list[int]]:
        with self.lock:
            if self.metrics is not None:
                self.metrics.changed()
            return self._handle(peer, data)

    # verbs that change no entry but that of the port they name, and verbs that change none
    NAMED_VERBS = ("port-create", "port-delete", "fds-for-consumer")
    READING_VERBS = ("port-list", "port-show", "status", "raise-memlock-for-peer")

    def changed(self, name: str | None = None) -> None:
        """Port `name`'s entry (None: any entry) may have changed: the watch lists look again."""
        if name is None:
            self._dirty = None
        elif self._dirty is not None:
            self._dirty.add(name)

    def watch_lists(self) -> dict:
        """Names of the ports each watch looks at: "pending" (sockets that wait for their
        consumer's rings), "incoming" (waiting for their migrating VM), "queues" (multi-queue
        ports a consumer holds); and "watched" (see watched())."""
        if self._dirty is None:
            self._lists = {"pending": set(), "incoming": set(), "queues": set(), "watched": {}}
            self._holders_of = {}
            names = list(self.ports)
        else:
            names = self._dirty
        for name in names:
            self._index(name)
        if names:
            self.watch_version += 1
        self._dirty = set()
        return self._lists

    def _index(self, name: str) -> None:
        lists = self._lists
        for key in ("pending", "incoming", "queues"):
            lists[key].discard(name)
        for holder in self._holders_of.pop(name, ()):
            lists["watched"].pop(holder, None)
        e = self.ports.get(name)
        if e is None:
            return
        if e.pending:
            lists["pending"].add(name)
        if e.record.get("migration") == "incoming":
            lists["incoming"].add(name)
        if e.queues is not None:
            lists["queues"].add(name)
        holders = []
        for kind, holder in (("holder", e.holder), ("addr", e.addr.holder if e.addr is not None else None)):
            if holder is not None and holder.pidfd >= 0:
                lists["watched"][holder] = (kind, name)
                holders.append(holder)
        self._holders_of[name] = holders

    def _handle(self, peer, data: bytes) -> tuple[bytes, list[int]]:
        verb, scope = "?", ""
        try:
            verb, args = protocol.decode_request(data)
            scope = (args.get("name") if verb in self.NAMED_VERBS and isinstance(args.get("name"), str)
                     else "" if verb in self.READING_VERBS else None)
            if peer.consumer_only and verb not in protocol.CONSUMER_VERBS:
                raise PermissionDenied(
                    f"the consumer socket serves only {' and '.join(protocol.CONSUMER_VERBS)}, not {verb}",
                    fix="use the helper's admin socket (vmnet.toml 'socket') for anything else")
            if self.metrics is not None:
                self.metrics.requests.labels(verb).inc()
            result, fds = self.verbs[verb](peer, requests.parse(verb, args))
            return protocol.encode_reply(result), fds
        except VmnetError as exc:
            # the message may quote client input: keep it on one log line
            log.warning("refused %s from %s: %s", verb, peer.describe(), one_line(exc.message))
            if self.metrics is not None:
                self.metrics.refusals.labels(verb if verb in self.verbs else "?", exc.code).inc()
            return protocol.encode_reply(error=exc), []
        except Exception as exc:      # a bug must not take the helper down
            log.exception("internal error in %s from %s", verb, peer.describe())
            return protocol.encode_reply(error=VmnetError(f"internal error in {verb}: {exc}")), []
        finally:
            if scope != "":
                self.changed(scope)

    def close(self):
        for entry in self.ports.values():
            _close_sockets(entry)
            if entry.holder:
                entry.holder.close()
            if entry.addr:
                entry.addr.stop()
        if self.host_filter is not None:
            self.host_filter.close()
        from . import ovsdb
        ovsdb.close_all()
        if self.protection.guard is not None:
            self.protection.guard.close()
        if self.program is not None:
            self.program.close()


def _close_sockets(entry: Entry):
    if entry.queues is not None:
        entry.queues.close()
        entry.queues = None
    for s in entry.sockets:
        s.close()
    entry.sockets, entry.pending = [], []


def one_line(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")


def _group_id(name: str) -> int:
    if name.isascii() and name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise InvalidInput(f"group {name!r} does not exist",
                           fix="create it (groupadd) or change the helper's configuration") from None


def _rlimit_of(process: authz.Peer) -> tuple[int, int]:
    """RLIMIT_MEMLOCK of another process (read through its pidfd-checked /proc directory).
    prlimit() would need CAP_SYS_RESOURCE just to read it; /proc/<pid>/limits is world-readable."""
    for line in process.read("limits").splitlines():
        if line.startswith("Max locked memory"):
            soft, hard = line.split()[3:5]
            return tuple(INFINITY if v == "unlimited" else int(v) for v in (soft, hard))
    raise OSError(errno.ESRCH, f"process {process.pid} has exited")


def run(cfg: Config, ready=None):
    from . import instance as instances
    logging.basicConfig(level=logging.INFO, format="vmnet-helper: %(levelname)s %(message)s")
    bpf.require_bpffs()
    _raise_fd_limit()
    held = instances.hold(Instance(cfg.instance))      # before recovery: it removes leftovers
    try:
        _run(cfg, ready)
    finally:
        instances.release(Instance(cfg.instance), held)


def _raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one: each port's sockets and pidfds, each connection and
    its pidfd (vmnet.priv.budget bounds those) need fds, and systemd's soft default is 1024."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-files limit from %d: %s", soft, exc)


def _run(cfg: Config, ready=None):
    from .server import Server
    helper = Helper(cfg)
    log.info("bind confinement: %s", helper.protection.summary())
    report = helper.recover()
    log.info("recovered: kept %s, removed %s", report["kept"] or "none", report["removed"] or "none")
    if cfg.metrics:
        from .metrics import Metrics
        helper.metrics = Metrics(helper)
        helper.metrics.serve(cfg.metrics, cfg.metrics_port_labels, cfg.metrics_max_connections)
    try:
        Server(helper, cfg).serve(ready)
    finally:
        if helper.metrics is not None:
            helper.metrics.close()
        helper.close()
