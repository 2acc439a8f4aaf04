"""The node image: built from Debian packages and this repository, the helper running in it.

scripts/build-images makes the image (about 40 s here); podman runs the
helper from it the way the DaemonSet does — the node's network and pid
namespaces, its bpffs, the DaemonSet's own capability list and nothing
else, not privileged — and the host's `vmnet exec` starts the responder
on a port that containerised helper made, and pings it. The image is
removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import subprocess
import time
import uuid

import pytest
from helpers import HelperProcess
from test_handoff import CONSUMER_IP, HOST_IP, NOBODY, exec_responder, stop, wait_ready

from vmnet import probe
from vmnet.caps import parse_status
from vmnet.priv import links

pytestmark = pytest.mark.system
REPO = pathlib.Path(__file__).parent.parent


def _missing() -> str | None:
    for tool in ("podman", "mmdebstrap", "runc"):
        if not shutil.which(tool):
            return f"{tool} is not installed (install.sh installs it): the node image cannot be built or run"
    return None


@pytest.fixture(scope="module")
def images():
    """Both images, built once for this module, removed after."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    reason = _missing()
    if reason:
        pytest.skip(reason)
    tag = "test-" + uuid.uuid4().hex[:8]
    started = time.monotonic()
    out = subprocess.run([str(REPO / "scripts" / "build-images"), "--tag", tag, "node", "sidecar"],
                         capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
    made = {n: f"localhost/vmnet-{n}:{tag}" for n in ("node", "sidecar")}
    try:
        assert out.returncode == 0, out.stderr[-3000:]
        print(f"built in {time.monotonic() - started:.0f} s: {out.stdout.strip()}")
        yield made
    finally:
        for image in made.values():
            subprocess.run(["podman", "rmi", "-f", image], capture_output=True, timeout=120)


@pytest.fixture
def node_image(images):
    return images["node"]


def daemonset_capabilities() -> list[str]:
    import yaml
    ds = yaml.safe_load((REPO / "deploy" / "kubernetes" / "daemonset.yaml").read_text())
    helper = next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "helper")
    return helper["securityContext"]["capabilities"]["add"]


class ContainerHelper(HelperProcess):
    """HelperProcess, but `vmnet helper` runs in the node image under podman."""

    def __init__(self, image: str, extra_config: str = ""):
        super().__init__(extra_config)
        self.image, self.name = image, "vmnet-test-" + self.instance.name
        bounding = set(parse_status(open("/proc/self/status").read())["bounding"])
        wanted = [c.lower() for c in daemonset_capabilities()]
        # what this machine's root cannot give (no CAP_SYS_RESOURCE here) cannot be added either
        self.caps = [c for c in wanted if c in bounding]
        self.missing = sorted(set(wanted) - set(self.caps))

    def start(self, timeout: float = 90.0):
        self._logf = open(self.log, "a")
        argv = ["podman", "--runtime", "runc", "run", "--rm", "--name", self.name,
                "--network", "host", "--pid", "host", "--cap-drop", "all",
                "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                "-v", "/sys/fs/bpf:/sys/fs/bpf", "-v", "/sys/kernel/security:/sys/kernel/security:ro",
                # as the DaemonSet's HostToContainer: netns made after the helper started show up
                "-v", "/run/netns:/run/netns:ro,rslave",
                "-v", f"{self.dir}:{self.dir}", "-e", f"VMNET_CONFIG={self.config}"]
        for cap in self.caps:
            argv += ["--cap-add", cap.upper()]
        self.proc = subprocess.Popen(argv + [self.image, "helper", "--config", self.config],
                                     stdin=subprocess.DEVNULL, stdout=self._logf, stderr=self._logf)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the containerised helper exited: {self.read_log()}")
            if os.path.exists(self.socket) and self.vmnet("status").returncode == 0:
                return self
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"the containerised helper did not answer in {timeout:g} s: {self.read_log()}")

    def kill(self, sig=None):
        if self.proc and self.proc.poll() is None:
            subprocess.run(["podman", "stop", "-t", "10", self.name], capture_output=True, timeout=60)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        if getattr(self, "_logf", None):
            self._logf.close()
            self._logf = None


