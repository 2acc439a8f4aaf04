"""What vmnet.model accepts and refuses, before anything touches the kernel."""

from __future__ import annotations

import pytest

from vmnet import fields
from vmnet.errors import InvalidInput
from vmnet.model import Port, PortSpec

pytestmark = pytest.mark.unit


def assert_invalid(func, *args, **kwargs) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        func(*args, **kwargs)
    err = info.value
    assert err.exit_code == 2
    assert err.code == "invalid-input"
    assert err.fix, f"{err.message!r} carries no fix"
    return err


# --- port names ------------------------------------------------------------

@pytest.mark.parametrize("name", ["a", "vm1", "0", "web_1", "web-1", "a" * 11, "abcdefghij9"])
def test_port_name_of_lowercase_digits_dash_underscore_up_to_11_chars_is_accepted(name):
    assert fields.validate_port_name(name) == name


def test_port_name_of_11_chars_gives_device_names_of_exactly_15_chars():
    spec = PortSpec(name="a" * 11)
    assert len(spec.host_ifname) == 15
    assert len(spec.consumer_ifname) == 15


def test_empty_port_name_is_refused():
    assert_invalid(fields.validate_port_name, "")


def test_port_name_of_12_chars_is_refused_naming_the_limit():
    err = assert_invalid(fields.validate_port_name, "a" * 12)
    assert "11" in err.message
    assert "15" in err.fix


@pytest.mark.parametrize("name", [
    "VM1",            # uppercase
    "Vm",
    "vm 1",           # space
    "vm/1",           # slash: would be a path component somewhere
    "vm.1",
    "vm:1",
    "vmé",            # unicode letter
    "vm\u0661",       # unicode digit
    "-vm",            # leading dash: looks like an option to ip(8)
    "_vm",
    "vm\t",
    "vm\x00",
])
def test_port_name_with_characters_outside_the_safe_set_is_refused(name):
    assert_invalid(fields.validate_port_name, name)


@pytest.mark.parametrize("name", ["vm1\n", "a\n"])
def test_port_name_with_trailing_newline_is_refused(name):
    # '$' in a re.match pattern also matches before a trailing newline; the
    # device would be named 'vmn-vm1\n'.
    assert_invalid(fields.validate_port_name, name)


@pytest.mark.parametrize("name", [None, 5, b"vm1"])
def test_port_name_that_is_not_a_string_is_refused(name):
    assert_invalid(fields.validate_port_name, name)


# --- interface names ---------------------------------------------------------

@pytest.mark.parametrize("name", ["eth0", "enp3s0f1", "br-lan.10", "a" * 15])
def test_interface_name_up_to_15_safe_chars_is_accepted(name):
    assert fields.validate_ifname(name) == name


@pytest.mark.parametrize("name", ["", "a" * 16, "-eth0", "eth 0", "eth/0", "eth0\n", "ethé", None])
def test_interface_name_empty_too_long_or_unsafe_is_refused(name):
    assert_invalid(fields.validate_ifname, name)


# --- queues -------------------------------------------------------------------

@pytest.mark.parametrize("queues", [1, 2, 64])
def test_queue_count_from_1_to_64_is_accepted(queues):
    assert fields.validate_queues(queues) == (queues, 0)


@pytest.mark.parametrize("queues", [0, 65, -1, True, False, "2", 2.0, None])
def test_queue_count_out_of_range_or_not_an_int_is_refused(queues):
    assert_invalid(fields.validate_queues, queues)


@pytest.mark.parametrize("start", [0, 1, 3, 1023])
def test_start_queue_from_0_to_1023_is_accepted(start):
    assert fields.validate_queues(1, start) == (1, start)


@pytest.mark.parametrize("start", [-1, 1024, True, "0", 0.0, None])
def test_start_queue_out_of_range_or_not_an_int_is_refused(start):
    assert_invalid(fields.validate_queues, 1, start)


def test_portspec_refuses_a_bad_queue_count():
    assert_invalid(PortSpec, name="vm1", queues=0)
    assert_invalid(PortSpec, name="vm1", queues=65)


def test_portspec_refuses_a_bad_start_queue():
    assert_invalid(PortSpec, name="vm1", start_queue=-1)
    assert_invalid(PortSpec, name="vm1", start_queue=1024)


# --- netns references ------------------------------------------------------

@pytest.mark.parametrize("ref", [None, ""])
def test_missing_netns_reference_means_the_current_netns(ref):
    assert fields.validate_netns(ref) is None


@pytest.mark.parametrize("ref", ["/proc/123/ns/net", "/proc/1/ns/net", "/proc/4194304/ns/net"])
def test_netns_of_a_pid_is_accepted_unchanged(ref):
    assert fields.validate_netns(ref) == ref


@pytest.mark.parametrize("ref", ["x", "/run/netns/x", "/var/run/netns/x"])
def test_named_netns_is_normalised_to_run_netns(ref):
    assert fields.validate_netns(ref) == "/run/netns/x"


