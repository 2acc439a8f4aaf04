"""vmnet:PORT placeholders: found and filled in key=value and in JSON arguments."""

import json

import pytest

from vmnet import argv as av
from vmnet.libvirt import domain_xml as lx
from vmnet.errors import InvalidInput

PORT = {"name": "web1", "queues": 2, "start_queue": 0, "mode": "native", "mac": "02:00:00:00:00:01",
        "mtu": 3506, "consumer_ifname": "vmc-web1"}


def test_the_rendered_libvirt_arguments_are_filled_with_typed_values():
    args = lx.qemu_args_for({"name": "web1", "queues": 2})
    assert av.ports_in(args) == ["web1"]
    out = av.substitute(args, {"web1": av.port_values(PORT, [5, 6])})
    assert out[1] == ("af-xdp,id=vmnet-web1,ifname=vmc-web1,queues=2,start-queue=0,mode=native,"
                      "inhibit=on,sock-fds=5:6")
    assert json.loads(out[3]) == {"driver": "virtio-net-pci", "id": "vmnet-web1-dev", "netdev": "vmnet-web1",
                                  "mac": "02:00:00:00:00:01", "host_mtu": 3506, "mq": True, "vectors": 6}


def test_the_device_is_json_so_that_qemu_creates_it_after_libvirts_own_devices():
    # QEMU creates key=value -device options before JSON ones; libvirt writes JSON
    assert lx.qemu_args_for({"name": "web1"})[3].startswith('{"driver":"virtio-net-pci"')


def test_key_value_placeholders_are_filled_in_place():
    out = av.substitute(["-device", "virtio-net-pci,netdev=n0,mac=vmnet:web1,host_mtu=vmnet:web1"],
                        {"web1": av.port_values(PORT, [5, 6])})
    assert out == ["-device", "virtio-net-pci,netdev=n0,mac=02:00:00:00:00:01,host_mtu=3506"]


def test_an_argv_without_placeholders_is_returned_unchanged():
    args = ["-machine", "none", "-device", '{"driver":"virtio-balloon-pci","id":"b0"}', "{not json"]
    assert av.ports_in(args) == [] and av.substitute(args, {}) == args


@pytest.mark.parametrize("arg, words", [
    ('{"driver":"virtio-net-pci","romfile":"vmnet:web1"}', "romfile=vmnet:web1 is not a placeholder"),
    ('{"driver":"virtio-net-pci","mac":"vmnet:no/such"}', "port name"),
    ("virtio-net-pci,bootindex=vmnet:web1", "bootindex=vmnet:web1 is not a placeholder"),
])
def test_a_placeholder_vmnet_cannot_fill_is_refused(arg, words):
    with pytest.raises(InvalidInput, match=words):
        av.ports_in(["-device", arg])


def test_a_json_placeholder_of_an_unknown_port_is_refused():
    with pytest.raises(InvalidInput, match="no values for port 'web2'"):
        av.substitute(['{"driver":"virtio-net-pci","mac":"vmnet:web2"}'], {"web1": av.port_values(PORT, [5, 6])})
