"""The vmnet CNI plugin, run exactly as a container runtime runs it.

The plugin binary is found by its type in CNI_PATH and executed with the
CNI environment and the configuration on stdin; results are checked
against the CNI spec's shape (1.0.0, and 0.4.0 as Multus may ask), and
the kernel objects against what ADD promised: the consumer end named
CNI_IFNAME in the pod's netns, the placeholder tap owned by uid/gid 107,
the XSK program. A conflist chains it with Debian's reference `tuning`
plugin in libcni's order (ADD in order with prevResult, CHECK, DEL in
reverse).
"""

from __future__ import annotations

import json
import os
import uuid

import pytest
from helpers import REFERENCE_CNI as REFERENCE
from helpers import NO_HOST_PROCESS, POD_UID, SHARED_NETNS, HelperProcess, cni_invoke, host_process, install_cni

from vmnet.kubevirt import cni
from vmnet.priv import links, netns

pytestmark = pytest.mark.netns

@pytest.fixture
def cni_helper(test_netns, request):
    # several ports in one pod: where binds cannot be confined, the helper refuses that unless allowed
    h = HelperProcess(SHARED_NETNS if "shared" in request.keywords else "").start()
    install_cni(h)
    try:
        yield h
    finally:
        h.cleanup()


def invoke(h, command, conf, pod=None, **kw):
    return cni_invoke(h, command, conf, pod, **kw)


def conf_for(h, **extra):
    return {"cniVersion": "1.0.0", "name": "vmnet-fast", "type": "vmnet", "socket": h.socket, **extra}


def assert_result_shape(res, version="1.0.0"):
    """The CNI spec's result: cniVersion, interfaces (name, mac, sandbox), ips (with version in 0.x)."""
    assert res["cniVersion"] == version
    assert isinstance(res["interfaces"], list) and res["interfaces"]
    for iface in res["interfaces"]:
        assert set(iface) <= {"name", "mac", "mtu", "sandbox", "socketPath", "pciID"} and iface["name"]
    assert isinstance(res.get("ips", []), list)          # optional: Go's plugins leave it out when empty
    for ip in res.get("ips", []):
        assert ("version" in ip) == version.startswith("0.")


def pod_links(pod) -> dict:
    with netns.entered(pod):
        from pyroute2 import IPRoute
        with IPRoute() as ip:
            return {m.get("IFLA_IFNAME"): m for m in ip.get_links()}


def tun_owner(msg) -> tuple:
    data = msg.get("IFLA_LINKINFO").get("IFLA_INFO_DATA")
    return data.get("IFLA_TUN_OWNER"), data.get("IFLA_TUN_GROUP"), data.get("IFLA_TUN_MULTI_QUEUE")


@pytest.mark.parametrize("queues", [1, 2])
def test_add_check_del_twice_leaves_nothing(cni_helper, consumer_netns, queues):
    h, pod = cni_helper, consumer_netns
    conf = conf_for(h, queues=queues, runtimeConfig={"mac": "02:00:00:00:10:01"})
    for _ in range(2):
        rc, res, err = invoke(h, "ADD", conf, pod)
        assert rc == 0, (res, err)
        assert_result_shape(res)
        name = cni.port_name("c0ffee", "vmnet-fast", "pod1a2b3c4d5e6")
        assert res["interfaces"][-1] == {"name": "pod1a2b3c4d5e6", "mac": "02:00:00:00:10:01",
                                         "sandbox": f"/run/netns/{pod}"}
        assert {"name": "vmn-" + name} in res["interfaces"]                   # the host end, no sandbox
        found = pod_links(pod)
        assert found["pod1a2b3c4d5e6"].get("IFLA_ADDRESS") == "02:00:00:00:10:01"
        assert found["pod1a2b3c4d5e6"].get("IFLA_XDP") is not None
        assert tun_owner(found["tap1a2b3c4d5e6"]) == (107, 107, queues > 1)
        shown = h.vmnet_json("port", "show", name)
        assert shown["consumer_pod"]["uid"] == POD_UID and shown["consumer_pod"]["name"] == "virt-launcher-a"
        assert shown["consumer_netns_id"] == "{0.st_dev}:{0.st_ino}".format(os.stat(f"/run/netns/{pod}"))
        assert (shown["consumer_uid"], shown["consumer_gid"], shown["health"]) == (107, 107, None)
        assert invoke(h, "CHECK", dict(conf, prevResult=res), pod)[:2] == (0, None)
        assert invoke(h, "DEL", dict(conf, prevResult=res), pod)[:2] == (0, None)
        assert set(pod_links(pod)) == {"lo"}
        assert links.link_state("vmn-" + name) is None
        assert h.vmnet_json("port", "list")["ports"] == []
        assert invoke(h, "DEL", conf, pod)[:2] == (0, None)                # DEL is idempotent


