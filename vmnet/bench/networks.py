"""Networks: what plugging a port in adds to its create, and what anti-spoofing costs per packet.

Create: one-queue ports of each attachment kind, through a throwaway helper,
the kinds rotating every iteration so that all see the same machine:
`plain` (no attachment and no anti-spoofing: a port as it was before ports
joined networks, the baseline), `none` (anti-spoofing only), `bridge` (a
Linux bridge member), `vlan` (a member with access VLAN 100 on a bridge
whose vlan_filtering is on; only where the kernel has it), `routed` (a /32
route and proxy ARP), `routed_dhcp` (the same with its address server,
which the helper starts after the reply: reported, no goal) and `ovs` (a
port on a private Open vSwitch with the userspace datapath: reported, no
goal). ovs-vswitchd runs only for the last: it wakes on every rtnetlink
notification of the netns, and on two cores took 0.3-0.5 ms of every other
kind's create; OVS's own "added" is over plain ports made while it runs,
rotating with it.
Each kind's floor is the latency part's floor port (vmnet.bench.floor) plus
that kind's own kernel work done directly with hand-packed rtnetlink: the
filter's map entry, a clsact qdisc and the cls_bpf classifier, an RTM_NEWLINK setting the master, an
AF_BRIDGE RTM_DELLINK of the default VLAN and an RTM_SETLINK with the access VLAN, an RTM_NEWROUTE and
the routed host end's MAC, IPv4 settings and proxy delay (vmnet's own requests); the classifier goes
on while the host end is down, as vmnet's does (vmnet.bench.floor). OVS has no floor (its create is a
transaction with ovsdb-server and ovs-vswitchd adding the port to its datapath).

Data path: three ports with the same MTU (1500) and a stand-in guest
behind each (vmnet.bench.relay: vmnet's responder relaying the port's
sockets to a tap in a netns of its own): one unattached with its host end
addressed, one a bridge member without anti-spoofing, one a bridge member
with anti-spoofing enforcing its MAC and address; TCP bulk transfers guest
-> host (every data frame crosses the filter) and host -> guest, the ports
in turn, rotating, the median of the rounds reported. br_netfilter's hooks (bridge-nf-call-iptables, which
sends bridged frames through iptables where the module is loaded) are off
in the benchmark's netns, as on a host without br_netfilter; the
anti-spoofed port is measured once more with them on. The relay in Python is
the bottleneck of both, so the ratio says whether the attachment loses
throughput, not how fast a VM goes (the QEMU guests of the data-path part
say that). With kernel.bpf_stats_enabled on meanwhile, the kernel's own
run time per packet of the filter and of the XSK program is read too.
Everything made here is removed before this returns, also on errors.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import socket
import threading
import time
import uuid

from .. import network
from ..fields import default_mac
from .. import rawnl
from ..priv import bpf, hostfilter, libbpf, links, netns
from ..priv.attachments import routed
from . import floor
from .launcher import BenchHelper, uninterrupted
from .relay import RelayGuest
from .stats import ratio, summary

WARMUP = 2
BRIDGE, VLAN_BRIDGE, OVS_BRIDGE = "vbnbr0", "vbnbr1", "vbnovs0"
VLAN = 100
UPLINK = ("vbnup0", "vbnup1")            # a veth in the helper's netns: the default route routed ports need
ROUTED_ADDRESS, FLOOR_ROUTED_ADDRESS = "10.99.0.2", "10.99.1.2"
KINDS = ("plain", "none", "bridge", "vlan", "routed", "routed_dhcp", "ovs")
GOALS = ("bridge", "vlan", "routed")     # each adds at most 1 ms to plain's create p50
BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED = 2, 4


def _quiet(*_):
    pass


def attachments(vlan: bool) -> dict[str, dict | None]:
    """Each kind's attachment, as `vmnet port add` sends it (None: not measured here)."""
    def att(**kw):
        return network.attachment_from_options(**kw).to_dict()
    return {"plain": att(spoofcheck=False), "none": att(), "bridge": att(bridge=BRIDGE),
            "vlan": att(bridge=VLAN_BRIDGE, vlan=VLAN) if vlan else None,
            "routed": att(routed=True, addresses=[ROUTED_ADDRESS], dhcp=False),
            "routed_dhcp": att(routed=True, addresses=[ROUTED_ADDRESS]), "ovs": att(ovs=OVS_BRIDGE)}


