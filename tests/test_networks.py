"""Ports join networks: a Linux bridge (with VLANs where the kernel has them), a routed
address, and what the guest gets — anti-spoofing on the host end and its address by DHCP.

Each test runs a real helper in the test's netns (the "host"), a port whose consumer end is
in a netns of its own, and a stand-in guest behind it (tests/guest_env.py: vmnet's responder
relaying the port's AF_XDP sockets to a tap, unprivileged, through `vmnet exec`); peers live
in namespaces of their own, joined to the host by veth pairs.
"""

from __future__ import annotations

import threading
import time

import pytest
from guest_env import BUSYBOX, Guest, make_bridge, ping, py_in, run_in, veth_to

from vmnet.caps import process_credentials
from vmnet.priv import links

pytestmark = pytest.mark.netns

NOBODY = 65534


@pytest.fixture
def guests():
    made = []
    try:
        yield made
    finally:
        for g in made:
            g.close()


def add_port(helper, name, consumer_netns, *options):
    return helper.vmnet_json("port", "add", name, "--netns", consumer_netns, "--consumer-user", str(NOBODY),
                             *options)


def guest(helper, port, consumer_netns, spaces, guests) -> Guest:
    g = Guest(helper, port, consumer_netns, spaces)
    guests.append(g)
    return g.start()


def tcp_echo(server_ns: str, server_ip: str, client_ns: str, payload: int = 200_000) -> int:
    """Bytes a TCP client in client_ns got back from an echo server in server_ns."""
    family = "AF_INET6" if ":" in server_ip else "AF_INET"
    server = (f"import socket\ns=socket.socket(socket.{family});s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
              f"s.bind(({server_ip!r},7007));s.listen(1);s.settimeout(30);c,_=s.accept();c.settimeout(30)\n"
              "while True:\n d=c.recv(65536)\n if not d: break\n c.sendall(d)\nc.close()\n")
    result = {}
    t = threading.Thread(target=lambda: result.update(out=py_in(server_ns, server, timeout=60)))
    t.start()
    client = (f"import socket,time\nfor i in range(50):\n try:\n  c=socket.create_connection(({server_ip!r},7007),5);break\n"
              " except OSError: time.sleep(0.1)\n"
              f"c.settimeout(30);data=b'x'*{payload};c.sendall(data);c.shutdown(socket.SHUT_WR);got=0\n"
              "while True:\n d=c.recv(65536)\n if not d: break\n got+=len(d)\nprint(got)\n")
    out = py_in(client_ns, client, timeout=60)
    t.join(60)
    return int(out.stdout.strip() or 0)


def udp_echo(server_ns: str, server_ip: str, client_ns: str, count: int = 10) -> int:
    family = "AF_INET6" if ":" in server_ip else "AF_INET"
    server = (f"import socket\ns=socket.socket(socket.{family},socket.SOCK_DGRAM);s.bind(({server_ip!r},7008))\n"
              f"s.settimeout(20)\nfor i in range({count}):\n d,a=s.recvfrom(2048);s.sendto(d,a)\n")
    t = threading.Thread(target=lambda: py_in(server_ns, server, timeout=60, check=False))
    t.start()
    client = (f"import socket,time\ns=socket.socket(socket.{family},socket.SOCK_DGRAM);s.settimeout(1);got=0\n"
              f"time.sleep(0.3)\nfor i in range({count}):\n s.sendto(b'ping%d'%i,({server_ip!r},7008))\n"
              " try:\n  s.recvfrom(2048);got+=1\n except OSError: pass\nprint(got)\n")
    out = py_in(client_ns, client, timeout=60)
    t.join(30)
    return int(out.stdout.strip() or 0)


# ---- a Linux bridge ---------------------------------------------------------

