"""The QEMU arguments vmnet emits, checked against what QEMU's net/af-xdp.c accepts."""

from __future__ import annotations

import pytest

from vmnet import qemu_args
from vmnet.errors import InvalidInput
from vmnet.model import Port, PortSpec
from vmnet.qemu_args import device_arg, netdev_arg, parse_af_xdp_netdev, parse_opts, qemu_argv

pytestmark = pytest.mark.unit

QUEUE_LAYOUTS = [(n, s) for n in (1, 2, 4) for s in (0, 3)]


def make_port(queues=1, start_queue=0, mode="skb", name="vm1", mac=None, mtu=3826) -> Port:
    spec = PortSpec(name=name, queues=queues, start_queue=start_queue, mac=mac)
    return Port(spec=spec, mode=mode, mtu=mtu, host_ifindex=5, consumer_ifindex=2)


def fds_for(n: int) -> list[int]:
    return list(range(10, 10 + n))


def options(arg: str) -> dict:
    return parse_opts(arg)[1]


# --- netdev_arg ------------------------------------------------------------

@pytest.mark.parametrize("queues, start", QUEUE_LAYOUTS)
def test_netdev_arg_states_queues_start_queue_mode_inhibit_and_one_fd_per_queue(queues, start):
    port = make_port(queues, start)
    arg = netdev_arg(port, fds_for(queues))
    kind, opts = parse_opts(arg)
    assert kind == "af-xdp"
    assert opts["queues"] == str(queues)
    assert opts["start-queue"] == str(start)
    assert opts["mode"] == "skb"
    assert opts["inhibit"] == "on"
    assert opts["sock-fds"].split(":") == [str(fd) for fd in fds_for(queues)]
    assert opts["id"] == "vmnet-vm1"
    assert opts["ifname"] == "vmc-vm1"


@pytest.mark.parametrize("mode", ["native", "skb"])
def test_netdev_arg_mode_is_the_attach_mode_of_the_port(mode):
    assert options(netdev_arg(make_port(mode=mode), [3]))["mode"] == mode


def test_netdev_arg_mode_is_the_attached_mode_not_the_requested_one():
    spec = PortSpec(name="vm1", mode="auto")
    port = Port(spec=spec, mode="skb", mtu=1500, host_ifindex=5, consumer_ifindex=2)
    assert options(netdev_arg(port, [3]))["mode"] == "skb"


def test_netdev_arg_exact_text_for_two_queues():
    assert netdev_arg(make_port(2, 3), [7, 8]) == (
        "af-xdp,id=vmnet-vm1,ifname=vmc-vm1,queues=2,start-queue=3,mode=skb,inhibit=on,sock-fds=7:8")


@pytest.mark.parametrize("queues, start", QUEUE_LAYOUTS)
def test_netdev_arg_round_trips_through_the_parser(queues, start):
    port = make_port(queues, start)
    parsed = parse_af_xdp_netdev(netdev_arg(port, fds_for(queues)))
    assert parsed["id"] == "vmnet-vm1"
    assert parsed["ifname"] == port.spec.consumer_ifname
    assert parsed["queues"] == queues
    assert parsed["start_queue"] == start
    assert parsed["mode"] == port.mode
    assert parsed["inhibit"] is True
    assert parsed["force_copy"] is False
    assert parsed["sock_fds"] == [str(fd) for fd in fds_for(queues)]
    bound_queues = [parsed["start_queue"] + i for i in range(parsed["queues"])]
    assert bound_queues == port.spec.map_keys


@pytest.mark.parametrize("queues, nfds", [(1, 0), (1, 2), (2, 1), (4, 3), (4, 5)])
def test_netdev_arg_refuses_a_fd_count_other_than_the_queue_count(queues, nfds):
    with pytest.raises(InvalidInput) as info:
        netdev_arg(make_port(queues), fds_for(nfds))
    assert info.value.exit_code == 2


def test_netdev_arg_accepts_fd_names_registered_with_getfd():
    arg = netdev_arg(make_port(2), ["xsk0", "xsk1"])
    assert options(arg)["sock-fds"] == "xsk0:xsk1"


# --- device_arg -------------------------------------------------------------

def test_device_arg_for_one_queue_has_mac_and_host_mtu_and_no_multiqueue():
    port = make_port(1, mac="02:00:00:00:00:01", mtu=1500)
    kind, opts = parse_opts(device_arg(port))
    assert kind == "virtio-net-pci"
    assert opts == {"netdev": "vmnet-vm1", "mac": "02:00:00:00:00:01", "host_mtu": "1500"}


@pytest.mark.parametrize("queues", [2, 4, 64])
def test_device_arg_for_several_queues_enables_mq_with_2n_plus_2_vectors(queues):
    port = make_port(queues)
    opts = options(device_arg(port))
    assert opts["mq"] == "on"
    assert opts["vectors"] == str(2 * queues + 2)
    assert opts["mac"] == port.spec.mac
    assert opts["host_mtu"] == "3826"


def test_device_arg_uses_the_default_mac_of_the_port():
    port = make_port()
    assert options(device_arg(port))["mac"] == port.spec.mac


def test_device_arg_takes_another_driver():
    assert device_arg(make_port(), driver="virtio-net-device").startswith("virtio-net-device,")


def test_device_and_netdev_refer_to_the_same_id():
    port = make_port(2)
    assert options(device_arg(port))["netdev"] == options(netdev_arg(port, [3, 4]))["id"]


def test_qemu_argv_is_netdev_then_device():
    port = make_port(2)
    assert qemu_argv(port, [3, 4]) == ["-netdev", netdev_arg(port, [3, 4]),
                                       "-device", device_arg(port)]