# ---- the floor's extra kernel work, hand-packed like vmnet.bench.floor's ----------------

def _floor_create(kind: str, name: str, mtu: int, filter_fds: dict, masters: dict) -> tuple[float, float, float]:
    """(create ms, delete ms, create CPU ms) of kind's floor, in the current netns."""
    kind = "routed" if kind == "routed_dhcp" else kind      # an address server is no kernel work
    mac = default_mac(name)
    c0, t0 = time.thread_time(), time.perf_counter()
    port = floor.create(name, 1, mtu, mac, None if kind == "plain" else filter_fds,
                        [FLOOR_ROUTED_ADDRESS + "/32"] if kind == "routed" else [], (kind == "routed", False))
    try:
        ifindex = socket.if_nametoindex(port.host)
        if kind in ("bridge", "vlan"):
            rawnl.transact(rawnl.set_master_request(ifindex, masters[kind]))
        if kind == "vlan":
            rawnl.transact(rawnl.bridge_vlans_request(rawnl.RTM_DELLINK, ifindex, [(0, 1)]))
            rawnl.transact(rawnl.bridge_vlans_request(rawnl.RTM_SETLINK, ifindex,
                                                      [(BRIDGE_VLAN_INFO_PVID | BRIDGE_VLAN_INFO_UNTAGGED, VLAN)]))
        if kind == "routed":
            rawnl.transact(rawnl.host_route_request(FLOOR_ROUTED_ADDRESS, 32, ifindex))
            rawnl.transact(rawnl.address_request(ifindex, routed.GATEWAY_MAC, routed.IPV4_SETTINGS)
                           + rawnl.proxy_delay_request(ifindex, 0))
        t1, c1 = time.perf_counter(), time.thread_time()
    finally:
        port.remove(missing_ok=True)
    t2 = time.perf_counter()
    return (t1 - t0) * 1000, (t2 - t1) * 1000, (c1 - c0) * 1000


# ---- the setting ----------------------------------------------------------------------------

class Setting:
    """The helper, its bridges, its uplink and (where installed) a private Open vSwitch."""

    def __init__(self, tag: str):
        from .ovs import Ovs, missing
        self.ovs_missing = missing()
        self.helper = BenchHelper(tag)
        self.ovs = None if self.ovs_missing else Ovs(self.helper.netns)
        if self.ovs is not None:
            self.helper.extra_config = f'ovsdb = "{self.ovs.endpoint}"\n'
        self.vlan_problem: str | None = None
        self.filter_fds: dict = {}
        self.masters: dict = {}

    def start(self) -> "Setting":
        from pyroute2 import IPRoute
        self.helper.start()
        with netns.entered(self.helper.netns), IPRoute() as ip:
            ip.link("add", ifname=BRIDGE, kind="bridge")
            ip.link("set", ifname=BRIDGE, state="up")
            try:
                ip.link("add", ifname=VLAN_BRIDGE, kind="bridge", br_vlan_filtering=1)
                ip.link("set", ifname=VLAN_BRIDGE, state="up")
            except Exception as exc:        # noqa: BLE001 (pyroute2's NetlinkError, or an unknown attribute)
                with contextlib.suppress(Exception):
                    ip.link("del", ifname=VLAN_BRIDGE)
                self.vlan_problem = (f"kernel {os.uname().release} has no bridge VLAN filtering "
                                     f"(a bridge with vlan_filtering=1: {exc})")
            ip.link("add", ifname=UPLINK[0], kind="veth", peer=UPLINK[1])
            for dev in UPLINK:
                ip.link("set", ifname=dev, state="up")
            ip.addr("add", index=ip.link_lookup(ifname=UPLINK[0])[0], address="192.0.2.1", prefixlen=24)
            ip.route("add", dst="default", gateway="192.0.2.2")
            self.masters = {"bridge": ip.link_lookup(ifname=BRIDGE)[0]}
            if not self.vlan_problem:
                self.masters["vlan"] = ip.link_lookup(ifname=VLAN_BRIDGE)[0]
        if self.ovs is not None:
            self.ovs.start_db()         # ovs-vswitchd only for the OVS kind (start_switch)
        self.filter_fds = floor.load_filter()
        return self

    def start_switch(self) -> None:
        """ovs-vswitchd and its bridge. It reads every rtnetlink notification of the netns (a
        device's, a qdisc's, a classifier's) and, on two cores, took 0.3-0.5 ms of each other
        kind's create meanwhile: those are measured before it runs."""
        if self.ovs is not None:
            self.ovs.start_switch()
            self.ovs.add_bridge(OVS_BRIDGE)

    def close(self):
        with uninterrupted():
            bpf.close_fds(self.filter_fds)
            self.filter_fds = {}
            self.helper.close()         # its ports first; the netns (bridges, uplink) goes with it
            if self.ovs is not None:
                self.ovs.stop()