def test_the_helper_in_the_node_image_serves_the_hosts_responder(test_netns, consumer_netns, port_name, node_image):
    h = ContainerHelper(node_image, "allow_ipc_lock = true\n")
    try:
        h.start()
        status = h.vmnet_json("status")["helper"]
        assert status["instance"] == h.instance.name
        pid = int(subprocess.run(["podman", "inspect", "--format", "{{.State.Pid}}", h.name], capture_output=True,
                                 text=True, timeout=30, check=True).stdout)
        caps = parse_status(open(f"/proc/{pid}/status").read())
        assert set(caps["effective"]) == set(h.caps) and caps["uid"] == 0       # just the DaemonSet's list
        h.vmnet_json("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", str(NOBODY))
        links.add_address("vmn-" + port_name, HOST_IP, 24)
        proc = exec_responder(h, consumer_netns, port_name)
        try:
            ready = wait_ready(proc)
            assert ready is not None, proc.stderr.read() if proc.poll() is not None else "no ready line"
            assert probe.ping(CONSUMER_IP, count=3)["received"] == 3
        finally:
            stop(proc)
        h.vmnet_json("port", "del", port_name)
        assert links.link_state("vmn-" + port_name) is None
        if h.missing:
            print(f"not granted (this machine's root lacks them): {', '.join(h.missing)}")
    finally:
        h.cleanup()


def test_the_sidecar_image_answers_the_hook_manager(images, tmp_path):
    """The sidecar image as KubeVirt runs it: uid 107, no capabilities, its hook directory mounted."""
    from test_kubevirt_sidecar import DOMAIN, Manager, vmi
    import xml.etree.ElementTree as ET
    hooks = tmp_path / "kubevirt-hooks"
    mine = hooks / "hook-sidecar-0"
    mine.mkdir(parents=True)
    os.chown(mine, 107, 107)
    name = "vmnet-sidecar-" + uuid.uuid4().hex[:8]
    proc = subprocess.Popen(["podman", "--runtime", "runc", "run", "--rm", "--name", name, "--network", "none",
                             "--cap-drop", "all", "--security-opt", "no-new-privileges",
                             "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                             "-v", f"{mine}:/var/run/kubevirt-hooks", "-e", "NETWORK_BINDING_PLUGIN_NAME=vmnet",
                             images["sidecar"]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (mine / "vmnet.sock").exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the sidecar did not listen"
            time.sleep(0.2)
        with Manager(hooks) as m:
            out = m.on_define_domain(DOMAIN, vmi("vmnet"))
            assert ET.fromstring(out).find("devices/emulator").text == "/var/run/vmnet/runtime/bin/vmnet-qemu-wrapper"
            assert (mine / "vmnet.sock").stat().st_uid == 107                   # it ran as 107
            m.shutdown()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            subprocess.run(["podman", "stop", "-t", "5", name], capture_output=True, timeout=60)
            proc.wait(30)



def test_the_helper_in_the_node_image_makes_a_routed_port_with_its_read_only_proc_sys(
        test_netns, consumer_netns, port_name, node_image):
    """The DaemonSet's helper cannot write /proc/sys: a routed port's IPv4 settings go by
    rtnetlink, its IPv6 ones come from the host's defaults (here set as a router has them)."""
    from guest_env import run_in
    from test_networks import sysctl_of
    run_in(test_netns, "ip", "link", "set", "lo", "up")
    run_in(test_netns, "ip", "route", "add", "169.254.1.1/32", "dev", "lo")
    run_in(test_netns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.all.proxy_ndp=1")
    h = ContainerHelper(node_image)
    try:
        h.start()
        pid = int(subprocess.run(["podman", "inspect", "--format", "{{.State.Pid}}", h.name], capture_output=True,
                                 text=True, timeout=30, check=True).stdout)
        with open(f"/proc/{pid}/mountinfo") as f:
            assert any(line.split()[4] == "/proc/sys" and line.split()[5].startswith("ro") for line in f), \
                "the container's /proc/sys is writable: this test proves nothing"
        h.vmnet_json("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", str(NOBODY),
                     "--routed", "--address", "10.1.2.3", "--address", "fd00::3", "--no-dhcp")
        host = "vmn-" + port_name
        assert sysctl_of(test_netns, f"net/ipv4/conf/{host}/proxy_arp") == "1"
        assert sysctl_of(test_netns, f"net/ipv4/conf/{host}/forwarding") == "1"
        assert "10.1.2.3" in run_in(test_netns, "ip", "route", "show", "dev", host).stdout
        assert "fd00::3" in run_in(test_netns, "ip", "-6", "route", "show", "dev", host).stdout
        assert "fe80::1" in run_in(test_netns, "ip", "-6", "neigh", "show", "proxy", "dev", host).stdout
        h.vmnet_json("port", "del", port_name)
        assert links.link_state(host) is None
        assert "10.1.2.3" not in run_in(test_netns, "ip", "route").stdout
    finally:
        h.cleanup()
