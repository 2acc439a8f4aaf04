"""Port lifecycle on real kernel objects: what a port owns, bad input, teardown."""

import os
import subprocess

import pytest
from pyroute2.ethtool import Ethtool

from vmnet.errors import AlreadyExists, InvalidInput, NotFound
from vmnet.model import PortSpec
from vmnet.priv import bpf, hostfilter, links, netns, ports, xsk, xskprog

pytestmark = pytest.mark.netns


def test_port_owns_devices_a_link_to_the_shared_program_slots_and_one_socket_per_queue(
        test_netns, consumer_netns, port_name, instance):
    c = ports.create_port(PortSpec(name=port_name, queues=4, netns=consumer_netns), instance)
    root = instance.pin_root
    try:
        assert len(c.sockets) == 4
        assert c.port.mode == "native" and c.port.layout == 2 and len(c.port.slots) == 4
        # the XSK program's link on the consumer end; the anti-spoofing filter is a classifier
        # on the host end's clsact, which the device owns (no pin)
        assert sorted(os.listdir(bpf.pin_dir(port_name, root))) == ["link"]
        assert sorted(os.listdir(xskprog.pin_dir(root))) == sorted(xskprog.PINS)
        assert sorted(os.listdir(hostfilter.pin_dir(root))) == sorted(hostfilter.PINS)
        assert c.port.filter == {"hook": "tc"}
        shown = subprocess.run(["tc", "filter", "show", "dev", c.port.spec.host_ifname, "ingress"],
                               capture_output=True, text=True).stdout
        assert hostfilter.PROGRAMS["tc"] in shown and "direct-action" in shown, shown
        assert links.link_state(c.port.spec.host_ifname)["mtu"] == c.port.mtu
        with netns.entered(consumer_netns):
            cons = links.link_state(c.port.spec.consumer_ifname)
        assert cons["xdp_mode"] == "native" and cons["xdp_drv_prog_id"] == c.port.prog_id
        assert cons["ifindex"] == c.port.consumer_ifindex == xskprog.consumer_ifindex(c.port.slots[0])
        assert cons["num_rx_queues"] == 4
        assert cons["address"] == c.port.spec.mac
        prog = xskprog.opened(root)
        try:
            claims = prog.claims()
            assert {s: claims[s] for s in c.port.slots} == {
                s: (port_name, cons["ifindex"], q) for s, q in zip(c.port.slots, range(4))}
        finally:
            prog.close()
        # unbound sockets: the kernel reports zero statistics, not an error
        assert xsk.statistics(c.sockets[0].fileno())["rx_dropped"] == 0
    finally:
        c.close()
        assert ports.delete_port(port_name, instance) is True
    assert not bpf.pinned(port_name, root)
    assert links.link_state("vmn-" + port_name) is None
    assert not os.path.exists(root)             # the last port took the shared program's pins along


def test_skb_mode_is_recorded_and_gets_the_larger_mtu(test_netns, port_name, instance):
    c = ports.create_port(PortSpec(name=port_name, mode="skb"), instance)
    try:
        assert c.port.mode == "skb"
        assert links.link_state(c.port.spec.consumer_ifname)["xdp_mode"] == "skb"
        assert c.port.mtu == 3826
    finally:
        c.close()
        ports.delete_port(port_name, instance)


def test_the_consumer_end_has_no_ipv6_address_and_sends_nothing_of_its_own(test_netns, port_name, instance):
    """It carries the VM's MAC: a frame its own stack sent (DAD, router solicitation, MLD) would teach
    switches the VM's MAC on this port, wherever the VM runs."""
    import subprocess
    import time
    c = ports.create_port(PortSpec(name=port_name), instance)
    try:
        time.sleep(1.5)         # DAD and the first router solicitation would have gone by now
        consumer = c.port.spec.consumer_ifname
        assert subprocess.run(["ip", "-6", "addr", "show", "dev", consumer], capture_output=True,
                              text=True).stdout.strip().count("inet6") == 0
        shown = subprocess.run(["ip", "-s", "-j", "link", "show", c.port.spec.host_ifname], capture_output=True,
                               text=True).stdout
        import json
        assert json.loads(shown)[0]["stats64"]["rx"]["packets"] == 0
        # IPv6 is off on it altogether (no routes of its own in the netns), while the host end of a
        # port plugged nowhere keeps its IPv6 for whatever the operator connects there
        assert ipv6_disabled(consumer) and not ipv6_disabled(c.port.spec.host_ifname)
        assert consumer not in subprocess.run(["ip", "-6", "route", "show", "table", "all"], capture_output=True,
                                              text=True).stdout
    finally:
        c.close()
        ports.delete_port(port_name, instance)


def ipv6_disabled(ifname: str) -> bool:
    """Whether device `ifname` of this netns has IPv6 turned off."""
    with open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6") as f:
        return f.read().strip() == "1"


