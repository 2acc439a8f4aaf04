"""The helper's Prometheus endpoint (`vmnet helper --metrics ADDR:PORT|unix:PATH`, or `metrics =`).

Off unless asked for. vmnet.priv.metrics_server serves it on one thread of
its own with bounded connections and a deadline each, so no client of the
endpoint can take the fds, threads or time the helper's sockets need. The
exposition is prometheus_client's; what it reads is taken under the
helper's lock (so a scrape never sees a port half made or a socket being
closed), at most once a second per view, so a tight scrape loop cannot keep
the helper's lock either.

Who sees what: the totals (the first and last groups below) go to anyone
who reaches the endpoint. Per-port series name ports, pods and consumer
uids, which `vmnet port list` shows only to admins and to each port's
consumer: on a unix socket each peer gets the ports it may see (the same
rule, from its SO_PEERCRED); on TCP nobody can be told apart, so they are
shown to all only when the operator says so (metrics_port_labels = true).

- vmnet_helper_start_time_seconds, vmnet_helper_restarts_total (starts of
  this instance's helper recorded in its state directory, less this one),
  vmnet_helper_info{instance, protection};
- vmnet_ports{backend, mode}; per port (labels: port): vmnet_port_info
  {backend, mode, queues, consumer_uid, pod}, vmnet_port_holder_alive,
  per queue the XSK program's vmnet_port_xdp_redirected_packets_total and
  vmnet_port_xdp_passed_packets_total (no socket yet), the sockets' kernel
  statistics vmnet_port_xsk_<counter>_total while the helper holds them,
  and the host end's link counters vmnet_port_host_{rx,tx}_{packets,bytes,
  dropped}_total; where it is plugged, vmnet_port_attachment_info{kind,
  network, vlan} and vmnet_port_plugged (0: what it was plugged into is
  gone), the frames anti-spoofing dropped, vmnet_port_spoofed_packets_total
  {reason}, and vmnet_port_addr_server_alive for ports whose guest vmnet
  serves its addresses;
- vmnet_port_create_seconds / vmnet_port_delete_seconds (histograms),
  vmnet_requests_total{verb}, vmnet_refusals_total{verb, code},
  vmnet_consumer_handoffs_total, vmnet_consumer_exits_total;
- the process's own (CPU, memory, fds: prometheus_client's process collector).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector

from ..config import parse_metrics_listen
from ..errors import KernelError
from ..fields import has_host_end
from .metrics_server import BACKLOG, MetricsServer

log = logging.getLogger("vmnet.helper")
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
XSK_COUNTERS = ("rx_dropped", "rx_invalid_descs", "tx_invalid_descs", "rx_ring_full",
                "rx_fill_ring_empty_descs", "tx_ring_empty_descs")
LINK_COUNTERS = (("rx", "packets"), ("rx", "bytes"), ("rx", "dropped"),
                 ("tx", "packets"), ("tx", "bytes"), ("tx", "dropped"))
RENDER_INTERVAL = 1.0       # seconds an unchanged helper's exposition is served again before it is read anew
MAX_VIEWS = 64              # expositions kept (one per uid that scraped a unix endpoint, at most)
TOTALS, ALL = "totals", "all"   # views; a uid's view is ("uid", uid)


class Metrics:
    """The counters the helper bumps as it works, and a collector for what it holds."""

    def __init__(self, helper):
        self.helper = helper
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("vmnet_requests", "Requests the helper answered, by verb.", ["verb"],
                                registry=self.registry)
        self.refusals = Counter("vmnet_refusals", "Requests refused, by verb and error code.",
                                ["verb", "code"], registry=self.registry)
        self.handoffs = Counter("vmnet_consumer_handoffs", "Ports' sockets handed to a consumer.",
                                registry=self.registry)
        self.exits = Counter("vmnet_consumer_exits", "Consumers that exited holding a port's sockets.",
                             registry=self.registry)
        self.create = Histogram("vmnet_port_create_seconds", "Time to create a port, in the helper.",
                                buckets=LATENCY_BUCKETS, registry=self.registry)
        self.delete = Histogram("vmnet_port_delete_seconds", "Time to delete a port, in the helper.",
                                buckets=LATENCY_BUCKETS, registry=self.registry)
        ProcessCollector(registry=self.registry)
        self.server: MetricsServer | None = None
        self.port_labels = False
        self.rendered: dict = {}        # view -> (monotonic time, generation, exposition)
        self.generation = 0             # bumped by every request and event that may change a port
        self.render_lock = threading.Lock()

    def serve(self, listen: str, port_labels: bool = False, max_connections: int = 16) -> None:
        where = parse_metrics_listen(listen)
        self.port_labels = port_labels
        try:
            if isinstance(where, str):
                listener = _unix_listener(where)
                view_of = self._view_of_peer
            else:
                host, port = where
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                listener = socket.create_server((host, port), family=family, backlog=BACKLOG)
                view_of = lambda _sock: ALL if self.port_labels else TOTALS     # noqa: E731
        except OSError as exc:
            raise KernelError(f"cannot serve metrics on {listen}", errno=exc.errno,
                              fix="pick a free address and port, or a writable path (--metrics or "
                                  "metrics = in vmnet.toml)") from None
        self.server = MetricsServer(listener, self.render, view_of, max_connections=max_connections).start()
        log.info("metrics on %s (%s)", listen if isinstance(where, str) else f"http://{listen}/metrics",
                 "each peer sees its own ports" if isinstance(where, str)
                 else "every port" if port_labels else "totals only: metrics_port_labels is off")

    def _view_of_peer(self, sock: socket.socket):
        from . import authz
        peer = authz.peer_of(sock)
        if peer.pidfd is not None:
            os.close(peer.pidfd)
        return ALL if self.helper.policy.is_admin(peer) else ("uid", peer.uid)

    def changed(self) -> None:
        self.generation += 1

    def render(self, view) -> tuple[str, bytes]:
        """The exposition of one view, read anew when the helper changed since, or at most once
        every RENDER_INTERVAL (traffic counters move without the helper knowing)."""
        with self.render_lock:
            now = time.monotonic()
            generation = self.generation
            hit = self.rendered.get(view)
            if hit is not None and hit[1] == generation and now - hit[0] < RENDER_INTERVAL:
                return CONTENT_TYPE_LATEST, hit[2]
            body = generate_latest(_View(self.registry, _Collector(self.helper, _visible(view))))
            self.rendered.pop(view, None)
            self.rendered[view] = (now, generation, body)
            while len(self.rendered) > MAX_VIEWS:
                self.rendered.pop(next(iter(self.rendered)))
            return CONTENT_TYPE_LATEST, body

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


def _visible(view):
    """Which ports' series a view shows: None for none, else a predicate on a port's record."""
    if view == TOTALS:
        return None
    if view == ALL:
        return lambda record: True
    uid = view[1]
    return lambda record: record.get("consumer_uid") == uid


def _unix_listener(path: str) -> socket.socket:
    from .server import claim_unix_path
    if not claim_unix_path(path, socket.SOCK_STREAM):
        raise OSError(errno.EADDRINUSE, f"another process is serving {path}")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    listener.bind(path)
    os.chmod(path, 0o666)       # each peer is shown what its credentials allow
    listener.listen(BACKLOG)
    return listener


class _View:
    """The registry's totals and the ports one view may see: what generate_latest reads."""

    def __init__(self, registry, ports):
        self.registry, self.ports = registry, ports

    def collect(self):
        yield from self.registry.collect()
        yield from self.ports.collect()