def test_a_second_add_for_the_same_interface_fails_and_del_without_add_succeeds(cni_helper, consumer_netns):
    """CNI spec: "If an interface of the requested name already exists in the container, the CNI
    plugin MUST return with an error"."""
    h, pod = cni_helper, consumer_netns
    conf = conf_for(h)
    assert invoke(h, "DEL", conf, pod, container="never-added")[:2] == (0, None)
    rc, first, _ = invoke(h, "ADD", conf, pod)
    rc2, err, _ = invoke(h, "ADD", conf, pod)
    assert rc == 0 and rc2 != 0
    assert err["code"] == cni.E_ALREADY_EXISTS and "pod1a2b3c4d5e6 of container c0ffee already exists" in err["msg"]
    assert "DEL it first" in err["details"]
    assert len(h.vmnet_json("port", "list")["ports"]) == 1          # the first is untouched
    assert invoke(h, "DEL", conf, pod)[0] == 0


def test_check_finds_a_damaged_attachment(cni_helper, consumer_netns):
    h, pod = cni_helper, consumer_netns
    conf = conf_for(h)
    rc, res, _ = invoke(h, "ADD", conf, pod)
    assert rc == 0
    with netns.entered(pod):
        links.delete_link("tap1a2b3c4d5e6")                 # something removed the placeholder
    rc, err, _ = invoke(h, "CHECK", dict(conf, prevResult=res), pod)
    assert rc != 0 and err["code"] == 100 and "placeholder tap tap1a2b3c4d5e6 is gone" in err["msg"]
    rc, err, _ = invoke(h, "CHECK", conf, pod, container="other")
    assert rc != 0 and err["code"] == 3
    assert invoke(h, "DEL", conf, pod)[0] == 0


def test_del_when_the_netns_is_already_gone(cni_helper):
    h = cni_helper
    pod = "vmnet-c" + uuid.uuid4().hex[:8]
    netns.create_named(pod)
    try:
        rc, res, err = invoke(h, "ADD", conf_for(h), pod)
        assert rc == 0, err
    finally:
        netns.remove_named(pod)                             # the runtime tore the sandbox down first
    name = cni.port_name("c0ffee", "vmnet-fast", "pod1a2b3c4d5e6")
    assert invoke(h, "DEL", conf_for(h), pod)[:2] == (0, None)
    assert links.link_state("vmn-" + name) is None and h.vmnet_json("port", "list")["ports"] == []


def test_add_into_a_netns_that_vanished_is_container_unknown_and_makes_nothing(cni_helper):
    h = cni_helper
    rc, err, _ = invoke(h, "ADD", conf_for(h), "vmnet-c-gone-" + uuid.uuid4().hex[:6])
    assert rc != 0 and err["code"] == 3 and "does not exist" in err["msg"]
    assert h.vmnet_json("port", "list")["ports"] == []
    assert not [n for n in os.listdir("/sys/class/net") if n.startswith("vmn-")]