# --- parse_opts ----------------------------------------------------------------

def test_parse_opts_splits_type_and_options():
    assert parse_opts("af-xdp,id=a,ifname=b") == ("af-xdp", {"id": "a", "ifname": "b"})


def test_parse_opts_type_alone():
    assert parse_opts("af-xdp") == ("af-xdp", {})


def test_parse_opts_double_comma_is_a_literal_comma_in_a_value():
    assert parse_opts("x,a=b,,c,d=e") == ("x", {"a": "b,c", "d": "e"})


def test_parse_opts_double_comma_in_the_type_and_at_the_end_of_a_value():
    assert parse_opts("a,,b,k=v,,") == ("a,b", {"k": "v,"})


def test_parse_opts_four_commas_are_two_literal_commas():
    assert parse_opts("x,k=a,,,,b") == ("x", {"k": "a,,b"})


def test_parse_opts_value_may_contain_equals_signs():
    assert parse_opts("x,k=a=b") == ("x", {"k": "a=b"})


@pytest.mark.parametrize("text", ["x,novalue", "x,=v", "x,k=v,", "x,,,k"])
def test_parse_opts_refuses_an_option_that_is_not_key_value(text):
    with pytest.raises(InvalidInput):
        parse_opts(text)


# --- parse_af_xdp_netdev refuses what QEMU refuses ----------------------------------

BASE = "af-xdp,id=n0,ifname=vmc-vm1"


def test_parse_minimal_netdev_takes_qemu_defaults():
    parsed = parse_af_xdp_netdev(BASE)
    assert parsed == {"id": "n0", "ifname": "vmc-vm1", "queues": 1, "start_queue": 0,
                      "mode": "native", "inhibit": False, "force_copy": False, "sock_fds": []}


def test_parse_reads_force_copy():
    assert parse_af_xdp_netdev(BASE + ",force-copy=on")["force_copy"] is True


@pytest.mark.parametrize("text", [
    BASE + ",inhibit=on",                        # inhibit without sock-fds
    BASE + ",sock-fds=3",                        # sock-fds without inhibit
    BASE + ",inhibit=off,sock-fds=3",
])
def test_parse_refuses_inhibit_without_sock_fds_and_vice_versa(text):
    with pytest.raises(InvalidInput, match="inhibit"):
        parse_af_xdp_netdev(text)


@pytest.mark.parametrize("queues, fds", [(1, "3:4"), (2, "3"), (4, "3:4:5"), (2, "3:4:5")])
def test_parse_refuses_a_sock_fds_count_other_than_queues(queues, fds):
    with pytest.raises(InvalidInput, match="socket fds"):
        parse_af_xdp_netdev(f"{BASE},queues={queues},inhibit=on,sock-fds={fds}")


def test_parse_counts_sock_fds_against_the_default_of_one_queue():
    with pytest.raises(InvalidInput):
        parse_af_xdp_netdev(BASE + ",inhibit=on,sock-fds=3:4")


@pytest.mark.parametrize("queues", [0, -1])
def test_parse_refuses_fewer_than_one_queue(queues):
    with pytest.raises(InvalidInput, match="queues"):
        parse_af_xdp_netdev(f"{BASE},queues={queues}")


@pytest.mark.parametrize("text", [
    "tap,id=n0,ifname=tap0",
    "user,id=n0",
    "af_xdp,id=n0,ifname=x",
    "id=n0,ifname=x",
])
def test_parse_refuses_a_netdev_that_is_not_af_xdp(text):
    with pytest.raises(InvalidInput):
        parse_af_xdp_netdev(text)


@pytest.mark.parametrize("text", ["af-xdp,ifname=x", "af-xdp,id=n0"])
def test_parse_refuses_a_netdev_without_id_or_ifname(text):
    with pytest.raises(InvalidInput):
        parse_af_xdp_netdev(text)


@pytest.mark.parametrize("text", [BASE + ",queues=two", BASE + ",start-queue=x"])
def test_parse_refuses_queue_numbers_that_are_not_numbers(text):
    with pytest.raises(InvalidInput):
        parse_af_xdp_netdev(text)


def test_parse_refuses_an_unknown_mode():
    with pytest.raises(InvalidInput, match="mode"):
        parse_af_xdp_netdev(BASE + ",mode=auto")


def test_parse_reads_skb_mode():
    assert parse_af_xdp_netdev(BASE + ",mode=skb")["mode"] == "skb"


def test_parse_of_an_empty_sock_fds_list_is_refused_as_invalid_input():
    # QEMU: g_strsplit("", ":") has 0 entries -> "expected 1 socket fds, got 0"
    with pytest.raises(InvalidInput):
        parse_af_xdp_netdev(BASE + ",inhibit=on,sock-fds=")


@pytest.mark.parametrize("fds", ["3:", "3:-", "3:\u0661"])
def test_parse_of_a_sock_fds_entry_that_is_neither_number_nor_name_raises_invalid_input(fds):
    # a malformed netdev must surface as the project's InvalidInput, not a bare ValueError
    with pytest.raises(InvalidInput):
        parse_af_xdp_netdev(f"{BASE},queues=2,inhibit=on,sock-fds={fds}")


def test_parse_accepts_getfd_names_as_qemu_does():
    parsed = parse_af_xdp_netdev(f"{BASE},queues=2,inhibit=on,sock-fds=xsk0:xsk1")
    assert parsed["sock_fds"] == ["xsk0", "xsk1"]


def test_netdev_id_prefixes_the_port_name():
    assert qemu_args.netdev_id("vm1") == "vmnet-vm1"
