"""Live migration between two hosts, without a VM: the hook sequence libvirt drives, for real.

Two network namespaces play hosts A and B, each with its own helper instance
(as two machines have), joined by a fabric (a bridge in a third namespace)
where a peer lives. The installed hook is run exactly as libvirtd runs it on
each host, in the order libvirt 11.3 was seen to run it for `virsh migrate
--live` (tests/test_vm_migration.py migrates a real guest between two real
libvirtds): on B `migrate begin` (the incoming XML on stdin), `prepare
begin`, `start begin`, `started begin`; QEMU's switch-over; on A `stopped
end`, then `release end migrated`.

The VM is a stand-in (tests/guest_env.py): vmnet's responder holds the
port's sockets as QEMU does and relays them to a tap in a netns of its own,
whose IPv6 is off so that it sends nothing until the test makes it: the
destination's paused guest. Its first frame is the resume.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid

import pytest
from guest_env import Guest, Namespaces, make_bridge, ping, run_in, veth_to
from helpers import SHARED_NETNS, HelperProcess

from vmnet.libvirt.hookinstall import hook_text
from vmnet.priv import netns
from vmnet.priv.attachments.routed import GATEWAY_MAC

pytestmark = pytest.mark.netns

VM_IP = "10.1.2.3"
METRICS_PORT = 9479


class Host:
    """A host: netns `ns` with a helper of its own and the vmnet hook pinned to it; its uplink
    fab0 on the fabric at `address`, forwarding and answering ARP for what it routes (proxy
    ARP), its default route through the peer."""

    def __init__(self, name: str, ns: str, address: str):
        self.name, self.ns, self.address = name, ns, address
        with netns.entered(ns):
            # each host's own loopback: the same metrics port on both
            self.helper = HelperProcess(SHARED_NETNS + f'metrics = "127.0.0.1:{METRICS_PORT}"\n'
                                        'metrics_port_labels = true\n').start()
        self.hook = os.path.join(self.helper.dir, "hook")
        with open(self.hook, "w") as f:
            f.write(hook_text(self.helper.config))
        os.chmod(self.hook, 0o755)
        run_in(ns, "ip", "addr", "add", f"{address}/24", "dev", "fab0")
        run_in(ns, "ip", "route", "add", "default", "via", "192.0.2.100")
        run_in(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.fab0.proxy_arp=1")

    def run_hook(self, op: str, subop: str, xml: bytes, extra: str = "-") -> subprocess.CompletedProcess:
        return subprocess.run([self.hook, "vm1", op, subop, extra], input=xml, capture_output=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin"})

    def ports(self) -> dict:
        return {p["name"]: p for p in self.helper.vmnet_json("status")["ports"]}

    def metrics(self) -> dict:
        from test_metrics import scrape
        with netns.entered(self.ns):
            return scrape(METRICS_PORT)

    def routes(self) -> str:
        return run_in(self.ns, "ip", "route", "show", VM_IP).stdout

    def close(self):
        with netns.entered(self.ns):
            self.helper.cleanup()


def domain(port: str, uid: str) -> bytes:
    return (f'<domain type="qemu"><name>vm1</name><uuid>{uid}</uuid><metadata>'
            f'<vmnet:ports xmlns:vmnet="urn:vmnet:domain:1"><vmnet:port name="{port}" consumer-user="nobody" '
            f'routed="yes" address="{VM_IP}" dhcp="no"/></vmnet:ports></metadata><devices/></domain>').encode()


@pytest.fixture
def hosts():
    spaces = Namespaces()
    made: list[Host] = []
    try:
        fabric, a, b, peer = (spaces.new(p) for p in ("vmnet-f", "vmnet-a", "vmnet-b", "vmnet-p"))
        with netns.entered(fabric):
            make_bridge("fab")
            for i, ns in enumerate((a, b, peer)):
                veth_to(ns, f"f{i}", "fab0" if ns != peer else "eth0", master="fab")
        run_in(peer, "ip", "addr", "add", "192.0.2.100/24", "dev", "eth0")
        # the VMs' addresses are on the fabric's link: whichever host routes one answers ARP for it
        run_in(peer, "ip", "route", "add", "10.1.2.0/24", "dev", "eth0")
        for name, ns, address in (("A", a, "192.0.2.1"), ("B", b, "192.0.2.2")):
            made.append(Host(name, ns, address))
        yield made[0], made[1], peer, spaces
    finally:
        for host in made:
            host.close()
        spaces.close()


def quiet_guest(host: Host, port: str, spaces: Namespaces) -> Guest:
    """The stand-in guest of `port` on `host`, addressed as the VM, silent until spoken to."""
    ns = spaces.new("vmnet-g")
    # before its device exists: no IPv6 address, so no DAD, router or MLD message ever
    run_in(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    g = Guest(host.helper, port, host.ns, spaces, ns=ns)
    g.address(f"{VM_IP}/32", gateway="169.254.1.1")
    return g.start()


def neighbour_mac(ns: str, address: str) -> str | None:
    out = run_in(ns, "ip", "neigh", "show", address).stdout.split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else None


def mac_of(ns: str, ifname: str) -> str:
    return run_in(ns, "ip", "-br", "link", "show", ifname).stdout.split()[2]


def test_a_routed_vm_moves_from_a_to_b_with_its_route_and_the_fabric_follows(hosts, port_name):
    a, b, peer, spaces = hosts
    xml = domain(port_name, str(uuid.uuid4()))
    guests = []
    try:
        # the VM runs on A
        assert a.run_hook("prepare", "begin", xml).returncode == 0
        on_a = quiet_guest(a, port_name, spaces)
        guests.append(on_a)
        assert ping(peer, VM_IP) == 3
        assert "vmn-" + port_name in a.routes()
        assert neighbour_mac(peer, VM_IP) == mac_of(a.ns, "fab0")
        # libvirt on B: migrate, prepare, start, started (QEMU starts, paused, and takes the sockets)
        out = b.run_hook("migrate", "begin", xml)
        assert out.returncode == 0, out.stderr
        assert out.stdout == xml                               # the incoming XML, unchanged
        assert b.run_hook("prepare", "begin", xml).returncode == 0
        for op in ("start", "started"):
            assert b.run_hook(op, "begin", xml).returncode == 0
        on_b = quiet_guest(b, port_name, spaces)
        guests.append(on_b)
        time.sleep(0.3)
        waiting = b.ports()[port_name]
        assert waiting["migration"] == "incoming"
        assert waiting["network"]["waiting"].startswith("its routes wait for the VM")
        assert b.routes() == ""                               # nothing draws the VM's traffic to B yet
        assert "migration: waiting for its VM" in b.helper.vmnet("port", "show", port_name).stdout
        seen = b.metrics()
        assert seen[("vmnet_ports_migrating", (("state", "incoming"),))] == 1
        assert seen[("vmnet_port_migration", (("port", port_name), ("state", "incoming")))] == 1
        assert ping(peer, VM_IP) == 3                          # A still has it
        # both host ends have the gateway's MAC: the guest's neighbour entry stays right
        assert mac_of(a.ns, "vmn-" + port_name) == mac_of(b.ns, "vmn-" + port_name) == GATEWAY_MAC
        # the switch-over: A's QEMU pauses, B's runs and speaks first
        on_a.close()
        run_in(on_b.ns, "ping", "-c", "1", "-W", "2", "169.254.1.1", check=False)
        deadline = time.monotonic() + 5
        while b.ports()[port_name]["migration"] == "incoming" and time.monotonic() < deadline:
            time.sleep(0.02)
        arrived = b.ports()[port_name]
        assert arrived["migration"] is None and arrived["arrived"]["routes"] == [f"{VM_IP}/32"]
        assert arrived["arrived"]["announced_on"] == ["fab0"]
        assert "vmn-" + port_name in b.routes()
        # B's announcement moved the peer's neighbour entry before A withdrew anything
        assert neighbour_mac(peer, VM_IP) == mac_of(b.ns, "fab0")
        assert ping(peer, VM_IP) == 3
        # libvirt on A: stopped, then release
        assert a.run_hook("stopped", "end", xml).returncode == 0
        assert a.ports()[port_name]["migration"] == "stopped"
        assert a.routes() == ""
        seen = a.metrics()
        assert seen[("vmnet_ports_migrating", (("state", "stopped"),))] == 1
        assert seen[("vmnet_port_migration", (("port", port_name), ("state", "stopped")))] == 1
        assert b.metrics()[("vmnet_ports_migrating", (("state", "incoming"),))] == 0
        assert "kept until libvirt's release" in a.helper.vmnet("port", "show", port_name).stdout
        assert a.run_hook("release", "end", xml, "migrated").returncode == 0
        assert port_name not in a.ports()
        assert ping(peer, VM_IP) == 3
        assert b.ports()[port_name]["owner"] == a_owner(xml)
    finally:
        for g in guests:
            g.close()


def a_owner(xml: bytes) -> str:
    return "uuid:" + xml.split(b"<uuid>")[1].split(b"</uuid>")[0].decode()


def test_a_name_taken_on_the_destination_aborts_the_migration_before_anything_is_made(hosts, port_name):
    a, b, peer, spaces = hosts
    xml = domain(port_name, str(uuid.uuid4()))
    assert a.run_hook("prepare", "begin", xml).returncode == 0
    b.helper.vmnet_json("port", "add", port_name, "--consumer-user", "nobody", "--owner", "someone-else")
    before = b.ports()
    out = b.run_hook("migrate", "begin", xml)
    assert out.returncode == 1
    assert out.stdout == b""                                  # libvirt must not take it as XML
    err = out.stderr.decode()
    assert f"port {port_name} of domain vm1 exists on this host already, owned by someone-else" in err
    assert f"vmnet port del {port_name}" in err
    assert b.ports().keys() == before.keys() and b.ports()[port_name]["owner"] == "someone-else"
    # the source is untouched
    assert a.ports()[port_name]["migration"] is None and "vmn-" + port_name in a.routes()


def test_a_failed_migration_leaves_nothing_on_the_destination_and_the_source_as_it_was(hosts, port_name):
    a, b, peer, spaces = hosts
    xml = domain(port_name, str(uuid.uuid4()))
    assert a.run_hook("prepare", "begin", xml).returncode == 0
    for op in ("migrate", "prepare", "start"):
        assert b.run_hook(op, "begin", xml).returncode == 0
    assert b.ports()[port_name]["migration"] == "incoming"
    # QEMU on B fails (a memlock it may not raise, a dropped connection): libvirt stops it there
    assert b.run_hook("stopped", "end", xml).returncode == 0
    assert b.run_hook("release", "end", xml).returncode == 0
    assert b.ports() == {} and b.routes() == ""
    assert a.ports()[port_name]["migration"] is None and "vmn-" + port_name in a.routes()


def test_a_destination_helper_restarted_mid_migration_publishes_the_route_it_cannot_watch(hosts, port_name):
    a, b, peer, spaces = hosts
    xml = domain(port_name, str(uuid.uuid4()))
    for op in ("migrate", "prepare"):
        assert b.run_hook(op, "begin", xml).returncode == 0
    guest = quiet_guest(b, port_name, spaces)
    try:
        assert b.ports()[port_name]["migration"] == "incoming"
        b.helper.kill()
        with netns.entered(b.ns):
            b.helper.start()
        assert b.ports()[port_name]["migration"] is None
        assert "vmn-" + port_name in b.routes()
        assert "cannot tell whether it runs yet" in b.helper.read_log()
    finally:
        guest.close()


def test_status_and_the_hook_leave_a_domain_without_vmnet_ports_alone(hosts):
    a, b, peer, spaces = hosts
    plain = b'<domain type="qemu"><name>vm1</name><devices/></domain>'
    out = b.run_hook("migrate", "begin", plain)
    assert out.returncode == 0 and out.stdout == plain
    assert b.run_hook("stopped", "end", plain).returncode == 0
    with contextlib.suppress(KeyError):
        assert b.helper.vmnet_json("status")["ports"] == []


def test_kubevirt_the_target_pods_cni_add_and_the_source_pods_del_each_do_their_part(hosts, port_name):
    """KubeVirt's migration as the nodes see it: the target virt-launcher pod on B gets its port from
    B's CNI ADD while the source pod's port on A still carries the VM (same MAC, same network);
    the source pod's DEL on A removes its port only. With host-local IPAM (per node, per pod) the
    target pod's address is its own: the reason routed/ipam networks need link-refresh
    (docs/migration.md)."""
    from helpers import cni_invoke, install_cni
    from vmnet.kubevirt import cni
    a, b, peer, spaces = hosts
    pods = {"A": spaces.new("vmnet-pa"), "B": spaces.new("vmnet-pb")}
    mac = "02:00:00:00:22:01"
    results = {}
    pod_uids = {"A": str(uuid.uuid4()), "B": str(uuid.uuid4())}
    for host, container in ((a, "c0ffeea"), (b, "c0ffeeb")):
        install_cni(host.helper)
        conf = {"cniVersion": "1.0.0", "name": "vmnet-fast", "type": "vmnet", "socket": host.helper.socket,
                "runtimeConfig": {"mac": mac},
                "ipam": {"type": "host-local", "dataDir": os.path.join(host.helper.dir, "ipam"),
                         "ranges": [[{"subnet": "10.30.0.0/24"}]]}}
        rc, res, err = cni_invoke(host.helper, "ADD", conf, pods[host.name], container=container,
                                  pod_uid=pod_uids[host.name])
        assert rc == 0, (res, err)
        results[host.name] = (conf, container, res)
    name_a = cni.port_name("c0ffeea", "vmnet-fast", "pod1a2b3c4d5e6")
    name_b = cni.port_name("c0ffeeb", "vmnet-fast", "pod1a2b3c4d5e6")
    port_a, port_b = a.ports()[name_a], b.ports()[name_b]
    assert port_a["mac"] == port_b["mac"] == mac
    # each port's sockets go to its own pod only: the target's QEMU cannot take the source's
    assert (port_a["consumer_pod"]["uid"], port_b["consumer_pod"]["uid"]) == (pod_uids["A"], pod_uids["B"])
    assert port_a["migration"] is None and port_b["migration"] is None          # no hook on a node
    # each node's IPAM gives its pod an address of its own (host-local: per node, per container)
    assert results["A"][2]["ips"][0]["address"] == results["B"][2]["ips"][0]["address"] == "10.30.0.2/24"
    # the source pod goes after the switch-over: its DEL removes A's port, B's stays
    conf, container, _ = results["A"]
    assert cni_invoke(a.helper, "DEL", conf, pods["A"], container=container, pod_uid=pod_uids["A"])[0] == 0
    assert name_a not in a.ports() and name_b in b.ports()
    conf, container, _ = results["B"]
    assert cni_invoke(b.helper, "DEL", conf, pods["B"], container=container, pod_uid=pod_uids["B"])[0] == 0
    assert b.ports() == {}


def test_a_port_added_incoming_by_hand_waits_for_its_consumers_first_frame(hosts, port_name):
    """`vmnet port add --incoming`, for a VM migrated by QEMU itself (vmnet exec ... -incoming)."""
    a, b, peer, spaces = hosts
    out = b.helper.vmnet("port", "add", port_name, "--consumer-user", "nobody", "--routed", "--address", VM_IP,
                         "--no-dhcp", "--incoming")
    assert out.returncode == 0, out.stderr
    assert "migration: waiting for its VM" in b.helper.vmnet("port", "show", port_name).stdout
    guest = quiet_guest(b, port_name, spaces)
    try:
        time.sleep(0.3)
        assert b.routes() == "" and b.ports()[port_name]["migration"] == "incoming"
        run_in(guest.ns, "ping", "-c", "1", "-W", "2", "169.254.1.1", check=False)
        deadline = time.monotonic() + 5
        while b.ports()[port_name]["migration"] == "incoming" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "vmn-" + port_name in b.routes()
        assert ping(peer, VM_IP) == 3
    finally:
        guest.close()
