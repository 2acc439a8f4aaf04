"""A KubeVirt VMI's NIC, end to end, without Kubernetes (tests/launcher_env.py).

CNI ADD makes the pod's port; libvirtd in session mode runs as uid 107 with
NET_BIND_SERVICE only (and CAP_IPC_LOCK: this machine cannot raise memlock
limits), no_new_privs, in the pod's netns and cgroup, with the consumer
socket and the wrapper directory (`vmnet kubevirt runtime`, no Python of the
host's) mounted into it; the domain is shaped as KubeVirt writes it for
`domainAttachmentType: tap`. libvirt opens the placeholder tap, starts the
wrapper as <emulator>, and the wrapper takes the tap over. With
VMNET_TEST_QEMU the guest boots and answers ping and TCP; without, Debian's
QEMU (no af-xdp) proves the rewritten argv and fds and fails cleanly at the
netdev. Then the negative cases: the same uid from another netns or another
pod's cgroup, a tap that is not vmnet's, and the consumer socket refusing
everything but the two consumer verbs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid

import pytest
from helpers import SHARED_NETNS, HelperProcess, cni_invoke, file_shows, install_cni
from launcher_env import LAUNCHER_UID, FakePod, SessionLibvirt, cgroup_hierarchies
from test_vm import GUEST_IP, HOST_IP, _tcp_to_guest, parametrize_qemu

from vmnet import probe, testguest
from vmnet.kubevirt import cni
from vmnet.priv import links, netns

pytestmark = pytest.mark.system

DEBIAN_QEMU = "/usr/bin/qemu-system-x86_64"
IFNAME, TAP = "pod1a2b3c4d5e6", "tap1a2b3c4d5e6"     # KubeVirt's names for a secondary network
# as the device plugin mounts them (read-only: connect() needs no write access to the mount)
SOCKET_IN_POD, RUNTIME_IN_POD = "/mnt/vmnet/consumer/consumer.sock", "/mnt/vmnet/runtime"
DOMAIN = "default_vmi-fast"


def pytest_generate_tests(metafunc):
    parametrize_qemu(metafunc, without="debian-qemu-without-af-xdp")


@pytest.fixture(scope="module")
def runtime_dir():
    """The wrapper directory, built once; its etc/vmnet.toml is rewritten per test."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not shutil.which("libvirtd") or not os.path.exists(DEBIAN_QEMU):
        pytest.skip("libvirtd and Debian's QEMU are needed (install.sh installs them)")
    if not cgroup_hierarchies():
        pytest.skip("no cgroup hierarchy this test may make a fake pod in")
    from vmnet.kubevirt import runtime
    path = f"/run/vmnet-test-rt-{uuid.uuid4().hex[:8]}"
    runtime.build(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Launcher:
    """A helper, a pod with its port (CNI ADD), and the pod's libvirtd."""

    def __init__(self, runtime: str, pod_netns: str, qemu: str, helper_config: str = "", queues: int = 1,
                 wrapper_config: str = "", host_uuid: str | None = None):
        self.qemu = qemu
        with open(os.path.join(runtime, "etc", "vmnet.toml"), "w") as f:
            f.write(f'qemu = "{qemu}"\nallow_ipc_lock = true\n{wrapper_config}')
        self.helper = HelperProcess(helper_config).start()
        install_cni(self.helper)
        self.pod = FakePod(pod_netns)
        self.netns = pod_netns
        self.conf = {"cniVersion": "1.0.0", "name": "vmnet-fast", "type": "vmnet",
                     "socket": self.helper.socket, "queues": queues}
        rc, self.result, err = self.cni("ADD")
        assert rc == 0, (self.result, err)
        self.port = cni.port_name("c0ffee", "vmnet-fast", IFNAME)
        self.mounts = [(os.path.join(self.helper.dir, "consumer"), os.path.dirname(SOCKET_IN_POD), True),
                       (runtime, RUNTIME_IN_POD, True)]
        self.libvirt = SessionLibvirt(self.pod, self.helper.dir, self.mounts, host_uuid=host_uuid).start()
        self.wrapper_log = os.path.join(self.libvirt.dir, "wrapper.log")
        open(self.wrapper_log, "w").close()
        os.chown(self.wrapper_log, LAUNCHER_UID, LAUNCHER_UID)
        self.serial = os.path.join(self.libvirt.dir, "serial.log")

    def cni(self, command, **kw):
        return cni_invoke(self.helper, command, self.conf, self.netns, pod_uid=self.pod.uid, **kw)

    def domain_xml(self, initrd: str, vmlinuz: str, extra_devices: str = "", queues: int = 1) -> str:
        """As KubeVirt's converter writes a VMI with a `binding: {name: vmnet}` interface and
        domainAttachmentType: tap, plus what the binding sidecar adds (emulator, qemu:env)."""
        mac = self.result["interfaces"][-1]["mac"]
        driver = f"<driver name='vhost' queues='{queues}'/>" if queues > 1 else ""
        return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{DOMAIN}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{vmlinuz}</kernel><initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet</cmdline></os>
  <devices><emulator>{RUNTIME_IN_POD}/bin/vmnet-qemu-wrapper</emulator>
    <interface type='ethernet'><mac address='{mac}'/><target dev='{TAP}' managed='no'/>
      <model type='virtio-non-transitional'/><mtu size='{self.result_mtu()}'/>{driver}<alias name='ua-fast'/>
    </interface>{extra_devices}
    <serial type='file'><source path='{self.serial}'/></serial>
  </devices>
  <qemu:commandline>
    <qemu:env name='VMNET_SOCKET' value='{SOCKET_IN_POD}'/>
    <qemu:env name='VMNET_QEMU' value='{self.qemu}'/>
    <qemu:env name='VMNET_WRAPPER_LOG' value='{self.wrapper_log}'/>
  </qemu:commandline>
</domain>"""

    def result_mtu(self) -> int:
        return self.helper.vmnet_json("port", "show", self.port)["mtu"]

    def start(self, xml: str) -> subprocess.CompletedProcess:
        path = os.path.join(self.libvirt.dir, "domain.xml")
        with open(path, "w") as f:
            f.write(xml)
        os.chmod(path, 0o644)
        out = self.libvirt.virsh("define", path)
        assert out.returncode == 0, out.stderr
        return self.libvirt.virsh("start", DOMAIN)

    def events(self) -> list[dict]:
        with open(self.wrapper_log) as f:
            return [json.loads(line) for line in f if line.strip()]

    def holder(self):
        return self.helper.vmnet_json("port", "show", self.port)["holder"]

    def close(self):
        try:
            self.libvirt.virsh("destroy", DOMAIN)
            self.libvirt.virsh("undefine", DOMAIN)
        finally:
            self.libvirt.stop()
            rc, out, err = self.cni("DEL")
            self.pod.cleanup()
            self.helper.cleanup()
            assert rc == 0, (out, err)


def _guest(dirpath: str, name: str = "guest"):
    kernel = testguest.find_kernel()
    if not kernel:
        pytest.skip("no Debian kernel in /boot for the test guest")
    vmlinuz, moddir = kernel
    initrd = testguest.build_initramfs(os.path.join(dirpath, name + ".cpio"), moddir, GUEST_IP)
    os.chmod(initrd, 0o644)
    return vmlinuz, initrd


def test_a_vmi_nic_through_libvirt_as_uid_107_and_the_wrapper_directory(
        test_netns, consumer_netns, runtime_dir, qemu):
    env = Launcher(runtime_dir, consumer_netns, qemu or DEBIAN_QEMU)
    try:
        vmlinuz, initrd = _guest(env.helper.dir)
        started = env.start(env.domain_xml(initrd, vmlinuz))
        events = env.events()
        kinds = [e["event"] for e in events]
        assert "takeover" in kinds, (kinds, started.stderr, env.libvirt.qemu_log(DOMAIN))
        take = next(e for e in events if e["event"] == "takeover")
        assert take["uid"] == LAUNCHER_UID
        assert take["taps"] == [{"netdev": "hostua-fast", "port": env.port, "tap": TAP,
                                 "fds": take["taps"][0]["fds"], "vhostfds": []}]
        tap_fd = take["taps"][0]["fds"][0]
        before = take["argv"][take["argv"].index("-netdev") + 1]
        assert json.loads(before) == {"type": "tap", "fd": str(tap_fd), "id": "hostua-fast"}
        sub = next(e for e in events if e["event"] == "substituted")
        netdev = json.loads(sub["argv"][sub["argv"].index("-netdev") + 1])
        assert netdev == {"type": "af-xdp", "id": "hostua-fast", "ifname": IFNAME, "queues": 1,
                          "start-queue": 0, "mode": netdev["mode"], "inhibit": True,
                          "sock-fds": str(sub["fds"][0])}
        # everything else libvirt wrote is untouched, its -device still names the same netdev
        assert [a for a in sub["argv"] if a != sub["argv"][sub["argv"].index("-netdev") + 1]] == \
            [a for a in take["argv"] if a != before]
        memlock = next(e for e in events if e["event"] == "memlock")
        assert memlock["closed"] == [tap_fd]
        if qemu is None:
            # Debian's QEMU has no af-xdp: the start fails at the netdev, saying so, and the
            # port's sockets are free again for the next attempt
            assert started.returncode != 0
            assert "Parameter 'type' does not accept value 'af-xdp'" in started.stderr
            deadline = time.monotonic() + 10
            while env.holder() is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert env.holder() is None
            return
        assert started.returncode == 0, (started.stderr, env.libvirt.qemu_log(DOMAIN))
        with open(f"{env.libvirt.dir}/run/libvirt/qemu/run/{DOMAIN}.pid") as f:
            qemu_pid = int(f.read())
        assert env.holder()["pid"] == qemu_pid                     # QEMU holds the sockets itself
        status = open(f"/proc/{qemu_pid}/status").read()
        assert "NoNewPrivs:\t1" in status and f"Uid:\t{LAUNCHER_UID}" in status
        environ = open(f"/proc/{qemu_pid}/environ", "rb").read().split(b"\0")
        assert not [v for v in environ if v.startswith((b"VMNET_", b"LD_", b"PYTHON"))], environ
        fds = {os.readlink(f"/proc/{qemu_pid}/fd/{fd}") for fd in os.listdir(f"/proc/{qemu_pid}/fd")}
        assert "/dev/net/tun" not in fds                           # the placeholder's fd is closed
        links.add_address("vmn-" + env.port, HOST_IP, 24)
        assert file_shows(env.serial, testguest.READY, timeout=240), \
            open(env.serial, errors="replace").read()[-2000:]
        assert probe.ping(GUEST_IP, count=5, timeout=2)["received"] == 5
        assert _tcp_to_guest(1 << 20) == 1 << 20               # 1 MiB to the guest's sink, read to its end
    finally:
        env.close()
    assert links.link_state("vmn-" + env.port) is None


def test_multiqueue_taps_become_as_many_sockets(test_netns, consumer_netns, runtime_dir):
    """A 2-queue port: the placeholder is multi-queue, libvirt opens both queues, the wrapper
    swaps fds for sockets one for one (the wrapper's configuration declares a QEMU that reads
    every queue; Debian's then fails at the netdev)."""
    env = Launcher(runtime_dir, consumer_netns, DEBIAN_QEMU, queues=2,
                   wrapper_config="qemu_multiqueue_fixed = true\n")
    try:
        vmlinuz, initrd = _guest(env.helper.dir)
        started = env.start(env.domain_xml(initrd, vmlinuz, queues=2))
        events = env.events()
        take = next((e for e in events if e["event"] == "takeover"), None)
        assert take is not None, (started.stderr, env.libvirt.qemu_log(DOMAIN))
        assert len(take["taps"][0]["fds"]) == 2
        sub = next(e for e in events if e["event"] == "substituted")
        netdev = json.loads(sub["argv"][sub["argv"].index("-netdev") + 1])
        assert netdev["queues"] == 2 and netdev["sock-fds"] == ":".join(map(str, sub["fds"]))
        device = next(json.loads(a) for a in sub["argv"] if a.startswith('{"driver":"virtio-net'))
        assert device.get("mq") is True and device["netdev"] == "hostua-fast"
        memlock = next(e for e in events if e["event"] == "memlock")
        assert sorted(memlock["closed"]) == sorted(take["taps"][0]["fds"] + take["taps"][0]["vhostfds"])
        assert started.returncode != 0
    finally:
        env.close()


def test_a_tap_that_is_not_vmnets_is_left_alone(test_netns, consumer_netns, runtime_dir):
    """A second NIC on an ordinary tap of the pod: libvirt's netdev for it reaches QEMU as it was
    (the helper allows the extra device in the pod's netns: no bind guard on this kernel)."""
    env = Launcher(runtime_dir, consumer_netns, DEBIAN_QEMU, helper_config=SHARED_NETNS)
    try:
        with netns.entered(consumer_netns):
            from pyroute2 import IPRoute
            with IPRoute() as ip:
                ip.link("add", ifname="tapplain", kind="tuntap", mode="tap", uid=LAUNCHER_UID,
                        gid=LAUNCHER_UID, ifr={"no_pi": True})
        vmlinuz, initrd = _guest(env.helper.dir)
        plain = ("<interface type='ethernet'><mac address='02:00:00:00:aa:01'/>"
                 "<target dev='tapplain' managed='no'/><model type='virtio'/><alias name='ua-plain'/></interface>")
        env.start(env.domain_xml(initrd, vmlinuz, extra_devices=plain))
        events = env.events()
        take = next(e for e in events if e["event"] == "takeover")
        assert [t["tap"] for t in take["taps"]] == [TAP]            # only the placeholder
        sub = next(e for e in events if e["event"] == "substituted")
        netdevs = [json.loads(sub["argv"][i + 1]) for i, a in enumerate(sub["argv"]) if a == "-netdev"]
        assert {n["id"]: n["type"] for n in netdevs} == {"hostua-fast": "af-xdp", "hostua-plain": "tap"}
        assert [n for n in netdevs if n["id"] == "hostua-plain"] == \
            [json.loads(take["argv"][i + 1]) for i, a in enumerate(take["argv"])
             if a == "-netdev" and "hostua-plain" in take["argv"][i + 1]]
    finally:
        env.close()


GET_FDS = """
import json, sys
from vmnet.client import Client
from vmnet.errors import VmnetError
try:
    with Client(sys.argv[1]) as c:
        record, fds = c.call(sys.argv[2], **json.loads(sys.argv[3]))
    print(json.dumps({"ok": True, "fds": len(fds)}))
except VmnetError as exc:
    print(json.dumps({"ok": False, "code": exc.code, "message": exc.message}))
"""


WRITE_TO_TAP = """
import errno, fcntl, json, os, struct, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", sys.argv[1].encode(), 0x0002 | 0x1000))
try:
    os.write(fd, b"\\xff" * 12 + b"\\x08\\x00" + b"\\0" * 46)
    print(json.dumps({"written": True}))
except OSError as exc:
    print(json.dumps({"written": False, "errno": errno.errorcode[exc.errno]}))
"""


def _in_pod_python(env, script: str, *args, **spec):
    """Python code run in (or near) the pod by the wrapper directory's interpreter."""
    site = os.path.join(RUNTIME_IN_POD, "site")
    argv = [os.path.join(RUNTIME_IN_POD, "lib64", "ld-linux-x86-64.so.2"), "--library-path",
            os.path.join(RUNTIME_IN_POD, "usr/lib/x86_64-linux-gnu"),
            os.path.join(RUNTIME_IN_POD, "usr/bin/python3.11"), "-I", "-S", "-c",
            f"import sys; sys.path.insert(0, {site!r}); exec({script!r})", *args]
    out = env.pod.run(argv, mounts=env.mounts, **spec)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _ask(env, verb="fds-for-consumer", args=None, **spec):
    """A client asking the consumer socket, as the wrapper would."""
    return _in_pod_python(env, GET_FDS, SOCKET_IN_POD, verb,
                          json.dumps(args if args is not None else {"name": env.port}), **spec)


def test_only_that_pods_processes_get_its_sockets(test_netns, consumer_netns, runtime_dir):
    env = Launcher(runtime_dir, consumer_netns, DEBIAN_QEMU)
    other_ns = "vmnet-c" + uuid.uuid4().hex[:8]
    netns.create_named(other_ns)
    other_pod = FakePod(consumer_netns)
    try:
        # uid 107 in another netns (another virt-launcher), in this pod's cgroup
        got = _ask(env, netns=f"/run/netns/{other_ns}")
        assert not got["ok"] and got["code"] == "permission-denied"
        assert "not in the network namespace of pod default/virt-launcher-a" in got["message"]
        # uid 107 in this pod's netns, but in another pod's cgroup
        got = _ask(env, cgroups=other_pod.cgroups)
        assert not got["ok"] and f"it is in pod {other_pod.uid}" in got["message"]
        # in no pod's cgroup at all
        got = _ask(env, cgroups=[])
        assert not got["ok"] and "its cgroup names no pod" in got["message"]
        # the right uid, the wrong gid
        got = _ask(env, gid=0)
        assert not got["ok"] and "gid 0" in got["message"]
        # root, through the consumer socket: no admin there, so not even told the port exists
        got = _ask(env, uid=0, gid=0, caps=())
        assert not got["ok"] and got["code"] == "not-found"
        for verb, args in (("port-create", {"name": "evil", "consumer_uid": 107}), ("port-list", {}),
                           ("port-delete", {"name": env.port}), ("status", {})):
            got = _ask(env, verb, args, uid=0, gid=0, caps=())
            assert not got["ok"] and "the consumer socket serves only" in got["message"], (verb, got)
        # a tap the port's alias names but that is not its placeholder
        got = _ask(env, args={"name": env.port, "placeholder": "tapother"})
        assert not got["ok"] and "tap tapother is not the placeholder" in got["message"]
        # the placeholder is the pod's (uid 107 may open it, as libvirt does), but it is down:
        # a QEMU that opens it again cannot put a frame into the pod's stack through it
        assert _in_pod_python(env, WRITE_TO_TAP, TAP) == {"written": False, "errno": "EIO"}
        # the pod's own process: the one it was made for
        got = _ask(env)
        assert got == {"ok": True, "fds": 1}
        log = env.helper.read_log()
        assert "not in the network namespace of pod" in log and "refused fds-for-consumer" in log
    finally:
        other_pod.cleanup()
        netns.remove_named(other_ns)
        env.close()


@pytest.mark.parametrize("command", [["-version"], ["-machine", "help"]])
def test_the_wrapper_directory_runs_where_there_is_no_python(test_netns, runtime_dir, command, tmp_path):
    """A busybox-only root (no Python, no libraries), the directory mounted read-only, uid 107
    with no capabilities and no_new_privs: probes pass straight through, with the environment
    the wrapper got less VMNET_*, and nothing of the wrapper's own (no LD_*, no PYTHON*, not
    what its launcher's shell or interpreter add)."""
    root = tmp_path / "root"
    for d in ("bin", "usr/libexec", "mnt", "proc", "sys", "etc"):
        (root / d).mkdir(parents=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", root / "bin" / "busybox")
    # with a C.UTF-8 locale in the image, Python coerces LC_CTYPE under the C locale (PEP 538)
    shutil.copytree("/usr/lib/locale/C.utf8", root / "usr/lib/locale/C.utf8")
    for name in ("sh", "env", "readlink", "dirname", "sort", "cat", "tr"):
        os.symlink("busybox", root / "bin" / name)
    fake = root / "usr/libexec/qemu-kvm"
    fake.write_text('#!/bin/sh\necho "ARGV: $*"\ntr "\\0" "\\n" < /proc/$$/environ\n')     # as exec'd
    fake.chmod(0o755)
    with open(os.path.join(runtime_dir, "etc", "vmnet.toml"), "w") as f:
        f.write('qemu = "/usr/libexec/qemu-kvm"\n')
    os.chmod(tmp_path, 0o755)
    script = ("mount --bind {rt} {root}/mnt && mount -o remount,bind,ro {root}/mnt && "
              "mount -t proc proc {root}/proc && "
              "exec chroot --userspec=107:107 {root} /bin/env -i PATH=/bin HOME=/ TERM=dumb "
              "VMNET_SOCKET=/nonexistent VMNET_WRAPPER_LOG= /bin/sh -c "
              "'exec /mnt/bin/vmnet-qemu-wrapper \"$@\"' wrapper {args}").format(
                  rt=runtime_dir, root=root, args=" ".join(command))
    out = subprocess.run(["unshare", "-m", "--propagation", "private", "setpriv", "--no-new-privs",
                          "sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "ARGV: " + " ".join(command)
    env = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    assert set(env) == {"PATH", "HOME", "TERM"}, env
    assert not list(root.glob("**/*.pyc"))                     # it wrote nothing in the image


def test_a_vmi_with_more_queues_than_the_port_fails_at_libvirt_saying_why(test_netns, consumer_netns,
                                                                          runtime_dir):
    """A 1-queue placeholder is not multi-queue; libvirt asking for 2 queues is refused by the
    kernel (IFF_MULTI_QUEUE mismatch) before any QEMU runs: the troubleshooting row of kubevirt.md."""
    env = Launcher(runtime_dir, consumer_netns, DEBIAN_QEMU)
    try:
        vmlinuz, initrd = _guest(env.helper.dir)
        started = env.start(env.domain_xml(initrd, vmlinuz, queues=2))
        assert started.returncode != 0
        assert f"Unable to create multiple fds for tap device {TAP}" in started.stderr, started.stderr
        assert env.events() == [] and env.holder() is None
    finally:
        env.close()


def test_the_wrapper_directorys_cni_plugin_works_from_a_link(test_netns, consumer_netns, runtime_dir):
    """What the DaemonSet installs on a node without vmnet: /opt/cni/bin/vmnet -> <dir>/bin/vmnet-cni."""
    h = HelperProcess().start()
    try:
        os.makedirs(os.path.join(h.dir, "bin"))
        os.symlink(os.path.join(runtime_dir, "bin", "vmnet-cni"), os.path.join(h.dir, "bin", "vmnet"))
        conf = {"cniVersion": "1.0.0", "name": "vmnet-fast", "type": "vmnet", "socket": h.socket}
        rc, out, err = cni_invoke(h, "VERSION", None, stdin='{"cniVersion":"1.0.0"}')
        assert rc == 0 and "1.1.0" in out["supportedVersions"], err
        rc, res, err = cni_invoke(h, "ADD", conf, consumer_netns)
        assert rc == 0 and res["interfaces"][-1]["name"] == IFNAME, (res, err)
        assert cni_invoke(h, "DEL", conf, consumer_netns)[0] == 0
        assert h.vmnet_json("port", "list")["ports"] == []
    finally:
        h.cleanup()