@pytest.mark.parametrize("conf, code, words", [
    ("{not json", 6, "not JSON"),
    ({"name": "n", "type": "vmnet"}, 7, "no cniVersion"),
    ({"cniVersion": "9.9.9", "name": "n", "type": "vmnet"}, 1, "9.9.9 is not supported"),
    ({"cniVersion": "1.0.0", "type": "vmnet"}, 7, "no name"),
    ({"cniVersion": "1.0.0", "name": "n", "type": "vmnet", "queues": "two"}, 7, "field queues must be a number"),
    ({"cniVersion": "1.0.0", "name": "n", "type": "vmnet", "queues": 0}, 7, "queue count 0 is out of range"),
    ({"cniVersion": "1.0.0", "name": "n", "type": "vmnet", "mac": "01:00:00:00:00:01"}, 7, "multicast"),
    ({"cniVersion": "1.0.0", "name": "n", "type": "vmnet", "backend": "sriov"}, 7, "backend 'sriov'"),
    ({"cniVersion": "1.0.0", "name": "n", "type": "vmnet", "colour": "red"}, 2, "unknown field(s) in network 'n': colour"),
    ({"cniVersion": "1.0.0", "name": "n", "type": "vmnet", "ipam": {"type": "no-such-ipam"}}, 7,
     "the IPAM plugin 'no-such-ipam' is not in CNI_PATH"),
    ({"cniVersion": "1.0.0", "name": "n", "type": "vmnet", "routed": True}, 7, "a routed network needs addresses"),
    ({"cniVersion": "1.0.0", "name": "n", "type": "vmnet", "vlanTrunk": [{"id": 5000}]}, 7, "5000 is not a VLAN"),
    ({"cniVersion": "1.0.0", "name": "n", "type": "vmnet", "bridge": "br0", "ovsBridge": "br1"}, 7,
     "bridge and ovs were both given"),
])
def test_bad_configuration_is_a_cni_error_naming_the_field(cni_helper, consumer_netns, conf, code, words):
    h = cni_helper
    stdin = conf if isinstance(conf, str) else json.dumps(dict(conf, socket=h.socket))
    rc, err, _ = invoke(h, "ADD", None, consumer_netns, stdin=stdin)
    assert rc != 0 and err["code"] == code and words in err["msg"], err
    assert set(err) <= {"cniVersion", "code", "msg", "details"}
    assert h.vmnet_json("port", "list")["ports"] == [] and set(pod_links(consumer_netns)) == {"lo"}


def test_a_runtime_that_passes_no_pod_uid_is_told_so(cni_helper, consumer_netns):
    h = cni_helper
    rc, err, _ = invoke(h, "ADD", conf_for(h), consumer_netns, extra_env={"CNI_ARGS": "IgnoreUnknown=1"})
    assert rc != 0 and err["code"] == 4 and "K8S_POD_UID" in err["msg"]
    rc, err, _ = invoke(h, "ADD", conf_for(h), None)                           # no CNI_NETNS at all
    assert rc != 0 and err["code"] == 4 and "CNI_NETNS" in err["msg"]
    rc, err, _ = invoke(h, "BOGUS", conf_for(h), consumer_netns)
    assert rc != 0 and err["code"] == 4


def test_version_status_and_the_0_4_0_result(cni_helper, consumer_netns):
    h = cni_helper
    rc, out, _ = invoke(h, "VERSION", None, stdin='{"cniVersion":"1.0.0"}')
    assert rc == 0 and out == {"cniVersion": "1.0.0", "supportedVersions": list(cni.SUPPORTED)}
    assert invoke(h, "STATUS", conf_for(h, cniVersion="1.1.0"))[:2] == (0, None)
    rc, err, _ = invoke(h, "STATUS", conf_for(h, cniVersion="1.1.0", socket=h.dir + "/none.sock"))
    assert rc != 0 and err["code"] == 50
    conf = conf_for(h, cniVersion="0.4.0")
    rc, res, err = invoke(h, "ADD", conf, consumer_netns)
    assert rc == 0, err
    assert_result_shape(res, "0.4.0")
    assert invoke(h, "CHECK", dict(conf, prevResult=res), consumer_netns)[0] == 0
    assert invoke(h, "DEL", conf, consumer_netns)[0] == 0


@pytest.mark.shared
def test_gc_deletes_this_networks_ports_that_no_attachment_names(cni_helper, consumer_netns):
    h = cni_helper
    conf = conf_for(h, cniVersion="1.1.0")
    for container in ("keep", "stale"):
        assert invoke(h, "ADD", conf, consumer_netns, container=container,
                      ifname="pod" + container.ljust(8, "0"))[0] == 0
    other = conf_for(h, cniVersion="1.1.0", name="another-net")
    assert invoke(h, "ADD", other, consumer_netns, container="theirs", ifname="net1")[0] == 0
    gc = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "podkeep0000"}]})
    assert invoke(h, "GC", gc)[:2] == (0, None)
    left = {p["name"] for p in h.vmnet_json("port", "list")["ports"]}
    assert left == {cni.port_name("keep", "vmnet-fast", "podkeep0000"),
                    cni.port_name("theirs", "another-net", "net1")}            # another network's stays
    assert invoke(h, "DEL", conf, consumer_netns, container="keep", ifname="podkeep0000")[0] == 0
    assert invoke(h, "DEL", other, consumer_netns, container="theirs", ifname="net1")[0] == 0


@pytest.mark.skipif(not os.path.exists(f"{REFERENCE}/tuning"),
                    reason="Debian's containernetworking-plugins is not installed (install.sh installs it)")