def test_offloads_are_off_on_the_host_end(test_netns, port_name, instance):
    c = ports.create_port(PortSpec(name=port_name), instance)
    try:
        eth = Ethtool()
        feats = eth.get_features(c.port.spec.host_ifname).features
        eth.close()
        for name in ("tx-checksum-ip-generic", "tx-tcp-segmentation", "tx-generic-segmentation",
                     "tx-udp-segmentation", "tx-vlan-hw-insert"):
            assert feats[name].enable is False, name
    finally:
        c.close()
        ports.delete_port(port_name, instance)


def test_mtu_is_configurable_and_refused_above_what_a_frame_carries(test_netns, port_name, instance):
    c = ports.create_port(PortSpec(name=port_name, mtu=1500), instance)
    try:
        assert c.port.mtu == 1500
        assert links.link_state(c.port.spec.host_ifname)["mtu"] == 1500
    finally:
        c.close()
        ports.delete_port(port_name, instance)
    with pytest.raises(InvalidInput) as exc:
        ports.create_port(PortSpec(name=port_name, mtu=3700, mode="native"), instance)
    assert "3506" in str(exc.value)
    assert not ports.port_exists(port_name, instance)


def test_creating_an_existing_port_is_refused_and_leaves_the_first_intact(test_netns, port_name, instance):
    c = ports.create_port(PortSpec(name=port_name), instance)
    try:
        with pytest.raises(AlreadyExists) as exc:
            ports.create_port(PortSpec(name=port_name), instance)
        assert "vmnet port del" in exc.value.fix
        assert bpf.pinned(port_name, instance.pin_root)
        assert links.link_state("vmn-" + port_name) is not None
    finally:
        c.close()
        ports.delete_port(port_name, instance)


def test_deleting_a_port_twice_is_harmless_and_reports_absence(test_netns, port_name, instance):
    c = ports.create_port(PortSpec(name=port_name), instance)
    c.close()
    assert ports.delete_port(port_name, instance) is True
    assert ports.delete_port(port_name, instance) is False


def test_port_is_removable_after_its_consumer_netns_is_gone(test_netns, port_name, instance):
    other = "vmnet-gone" + port_name[1:]
    netns.create_named(other)
    c = ports.create_port(PortSpec(name=port_name, netns=other), instance)
    c.close()
    netns.remove_named(other)       # takes the veth pair with it
    assert ports.delete_port(port_name, instance) is True
    assert not ports.port_exists(port_name, instance)


@pytest.mark.parametrize("ref", ["vmnet-does-not-exist", "/proc/999999999/ns/net"])
def test_missing_netns_is_refused_before_anything_is_created(test_netns, port_name, ref, instance):
    with pytest.raises(NotFound) as exc:
        ports.create_port(PortSpec(name=port_name, netns=ref), instance)
    assert "ip netns add" in exc.value.fix
    assert not ports.port_exists(port_name, instance)


def test_a_file_that_is_not_a_netns_is_refused(test_netns, port_name, instance):
    path = "/run/netns/vmnet-notns" + port_name
    os.makedirs("/run/netns", exist_ok=True)
    with open(path, "w"):
        pass
    try:
        with pytest.raises(InvalidInput) as exc:
            ports.create_port(PortSpec(name=port_name, netns=path), instance)
        assert "not a network namespace" in exc.value.message
        assert not ports.port_exists(port_name, instance)
    finally:
        os.unlink(path)


@pytest.mark.parametrize("name", ["", "a" * 12, "Bad", "a/b", "a b", "-x", "é"])
def test_invalid_port_names_are_refused(name):
    with pytest.raises(InvalidInput):
        PortSpec(name=name)


@pytest.mark.parametrize("queues", [0, 65, -1])
def test_invalid_queue_counts_are_refused(queues):
    with pytest.raises(InvalidInput) as exc:
        PortSpec(name="q", queues=queues)
    assert "1 to 64" in exc.value.fix


def test_where_proc_sys_is_read_only_ipv6_stays_on_and_that_is_said_once(test_netns):
    """A helper in a container that is not privileged (vmnet's DaemonSet) cannot write /proc/sys:
    turning IPv6 off is then left out, with one warning, not a failed create."""
    import sys
    subprocess.run(["ip", "link", "add", "vmt-ro0", "type", "veth", "peer", "name", "vmt-ro1"], check=True)
    code = ("import logging; logging.basicConfig(); from vmnet.priv import links; "
            "print(links.disable_ipv6('vmt-ro0'), links.disable_ipv6('vmt-ro1'))")
    out = subprocess.run(["nsenter", f"--net=/run/netns/{test_netns}", "unshare", "--mount", "--propagation",
                          "private", "sh", "-c", 'mount -o bind,ro /proc/sys /proc/sys && exec "$0" -c "$1"',
                          sys.executable, code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
    assert out.stderr.count("ports keep IPv6 on their devices") == 1, out.stderr
    assert not ipv6_disabled("vmt-ro0")
    assert links.disable_ipv6("vmt-ro0") and ipv6_disabled("vmt-ro0")     # where it can be written
