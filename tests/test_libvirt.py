"""vmnet under a real libvirtd: the hook, the wrapper as <emulator>, live attach."""

import concurrent.futures
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import uuid

import pytest
from libvirt_env import BASE_DOMAIN, QEMU

from vmnet.libvirt import domain_xml as lx
from vmnet.caps import has_capability
from vmnet.priv import ports

pytestmark = pytest.mark.system


def _domain(env, ports_, emulator=None, name=None):
    name = name or "vmnet-t" + uuid.uuid4().hex[:6]
    return env.define(name, lx.inject(BASE_DOMAIN.format(name=name, qemu=QEMU), ports_, emulator or env.wrapper,
                                      commandline=emulator is None))


def _undefine(env, name):
    env.virsh("destroy", name)
    env.virsh("undefine", name)


def _uuid(env, name):
    return "uuid:" + env.virsh("domuuid", name).stdout.strip()


def _wrapper_events(env):
    with open(env.wrapper_log) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_hook_creates_ports_at_prepare_and_removes_them_at_release(libvirt_env):
    env = libvirt_env
    pname = "lv" + uuid.uuid4().hex[:6]
    # the stock QEMU as emulator: the domain runs, so its ports can be looked at while it does
    name = _domain(env, [lx.port_option(f"{pname},queues=2")], emulator=QEMU)
    try:
        out = env.virsh("start", name)
        assert out.returncode == 0, out.stderr
        rec = env.helper.vmnet_json("port", "show", pname)
        assert rec["owner"] == _uuid(env, name)
        assert rec["consumer_uid"] == int(subprocess.check_output(["id", "-u", "libvirt-qemu"]))
        assert rec["queues"] == 2
        assert env.virsh("destroy", name).returncode == 0
        assert env.helper.vmnet("port", "show", pname).returncode == 3
        assert not ports.port_exists(pname, libvirt_env.helper.instance)
    finally:
        _undefine(env, name)


def _start_fails_at_af_xdp(out):
    # Debian's QEMU has no af-xdp: the start must fail, at memlock when the helper
    # cannot raise it (no CAP_SYS_RESOURCE, as here), else at QEMU's -netdev
    assert out.returncode != 0
    if has_capability("sys_resource"):
        assert "af-xdp" in out.stderr
    else:
        assert "needs to lock 64 MiB" in out.stderr, out.stderr


def test_a_vmnet_interface_is_libvirts_nic_and_the_wrapper_swaps_exactly_its_tap(libvirt_env):
    """The interface form: libvirt manages the NIC (domiflist, its PCI address, mq/vectors),
    opens the placeholder tap the hook made with the port, and the wrapper replaces that one
    netdev, keeping libvirt's id, and closes the tap fds before QEMU runs."""
    env = libvirt_env
    pname = "lw" + uuid.uuid4().hex[:6]
    name = _domain(env, [lx.port_option(f"{pname},queues=2")])
    open(env.wrapper_log, "w").close()
    try:
        listed = env.virsh("domiflist", name)
        assert f"vmt-{pname}" in listed.stdout and "ethernet" in listed.stdout, listed.stdout
        mac = env.virsh("domiflist", name).stdout.split()[-1]
        out = env.virsh("start", name)
        _start_fails_at_af_xdp(out)
        (take,) = [e for e in _wrapper_events(env) if e["event"] == "takeover"]
        (sub,) = [e for e in _wrapper_events(env) if e["event"] == "substituted"]
        assert take["taps"][0]["port"] == pname and take["taps"][0]["tap"] == f"vmt-{pname}"
        assert len(take["taps"][0]["fds"]) == 2
        netdevs = [json.loads(a) for a in sub["argv"] if a.startswith("{") and '"af-xdp"' in a]
        assert not [a for a in sub["argv"] if '"type":"tap"' in a]
        (netdev,) = netdevs
        fds = sub["fds"]
        assert netdev == {"type": "af-xdp", "id": take["taps"][0]["netdev"], "ifname": f"vmc-{pname}",
                          "queues": 2, "start-queue": 0, "mode": "native", "inhibit": True,
                          "sock-fds": f"{fds[0]}:{fds[1]}"}
        (device,) = [json.loads(a) for a in sub["argv"] if a.startswith('{"driver":"virtio-net-pci"')]
        assert device["netdev"] == netdev["id"] and device["mac"] == mac
        assert device["mq"] is True and device["vectors"] == 6 and "addr" in device
        assert sub["uid"] == int(subprocess.check_output(["id", "-u", "libvirt-qemu"]))
        log = env.helper.read_log()
        assert f"created port {pname}" in log and f"handed 2 socket fd(s) of port {pname}" in log
        assert not ports.port_exists(pname, libvirt_env.helper.instance)          # released after the failed start
        assert subprocess.run(["ip", "link", "show", f"vmt-{pname}"], capture_output=True).returncode != 0
    finally:
        _undefine(env, name)