def test_a_bridged_port_carries_ping_udp_and_tcp_both_ways(helper, consumer_netns, port_name, spaces, guests):
    make_bridge("br0")
    peer = spaces.new("vmnet-p")
    veth_to(peer, "pb0", master="br0")
    run_in(peer, "ip", "addr", "add", "10.20.0.1/24", "dev", "eth0")
    record = add_port(helper, port_name, consumer_netns, "--bridge", "br0")
    assert record["attachment"] == {"kind": "bridge", "bridge": "br0"}
    assert record["mtu"] == 1500 and "br0" in record["mtu_reason"]
    assert links.get_link("vmn-" + port_name).get("IFLA_MASTER") == links.link_state("br0")["ifindex"]
    # a switch port: no IPv6 of its own on the host end (nor on the consumer end)
    assert sysctl_of(None, f"net/ipv6/conf/vmn-{port_name}/disable_ipv6") == "1"
    assert sysctl_of(consumer_netns, f"net/ipv6/conf/vmc-{port_name}/disable_ipv6") == "1"
    g = guest(helper, port_name, consumer_netns, spaces, guests)
    g.address("10.20.0.5/24")
    assert ping(g.ns, "10.20.0.1") == 3
    assert ping(peer, "10.20.0.5") == 3
    assert udp_echo(peer, "10.20.0.1", g.ns) == 10
    assert udp_echo(g.ns, "10.20.0.5", peer) == 10
    assert tcp_echo(peer, "10.20.0.1", g.ns) == 200_000
    assert tcp_echo(g.ns, "10.20.0.5", peer) == 200_000
    shown = helper.vmnet_json("port", "show", port_name)["network"]
    assert shown["plugged"] and shown["spoofed"] == {"mac": 0, "arp": 0, "ipv4": 0, "ipv6": 0, "nd": 0}
    helper.vmnet("port", "del", port_name)
    assert not [m for m in links_of_bridge("br0") if m.startswith("vmn-")]


def sysctl_of(ns: str | None, key: str) -> str:
    """/proc/sys/KEY as netns `ns` (None: this one) sees it."""
    if ns is None:
        with open(f"/proc/sys/{key}") as f:
            return f.read().strip()
    return run_in(ns, "cat", f"/proc/sys/{key}").stdout.strip()


def links_of_bridge(bridge: str) -> list[str]:
    from pyroute2 import IPRoute
    with IPRoute() as ip:
        idx = ip.link_lookup(ifname=bridge)[0]
        return [m.get("IFLA_IFNAME") for m in ip.get_links() if m.get("IFLA_MASTER") == idx]


def raw_send(ns: str, ifname: str, frames: list[bytes]) -> None:
    """Send raw Ethernet frames out of `ifname` in netns `ns` (what a guest could put on its wire)."""
    code = (f"import socket\ns=socket.socket(socket.AF_PACKET,socket.SOCK_RAW);s.bind(({ifname!r},0))\n"
            f"for f in {[f.hex() for f in frames]!r}:\n s.send(bytes.fromhex(f))\n")
    py_in(ns, code)


