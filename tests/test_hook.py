"""The installed libvirt hook, run the way libvirtd runs it, against a real helper."""

import os
import subprocess

import pytest

from vmnet.libvirt.hookinstall import hook_text
from vmnet.priv import ports

pytestmark = pytest.mark.netns

UUID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def domain(*port_attrs, uuid=UUID):
    ports_xml = "".join(f"<vmnet:port {a}/>" for a in port_attrs)
    return (f'<domain type="qemu"><name>d1</name><uuid>{uuid}</uuid><metadata>'
            f'<vmnet:ports xmlns:vmnet="urn:vmnet:domain:1">{ports_xml}</vmnet:ports></metadata>'
            '<devices/></domain>').encode()


@pytest.fixture
def helper(shared_helper):
    """libvirt's QEMUs, and so their ports' consumer ends, all live in the host's netns
    (see helpers.SHARED_NETNS)."""
    return shared_helper


def exists(helper, name) -> bool:
    return ports.port_exists(name, helper.instance)


@pytest.fixture
def hook(helper):
    path = os.path.join(helper.dir, "hook")
    with open(path, "w") as f:
        f.write(hook_text(helper.config))
    os.chmod(path, 0o755)

    def run(op, subop, xml, env=None):
        return subprocess.run([path, "d1", op, subop, "-"], input=xml, capture_output=True,
                              timeout=60, env=env if env is not None else {"PATH": "/usr/bin:/bin"})
    return run


def test_prepare_creates_the_ports_and_release_removes_them(hook, helper, port_name):
    a, b = port_name[:-1] + "a", port_name[:-1] + "b"
    xml = domain(f'name="{a}" queues="2"', f'name="{b}" consumer-user="nobody" mode="skb"')
    out = hook("prepare", "begin", xml)
    assert out.returncode == 0, out.stderr
    recs = {p["name"]: p for p in helper.vmnet_json("port", "list")["ports"]}
    assert recs[a]["owner"] == "uuid:" + UUID and recs[a]["queues"] == 2
    assert recs[a]["consumer_uid"] == int(subprocess.check_output(["id", "-u", "libvirt-qemu"]))
    assert recs[b]["consumer_uid"] == 65534 and recs[b]["mode"] == "skb"
    assert hook("started", "begin", xml).returncode == 0
    assert hook("stopped", "end", xml).returncode == 0
    assert exists(helper, a)                      # stopped is not destructive
    assert hook("reconnect", "begin", xml).returncode == 0
    assert hook("release", "end", xml).returncode == 0
    assert not exists(helper, a) and not exists(helper, b)
    assert hook("release", "end", xml).returncode == 0   # twice is harmless


def test_release_leaves_a_port_of_another_domain_alone(hook, helper, port_name):
    assert hook("prepare", "begin", domain(f'name="{port_name}"')).returncode == 0
    other = domain(f'name="{port_name}"', uuid="00000000-0000-0000-0000-000000000001")
    assert hook("release", "end", other).returncode == 0
    assert exists(helper, port_name)
    assert hook("release", "end", domain(f'name="{port_name}"')).returncode == 0
    assert not exists(helper, port_name)


def test_a_failing_port_undoes_the_ports_created_before_it(hook, helper, port_name):
    helper.vmnet_json("port", "add", port_name, "--consumer-user", "nobody", "--owner", "someone-else")
    first = port_name[:-1] + ("x" if port_name[-1] != "x" else "y")   # never port_name itself
    out = hook("prepare", "begin", domain(f'name="{first}"', f'name="{port_name}"'))
    assert out.returncode == 1
    assert b"already exists" in out.stderr
    assert not exists(helper, first)
    assert exists(helper, port_name)


def test_prepare_replaces_a_stale_port_of_the_same_domain(hook, helper, port_name):
    xml = domain(f'name="{port_name}"')
    assert hook("prepare", "begin", xml).returncode == 0
    assert hook("prepare", "begin", xml).returncode == 0      # libvirtd died before release
    assert hook("release", "end", xml).returncode == 0


@pytest.mark.parametrize("xml, message", [
    (b"<domain urn:vmnet:domain:1", b"not well-formed"),
    (domain('name="x" queues="65"'), b"queue count 65 is out of range"),
    (domain('name="x" consumer-user="no-such-user-here"'), b"consumer user 'no-such-user-here' does not exist"),
])
def test_bad_input_at_prepare_fails_with_a_message_for_the_user(hook, xml, message):
    out = hook("prepare", "begin", xml)
    assert out.returncode == 1 and message in out.stderr
    assert b"Traceback" not in out.stderr


def test_helper_down_at_prepare_fails_the_start_and_later_ops_do_not(hook, helper, port_name):
    helper.kill()
    xml = domain(f'name="{port_name}"')
    out = hook("prepare", "begin", xml)
    assert out.returncode == 1 and b"no vmnet helper is listening" in out.stderr
    assert hook("release", "end", xml).returncode == 0           # logged, never fatal
    assert hook("reconnect", "begin", xml).returncode == 0
    helper.start()


def test_migrate_and_restore_pass_the_xml_through_unchanged(hook):
    xml = domain('name="m1"')
    for op in ("migrate", "restore"):
        out = hook(op, "begin", xml)
        assert out.returncode == 0 and out.stdout == xml


def test_a_domain_without_vmnet_metadata_never_reaches_the_helper(hook, helper):
    helper.kill()                   # nothing may try to connect
    out = hook("prepare", "begin", b"<domain><name>plain</name><devices/></domain>")
    assert out.returncode == 0 and out.stderr == b""
    helper.start()


def test_the_domain_verbs_are_refused_to_a_user_outside_the_admin_group(hook, helper, port_name):
    from helpers import USER_A, as_identity
    path = os.path.join(helper.dir, "hook")        # written by the fixture, readable by all
    out = subprocess.run([path, "d1", "prepare", "begin", "-"], input=domain(f'name="{port_name}"'),
                         capture_output=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
                         preexec_fn=as_identity(USER_A, USER_A), cwd="/")
    assert out.returncode == 1 and b"may not create a domain's ports" in out.stderr, out.stderr
    assert not exists(helper, port_name)
    assert "refused domain-prepare from pid" in helper.read_log()


def test_a_domain_xml_too_large_for_one_request_is_refused_before_the_helper(hook, helper, port_name):
    helper.kill()                   # refused by the hook itself
    padding = b"<!--" + b"x" * (200 * 1024) + b"-->"
    out = hook("prepare", "begin", domain(f'name="{port_name}"').replace(b"<devices/>", padding))
    assert out.returncode == 1 and b"the hook passes at most" in out.stderr, out.stderr
    helper.start()


def test_the_helper_refuses_unknown_arguments_to_a_domain_verb(helper):
    from vmnet.client import call
    from vmnet.errors import InvalidInput
    with pytest.raises(InvalidInput, match="unknown argument"):
        call(helper.socket, "domain-prepare", xml="<domain/>", force=True)