def test_chained_with_the_reference_tuning_plugin_in_libcnis_order(cni_helper, consumer_netns):
    """A conflist [vmnet, tuning]: ADD in order, each with the previous result; CHECK in order
    with the cached result; DEL in reverse. tuning (Go's own result parser) consumes vmnet's."""
    h, pod = cni_helper, consumer_netns
    conflist = {"cniVersion": "1.0.0", "name": "vmnet-fast", "plugins": [
        {"type": "vmnet", "socket": h.socket},
        {"type": "tuning", "promisc": True}]}

    def conf(plugin, prev=None):
        out = dict(plugin, name=conflist["name"], cniVersion=conflist["cniVersion"])
        return dict(out, prevResult=prev) if prev is not None else out
    prev = None
    for plugin in conflist["plugins"]:
        rc, prev, err = invoke(h, "ADD", conf(plugin, prev), pod, plugin=plugin["type"])
        assert rc == 0, (plugin["type"], prev, err)
    assert_result_shape(prev)
    assert pod_links(pod)["pod1a2b3c4d5e6"].get("IFLA_PROMISCUITY") == 1       # tuning found our interface
    for plugin in conflist["plugins"]:
        rc, out, err = invoke(h, "CHECK", conf(plugin, prev), pod, plugin=plugin["type"])
        assert rc == 0, (plugin["type"], out, err)
    for plugin in reversed(conflist["plugins"]):
        rc, out, err = invoke(h, "DEL", conf(plugin, prev), pod, plugin=plugin["type"])
        assert rc == 0, (plugin["type"], out, err)
    assert set(pod_links(pod)) == {"lo"} and h.vmnet_json("port", "list")["ports"] == []


def test_a_pod_netns_with_other_devices_needs_the_bind_guard(cni_helper, consumer_netns):
    """The pod's eth0 (here: a tap) is a device a consumer could bind its sockets to: without
    the kernel's bind guard the helper refuses the port, and the CNI error says why and what to do."""
    h, pod = cni_helper, consumer_netns
    with netns.entered(pod):
        from pyroute2 import IPRoute
        with IPRoute() as ip:
            ip.link("add", ifname="eth0", kind="tuntap", mode="tap")
    rc, out, err = invoke(h, "ADD", conf_for(h), pod)
    if h.vmnet_json("status")["helper"]["protection"]["mode"] == "kernel":
        assert rc == 0, (out, err)
        assert invoke(h, "DEL", conf_for(h), pod)[0] == 0
    else:
        assert rc != 0 and out["code"] == 108 and "could bind its AF_XDP sockets to eth0" in out["msg"]
        assert "bpf LSM" in out["details"] and h.vmnet_json("port", "list")["ports"] == []
        assert set(pod_links(pod)) == {"lo", "eth0"}


def _devices_of(ref) -> set:
    from pyroute2 import IPRoute
    with netns.entered(ref), IPRoute() as ip:
        return {m.get("IFLA_IFNAME") for m in ip.get_links()}


@pytest.mark.shared
@pytest.mark.parametrize("whose", ["its own", "pid 1's", "a host process's"])
def test_add_refuses_its_own_or_the_hosts_netns_as_a_pods_and_makes_nothing(cni_helper, whose):
    """CNI_NETNS naming the host's netns (the runtime's own, pid 1's) is never a pod's, even
    where allow_unconfined would let a port share a netns: the plugin refuses it first, and
    the helper would too (tests/test_helper_security.py)."""
    h = cni_helper
    if whose == "a host process's" and host_process() is None:
        pytest.skip(NO_HOST_PROCESS)
    ref = {"its own": f"/proc/{os.getpid()}/ns/net", "pid 1's": "/proc/1/ns/net",
           "a host process's": f"/proc/{host_process()}/ns/net"}[whose]
    here = _devices_of(f"/proc/{os.getpid()}/ns/net")
    rc, err, stderr = invoke(h, "ADD", conf_for(h), None, extra_env={"CNI_NETNS": ref})
    assert rc != 0 and err is not None, stderr
    if whose == "pid 1's" and not os.access(ref, os.R_OK):
        # root here has no ptrace access to pid 1: neither the plugin nor the helper can
        # tell which netns it is, and the helper cannot open it
        assert err["code"] == cni.E_CONFIG and "may not open network namespace reference" in err["msg"], err
    else:
        said = "the CNI plugin's own" if whose == "its own" else "the host's"
        assert err["code"] == cni.E_ENV and f"CNI_NETNS {ref} is {said}" in err["msg"], err
        assert "pod sandbox's network namespace" in err["details"]
        assert "port-create" not in h.read_log()                     # refused before asking the helper
    assert h.vmnet_json("port", "list")["ports"] == [] and _devices_of(f"/proc/{os.getpid()}/ns/net") == here