@pytest.mark.parametrize("ref", ["vm-1.ns_a", "/run/netns/vm-1.ns_a"])
def test_named_netns_keeps_dots_dashes_and_underscores(ref):
    assert fields.validate_netns(ref) == "/run/netns/vm-1.ns_a"


def test_named_netns_of_64_chars_is_accepted_and_65_refused():
    assert fields.validate_netns("n" * 64) == "/run/netns/" + "n" * 64
    assert_invalid(fields.validate_netns, "n" * 65)


@pytest.mark.parametrize("ref", [
    "/etc/passwd",
    "../x",
    "/run/netns/../x",
    "/run/netns/..",
    "/run/netns/.",
    "..",
    ".",
    "/run/netns/",
    "/run/netns/a/b",
    "/proc/self/ns/net",       # the helper's own netns, not the consumer's
    "/proc/thread-self/ns/net",
    "/proc/123/ns/mnt",
    "/proc/123/ns/net/",
    "/proc//ns/net",
    "/proc/-1/ns/net",
    "/proc/123/root/run/netns/x",
    "/dev/null",
    ".hidden",
    "-n",
    "a b",
])
def test_netns_reference_that_is_neither_a_pid_nor_a_name_is_refused(ref):
    assert_invalid(fields.validate_netns, ref)


@pytest.mark.parametrize("ref", ["/proc/123/ns/net\n", "x\n", "/run/netns/x\n"])
def test_netns_reference_with_trailing_newline_is_refused(ref):
    assert_invalid(fields.validate_netns, ref)


def test_netns_pid_made_of_non_ascii_digits_is_refused():
    # '\d' matches any Unicode digit: '/proc/١٢٣/ns/net' names no process.
    assert_invalid(fields.validate_netns, "/proc/\u0661\u0662\u0663/ns/net")


def test_netns_reference_that_is_not_a_string_is_refused():
    with pytest.raises(InvalidInput) as info:
        fields.validate_netns(123)
    assert info.value.exit_code == 2


def test_portspec_normalises_its_netns():
    assert PortSpec(name="vm1", netns="x").netns == "/run/netns/x"
    assert PortSpec(name="vm1", netns="/proc/42/ns/net").netns == "/proc/42/ns/net"
    assert PortSpec(name="vm1").netns is None
    assert_invalid(PortSpec, name="vm1", netns="/etc/passwd")


# --- MAC addresses ------------------------------------------------------------

def test_unicast_mac_is_accepted():
    assert fields.validate_mac("02:00:00:00:00:01") == "02:00:00:00:00:01"
    assert fields.validate_mac("52:54:00:12:34:56") == "52:54:00:12:34:56"


def test_uppercase_mac_is_normalised_to_lowercase():
    assert fields.validate_mac("52:54:00:AB:CD:EF") == "52:54:00:ab:cd:ef"


@pytest.mark.parametrize("mac", ["01:00:5e:00:00:01", "03:00:00:00:00:01", "33:33:00:00:00:01",
                                 "ff:ff:ff:ff:ff:ff", "FF:FF:FF:FF:FF:FF"])
def test_multicast_or_broadcast_mac_is_refused(mac):
    err = assert_invalid(fields.validate_mac, mac)
    assert "multicast" in err.message


@pytest.mark.parametrize("mac", ["", "02:00:00:00:00", "02:00:00:00:00:01:02", "02-00-00-00-00-01",
                                 "0200.0000.0001", "020000000001", "2:0:0:0:0:1", "g2:00:00:00:00:01",
                                 "02:00:00:00:00:01\n", " 02:00:00:00:00:01", None, 0x020000000001])
def test_malformed_mac_is_refused(mac):
    assert_invalid(fields.validate_mac, mac)


@pytest.mark.parametrize("name", ["vm1", "a", "a" * 11, "web_1"])
def test_default_mac_is_a_locally_administered_unicast_address(name):
    mac = fields.default_mac(name)
    assert fields.validate_mac(mac) == mac
    first = int(mac[:2], 16)
    assert first & 0x02, "locally administered bit set"
    assert not first & 0x01, "unicast"


def test_default_mac_is_stable_and_differs_between_ports():
    assert fields.default_mac("vm1") == fields.default_mac("vm1")
    assert fields.default_mac("vm1") != fields.default_mac("vm2")
    # pinned: a port must keep its MAC across helper versions and restarts
    assert fields.default_mac("vm1") == "02:" + ":".join(
        f"{b:02x}" for b in __import__("hashlib").sha256(b"vm1").digest()[:5])


def test_portspec_uses_the_default_mac_when_none_is_given():
    assert PortSpec(name="vm1").mac == fields.default_mac("vm1")
    assert PortSpec(name="vm1", mac="").mac == fields.default_mac("vm1")


def test_portspec_normalises_and_validates_its_mac():
    assert PortSpec(name="vm1", mac="02:AA:BB:CC:DD:EE").mac == "02:aa:bb:cc:dd:ee"
    assert_invalid(PortSpec, name="vm1", mac="01:00:00:00:00:00")