def test_starting_through_the_wrapper_hands_the_right_fds_and_leaves_nothing(libvirt_env):
    """The older <qemu:commandline> form keeps working."""
    env = libvirt_env
    pname = "lw" + uuid.uuid4().hex[:6]
    name = BASE_DOMAIN.format(name="vmnet-t" + uuid.uuid4().hex[:6], qemu=QEMU)
    name = env.define(dm_name(name), lx.inject(name, [lx.port_option(f"{pname},queues=2")], env.wrapper,
                                               form="commandline"))
    open(env.wrapper_log, "w").close()
    try:
        out = env.virsh("start", name)
        _start_fails_at_af_xdp(out)
        (sub,) = [e for e in _wrapper_events(env) if e["event"] == "substituted"]
        fds = sub["fds"]
        argv = " ".join(sub["argv"])
        assert len(fds) == 2
        assert sub["uid"] == int(subprocess.check_output(["id", "-u", "libvirt-qemu"]))
        assert (f"af-xdp,id=vmnet-{pname},ifname=vmc-{pname},queues=2,start-queue=0,mode=native,"
                f"inhibit=on,sock-fds={fds[0]}:{fds[1]}") in argv
        (device,) = [json.loads(a) for a in sub["argv"] if a.startswith('{"driver":"virtio-net-pci"')]
        assert device == {"driver": "virtio-net-pci", "id": f"vmnet-{pname}-dev", "netdev": f"vmnet-{pname}",
                          "mac": device["mac"], "host_mtu": 3506, "mq": True, "vectors": 6}
        assert re.fullmatch(r"02(:[0-9a-f]{2}){5}", device["mac"])
        log = env.helper.read_log()
        assert f"created port {pname}" in log and f"handed 2 socket fd(s) of port {pname}" in log
        assert not ports.port_exists(pname, libvirt_env.helper.instance)          # released after the failed start
    finally:
        _undefine(env, name)


def dm_name(xml: str) -> str:
    return re.search(r"<name>([^<]+)</name>", xml).group(1)


def test_capability_probes_reach_qemu_through_the_wrapper(libvirt_env):
    env = libvirt_env
    open(env.wrapper_log, "w").close()
    os.chmod(env.wrapper, 0o755)    # a new ctime makes libvirt probe the emulator again
    out = env.virsh("domcapabilities", "--emulatorbin", env.wrapper, "--virttype", "qemu")
    assert out.returncode == 0, out.stderr
    assert "<domainCapabilities>" in out.stdout
    assert any(e["event"] == "passthrough" for e in _wrapper_events(env))


def test_prepare_fails_with_a_clear_error_when_the_helper_is_down(libvirt_env):
    env = libvirt_env
    pname = "ld" + uuid.uuid4().hex[:6]
    name = _domain(env, [lx.port_option(pname)], emulator=QEMU)
    env.helper.kill()
    try:
        out = env.virsh("start", name)
        assert out.returncode != 0
        assert "no vmnet helper is listening" in out.stderr
        assert env.virsh("domstate", name).stdout.strip() == "shut off"
    finally:
        env.helper.start()
        _undefine(env, name)
    assert not ports.port_exists(pname, libvirt_env.helper.instance)


def test_invalid_metadata_refuses_the_start(libvirt_env):
    env = libvirt_env
    name = "vmnet-t" + uuid.uuid4().hex[:6]
    xml = BASE_DOMAIN.format(name=name, qemu=QEMU).replace(
        "<devices>", '<metadata><vmnet:ports xmlns:vmnet="urn:vmnet:domain:1">'
        '<vmnet:port name="ok1" queues="99"/></vmnet:ports></metadata><devices>')
    env.define(name, xml)
    try:
        out = env.virsh("start", name)
        assert out.returncode != 0 and "queue count 99 is out of range" in out.stderr
    finally:
        _undefine(env, name)


