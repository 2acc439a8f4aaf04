"""The helper's Prometheus endpoint (`vmnet helper --metrics ADDR:PORT`, or `metrics =`).

Off unless asked for. prometheus_client serves the exposition on a thread
of its own; what it reads is taken under the helper's lock, so a scrape
never sees a port half made or a socket being closed:

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

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector

from ..config import parse_listen
from ..errors import KernelError
from ..model import has_host_end

log = logging.getLogger("vmnet.helper")
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
XSK_COUNTERS = ("rx_dropped", "rx_invalid_descs", "tx_invalid_descs", "rx_ring_full",
                "rx_fill_ring_empty_descs", "tx_ring_empty_descs")
LINK_COUNTERS = (("rx", "packets"), ("rx", "bytes"), ("rx", "dropped"),
                 ("tx", "packets"), ("tx", "bytes"), ("tx", "dropped"))


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
        self.registry.register(_Collector(helper))
        self.server = None

    def serve(self, listen: str) -> None:
        host, port = parse_listen(listen)
        try:
            self.server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise KernelError(f"cannot serve metrics on {listen}", errno=exc.errno,
                              fix="pick a free address and port (--metrics or metrics = in vmnet.toml)") from None
        log.info("metrics on http://%s/metrics", listen)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class _Collector:
    """What the helper holds, read at scrape time under its lock."""

    def __init__(self, helper):
        self.helper = helper

    def describe(self):
        return []           # read at scrape time only: no describe-time collection

    def collect(self):
        h = self.helper
        with h.lock:
            entries = [(name, dict(e.record), [s.fileno() for s in e.sockets],
                        e.holder is not None and e.holder.alive()) for name, e in sorted(h.ports.items())]
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
        for _, r, _, _ in entries:
            key = (r.get("backend", ""), r.get("mode", ""))
            by_kind[key] = by_kind.get(key, 0) + 1
        ports = GaugeMetricFamily("vmnet_ports", "Ports, by backend and XDP mode.", labels=["backend", "mode"])
        for (backend, mode), n in sorted(by_kind.items()):
            ports.add_metric([backend, mode], n)
        yield ports
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