# --- MTU ----------------------------------------------------------------------

def test_largest_mtu_is_one_4k_umem_frame_minus_headroom_and_ethernet_header():
    assert fields.MTU_FRAME_MAX == 4096 - 256 - 14 == 3826


@pytest.mark.parametrize("mtu", [None, 576, 1500, 3826])
def test_mtu_within_bounds_is_accepted(mtu):
    assert fields.validate_mtu(mtu) == mtu


@pytest.mark.parametrize("mtu", [575, 3827, 9000, 0, -1, True, "1500", 1500.0])
def test_mtu_out_of_bounds_or_not_an_int_is_refused(mtu):
    err = assert_invalid(fields.validate_mtu, mtu)
    assert "3826" in err.fix


def test_portspec_refuses_a_bad_mtu():
    assert_invalid(PortSpec, name="vm1", mtu=9000)


# --- PortSpec ----------------------------------------------------------------

def test_portspec_device_names_derive_from_the_port_name():
    spec = PortSpec(name="vm1")
    assert spec.host_ifname == "vmn-vm1"
    assert spec.consumer_ifname == "vmc-vm1"
    assert fields.validate_ifname(spec.host_ifname)
    assert fields.validate_ifname(spec.consumer_ifname)


@pytest.mark.parametrize("queues, start, keys", [
    (1, 0, [0]),
    (2, 0, [0, 1]),
    (4, 3, [3, 4, 5, 6]),
    (1, 1023, [1023]),
])
def test_portspec_map_keys_are_start_queue_plus_queue_index(queues, start, keys):
    assert PortSpec(name="vm1", queues=queues, start_queue=start).map_keys == keys


def test_portspec_defaults():
    spec = PortSpec(name="vm1")
    assert (spec.queues, spec.start_queue, spec.backend, spec.mode) == (1, 0, "veth", "auto")
    assert spec.mtu is None and spec.consumer_uid is None and spec.consumer_gid is None


@pytest.mark.parametrize("mode", ["auto", "native", "skb"])
def test_portspec_accepts_known_modes(mode):
    assert PortSpec(name="vm1", mode=mode).mode == mode


def test_portspec_refuses_an_unknown_mode_or_backend():
    assert_invalid(PortSpec, name="vm1", mode="drv")
    assert_invalid(PortSpec, name="vm1", backend="tap")


def test_portspec_refuses_a_bad_name():
    assert_invalid(PortSpec, name="a" * 12)
    assert_invalid(PortSpec, name="-vm")


@pytest.mark.parametrize("ident", [0, 107, 65534, 2**32 - 2])
def test_portspec_accepts_valid_consumer_ids(ident):
    spec = PortSpec(name="vm1", consumer_uid=ident, consumer_gid=ident)
    assert (spec.consumer_uid, spec.consumer_gid) == (ident, ident)


@pytest.mark.parametrize("field", ["consumer_uid", "consumer_gid"])
@pytest.mark.parametrize("ident", [-1, 2**32 - 1, 2**32, True, "107"])
def test_portspec_refuses_invalid_consumer_ids(field, ident):
    # (uid_t)-1 means "unchanged" to setresuid(): never a consumer identity
    with pytest.raises(InvalidInput) as info:
        PortSpec(name="vm1", **{field: ident})
    assert info.value.exit_code == 2


def test_portspec_is_immutable():
    spec = PortSpec(name="vm1")
    with pytest.raises(Exception):
        spec.name = "vm2"  # type: ignore[misc]


def test_portspec_to_dict_holds_the_normalised_values():
    d = PortSpec(name="vm1", queues=2, netns="x", mac="02:AA:00:00:00:01").to_dict()
    assert d["name"] == "vm1" and d["queues"] == 2
    assert d["netns"] == "/run/netns/x"
    assert d["mac"] == "02:aa:00:00:00:01"


def test_port_to_dict_reports_requested_and_attached_mode_and_map_keys():
    spec = PortSpec(name="vm1", queues=2, start_queue=3)
    port = Port(spec=spec, mode="skb", mtu=3826, host_ifindex=5, consumer_ifindex=2)
    d = port.to_dict()
    assert d["mode_requested"] == "auto" and d["mode"] == "skb"
    assert d["host_ifname"] == "vmn-vm1" and d["consumer_ifname"] == "vmc-vm1"
    assert (d["host_ifindex"], d["consumer_ifindex"]) == (5, 2)
    assert d["map_keys"] == [3, 4]
    assert d["mtu"] == 3826


# --- the error contract -----------------------------------------------------------

def test_invalid_input_names_the_object_and_the_fix_in_its_text():
    err = assert_invalid(fields.validate_port_name, "VM1")
    text = str(err)
    assert "'VM1'" in text
    assert "fix:" in text
    assert err.to_dict()["code"] == "invalid-input"
    assert err.to_dict()["fix"] == err.fix