def test_ten_domains_started_at_once_each_get_their_own_ports(libvirt_env):
    env = libvirt_env
    names, pnames = [], []
    try:
        for i in range(10):
            pnames.append(f"c{i}" + uuid.uuid4().hex[:5])
            names.append(_domain(env, [lx.port_option(f"{pnames[-1]},queues={1 + i % 3}")], emulator=QEMU))
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            results = list(pool.map(lambda n: env.virsh("start", n), names))
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
        listed = {p["name"]: p for p in env.helper.vmnet_json("port", "list")["ports"]}
        for i, (name, pname) in enumerate(zip(names, pnames)):
            assert listed[pname]["owner"] == _uuid(env, name)
            assert listed[pname]["queues"] == 1 + i % 3
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            list(pool.map(lambda n: env.virsh("destroy", n), names))
        assert not any(ports.port_exists(p, libvirt_env.helper.instance) for p in pnames)
    finally:
        for name in names:
            _undefine(env, name)


def test_live_attach_into_a_running_domain_rolls_back_when_qemu_cannot_take_it(libvirt_env):
    env = libvirt_env
    name = _domain(env, [], emulator=QEMU)
    pname = "la" + uuid.uuid4().hex[:6]
    try:
        assert env.virsh("start", name).returncode == 0
        out = env.helper.vmnet("libvirt", "attach", name, f"{pname},queues=1")
        assert out.returncode != 0
        # here: memlock cannot be raised for QEMU (no CAP_SYS_RESOURCE) or QEMU lacks af-xdp
        assert ("needs to lock 32 MiB" in out.stderr) or ("af-xdp" in out.stderr), out.stderr
        assert "Traceback" not in out.stderr
        assert not ports.port_exists(pname, libvirt_env.helper.instance)
        assert env.virsh("domstate", name).stdout.strip() == "running"
    finally:
        _undefine(env, name)


Q35_DOMAIN = """<domain type="qemu">
  <name>{name}</name>
  <memory unit="MiB">96</memory>
  <vcpu>1</vcpu>
  <os><type arch="x86_64" machine="q35">hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>{qemu}</emulator>
    {controllers}
  </devices>
</domain>
"""


def _q35(env, root_ports: int) -> str:
    """A running q35 domain with `root_ports` root ports declared. libvirt puts its USB
    controller and balloon into the first two; with none declared it adds ports for them
    and one spare at define."""
    name = "vmnet-t" + uuid.uuid4().hex[:6]
    ctl = "<controller type='pci' model='pcie-root'/>" + "<controller type='pci' model='pcie-root-port'/>" * root_ports
    env.define(name, Q35_DOMAIN.format(name=name, qemu=QEMU, controllers=ctl))
    out = env.virsh("start", name)
    assert out.returncode == 0, out.stderr
    return name


def _device_add(env, name, ident, bus):
    """A device libvirt does not know of in that port (what an earlier attach leaves)."""
    cmd = json.dumps({"execute": "device_add", "arguments": {"driver": "virtio-rng-pci", "id": ident, "bus": bus}})
    out = env.virsh("qemu-monitor-command", name, cmd)
    assert out.returncode == 0 and '"return"' in out.stdout, out.stdout + out.stderr


