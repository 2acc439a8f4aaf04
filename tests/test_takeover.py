"""Tap takeover's argv rules and the pod identity rules (pure)."""

import json

import pytest

from vmnet import pod, tap_alias
from vmnet.errors import InvalidInput
from vmnet.kubevirt import takeover
from vmnet.qemu_args import netdev_qapi

pytestmark = pytest.mark.unit

# what libvirt 11.3 wrote here for <interface type='ethernet'><target managed='no'/>
LIBVIRT_ARGV = [
    "-name", "guest=default_vmi-fast,debug-threads=on", "-S",
    "-chardev", "socket,id=charmonitor,fd=22,server=on,wait=off",
    "-device", '{"driver":"piix3-usb-uhci","id":"usb","bus":"pci.0","addr":"0x1.0x2"}',
    "-netdev", '{"type":"tap","fd":"25","id":"hostua-fast"}',
    "-device", '{"driver":"virtio-net-pci-non-transitional","host_mtu":3506,"netdev":"hostua-fast",'
               '"id":"ua-fast","mac":"02:0f:a5:54:4b:17","bus":"pci.0","addr":"0x2"}',
    "-add-fd", "set=0,fd=21,opaque=serial0-source",
]
RECORD = {"name": "k05e1cfe7dd", "queues": 1, "start_queue": 0, "mode": "native", "mtu": 3506,
          "consumer_ifname": "pod1a2b3c4d5e6", "mac": "02:0f:a5:54:4b:17", "backend": "veth",
          "bind_queues": [0]}


def test_libvirts_single_queue_tap_netdev_is_found():
    (tap,) = takeover.tap_netdevs(LIBVIRT_ARGV)
    assert (tap.id, tap.fds, tap.vhostfds, tap.json) == ("hostua-fast", (25,), (), True)
    assert takeover.might_take_over(LIBVIRT_ARGV)


@pytest.mark.parametrize("value, fds, vhost, as_json", [
    ('{"type":"tap","fds":"23:25","vhost":true,"vhostfds":"24:26","id":"hostua-fast"}', (23, 25), (24, 26), True),
    ('{"type":"tap","fd":"23","vhost":true,"vhostfd":"24","id":"hostua-fast"}', (23,), (24,), True),
    ("tap,fds=23:25,id=hostua-fast,vhost=on,vhostfds=24:26", (23, 25), (24, 26), False),
    ("type=tap,fd=23,id=hostua-fast", (23,), (), False),
])
def test_every_form_of_a_tap_netdev_by_fd(value, fds, vhost, as_json):
    (tap,) = takeover.tap_netdevs(["-netdev", value])
    assert (tap.fds, tap.vhostfds, tap.json) == (fds, vhost, as_json)
    assert set(tap.all_fds) == set(fds) | set(vhost)


@pytest.mark.parametrize("argv", [
    ["-version"], ["-netdev", "help"], ["-machine", "none", "-qmp", "stdio"],
    ["-netdev", '{"type":"tap","ifname":"tap0","script":"no","id":"n"}'],     # by name, not by fd
    ["-netdev", "user,id=n"], ["-netdev", '{"type":"af-xdp","id":"n","ifname":"x"}'],
    ["-netdev", "{not json"], ["-device", '{"driver":"tap","fd":"3"}'],
])
def test_nothing_else_is_a_tap_to_take_over(argv):
    assert takeover.tap_netdevs(argv) == []


def test_a_tap_fd_that_is_not_a_number_is_an_error():
    with pytest.raises(InvalidInput, match="not a list of fd numbers"):
        takeover.tap_netdevs(["-netdev", '{"type":"tap","fds":"a:b","id":"n"}'])


def test_replace_swaps_that_one_argument_and_keeps_libvirts_device():
    (tap,) = takeover.tap_netdevs(LIBVIRT_ARGV)
    out = takeover.replace(LIBVIRT_ARGV, tap, netdev_qapi(RECORD, [4], tap.id))
    changed = [i for i, (a, b) in enumerate(zip(LIBVIRT_ARGV, out)) if a != b]
    assert len(out) == len(LIBVIRT_ARGV) and changed == [LIBVIRT_ARGV.index("-netdev") + 1]
    assert json.loads(out[changed[0]]) == {"type": "af-xdp", "id": "hostua-fast", "ifname": "pod1a2b3c4d5e6",
                                           "queues": 1, "start-queue": 0, "mode": "native", "inhibit": True,
                                           "sock-fds": "4"}