@pytest.mark.shared
def test_two_pods_cannot_share_a_netns_even_where_ports_may_share_one(cni_helper, consumer_netns):
    h, pod = cni_helper, consumer_netns
    assert invoke(h, "ADD", conf_for(h), pod)[0] == 0
    other = "9c2f1e44-0b7a-4c1e-9d55-3f2a6b8e7d10"
    rc, err, _ = invoke(h, "ADD", conf_for(h), pod, container="theirs", ifname="net1", pod_uid=other)
    assert rc != 0 and err["code"] == 108, err
    first = cni.port_name("c0ffee", "vmnet-fast", "pod1a2b3c4d5e6")
    assert f"already holds the consumer end of port {first} (of pod {POD_UID})" in err["msg"]
    assert len(h.vmnet_json("port", "list")["ports"]) == 1
    assert _devices_of(pod) == {"lo", "pod1a2b3c4d5e6", "tap1a2b3c4d5e6"}
    assert invoke(h, "DEL", conf_for(h), pod)[0] == 0


@pytest.mark.shared
def test_an_ifname_another_attachment_has_in_the_pod_is_named_as_the_collision(cni_helper, consumer_netns):
    """Two attachments (another container id, or another network) asking for one CNI_IFNAME in
    one pod: the error names the interface, whose it is and what to do — not a port that
    'already exists' and, asked to delete, 'does not exist'."""
    h, pod = cni_helper, consumer_netns
    rc, first, _ = invoke(h, "ADD", conf_for(h), pod, container="c1", ifname="net1")
    assert rc == 0, first
    for container, ifname, taken, what in (("c2", "net1", "net1", "the pod-side interface"),
                                           ("c2", "pod1", "tap1", "the placeholder tap")):
        rc, err, _ = invoke(h, "ADD", conf_for(h), pod, container=container, ifname=ifname)
        assert rc != 0 and err["code"] == cni.E_ALREADY_EXISTS, err
        assert err["msg"] == (f"interface {taken} already exists in /run/netns/{pod}: it is {what} of another "
                              f"attachment, port {cni.port_name('c1', 'vmnet-fast', 'net1')} (container c1 "
                              "of network 'vmnet-fast')"), err
        assert "interface name of its own" in err["details"] and "DEL the attachment of container c1" in err["details"]
        assert "does not exist" not in err["msg"]
    assert len(h.vmnet_json("port", "list")["ports"]) == 1                     # the first is untouched
    assert pod_links(pod)["net1"].get("IFLA_ADDRESS") == first["interfaces"][-1]["mac"]
    assert invoke(h, "DEL", conf_for(h), pod, container="c1", ifname="net1")[0] == 0


@pytest.mark.shared
def test_an_ifname_taken_by_a_device_of_no_port_is_named_by_the_helper(cni_helper, consumer_netns):
    h, pod = cni_helper, consumer_netns
    with netns.entered(pod):
        from pyroute2 import IPRoute
        with IPRoute() as ip:
            ip.link("add", ifname="eth0", kind="tuntap", mode="tap")       # another plugin's interface
    rc, err, _ = invoke(h, "ADD", conf_for(h), pod, ifname="eth0")
    assert rc != 0 and err["code"] == cni.E_ALREADY_EXISTS, err
    assert err["msg"].startswith(f"device eth0 already exists in network namespace /run/netns/{pod}: port "), err
    assert "another consumer interface name" in err["details"] and "CNI_IFNAME" in err["details"]
    assert h.vmnet_json("port", "list")["ports"] == [] and set(pod_links(pod)) == {"lo", "eth0"}


# ---- IPAM, delegated ----------------------------------------------------------

def host_local_store(h) -> str:
    return os.path.join(h.dir, "ipam")


def ipam_conf(h, **extra):
    return conf_for(h, ipam={"type": "host-local", "dataDir": host_local_store(h),
                             "ranges": [[{"subnet": "10.30.0.0/24", "gateway": "10.30.0.1"}],
                                        [{"subnet": "fd30::/64"}]],
                             "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.40.0.0/16"}]},
                    dns={"nameservers": ["10.30.0.53"], "search": ["example.test"]}, **extra)


