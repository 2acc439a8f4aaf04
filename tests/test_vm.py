"""A real guest behind a vmnet port, with each QEMU that has af-xdp (VMNET_TEST_QEMU).

VMNET_TEST_QEMU is a ':'-separated list of QEMU binaries built with af-xdp
(Debian's QEMU has none); every guest case runs against each, labelled by
its version. Without it everything here skips, saying so. Released QEMUs
read only one queue of a multi-queue af-xdp netdev (vmnet.qemu_compat), so
for them a 2- or 4-queue port is the tested refusal; a QEMU listed in
VMNET_TEST_QEMU_MQ_FIXED (one whose net_init_af_xdp() polls every queue,
docs/datapath.md) is run with every queue carrying traffic instead.
"""

import os
import subprocess
import sys
import time

import pytest
from test_handoff import in_netns, stop

from vmnet import probe, qemu_compat, testguest
from vmnet.caps import has_capability
from vmnet.priv import links

pytestmark = pytest.mark.system

QEMUS = qemu_compat.listed(os.environ.get("VMNET_TEST_QEMU"))
FIXED = {os.path.realpath(p) for p in qemu_compat.listed(os.environ.get("VMNET_TEST_QEMU_MQ_FIXED"))}
QEMU = QEMUS[0] if QEMUS else None          # the libvirt cases boot the first one
HOST_IP, GUEST_IP = "198.18.0.1", "198.18.0.2"


def parametrize_qemu(metafunc, without: str = "no-qemu"):
    """A test's `qemu` parameter: each VMNET_TEST_QEMU, labelled by its version; else one
    None labelled `without`."""
    if "qemu" in metafunc.fixturenames:
        named = qemu_compat.labels(QEMUS) if QEMUS else {None: without}
        metafunc.parametrize("qemu", list(named), ids=list(named.values()))


pytest_generate_tests = parametrize_qemu


def _require_qemu(qemu=None):
    qemu = qemu or QEMU
    if not qemu:
        pytest.skip("VMNET_TEST_QEMU is not set: no QEMU with af-xdp to boot a guest with "
                    "(Debian's QEMU is built without af-xdp)")
    help_text = subprocess.run([qemu, "-netdev", "help"], capture_output=True, text=True).stdout
    if "af-xdp" not in help_text:
        pytest.fail(f"VMNET_TEST_QEMU={qemu} has no af-xdp netdev")
    kernel = testguest.find_kernel()
    if not kernel:
        pytest.skip("no Debian kernel in /boot to boot the test guest (apt-get install linux-image-amd64)")
    return kernel


def _wait_for(path, marker, proc, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"QEMU exited with {proc.returncode}: {proc.stderr.read()}")
        with open(path, errors="replace") as f:
            if marker in f.read():
                return
        time.sleep(0.5)
    raise AssertionError(f"guest did not come up in {timeout} s")


def _boot(helper, consumer_netns, port_name, qemu, queues=1, address=GUEST_IP, ping=None):
    """`vmnet exec` a guest behind the port, as nobody, in the consumer netns; (proc, serial).
    address testguest.DHCP: the guest takes its address by DHCP (and pings `ping`)."""
    vmlinuz, moddir = _require_qemu(qemu)
    initrd = testguest.build_initramfs(os.path.join(helper.dir, "initrd.cpio"), moddir, address, queues=queues,
                                       ping=ping)
    serial = os.path.join(helper.dir, "serial.log")
    open(serial, "w").close()
    os.chown(serial, 65534, 65534)
    os.chmod(initrd, 0o644)
    proc = subprocess.Popen(
        [sys.executable, "-I", "-m", "vmnet", "exec", "--user", "nobody", "--allow-ipc-lock",
         "--port", port_name, "--", qemu] + testguest.qemu_boot_args(vmlinuz, initrd, serial),
        env=helper.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=in_netns(consumer_netns), cwd="/")
    return proc, serial


def _tcp_to_guest(nbytes: int = 4 << 20, port: int = testguest.TCP_SINK_PORT) -> int:
    """Send nbytes to the guest's TCP sink; the bytes the sink took (it closes at EOF)."""
    import socket
    s = socket.create_connection((GUEST_IP, port), timeout=30)
    try:
        chunk = b"v" * 65536
        sent = 0
        while sent < nbytes:
            s.sendall(chunk)
            sent += len(chunk)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(60)
        while s.recv(4096):
            pass
        return sent
    finally:
        s.close()