def test_frames_a_guest_sends_from_another_mac_or_address_are_dropped_and_counted(
        helper, consumer_netns, port_name, spaces, guests):
    from vmnet.packets import checksum
    make_bridge("br0")
    peer = spaces.new("vmnet-p")
    veth_to(peer, "pb0", master="br0")
    run_in(peer, "ip", "addr", "add", "10.20.0.1/24", "dev", "eth0")
    run_in(peer, "ip", "-6", "addr", "add", "fd20::1/64", "dev", "eth0", "nodad")
    record = add_port(helper, port_name, consumer_netns, "--bridge", "br0", "--address", "10.20.0.5/24",
                      "--address", "fd20::5/64", "--no-dhcp")
    g = guest(helper, port_name, consumer_netns, spaces, guests)
    g.address("10.20.0.5/24")
    g.address("fd20::5/64")
    assert ping(g.ns, "10.20.0.1") == 3 and ping(peer, "10.20.0.5") == 3
    assert ping(g.ns, "fd20::1") == 3
    counters = lambda: helper.vmnet_json("port", "show", port_name)["network"]["spoofed"]   # noqa: E731
    assert counters() == {"mac": 0, "arp": 0, "ipv4": 0, "ipv6": 0, "nd": 0}
    # an address of someone else: its pings die on the host end
    g.address("10.20.0.99/24")
    assert ping(g.ns, "10.20.0.1", extra=("-I", "10.20.0.99")) == 0
    g.address("fd20::99/64")
    assert ping(g.ns, "fd20::1", extra=("-I", "fd20::99")) == 0
    mac = bytes.fromhex(record["mac"].replace(":", ""))
    other = bytes.fromhex("020000abcdef")
    bcast = b"\xff" * 6
    # a frame from another MAC; an ARP reply claiming the peer's address with our MAC
    arp = bytes.fromhex("0001080006040002") + mac + bytes([10, 20, 0, 1]) + bcast + bytes([10, 20, 0, 1])
    ip = bytearray(bytes.fromhex("450000240000400040110000") + bytes([10, 20, 0, 5, 10, 20, 0, 1]) + bytes(16))
    ip[10:12] = checksum(bytes(ip[:20]))
    # a neighbour advertisement for the peer's address
    na = bytes.fromhex("6000000000183aff") + bytes.fromhex("fe80" + "00" * 12 + "0005") + bytes.fromhex("ff02" + "00" * 13 + "01") \
        + bytes.fromhex("8800000020000000") + bytes.fromhex("fd20" + "00" * 13 + "01")
    raw_send(g.ns, "g0", [bcast + other + b"\x08\x00" + bytes(ip),
                          bcast + mac + b"\x08\x06" + arp,
                          b"\x33\x33\x00\x00\x00\x01" + mac + b"\x86\xdd" + na])
    got = counters()
    assert got["mac"] >= 1 and got["arp"] >= 1 and got["ipv4"] >= 3 and got["ipv6"] >= 3 and got["nd"] >= 1, got
    # the peer still has the right neighbour for 10.20.0.1 (its own) and reaches the guest
    assert ping(peer, "10.20.0.5") == 3
    text = helper.vmnet("port", "show", port_name).stdout
    assert "anti-spoofing dropped: mac" in text
    status = helper.vmnet_json("status")["ports"][0]["network"]["spoofed"]
    assert status["ipv4"] >= 3


def test_without_spoofcheck_the_host_end_has_no_filter(helper, consumer_netns, port_name):
    record = add_port(helper, port_name, consumer_netns, "--no-spoofcheck")
    assert record["filter"] is None
    assert helper.vmnet_json("port", "show", port_name)["network"]["spoofed"] is None


# ---- routed -----------------------------------------------------------------