def leases(h) -> list[str]:
    store = os.path.join(host_local_store(h), "vmnet-fast")
    return sorted(f for f in os.listdir(store) if f[0].isdigit() or ":" in f) if os.path.isdir(store) else []


def test_ipam_host_local_addresses_go_to_the_result_and_the_port_and_del_releases_them(cni_helper, consumer_netns):
    h, pod = cni_helper, consumer_netns
    conf = ipam_conf(h)
    rc, res, err = invoke(h, "ADD", conf, pod)
    assert rc == 0, (res, err)
    assert_result_shape(res)
    pod_side = [i for i, iface in enumerate(res["interfaces"]) if iface.get("sandbox")]
    assert [ip["interface"] for ip in res["ips"]] == pod_side * 2
    assert {ip["address"] for ip in res["ips"]} == {"10.30.0.2/24", "fd30::2/64"}
    assert {"dst": "10.40.0.0/16"} in res["routes"]
    assert leases(h) == ["10.30.0.2", "fd30::2"]
    record = h.vmnet_json("port", "show", cni.port_name("c0ffee", "vmnet-fast", "pod1a2b3c4d5e6"))
    att = record["attachment"]
    assert att["addresses"] == ["10.30.0.2/24", "fd30::2/64"] and att["gateway4"] == "10.30.0.1"
    assert att["routes"] == [{"dst": "10.40.0.0/16", "gw": "10.30.0.1"}]
    assert att["dns"] == ["10.30.0.53"] and att["search"] == ["example.test"]
    assert record["network"]["addr_server"]["alive"]
    assert invoke(h, "DEL", conf, pod)[:2] == (0, None)
    assert leases(h) == []
    assert invoke(h, "DEL", conf, pod)[:2] == (0, None)       # again: IPAM's DEL is idempotent too


def test_a_failed_add_gives_the_ipam_address_back(cni_helper, consumer_netns):
    h, pod = cni_helper, consumer_netns
    conf = ipam_conf(h, bridge="no-such-br")
    rc, err, _ = invoke(h, "ADD", conf, pod)
    assert rc != 0 and "bridge no-such-br does not exist" in err["msg"], err
    assert leases(h) == [] and h.vmnet_json("port", "list")["ports"] == []


def test_static_ipam_on_a_bridge(cni_helper, consumer_netns):
    from guest_env import make_bridge
    h, pod = cni_helper, consumer_netns
    make_bridge("br1")
    conf = conf_for(h, bridge="br1", ipam={"type": "static", "addresses": [
        {"address": "10.50.0.7/24", "gateway": "10.50.0.1"}]})
    rc, res, err = invoke(h, "ADD", conf, pod)
    assert rc == 0, (res, err)
    assert res["ips"][0]["address"] == "10.50.0.7/24"
    record = h.vmnet_json("port", "show", cni.port_name("c0ffee", "vmnet-fast", "pod1a2b3c4d5e6"))
    assert record["attachment"]["bridge"] == "br1" and record["network"]["plugged"]
    assert invoke(h, "DEL", conf, pod)[0] == 0


@pytest.mark.unit
def test_owners_of_long_network_names_never_collide():
    assert cni.owner("vmnet-fast") == "cni:vmnet-fast"
    a, b = "n" * 200 + "-a", "n" * 200 + "-b"
    assert cni.owner(a) != cni.owner(b)
    assert max(len(cni.owner(a)), len(cni.owner(b)), len(cni.owner("x" * 124))) <= cni.OWNER_MAX
    assert cni.owner("x" * 124) == "cni:" + "x" * 124 and cni.owner(a) == cni.owner(a)


@pytest.mark.unit
@pytest.mark.parametrize("stdin", [b"[" * 200_000, b"{\"a\":" * 100_000, b"\xff\xfe", b" " * (2 << 20)])
def test_hostile_json_on_stdin_is_a_cni_error_not_a_traceback(stdin):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-I", "-c", "from vmnet.kubevirt.cni import main; main()"],
                         input=stdin, capture_output=True, timeout=60,
                         env={"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/none",
                              "CNI_IFNAME": "net1", "CNI_PATH": "/nonexistent", "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and b"Traceback" not in out.stderr, out.stderr[-2000:]
    err = json.loads(out.stdout)
    assert err["code"] == cni.E_DECODE and err["msg"], err