def _hotplug_choice(env, name):
    """(the spare ports of the live XML, the bus attach would pick or the refusal), asked in a
    process of its own (libvirt-python keeps fds open for the life of the process)."""
    code = ("import json, sys\nfrom vmnet.libvirt import attach as la\nfrom vmnet.errors import VmnetError\n"
            "conn, dom = la._domain('qemu:///system', sys.argv[1])\n"
            "free = la.hotplug_candidates(dom.XMLDesc(0))\n"
            "try:\n    bus = la._hotplug_bus(dom, sys.argv[1])\nexcept VmnetError as exc:\n    bus = str(exc)\n"
            "print(json.dumps([free, bus]))\n")
    out = subprocess.run([sys.executable, "-I", "-c", code, name], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_live_attach_on_q35_without_a_free_root_port_is_refused_with_the_fix_and_makes_nothing(libvirt_env):
    """libvirt leaves a q35 domain one spare root port at define: a device libvirt does not
    know of (what an earlier attach leaves) fills it first."""
    env = libvirt_env
    name = _q35(env, 0)
    pname = "la" + uuid.uuid4().hex[:6]
    try:
        free, _ = _hotplug_choice(env, name)
        for i, bus in enumerate(free):
            _device_add(env, name, f"vmnet-test-rng{i}", bus)
        out = env.helper.vmnet("libvirt", "attach", name, f"{pname},queues=1")
        assert out.returncode != 0
        assert f"domain {name} has no free PCIe port to hot-plug a NIC into" in out.stderr, out.stderr
        assert "<controller type='pci' model='pcie-root-port'/>" in out.stderr
        assert not ports.port_exists(pname, libvirt_env.helper.instance)
        assert env.virsh("domstate", name).stdout.strip() == "running"
    finally:
        _undefine(env, name)


def test_live_attach_on_q35_picks_a_root_port_no_device_sits_in(libvirt_env):
    """libvirt's live XML names the spare root ports; QEMU is asked which of them already
    carry a device libvirt does not know of: the next one is chosen."""
    env = libvirt_env
    name = _q35(env, 4)
    try:
        free, bus = _hotplug_choice(env, name)
        assert len(free) >= 2 and bus == free[0]
        _device_add(env, name, "vmnet-test-rng0", free[0])
        again, bus = _hotplug_choice(env, name)
        assert again == free and bus == free[1]
    finally:
        _undefine(env, name)


HERE = pathlib.Path(__file__).parent


@pytest.mark.parametrize("path", sorted(str(p) for p in list(HERE.glob("golden/*.out.xml"))
                                        + list((HERE.parent / "libvirt-xml").glob("*.xml"))))
def test_libvirts_schema_accepts_what_inject_and_the_examples_produce(path):
    if not shutil.which("virt-xml-validate"):
        pytest.skip("virt-xml-validate (libvirt-clients) is not installed")
    out = subprocess.run(["virt-xml-validate", path, "domain"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


TAKE_AFTER_GO = """
import sys
from vmnet.client import Client
from vmnet.errors import VmnetError
sys.stdin.readline()
try:
    record, fds = Client(sys.argv[1]).call("fds-for-consumer", name=sys.argv[2])
    print("got", len(fds))
except VmnetError as exc:
    print(exc.code, exc.message)
"""


def _cgroup_procs_of(pid: int) -> str:
    """The cgroup.procs file of pid's cgroup in the unified (v2) hierarchy."""
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    root = next(m[4] for m in mounts if m[m.index("-") + 1] == "cgroup2")
    with open(f"/proc/{pid}/cgroup") as f:
        path = next(line.strip()[3:] for line in f if line.startswith("0::"))
    return os.path.join(root, path.lstrip("/"), "cgroup.procs")


def _take_from(env, port: str, cgroup_of: int | None) -> str:
    """As libvirt's QEMU user, from inside the cgroup of pid cgroup_of (a domain's QEMU)."""
    import pwd
    from helpers import PYTHON, as_identity
    pw = pwd.getpwnam("libvirt-qemu")
    proc = subprocess.Popen([PYTHON, "-I", "-c", TAKE_AFTER_GO, env.helper.socket, port],
                            env=env.helper.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd="/",
                            preexec_fn=as_identity(pw.pw_uid, pw.pw_gid))
    try:
        if cgroup_of is not None:
            with open(_cgroup_procs_of(cgroup_of), "w") as f:
                f.write(str(proc.pid))
        out, err = proc.communicate("go\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out.strip() or err


def test_two_domains_of_one_uid_cannot_take_each_others_sockets(libvirt_env):
    """Every libvirt QEMU runs as libvirt-qemu; a domain's ports go only to its own cgroup."""
    env = libvirt_env
    a_port, b_port = "xa" + uuid.uuid4().hex[:6], "xb" + uuid.uuid4().hex[:6]
    a = _domain(env, [lx.port_option(a_port)], emulator=QEMU)
    b = _domain(env, [lx.port_option(b_port)], emulator=QEMU)
    try:
        for name in (a, b):
            out = env.virsh("start", name)
            assert out.returncode == 0, out.stderr
        with open(f"/run/libvirt/qemu/{a}.pid") as f:
            a_qemu = int(f.read())
        scope = env.helper.vmnet_json("port", "show", a_port)["consumer_scope"]
        domid = env.virsh("domid", a).stdout.strip()
        assert f"qemu-{domid}-{a}.libvirt-qemu" in scope
        # a process of domain A (what A's QEMU would be, taken over by its guest)
        refused = _take_from(env, b_port, cgroup_of=a_qemu)
        assert refused.startswith("permission-denied") and "not in the cgroup of" in refused, refused
        assert _take_from(env, a_port, cgroup_of=a_qemu) == "got 1"
        # the same uid outside any domain's cgroup
        assert _take_from(env, a_port, cgroup_of=None).startswith("permission-denied")
    finally:
        _undefine(env, a)
        _undefine(env, b)