@pytest.mark.parametrize("mode", ["native", "skb"])
def test_guest_behind_an_unprivileged_qemu_answers_ping_and_tcp(helper, consumer_netns, port_name, qemu, mode):
    _require_qemu(qemu)
    helper.vmnet_json("port", "add", port_name, "--mode", mode, "--netns", consumer_netns,
                      "--consumer-user", "nobody")
    links.add_address("vmn-" + port_name, HOST_IP, 24)
    proc, serial = _boot(helper, consumer_netns, port_name, qemu)
    try:
        _wait_for(serial, testguest.READY, proc)
        result = probe.ping(GUEST_IP, count=5, timeout=2)
        assert result["received"] == 5, result
        assert _tcp_to_guest() == 4 << 20
        status = helper.vmnet_json("port", "show", port_name)
        assert status["mode"] == mode                     # mode= is given; 10.1+ just does not check it
        assert status["queue_counters"][0]["redirected"] >= 5
    finally:
        stop(proc)


@pytest.mark.parametrize("queues", [2, 4])
def test_a_multiqueue_port_is_refused_to_a_qemu_that_reads_one_queue(helper, consumer_netns, port_name, qemu,
                                                                     queues):
    _require_qemu(qemu)
    if os.path.realpath(qemu) in FIXED:
        pytest.skip(f"{qemu} is listed in VMNET_TEST_QEMU_MQ_FIXED: it reads every queue (the next test)")
    helper.vmnet_json("port", "add", port_name, "--queues", str(queues), "--netns", consumer_netns,
                      "--consumer-user", "nobody")
    proc, _ = _boot(helper, consumer_netns, port_name, qemu, queues)
    out, err = proc.communicate(timeout=60)
    version = ".".join(map(str, qemu_compat.version_of(qemu)))
    assert proc.returncode == 5, err
    assert f"QEMU {version} reads only one queue of an af-xdp netdev" in err and "net_init_af_xdp" in err
    assert helper.vmnet_json("port", "show", port_name)["holder"] is None     # no socket was taken


def _steer_to_queue(test_netns: str, ifname: str, queue: int, queues: int, mode: str):
    """The host end's transmit queue for whatever CPU 0 sends, so that it reaches `queue`:
    in native mode veth hands transmit queue k to its peer's queue k; in skb mode generic
    XDP sees k - 1, and vmnet gives that host end one transmit queue more
    (vmnet.priv.links.create_veth)."""
    tx = queue if mode == "native" else queue + 1
    lines = "; ".join(f"echo {'1' if q == tx else '0'} > /sys/class/net/{ifname}/queues/tx-{q}/xps_cpus"
                      for q in range(queues + (mode == "skb")))
    subprocess.run(["ip", "netns", "exec", test_netns, "sh", "-c", lines], check=True)


def _ping_from_cpu0(test_netns: str, count: int) -> int:
    out = subprocess.run(["ip", "netns", "exec", test_netns, "taskset", "-c", "0", "ping", "-c", str(count),
                          "-i", "0.2", "-W", "2", GUEST_IP], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if "received" in line:
            return int(line.split(",")[1].split()[0])
    return 0


@pytest.mark.parametrize("queues", [2, 4])
@pytest.mark.parametrize("mode", ["native", "skb"])
def test_every_queue_of_a_multiqueue_port_carries_traffic(test_netns, consumer_netns, port_name, qemu,
                                                          queues, mode):
    _require_qemu(qemu)
    if os.path.realpath(qemu) not in FIXED:
        pytest.skip(f"QEMU {qemu_compat.labels([qemu])[qemu]} reads one queue only: the refusal is tested "
                    "above; list a QEMU with the fix (docs/datapath.md) in VMNET_TEST_QEMU_MQ_FIXED")
    from helpers import HelperProcess
    helper = HelperProcess("qemu_multiqueue_fixed = true\n").start()
    proc = None
    try:
        helper.vmnet_json("port", "add", port_name, "--queues", str(queues), "--mode", mode,
                          "--netns", consumer_netns, "--consumer-user", "nobody")
        links.add_address("vmn-" + port_name, HOST_IP, 24)
        proc, serial = _boot(helper, consumer_netns, port_name, qemu, queues)
        _wait_for(serial, testguest.READY, proc)
        assert _ping_from_cpu0(test_netns, 2) >= 1, open(serial, errors="replace").read()[-1500:]
        per_queue = {}
        for q in range(queues):
            before = {c["queue"]: c["redirected"] for c in
                      helper.vmnet_json("port", "show", port_name)["queue_counters"]}
            _steer_to_queue(test_netns, "vmn-" + port_name, q, queues, mode)
            received = _ping_from_cpu0(test_netns, 5)
            after = {c["queue"]: c["redirected"] for c in
                     helper.vmnet_json("port", "show", port_name)["queue_counters"]}
            per_queue[q] = (received, after[q] - before[q])
        print(f"per queue (pings answered, frames redirected to its socket): {per_queue}")
        for q, (received, redirected) in per_queue.items():
            assert received == 5 and redirected >= 5, per_queue
    finally:
        if proc is not None:
            stop(proc)
        helper.cleanup()


def _flows_to_guest(control, n: int = 8, nbytes: int = 1 << 20) -> list[int]:
    """n TCP flows into the guest at once, each its own connection (so the host end hashes them
    over its transmit queues) to a sink of its own (busybox nc serves one connection per
    listener well; its -ll resets connections that come together); the bytes each delivered,
    0 for a flow that failed."""
    import concurrent.futures
    ports = [6000 + i for i in range(n)]
    control.run(f"for p in {' '.join(map(str, ports))}; do /bin/busybox nc -l -p $p -e /bin/busybox sh -c "
                "'exec /bin/busybox dd of=/dev/null bs=65536 2>/dev/null' & done")
    time.sleep(0.5)
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(_tcp_to_guest, nbytes, port) for port in ports]
    out = []
    for f in futures:
        try:
            out.append(f.result())
        except OSError as exc:
            print(f"flow failed: {exc!r}")
            out.append(0)
    return out