class _Collector:
    """What the helper holds, read at scrape time under its lock; per-port series only for
    the ports visible(record) allows (None: none)."""

    def __init__(self, helper, visible=None):
        self.helper, self.visible = helper, visible

    def collect(self):
        h = self.helper
        with h.lock:
            everything = [(name, dict(e.record), [s.fileno() for s in e.sockets],
                           e.holder is not None and e.holder.alive()) for name, e in sorted(h.ports.items())]
            entries = [e for e in everything if self.visible is not None and self.visible(e[1])]
            queues = {name: _quiet(h.queue_counters, name) for name, *_ in entries}
            xsk = {name: [_quiet(_statistics, fd) for fd in fds] for name, _, fds, _ in entries}
            nets = {name: _quiet(h._network_state, h.ports[name]) for name, *_ in entries}
        yield GaugeMetricFamily("vmnet_helper_start_time_seconds", "When this helper started.",
                                value=h.started)
        restarts = CounterMetricFamily("vmnet_helper_restarts", "Earlier starts of this helper instance.")
        restarts.add_metric([], max(h.starts - 1, 0))
        yield restarts
        info = GaugeMetricFamily("vmnet_helper_info", "The helper instance and its bind protection.",
                                 labels=["instance", "protection"])
        info.add_metric([h.instance.describe(), h.protection.mode], 1)
        yield info
        by_kind: dict[tuple, int] = {}
        for _, r, _, _ in everything:
            key = (r.get("backend", ""), r.get("mode", ""))
            by_kind[key] = by_kind.get(key, 0) + 1
        ports = GaugeMetricFamily("vmnet_ports", "Ports, by backend and XDP mode.", labels=["backend", "mode"])
        for (backend, mode), n in sorted(by_kind.items()):
            ports.add_metric([backend, mode], n)
        yield ports
        migrating = GaugeMetricFamily("vmnet_ports_migrating",
                                      "Ports waiting for a VM migrating here (incoming), and ports whose VM "
                                      "stopped here, kept until libvirt's release (stopped).", labels=["state"])
        for state in ("incoming", "stopped"):
            migrating.add_metric([state], sum(1 for _, r, _, _ in everything if r.get("migration") == state))
        yield migrating
        per_port = GaugeMetricFamily("vmnet_port_migration", "1 for a port in a live migration, by state "
                                     "(incoming, stopped).", labels=["port", "state"])
        for name, r, _, _ in entries:
            if r.get("migration"):
                per_port.add_metric([name, r["migration"]], 1)
        yield per_port
        served = GaugeMetricFamily("vmnet_port_queues_served",
                                   "Queues of a multi-queue port its host end sends to: those its consumer "
                                   "reads (docs/datapath.md, a guest with fewer queue pairs).", labels=["port"])
        for name, r, _, _ in entries:
            if r.get("queues", 1) > 1:
                served.add_metric([name], r.get("queues_served") or r["queues"])
        yield served
        pinfo = GaugeMetricFamily("vmnet_port_info", "One per port.",
                                  labels=["port", "backend", "mode", "queues", "consumer_uid", "pod"])
        alive = GaugeMetricFamily("vmnet_port_holder_alive", "1 while a live consumer holds the port's sockets.",
                                  labels=["port"])
        red = CounterMetricFamily("vmnet_port_xdp_redirected_packets",
                                  "Frames the XSK program redirected to the queue's socket.", labels=["port", "queue"])
        passed = CounterMetricFamily("vmnet_port_xdp_passed_packets",
                                     "Frames passed up the stack: no socket in the queue's slot yet.",
                                     labels=["port", "queue"])
        xsk_families = {c: CounterMetricFamily(f"vmnet_port_xsk_{c}", f"XDP_STATISTICS {c} of the queue's socket.",
                                               labels=["port", "queue"]) for c in XSK_COUNTERS}
        for name, r, _, holder in entries:
            pinfo.add_metric([name, r.get("backend", ""), r.get("mode", ""), str(r.get("queues", "")),
                              str(r.get("consumer_uid", "")), (r.get("consumer_pod") or {}).get("uid", "")], 1)
            alive.add_metric([name], 1 if holder else 0)
            for q in queues.get(name) or []:
                red.add_metric([name, str(q["queue"])], q["redirected"])
                passed.add_metric([name, str(q["queue"])], q["passed_no_socket"])
            for q, stats in zip(r.get("map_keys") or [], xsk.get(name) or []):
                for c in XSK_COUNTERS:
                    if stats and c in stats:
                        xsk_families[c].add_metric([name, str(q)], stats[c])
        yield pinfo
        yield alive
        yield red
        yield passed
        yield from xsk_families.values()
        yield from _network_families(entries, nets)
        yield from _link_counters([(name, r.get("host_ifname")) for name, r, _, _ in entries
                                   if has_host_end(r)])