# ---- create latency -------------------------------------------------------------------------

def measure_create(setting: Setting, tag: str, iterations: int, consumer_uid: int, progress=_quiet) -> dict:
    helper = setting.helper
    kinds = attachments(vlan=not setting.vlan_problem)
    if setting.ovs is None:
        kinds["ovs"] = None
    measured = [k for k in KINDS if kinds[k] is not None and k != "ovs"]
    samples = {k: {"create": [], "delete": [], "cpu": [], "floor_create": [], "floor_delete": [], "floor_cpu": []}
               for k in [*measured, "ovs", "plain_ovs"]}
    # a host where a VM already runs: one port with anti-spoofing stays for the whole loop, so
    # each create does not pay what only a host's first such port pays (the filter's pins, the
    # kernel's switch for tc ingress classifiers): that is reported apart, as first_port_ms
    first = _first_port_cost(helper, tag, consumer_uid)
    helper.call("port-create", name=f"{tag}bg", queues=1, backend="veth", consumer_uid=consumer_uid)
    try:
        _create_loop(helper, setting, kinds, measured, samples, tag, iterations, consumer_uid, progress)
        if kinds["ovs"] is not None:
            # then OVS, against plain ports made while ovs-vswitchd runs as well
            setting.start_switch()
            kinds = dict(kinds, plain_ovs=kinds["plain"])
            _create_loop(helper, setting, kinds, ["plain_ovs", "ovs"], samples, tag, iterations, consumer_uid,
                         progress)
    finally:
        helper.call("port-delete", name=f"{tag}bg")
    out: dict = {"iterations": iterations, "kinds": {}, "first_port_ms": first}
    for kind in KINDS:
        if kinds[kind] is None:
            out["kinds"][kind] = {"skipped": setting.vlan_problem if kind == "vlan" else
                                  f"no Open vSwitch: {setting.ovs_missing}"}
            continue
        out["kinds"][kind] = {key: summary(v) for key, v in samples[kind].items() if v}
    base = out["kinds"]["plain"]
    for kind, v in out["kinds"].items():
        if "create" in v:
            reference = base["create"]
            if kind == "ovs":
                reference = v["plain_meanwhile"] = summary(samples["plain_ovs"]["create"])
            v["added_p50_ms"] = round(v["create"]["p50"] - reference["p50"], 3)
            if "floor_create" in v:
                v["floor_added_p50_ms"] = round(v["floor_create"]["p50"] - base["floor_create"]["p50"], 3)
                v["create_p50_ratio_to_floor"] = ratio(v["create"]["p50"], v["floor_create"]["p50"])
    return out


def _first_port_cost(helper, tag: str, consumer_uid: int, runs: int = 5) -> dict:
    """Create p50 of a port with anti-spoofing and of one without, with no other port there."""
    out = {}
    for label, att in (("none", network.attachment_from_options().to_dict()),
                       ("plain", network.attachment_from_options(spoofcheck=False).to_dict())):
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            helper.call("port-create", name=f"{tag}fp", queues=1, backend="veth", consumer_uid=consumer_uid,
                        attachment=att)
            times.append((time.perf_counter() - t0) * 1000)
            helper.call("port-delete", name=f"{tag}fp")
        out[label] = round(statistics.median(times), 3)
    return out