@pytest.fixture
def fabric(test_netns, spaces):
    """A peer on the host's uplink (192.0.2.0/24, fd02::/64) that routes the VMs' addresses to the
    host, and a host that forwards and has its default route through the peer."""
    peer = spaces.new("vmnet-p")
    veth_to(peer, "up0")
    run_in(test_netns, "ip", "addr", "add", "192.0.2.1/24", "dev", "up0")
    run_in(test_netns, "ip", "-6", "addr", "add", "fd02::1/64", "dev", "up0", "nodad")
    run_in(test_netns, "ip", "route", "add", "default", "via", "192.0.2.2")
    run_in(peer, "ip", "addr", "add", "192.0.2.2/24", "dev", "eth0")
    run_in(peer, "ip", "-6", "addr", "add", "fd02::2/64", "dev", "eth0", "nodad")
    run_in(peer, "ip", "route", "add", "10.1.2.0/24", "via", "192.0.2.1")
    run_in(peer, "ip", "-6", "route", "add", "fd00::/64", "via", "fd02::1")
    run_in(test_netns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    return peer


def reach_routed_guest(g, fabric: str) -> None:
    """Configure guest `g` as 10.1.2.3/32 and fd00::3/128 behind its link-local gateways, and
    check that the peer beyond the host and the guest reach each other both ways."""
    g.run("ip", "addr", "add", "10.1.2.3/32", "dev", "g0")
    g.run("ip", "route", "add", "169.254.1.1", "dev", "g0")
    g.run("ip", "route", "add", "default", "via", "169.254.1.1", "dev", "g0")
    g.run("ip", "-6", "addr", "add", "fd00::3/128", "dev", "g0", "nodad")
    g.run("ip", "-6", "route", "add", "default", "via", "fe80::1", "dev", "g0")
    assert ping(fabric, "10.1.2.3") == 3
    assert ping(g.ns, "192.0.2.2") == 3
    assert ping(fabric, "fd00::3") == 3
    assert ping(g.ns, "fd02::2") == 3
    assert tcp_echo(g.ns, "10.1.2.3", fabric) == 200_000
    assert tcp_echo(fabric, "fd02::2", g.ns) == 200_000


def test_a_routed_port_is_reached_through_the_hosts_routing_table(helper, consumer_netns, port_name, fabric,
                                                                   spaces, guests, test_netns):
    # new devices come with IPv6 off here: vmnet turns it on for the host end that needs it
    run_in(test_netns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
    record = add_port(helper, port_name, consumer_netns, "--routed", "--address", "10.1.2.3",
                      "--address", "fd00::3", "--no-dhcp")
    att = record["attachment"]
    assert att["addresses"] == ["10.1.2.3/32", "fd00::3/128"]
    assert att["gateway4"] == "169.254.1.1" and att["gateway6"] == "fe80::1"
    routes = run_in(test_netns, "ip", "route", "show", "dev", "vmn-" + port_name).stdout
    assert "10.1.2.3" in routes
    assert "fd00::3" in run_in(test_netns, "ip", "-6", "route", "show", "dev", "vmn-" + port_name).stdout
    assert "fe80::1" in run_in(test_netns, "ip", "-6", "neigh", "show", "proxy").stdout
    # the host end answers for the guest's IPv6 gateway: its IPv6 is on, and proxies NDP
    assert sysctl_of(test_netns, f"net/ipv6/conf/vmn-{port_name}/disable_ipv6") == "0"
    assert sysctl_of(test_netns, f"net/ipv6/conf/vmn-{port_name}/proxy_ndp") == "1"
    reach_routed_guest(guest(helper, port_name, consumer_netns, spaces, guests), fabric)
    shown = helper.vmnet_json("port", "show", port_name)["network"]
    assert shown["plugged"] and shown["kind"] == "routed" and not shown.get("notes")
    helper.vmnet("port", "del", port_name)
    assert "10.1.2.3" not in run_in(test_netns, "ip", "route").stdout
    assert "fd00::3" not in run_in(test_netns, "ip", "-6", "route").stdout
    assert "fe80::1" not in run_in(test_netns, "ip", "-6", "neigh", "show", "proxy").stdout


@pytest.fixture
def read_only_sysctl_helper(test_netns):
    """A helper whose /proc/sys is read-only, as in vmnet's DaemonSet (a container that is not
    privileged): a mount namespace of its own, which still receives the host's new mounts."""
    from helpers import HelperProcess
    h = HelperProcess()
    h.prefix = ["unshare", "--mount", "--propagation", "slave", "sh", "-c",
                'mount -o bind,ro /proc/sys /proc/sys && exec "$@"', "sh"]
    try:
        h.start()
        with open(f"/proc/{h.proc.pid}/mountinfo") as f:     # the helper really cannot write there
            assert any(line.split()[4] == "/proc/sys" and line.split()[5].startswith("ro")
                       for line in f), "the helper's /proc/sys is not read-only"
        yield h
    finally:
        h.cleanup()


def test_a_routed_port_works_where_proc_sys_is_read_only(read_only_sysctl_helper, consumer_netns, port_name,
                                                         fabric, spaces, guests, test_netns):
    """IPv4's settings go by rtnetlink; IPv6's come from the host's defaults, which a router has
    (all.forwarding) and the operator gives (all.proxy_ndp)."""
    helper = read_only_sysctl_helper
    run_in(test_netns, "sysctl", "-qw", "net.ipv6.conf.all.proxy_ndp=1")
    add_port(helper, port_name, consumer_netns, "--routed", "--address", "10.1.2.3", "--address", "fd00::3",
             "--no-dhcp")
    host = "vmn-" + port_name
    assert [sysctl_of(test_netns, f"net/ipv4/conf/{host}/{key}") for key in ("forwarding", "proxy_arp")] == ["1", "1"]
    assert sysctl_of(test_netns, f"net/ipv4/neigh/{host}/proxy_delay") == "0"
    assert sysctl_of(test_netns, f"net/ipv6/conf/{host}/forwarding") == "1"       # inherited
    assert sysctl_of(test_netns, f"net/ipv6/conf/{host}/proxy_ndp") == "0"        # the host's `all` serves
    reach_routed_guest(guest(helper, port_name, consumer_netns, spaces, guests), fabric)
    helper.vmnet("port", "del", port_name)
    assert "10.1.2.3" not in run_in(test_netns, "ip", "route").stdout
    assert "fe80::1" not in run_in(test_netns, "ip", "-6", "neigh", "show", "proxy").stdout


def test_where_proc_sys_is_read_only_an_ipv6_port_the_host_cannot_serve_is_refused_with_the_fix(
        read_only_sysctl_helper, consumer_netns, port_name, fabric, test_netns):
    helper = read_only_sysctl_helper
    assert sysctl_of(test_netns, "net/ipv6/conf/all/proxy_ndp") == "0"
    out = helper.vmnet("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", str(NOBODY),
                       "--routed", "--address", "10.1.2.3", "--address", "fd00::3", "--no-dhcp")
    assert out.returncode == 5, out.stderr
    assert "needs proxy_ndp=1" in out.stderr and "/proc/sys cannot be written here" in out.stderr, out.stderr
    assert "sysctl -w net.ipv6.conf.all.proxy_ndp=1" in out.stderr and "IPv4 addresses only" in out.stderr
    assert links.link_state("vmn-" + port_name) is None
    assert helper.vmnet_json("port", "list")["ports"] == []
    # IPv4 alone needs nothing of the host's defaults
    add_port(helper, port_name, consumer_netns, "--routed", "--address", "10.1.2.3", "--no-dhcp")
    assert sysctl_of(test_netns, f"net/ipv4/conf/vmn-{port_name}/proxy_arp") == "1"
    assert "10.1.2.3" in run_in(test_netns, "ip", "route", "show", "dev", "vmn-" + port_name).stdout
    helper.vmnet("port", "del", port_name)


def test_a_routed_ipv6_address_on_a_kernel_without_ipv6_is_refused_with_nothing_made(
        consumer_netns, port_name, fabric, test_netns):
    """A kernel booted with ipv6.disable=1 has no /proc/sys/net/ipv6: here the helper's view of
    /proc/sys/net is an empty tmpfs, so it sees such a kernel (its netlink is this one's)."""
    from helpers import HelperProcess
    h = HelperProcess()
    h.prefix = ["unshare", "--mount", "--propagation", "slave", "sh", "-c",
                'mount -t tmpfs none /proc/sys/net && exec "$@"', "sh"]
    try:
        h.start()
        out = h.vmnet("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", str(NOBODY),
                      "--routed", "--address", "10.1.2.3", "--address", "fd00::3", "--no-dhcp")
        assert out.returncode == 5 and "this kernel runs without IPv6" in out.stderr, out.stderr
        assert "IPv4 addresses only" in out.stderr
        assert links.link_state("vmn-" + port_name) is None
        assert h.vmnet_json("port", "list")["ports"] == []
    finally:
        h.cleanup()


def test_a_routed_address_someone_else_routes_is_refused_with_nothing_made(
        helper, consumer_netns, port_name, fabric, test_netns):
    run_in(test_netns, "ip", "route", "add", "10.1.2.3/32", "via", "192.0.2.2")
    out = helper.vmnet("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", str(NOBODY),
                       "--routed", "--address", "10.1.2.3/32")
    assert out.returncode == 4 and "10.1.2.3/32 is already routed through up0" in out.stderr, out.stderr
    assert links.link_state("vmn-" + port_name) is None
    assert helper.vmnet_json("port", "list")["ports"] == []


def test_a_routed_port_without_a_route_for_its_gateway_is_refused(helper, consumer_netns, port_name):
    out = helper.vmnet("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", str(NOBODY),
                       "--routed", "--address", "10.1.2.3/32")
    assert out.returncode == 3 and "no route for the guest's gateway 169.254.1.1" in out.stderr
    assert "fix:" in out.stderr and links.link_state("vmn-" + port_name) is None



# ---- the guest gets its address --------------------------------------------------

UDHCPC_SCRIPT = """#!/bin/sh
# what busybox's udhcpc learnt, one variable per line, and the address applied as a guest would
env | grep -E '^(ip|subnet|router|dns|domain|search|hostname|mtu|staticroutes|lease|serverid|broadcast)=' \
    > {out}.$1
if [ "$1" = bound ]; then
    ip addr add "$ip/$mask" dev "$interface"
    set -- $staticroutes
    while [ $# -ge 2 ]; do
        if [ "$2" = 0.0.0.0 ]; then ip route add "$1" dev "$interface"; else ip route add "$1" via "$2" dev "$interface"; fi
        shift 2
    done
    [ -z "$staticroutes" ] && [ -n "$router" ] && ip route add default via "$router" dev "$interface"
fi
exit 0
"""


def udhcpc(g, tmp_path, tries: int = 4) -> dict | None:
    """busybox udhcpc in the guest's netns: what it was told (None: no lease)."""
    script, out = tmp_path / "udhcpc.sh", tmp_path / "lease"
    script.write_text(UDHCPC_SCRIPT.replace("{out}", str(out)))
    script.chmod(0o755)
    run = g.run(BUSYBOX, "udhcpc", "-i", "g0", "-n", "-q", "-f", "-t", str(tries), "-T", "1", "-s", str(script),
                check=False, timeout=60)
    bound = tmp_path / "lease.bound"
    if run.returncode != 0 or not bound.exists():
        return None
    return dict(line.split("=", 1) for line in bound.read_text().splitlines() if "=" in line)


def test_a_bridged_guest_gets_its_address_by_dhcp_from_a_real_client(helper, consumer_netns, port_name, spaces,
                                                                      guests, tmp_path):
    make_bridge("br0")
    peer = spaces.new("vmnet-p")
    veth_to(peer, "pb0", master="br0")
    run_in(peer, "ip", "addr", "add", "10.20.0.1/24", "dev", "eth0")
    add_port(helper, port_name, consumer_netns, "--bridge", "br0", "--address", "10.20.0.5/24", "--gateway",
             "10.20.0.1", "--dns", "10.20.0.53", "--search", "vm.test", "--hostname", "web1")
    net = helper.vmnet_json("port", "show", port_name)["network"]
    assert net["addr_server"]["alive"]
    g = guest(helper, port_name, consumer_netns, spaces, guests)
    lease = udhcpc(g, tmp_path)
    assert lease is not None, helper.read_log()
    assert lease["ip"] == "10.20.0.5" and lease["subnet"] == "255.255.255.0" and lease["router"] == "10.20.0.1"
    assert lease["dns"].strip() == "10.20.0.53" and lease["hostname"] == "web1" and lease["mtu"] == "1500"
    assert lease["search"].strip() == "vm.test" and lease["lease"] == "4294967295"
    assert ping(g.ns, "10.20.0.1") == 3 and ping(peer, "10.20.0.5") == 3
    server = helper.vmnet_json("port", "show", port_name)["network"]["addr_server"]
    creds = process_credentials(server["pid"])
    assert creds["uid"] == NOBODY and not creds["effective"] and not creds["permitted"] and creds["no_new_privs"]
    assert open(f"/proc/{server['pid']}/status").read().count("Seccomp:\t2") == 1


def test_a_routed_guest_gets_its_address_gateway_and_routes_by_dhcp(helper, consumer_netns, port_name, fabric,
                                                                     spaces, guests, tmp_path):
    add_port(helper, port_name, consumer_netns, "--routed", "--address", "10.1.2.3", "--address", "fd00::3")
    g = guest(helper, port_name, consumer_netns, spaces, guests)
    lease = udhcpc(g, tmp_path)
    assert lease is not None, helper.read_log()
    assert lease["ip"] == "10.1.2.3" and lease["subnet"] == "255.255.255.255" and lease["router"] == "169.254.1.1"
    # RFC 3442: the link-local gateway on-link first, then the default route through it
    assert lease["staticroutes"].split() == ["169.254.1.1/32", "0.0.0.0", "0.0.0.0/0", "169.254.1.1"]
    assert ping(fabric, "10.1.2.3") == 3 and ping(g.ns, "192.0.2.2") == 3


def test_a_routed_guest_learns_its_ipv6_router_and_address(helper, consumer_netns, port_name, fabric, spaces,
                                                            guests, tmp_path):
    add_port(helper, port_name, consumer_netns, "--routed", "--address", "fd00::3", "--dns", "fd02::53")
    g = guest(helper, port_name, consumer_netns, spaces, guests)
    # the kernel's own router discovery: the default route through fe80::1, with the advertised MTU
    g.run("sysctl", "-qw", "net.ipv6.conf.g0.accept_ra=2")
    g.run("ip", "link", "set", "g0", "down")
    g.run("ip", "link", "set", "g0", "up")
    deadline = time.monotonic() + 20
    while "fe80::1" not in g.run("ip", "-6", "route", "show", "default").stdout and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "via fe80::1 dev g0" in g.run("ip", "-6", "route", "show", "default").stdout
    # and its address by DHCPv6, from a real client (dhcpcd, test mode: it only reports)
    out = g.run("dhcpcd", "-6", "-1", "-T", "-t", "15", "g0", check=False, timeout=60)
    told = {k: v.strip("'") for k, v in (line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)}
    assert told.get("new_dhcp6_ia_na1_ia_addr1") == "fd00::3", out.stdout + out.stderr
    assert told.get("new_dhcp6_name_servers") == "fd02::53"


def test_a_request_from_another_mac_gets_no_lease(helper, consumer_netns, port_name, spaces, guests, tmp_path):
    make_bridge("br0")
    add_port(helper, port_name, consumer_netns, "--bridge", "br0", "--address", "10.20.0.5/24")
    g = guest(helper, port_name, consumer_netns, spaces, guests)
    g.run("ip", "link", "set", "g0", "address", "02:00:00:00:66:66")
    assert udhcpc(g, tmp_path, tries=2) is None
    assert helper.vmnet_json("port", "show", port_name)["network"]["spoofed"]["mac"] >= 1


def test_proxy_ndp_entries_are_added_and_removed_by_raw_requests(test_netns):
    """What a routed port's plug and unplug send for its IPv6 gateway (vmnet.rawnl), checked
    against `ip neigh show proxy`; a second delete finds none."""
    import errno as _errno

    from vmnet import rawnl
    run_in(test_netns, "ip", "link", "add", "vmt-pn0", "type", "veth", "peer", "name", "vmt-pn1")
    ifindex = links.link_state("vmt-pn0")["ifindex"]
    rawnl.transact(rawnl.proxy_neighbour_request(rawnl.RTM_NEWNEIGH, "fe80::1", ifindex))
    assert "fe80::1 dev vmt-pn0" in run_in(test_netns, "ip", "-6", "neigh", "show", "proxy").stdout
    rawnl.transact(rawnl.proxy_neighbour_request(rawnl.RTM_DELNEIGH, "fe80::1", ifindex))
    assert "fe80::1" not in run_in(test_netns, "ip", "-6", "neigh", "show", "proxy").stdout
    with pytest.raises(OSError) as exc:
        rawnl.transact(rawnl.proxy_neighbour_request(rawnl.RTM_DELNEIGH, "fe80::1", ifindex))
    assert exc.value.errno == _errno.ENOENT
