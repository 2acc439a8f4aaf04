"""The helper daemon through its clients: ports, authorization, restart, recovery."""

import os
import signal
import subprocess
import sys

import pytest
from helpers import ADMIN_GID, USER_A, USER_B, as_identity

from vmnet.model import PortSpec
from vmnet.priv import bpf, libbpf, links, ports, xskprog

pytestmark = pytest.mark.netns


def test_port_add_list_show_del_as_root(helper, port_name):
    rec = helper.vmnet_json("port", "add", port_name, "--queues", "2", "--consumer-user", str(USER_A))
    assert rec["queues"] == 2 and rec["consumer_uid"] == USER_A and rec["mode"] == "native"
    assert [p["name"] for p in helper.vmnet_json("port", "list")["ports"]] == [port_name]
    shown = helper.vmnet_json("port", "show", port_name)
    assert [s["queue"] for s in shown["sockets"]] == [0, 1]
    assert os.path.exists(os.path.join(helper.state_dir, port_name + ".json"))
    text = helper.vmnet("status").stdout
    assert port_name in text and "rx dropped 0" in text
    assert helper.vmnet_json("port", "del", port_name)["deleted"] is True
    out = helper.vmnet("port", "del", port_name)
    assert out.returncode == 3 and "does not exist" in out.stderr
    assert helper.vmnet("port", "del", port_name, "--missing-ok").returncode == 0
    assert not ports.port_exists(port_name, helper.instance)


@pytest.mark.parametrize("who, allowed", [
    ("root", True),
    ("admin-supplementary-group", True),
    ("admin-primary-group", True),
    ("other-uid", False),
    ("other-group", False),
])
def test_port_creation_is_allowed_only_to_root_and_the_admin_group(helper, port_name, who, allowed):
    ident = {
        "root": None,
        "admin-supplementary-group": as_identity(USER_A, USER_A, [ADMIN_GID]),
        "admin-primary-group": as_identity(USER_A, ADMIN_GID),
        "other-uid": as_identity(USER_A, USER_A),
        "other-group": as_identity(USER_A, USER_A, [ADMIN_GID + 1]),
    }[who]
    out = helper.vmnet("port", "add", port_name, "--consumer-user", str(USER_B), preexec=ident)
    if allowed:
        assert out.returncode == 0, out.stderr
        assert ports.port_exists(port_name, helper.instance)
        assert helper.vmnet("port", "del", port_name, preexec=ident).returncode == 0
    else:
        assert out.returncode == 8, out.stderr
        assert f"uid {USER_A}" in out.stderr and "admin_group" in out.stderr
        assert not ports.port_exists(port_name, helper.instance)
        assert "refused port-create from pid" in helper.read_log()


def _fds_for(helper, name, ident):
    """Ask for a port's fds as some identity; returns (returncode, count or stderr)."""
    code = ("import sys, json; from vmnet.client import Client\n"
            "from vmnet.errors import VmnetError\n"
            f"c = Client({helper.socket!r})\n"
            "try:\n"
            f"    rec, fds = c.call('fds-for-consumer', name={name!r})\n"
            "except VmnetError as e:\n"
            "    print(e.code, e.message); sys.exit(1)\n"
            "print(len(fds), rec['queues'])\n")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         preexec_fn=ident, cwd="/")
    return out.returncode, out.stdout.strip()


def test_a_ports_fds_go_only_to_its_consumer_uid_or_root(helper, port_name):
    helper.vmnet_json("port", "add", port_name, "--queues", "3", "--consumer-user", str(USER_B))
    assert _fds_for(helper, port_name, as_identity(USER_B, USER_B)) == (0, "3 3")
    rc, text = _fds_for(helper, port_name, as_identity(USER_A, USER_A))
    assert rc == 1 and text.startswith("not-found")        # other users do not even see it
    assert _fds_for(helper, port_name, None) == (0, "3 3")
    # listing is filtered the same way
    assert helper.vmnet_json("port", "list", preexec=as_identity(USER_A, USER_A))["ports"] == []
    mine = helper.vmnet_json("port", "list", preexec=as_identity(USER_B, USER_B))["ports"]
    assert [p["name"] for p in mine] == [port_name]


def test_a_consumer_cgroup_restricts_the_fds_to_that_cgroup(helper, port_name):
    helper.vmnet_json("port", "add", port_name, "--consumer-user", str(USER_B),
                      "--consumer-cgroup", "/vmnet-test-elsewhere.scope")
    rc, text = _fds_for(helper, port_name, as_identity(USER_B, USER_B))
    assert rc == 1 and "permission-denied" in text and "cgroup" in text


def test_two_consumers_each_get_only_their_own_ports_sockets(shared_helper, port_name):
    helper = shared_helper
    a, b = port_name[:-1] + "a", port_name[:-1] + "b"
    helper.vmnet_json("port", "add", a, "--queues", "1", "--consumer-user", str(USER_A))
    helper.vmnet_json("port", "add", b, "--queues", "2", "--consumer-user", str(USER_B))
    assert _fds_for(helper, a, as_identity(USER_A, USER_A)) == (0, "1 1")
    assert _fds_for(helper, b, as_identity(USER_B, USER_B)) == (0, "2 2")
    assert _fds_for(helper, b, as_identity(USER_A, USER_A))[0] == 1
    assert _fds_for(helper, a, as_identity(USER_B, USER_B))[0] == 1


def test_restart_keeps_complete_ports_and_removes_half_made_ones(shared_helper, port_name):
    helper = shared_helper
    kept, half, gone = port_name, port_name[:-1] + "h", port_name[:-1] + "g"
    helper.vmnet_json("port", "add", kept, "--consumer-user", str(USER_A))
    helper.vmnet_json("port", "add", gone, "--consumer-user", str(USER_A))
    helper.kill(signal.SIGKILL)
    # what a crash in the middle of port-create leaves: devices and pins, no record
    ports.create_port(PortSpec(name=half), helper.instance).close()
    # a recorded port whose device vanished while the helper was down
    links.delete_link("vmn-" + gone)
    # the temporary pin directories of processes that died in the middle of pinning: a
    # port's link, and the shared program (its own pin names)
    root = helper.instance.pin_root
    abandoned = [os.path.join(root, f"_{port_name}-999999999"), os.path.join(root, "_+xsk-999999998")]
    for d, source, name in ((abandoned[0], os.path.join(bpf.pin_dir(kept, root), "link"), "link"),
                            (abandoned[1], os.path.join(xskprog.pin_dir(root), "prog"), "prog")):
        os.mkdir(d)
        fd = libbpf.obj_get(source)
        try:
            libbpf.obj_pin(fd, os.path.join(d, name))
        finally:
            os.close(fd)
    helper.start()
    assert not [d for d in abandoned if os.path.exists(d)]
    names = [p["name"] for p in helper.vmnet_json("port", "list")["ports"]]
    assert names == [kept]
    assert not ports.port_exists(half, helper.instance) and not ports.port_exists(gone, helper.instance)
    assert not bpf.pinned(gone, helper.instance.pin_root)
    log = helper.read_log()
    assert f"removing port {gone}: its host device is gone" in log
    assert half in log and kept in log