def _create_loop(helper, setting, kinds, measured, samples, tag, iterations, consumer_uid, progress):
    for i in range(-WARMUP, iterations):
        shift = i % len(measured)
        for kind in measured[shift:] + measured[:shift]:
            name = f"{tag}{kind[0]}{kind[-1]}"
            c0, t0 = helper.cpu_ns(), time.perf_counter()
            helper.call("port-create", name=name, queues=1, backend="veth", consumer_uid=consumer_uid,
                        attachment=kinds[kind])
            t1, c1 = time.perf_counter(), helper.cpu_ns()
            helper.call("port-delete", name=name)
            t2 = time.perf_counter()
            if kind not in ("ovs", "plain_ovs"):
                with netns.entered(helper.netns):
                    f_create, f_delete, f_cpu = _floor_create(kind, f"{tag}f{kind[0]}{kind[-1]}", 1500, setting.filter_fds,
                                                              setting.masters)
            if i < 0:
                continue
            s = samples[kind]
            s["create"].append((t1 - t0) * 1000)
            s["delete"].append((t2 - t1) * 1000)
            s["cpu"].append((c1 - c0) / 1e6)
            if kind not in ("ovs", "plain_ovs"):
                s["floor_create"].append(f_create)
                s["floor_delete"].append(f_delete)
                s["floor_cpu"].append(f_cpu)
        progress("networks: create", i + 1, iterations)


# ---- data path ------------------------------------------------------------------------------

def _bulk(send_ns: str, recv_ns: str, address: str, seconds: float) -> float:
    """MB/s of one TCP transfer from netns send_ns to `address` in netns recv_ns."""
    with netns.entered(recv_ns):
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with netns.entered(send_ns):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    got = [0]
    try:
        server.bind((address, 0))
        server.listen(1)
        server.settimeout(10)

        def receive():
            conn, _ = server.accept()
            conn.settimeout(30)
            with conn:
                while True:
                    data = conn.recv(1 << 16)
                    if not data:
                        return
                    got[0] += len(data)
        t = threading.Thread(target=receive, daemon=True)
        t.start()
        client.settimeout(30)
        client.connect((address, server.getsockname()[1]))
        chunk = b"\0" * (1 << 16)
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            client.sendall(chunk)
        client.shutdown(socket.SHUT_WR)
        t.join(60)
        elapsed = time.monotonic() - t0
        return got[0] / elapsed / 1e6
    finally:
        client.close()
        server.close()


@contextlib.contextmanager
def _bpf_stats():
    path = "/proc/sys/kernel/bpf_stats_enabled"
    with open(path) as f:
        before = f.read().strip()
    with open(path, "w") as f:
        f.write("1")
    try:
        yield
    finally:
        with open(path, "w") as f:
            f.write(before)


def _run_stats(pin: str) -> tuple[int, int]:
    fd = libbpf.obj_get(pin)
    try:
        info = libbpf.prog_info(fd)
        return info.run_time_ns, info.run_cnt
    finally:
        os.close(fd)


BRNF = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables")


def _set_brnf(value: str) -> bool:
    """br_netfilter's hooks for bridged traffic in this netns on ("1") or off ("0"); False when
    br_netfilter is not there."""
    if not os.path.isdir("/proc/sys/net/bridge"):
        return False
    for name in BRNF:
        with open(f"/proc/sys/net/bridge/{name}", "w") as f:
            f.write(value)
    return True