def test_replace_writes_key_value_for_a_key_value_tap():
    argv = ["-netdev", "tap,fds=23:25,id=net0", "-device", "virtio-net-pci,netdev=net0,mq=on,vectors=6"]
    (tap,) = takeover.tap_netdevs(argv)
    out = takeover.replace(argv, tap, netdev_qapi(dict(RECORD, queues=2, bind_queues=[0, 1]), [7, 8], "net0"))
    assert out[1] == ("af-xdp,id=net0,ifname=pod1a2b3c4d5e6,queues=2,start-queue=0,mode=native,inhibit=on,"
                      "sock-fds=7:8")
    assert out[3] == argv[3]


def test_replace_refuses_another_id_or_an_ambiguous_one():
    (tap,) = takeover.tap_netdevs(LIBVIRT_ARGV)
    with pytest.raises(InvalidInput, match="keep libvirt's id"):
        takeover.replace(LIBVIRT_ARGV, tap, netdev_qapi(RECORD, [4], "other"))
    twice = LIBVIRT_ARGV + ["-netdev", '{"type":"tap","fd":"30","id":"hostua-fast"}']
    with pytest.raises(InvalidInput, match="2 tap netdevs"):
        takeover.replace(twice, tap, netdev_qapi(RECORD, [4], tap.id))


def test_queue_counts_must_agree():
    (tap,) = takeover.tap_netdevs(["-netdev", '{"type":"tap","fds":"23:25","id":"n"}'])
    with pytest.raises(InvalidInput, match=r"(?s)has 2 queue.*has 1.*as many queues"):
        takeover.check_queues(tap, RECORD)
    takeover.check_queues(tap, dict(RECORD, queues=2))


def test_placeholder_alias_round_trip():
    assert tap_alias.port_of_alias(tap_alias.alias_for("k05e1cfe7dd")) == "k05e1cfe7dd"
    for alias in (None, "", "vmnet@t1", "vmnet placeholder of port "):
        assert tap_alias.port_of_alias(alias) is None


UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


@pytest.mark.parametrize("paths", [
    [f"/kubepods/besteffort/pod{UID}/0123abcd"],                                    # cgroupfs, v1
    [f"/kubepods/pod{UID}/0123abcd"],                                               # guaranteed
    ["/kubepods.slice/kubepods-besteffort.slice/"
     f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice/cri-containerd-0123.scope"],   # systemd
    [f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-0123.scope"],
    [f"/../../kubepods/burstable/pod{UID}/0123", "/"],              # a helper in its own cgroup ns
    ["/", f"/kubepods/besteffort/pod{UID}/c", "/kubepods.slice/kubepods-besteffort.slice/"
     f"kubepods-besteffort-pod{UID.replace('-', '_')}.slice/x.scope"],              # both, v1 + v2
])
def test_a_pods_cgroup_in_either_drivers_spelling(paths):
    assert pod.pod_uids(paths) == {UID}
    assert pod.in_pod(paths, UID)


@pytest.mark.parametrize("paths", [
    ["/"], ["/system.slice/libvirtd.service"], [f"/kubepods/besteffort/pod{UID[:-1]}0/c"],
    [f"/kubepods/besteffort/pod{UID}/c", "/kubepods/besteffort/pod2b4e28ba-2fa1-11d2-883f-0016d3cca427/c"],
    [f"/machine.slice/pod{UID}x/c"], [f"/kubepods/besteffort/notpod{UID}/c"],
])
def test_anything_else_is_not_that_pod(paths):
    assert not pod.in_pod(paths, UID)


@pytest.mark.parametrize("value, message", [
    ({"uid": "nope"}, "not a Kubernetes UID"), ({}, "not a Kubernetes UID"), ("x", "must be an object"),
    ({"uid": UID, "colour": "red"}, "unknown pod field"), ({"uid": UID, "namespace": "Bad_NS"}, "namespace"),
    ({"uid": UID, "container_id": "a b"}, "container_id"),
])
def test_bad_pod_identities_are_refused(value, message):
    with pytest.raises(InvalidInput, match=message):
        pod.validate_pod(value)


def test_pod_uid_is_normalised():
    assert pod.validate_pod({"uid": UID.upper(), "namespace": "default"}) == {"uid": UID, "namespace": "default"}