def _redirected(helper, port_name) -> list[int]:
    return [c["redirected"] for c in helper.vmnet_json("port", "show", port_name)["queue_counters"]]


def _udp_spray(flows: int = 16) -> None:
    """One datagram from each of `flows` source ports to the guest (hashed over the host end's
    transmit queues); nothing waits for an answer."""
    import socket
    for i in range(flows):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", (GUEST_IP, 9 + i))


def _served(helper, port_name, want, timeout=15.0):
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = helper.vmnet_json("port", "show", port_name).get("queues_served")
        if got == want:
            return
        _udp_spray()        # traffic on every queue, for the helper to see which rings are not read
        time.sleep(0.2)
    raise AssertionError(f"queues_served is {got}, expected {want}")


@pytest.mark.parametrize("cpus,changes", [(1, [4, 1]), (2, [4, 1]), (4, [2, 4])])
def test_a_multiqueue_port_follows_the_queue_pairs_its_guest_uses(test_netns, consumer_netns, port_name, qemu,
                                                                  cpus, changes):
    """A 4-queue port behind guests of 1, 2 and 4 vCPUs (Linux enables min(queue pairs, vCPUs)
    by default), then `ethtool -L` in the guest while it runs: ping and 8 TCP flows every
    time, and the XSK program's per-queue counters show where the frames went."""
    vmlinuz, moddir = _require_qemu(qemu)
    if os.path.realpath(qemu) not in FIXED:
        pytest.skip(f"QEMU {qemu_compat.labels([qemu])[qemu]} reads one queue only; list a QEMU with the fix "
                    "(docs/datapath.md) in VMNET_TEST_QEMU_MQ_FIXED")
    from helpers import HelperProcess
    helper = HelperProcess("qemu_multiqueue_fixed = true\n").start()
    proc = control = None
    try:
        helper.vmnet_json("port", "add", port_name, "--queues", "4", "--netns", consumer_netns,
                          "--consumer-user", "nobody")
        links.add_address("vmn-" + port_name, HOST_IP, 24)
        run = os.path.join(helper.dir, "guest")
        os.mkdir(run)
        os.chown(run, 65534, 65534)
        initrd = testguest.build_initramfs(os.path.join(run, "initrd.cpio"), moddir, GUEST_IP, control=True)
        serial, ctl = os.path.join(run, "serial.log"), os.path.join(run, "control.sock")
        open(serial, "w").close()
        os.chown(serial, 65534, 65534)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "vmnet", "exec", "--user", "nobody", "--allow-ipc-lock",
             "--port", port_name, "--", qemu] + testguest.qemu_boot_args(vmlinuz, initrd, serial, cpus, ctl),
            env=helper.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, preexec_fn=in_netns(consumer_netns), cwd="/")
        _wait_for(serial, testguest.READY, proc)
        control = testguest.Control(ctl)
        seen = []
        for pairs in [None] + changes:
            if pairs is not None:
                out = control.run(f"/usr/sbin/ethtool -L eth0 combined {pairs}")
                assert "rror" not in out, out
            shown = control.run("/usr/sbin/ethtool -l eth0")
            enabled = int(shown.split("Current hardware settings:")[1].split("Combined:")[1].split()[0])
            assert enabled == (pairs or min(4, cpus))
            _served(helper, port_name, None if enabled == 4 else enabled)
            # what waited on a queue no one read (an ARP request among it) is retried by its
            # sender, now onto a served queue: settled before measuring
            probe.ping(GUEST_IP, count=3, timeout=2)
            before = _redirected(helper, port_name)
            result = probe.ping(GUEST_IP, count=5, timeout=2)
            flows = _flows_to_guest(control)
            spread = [a - b for a, b in zip(_redirected(helper, port_name), before)]
            seen.append({"queue_pairs": enabled, "ping": result["received"], "flows": sum(1 for f in flows if f),
                         "per_queue": spread})
            assert result["received"] == 5 and all(flows), seen
            assert all(n == 0 for n in spread[enabled:]), seen        # nothing for a queue no one reads
            assert sum(1 for n in spread[:enabled] if n) >= min(enabled, 2), seen
        print(f"{cpus} vCPU(s): queue pairs enabled, pings answered, TCP flows done, frames per queue: {seen}")
    finally:
        if control is not None:
            control.close()
        if proc is not None:
            stop(proc)
        helper.cleanup()