def measure_datapath(setting: Setting, tag: str, seconds: float, rounds: int, progress=_quiet) -> dict:
    """TCP through three ports (unattached, a bridge member without and with anti-spoofing),
    each with a stand-in guest; the bridge's br_netfilter hooks off in the benchmark's netns, as
    on a host without br_netfilter, and the anti-spoofed port once more with them on."""
    helper = setting.helper
    guests: list[RelayGuest] = []
    spaces: list[str] = []
    ports = {"unattached": (f"{tag}du", network.attachment_from_options(spoofcheck=False).to_dict(),
                            "10.97.0.1", "10.97.0.2"),
             "bridge_nofilter": (f"{tag}dn", network.attachment_from_options(bridge=BRIDGE, spoofcheck=False).to_dict(),
                                 "10.96.0.1", "10.96.0.2"),
             "bridge": (f"{tag}db", network.attachment_from_options(bridge=BRIDGE, addresses=["10.98.0.2/24"],
                                                                     dhcp=False).to_dict(),
                        "10.98.0.1", "10.98.0.2")}
    try:
        with netns.entered(helper.netns):
            links.add_address(BRIDGE, "10.98.0.1", 24)
            links.add_address(BRIDGE, "10.96.0.1", 24)
            brnf = _set_brnf("0")
        where = {}
        for key, (name, att, host_ip, guest_ip) in ports.items():
            record = helper.call("port-create", name=name, queues=1, backend="veth", consumer_uid=65534, mtu=1500,
                                 attachment=att)
            if key == "unattached":
                with netns.entered(helper.netns):
                    links.add_address("vmn-" + name, host_ip, 24)
            ns = f"vmnet-{tag}g{key[-1]}{uuid.uuid4().hex[:4]}"
            netns.create_named(ns)
            spaces.append(ns)
            with netns.entered(ns):
                links.bring_up("lo")
            g = RelayGuest(helper.env, record, helper.netns, ns)
            guests.append(g)
            g.start()
            with netns.entered(ns):
                links.add_address("g0", guest_ip, 24)
            where[key] = (ns, host_ip, guest_ip)
        cases = list(where) + (["bridge_brnf"] if brnf else [])
        for key in where:                       # ARP and the relay warm
            _bulk(where[key][0], helper.netns, where[key][1], 0.3)
        results = {key: {"guest_to_host": [], "host_to_guest": []} for key in cases}
        filter_pin = os.path.join(hostfilter.pin_dir(helper.instance.pin_root), "tc")
        xsk_pin = os.path.join(helper.instance.pin_root, "+xsk", "prog")
        for r in range(rounds):
            shift = r % len(cases)
            for key in cases[shift:] + cases[:shift]:
                ns, host_ip, guest_ip = where["bridge" if key == "bridge_brnf" else key]
                if key == "bridge_brnf":
                    with netns.entered(helper.netns):
                        _set_brnf("1")
                try:
                    results[key]["guest_to_host"].append(_bulk(ns, helper.netns, host_ip, seconds))
                    results[key]["host_to_guest"].append(_bulk(helper.netns, ns, guest_ip, seconds))
                finally:
                    if key == "bridge_brnf":
                        with netns.entered(helper.netns):
                            _set_brnf("0")
            progress("networks: data path", r + 1, rounds)
        # the kernel's own run time per packet, apart: counting it slows every program a little
        cost = {}
        with _bpf_stats():
            before = {p: _run_stats(p) for p in (filter_pin, xsk_pin) if os.path.exists(p)}
            ns, host_ip, _ = where["bridge"]
            _bulk(ns, helper.netns, host_ip, seconds)
            after = {p: _run_stats(p) for p in before}
        for label, pin in (("filter", filter_pin), ("xsk_program", xsk_pin)):
            if pin in before:
                ns_, cnt = (after[pin][0] - before[pin][0]), (after[pin][1] - before[pin][1])
                cost[label] = {"ns_per_packet": round(ns_ / cnt, 1) if cnt else None, "packets": cnt}
        spoofed = helper.call("port-show", name=ports["bridge"][0]).get("network", {}).get("spoofed")
        out = {"seconds": seconds, "rounds": rounds, "mtu": 1500, "spoofed_on_bridge_port": spoofed,
               "bpf_run_time": cost, "br_netfilter": brnf, "cases": cases}
        for key, dirs in results.items():
            out[key] = {d: round(statistics.median(v), 2) if v else None for d, v in dirs.items()}
            out[key]["all"] = {d: [round(x, 2) for x in v] for d, v in dirs.items()}
        out["ratios_to_unattached"] = {
            key: {d: ratio(out[key][d], out["unattached"][d]) for d in ("guest_to_host", "host_to_guest")}
            for key in cases if key != "unattached"}
        out["ratio_bridge_to_unattached"] = out["ratios_to_unattached"]["bridge"]
        out["ratio_filter"] = {d: ratio(out["bridge"][d], out["bridge_nofilter"][d])
                               for d in ("guest_to_host", "host_to_guest")}
        return out
    finally:
        with uninterrupted():
            for g in guests:
                g.close()
            for key, (name, *_rest) in ports.items():
                with contextlib.suppress(Exception):
                    helper.call("port-delete", name=name)
            for ns in spaces:
                netns.remove_named(ns)


def measure(tag: str, iterations: int, tcp_seconds: float, tcp_rounds: int, consumer_uid: int = 65534,
            progress=_quiet) -> dict:
    setting = Setting("n" + tag)
    tag = setting.helper.tag            # port names start with it: the helper's sweep finds them
    try:
        setting.start()
        out = {"create": measure_create(setting, tag, iterations, consumer_uid, progress)}
        try:
            out["datapath"] = measure_datapath(setting, tag, tcp_seconds, tcp_rounds, progress)
        except Exception as exc:        # the create numbers stay
            out["datapath"] = {"error": str(exc).splitlines()[0]}
        return out
    finally:
        setting.close()