def _network_families(entries, nets: dict):
    att_info = GaugeMetricFamily("vmnet_port_attachment_info", "Where the port's host end is plugged.",
                                 labels=["port", "kind", "network", "vlan"])
    plugged = GaugeMetricFamily("vmnet_port_plugged", "1 while the port is plugged where it was declared.",
                                labels=["port"])
    spoofed = CounterMetricFamily("vmnet_port_spoofed_packets", "Frames from the VM anti-spoofing dropped, by reason.",
                                  labels=["port", "reason"])
    addr = GaugeMetricFamily("vmnet_port_addr_server_alive", "1 while the port's address server runs.",
                             labels=["port"])
    for name, r, _, _ in entries:
        att = r.get("attachment") or {"kind": "none"}
        network = att.get("network") or att.get("bridge") or ("routed" if att.get("kind") == "routed" else "")
        att_info.add_metric([name, att.get("kind", "none"), network, str(att.get("vlan") or "")], 1)
        net = nets.get(name) or {}
        if "plugged" in net and att.get("kind", "none") != "none":
            plugged.add_metric([name], 1 if net["plugged"] else 0)
        for reason, value in (net.get("spoofed") or {}).items():
            spoofed.add_metric([name, reason], value)
        if net.get("addr_server") is not None:
            addr.add_metric([name], 1 if net["addr_server"].get("alive") else 0)
    yield from (att_info, plugged, spoofed, addr)


def _statistics(fd: int) -> dict:
    from . import xsk
    return xsk.statistics(fd)


def _quiet(fn, *args):
    try:
        return fn(*args)
    except Exception:           # a port going away under a scrape: no numbers this time
        return None


def _link_counters(hosts: list[tuple[str, str]]):
    """Counters of the ports' host ends (they are in the helper's netns)."""
    families = {(d, k): CounterMetricFamily(f"vmnet_port_host_{d}_{k}", f"Host end {d} {k}.", labels=["port"])
                for d, k in LINK_COUNTERS}
    if hosts:
        from pyroute2 import IPRoute
        try:
            with IPRoute() as ip:
                stats = {m.get("IFLA_IFNAME"): m.get("IFLA_STATS64") for m in ip.get_links()}
        except OSError:
            stats = {}
        for port, ifname in hosts:
            s = stats.get(ifname)
            if s is None:
                continue
            for d, k in LINK_COUNTERS:
                families[(d, k)].add_metric([port], s.get(f"{d}_{k}", 0))
    yield from families.values()