def test_libvirt_domain_boots_and_answers_ping(libvirt_env):
    vmlinuz, moddir = _require_qemu()
    if not has_capability("sys_resource"):
        pytest.skip("this machine's root lacks CAP_SYS_RESOURCE, so QEMU under libvirt (no "
                    "capabilities, 8 MiB memlock) cannot lock its 32 MiB UMEM; "
                    "test_vm_ipc_lock boots the same domain with QEMU keeping CAP_IPC_LOCK")
    qemu_caps = _boot_under_libvirt(libvirt_env, vmlinuz, moddir)
    assert qemu_caps["uid"] == int(subprocess.check_output(["id", "-u", "libvirt-qemu"]))
    assert qemu_caps["effective"] == []


def guest_domain_xml(name: str, vmlinuz: str, initrd: str, emulator: str, serial: str) -> str:
    """A libvirt domain that boots the test guest (TCG, serial console to a file)."""
    from vmnet.libvirt import domain_xml as lx
    firmware = "".join(f'<qemu:arg value="{a}"/>' for a in testguest.firmware_args())
    return f"""<domain type="qemu" xmlns:qemu="{lx.QEMU_NS}"><name>{name}</name>
      <memory unit="MiB">256</memory><vcpu>1</vcpu>
      <os><type arch="x86_64" machine="pc">hvm</type><kernel>{vmlinuz}</kernel><initrd>{initrd}</initrd>
      <cmdline>console=ttyS0 panic=-1 quiet</cmdline></os>
      <devices><emulator>{emulator}</emulator><serial type="file"><source path="{serial}"/></serial></devices>
      <qemu:commandline>{firmware}</qemu:commandline>
    </domain>"""


def _boot_under_libvirt(env, vmlinuz, moddir) -> dict:
    """Define and start a domain behind one port through the hook and the wrapper; ping it.

    Returns the running QEMU's credentials (vmnet.caps.process_credentials)."""
    import uuid
    from libvirt_env import write_wrapper
    from vmnet.caps import process_credentials
    from vmnet.libvirt import domain_xml as lx
    d = env.helper.dir
    wrapper = write_wrapper(os.path.join(d, "afxdp-wrapper"), env.helper.config, QEMU, env.wrapper_log)
    name, pname = "vmnet-t" + uuid.uuid4().hex[:6], "g" + uuid.uuid4().hex[:6]
    initrd = testguest.build_initramfs(os.path.join(d, "guest.cpio"), moddir, GUEST_IP)
    os.chmod(initrd, 0o644)
    serial = os.path.join(d, name + ".serial")
    env.define(name, lx.inject(guest_domain_xml(name, vmlinuz, initrd, wrapper, serial),
                               [lx.port_option(pname)], wrapper))
    try:
        out = env.virsh("start", name)
        assert out.returncode == 0, out.stderr
        with open(f"/run/libvirt/qemu/{name}.pid") as f:
            qemu_pid = int(f.read().strip())
        links.add_address("vmn-" + pname, HOST_IP, 24)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if os.path.exists(serial) and testguest.READY in open(serial, errors="replace").read():
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"guest did not come up in 180 s: {open(serial, errors='replace').read()[-2000:]}")
        assert probe.ping(GUEST_IP, count=5, timeout=2)["received"] == 5
        creds = process_credentials(qemu_pid)
        assert env.helper.vmnet_json("port", "show", pname)["owner"] == "uuid:" + env.virsh("domuuid", name).stdout.strip()
        return creds
    finally:
        env.virsh("destroy", name)
        env.virsh("undefine", name)
        assert env.helper.vmnet("port", "show", pname).returncode == 3   # release removed it
