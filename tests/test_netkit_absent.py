"""What vmnet does on a kernel without netkit: refuse netkit clearly, let auto fall back to veth.

These run where netkit is absent (this project's 6.18 host) and skip on a
kernel that has it, where tests/test_netkit.py covers the other side.
"""

from __future__ import annotations

import pytest

from netkit_gate import kernel_has_netkit
from vmnet.errors import NotSupported
from vmnet.model import PortSpec
from vmnet.priv import bpf, links, netkit, ports

pytestmark = pytest.mark.netns


@pytest.fixture(autouse=True)
def _kernel_without_netkit():
    if kernel_has_netkit():
        pytest.skip("the kernel has netkit: its refusal cannot be shown here (tests/test_netkit.py runs)")


def test_netkit_backend_is_refused_naming_the_kernel_it_needs(test_netns, port_name):
    with pytest.raises(NotSupported) as exc:
        ports.create_port(PortSpec(name=port_name, backend="netkit"))
    err = exc.value
    assert isinstance(err, netkit.NetkitUnavailable)
    assert err.code == "not-supported"
    assert "link kind netkit" in err.message and f"vmn-{port_name}" in err.message
    assert "CONFIG_NETKIT" in err.fix and "veth" in err.fix
    assert not ports.port_exists(port_name)


def test_auto_backend_falls_back_to_veth_and_says_why(test_netns, port_name):
    c = ports.create_port(PortSpec(name=port_name, backend="auto"))
    try:
        assert c.port.spec.backend == "veth"
        assert c.port.backend_requested == "auto"
        assert c.port.backend_reason.startswith("auto: the kernel has no netkit")
        assert "CONFIG_NETKIT" in c.port.backend_reason
        assert c.port.mode == "native"                  # veth keeps native XDP
        assert links.link_state(c.port.spec.host_ifname) is not None
        assert bpf.pinned(port_name)
    finally:
        c.close()
        ports.delete_port(port_name)


def test_a_multi_queue_netkit_refusal_names_both_causes(test_netns, port_name):
    # EOPNOTSUPP: no netkit here; Linux 7.x's netkit answers the same to more than one TX queue
    with pytest.raises(netkit.NetkitUnavailable) as exc:
        ports.create_port(PortSpec(name=port_name, backend="netkit", queues=4))
    assert "refused netkit with 4 queues" in exc.value.message and "Linux 7.x" in exc.value.message
    assert "one queue" in exc.value.fix and "veth" in exc.value.fix
    assert not ports.port_exists(port_name)
    c = ports.create_port(PortSpec(name=port_name, backend="auto", queues=4))
    try:
        assert c.port.spec.backend == "veth"
        assert c.port.backend_reason.startswith("auto: the kernel refused netkit with 4 queues")
    finally:
        c.close()
        ports.delete_port(port_name)
