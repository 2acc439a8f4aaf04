"""Test tiers and the guarantees every root test gets.

unit: pure, anywhere. netns: root; each test runs inside its own fresh
network namespace (the thread is moved there and back), and afterwards the
machine must hold exactly the vmnet devices, pins, namespaces and open fds
it held before. system: real libvirtd/QEMU, skipped with the reason when
absent.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import uuid

import pytest

from vmnet.priv import bpf, netns


def _vmnet_links_everywhere() -> set[str]:
    out = subprocess.run(["ip", "-o", "-all", "netns", "exec", "ip", "-o", "link"],
                         capture_output=True, text=True).stdout
    out += subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    # a pod's consumer end and placeholder tap have names of their own: they are known by
    # their netns (gone with it) and by the placeholder's alias
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
            if ":" in line and (line.split(":")[1].strip().startswith(("vmn-", "vmc-"))
                                or "vmnet placeholder of port" in line)}


# libxdp pins dispatchers under $LIBXDP_BPFFS/xdp: the session gives it a directory of its own,
# so the tests' dispatchers (and xdp-loader's, run from the tests) never meet the host's
LIBXDP_BPFFS = f"/sys/fs/bpf/vmnet-tests-libxdp-{os.getpid()}"


def _pins() -> set[str]:
    """Everything pinned under every helper instance's root (ports, shared programs,
    temporaries), the instances' own directories, and libxdp's dispatchers of the session."""
    out = set(bpf.instance_roots()[1:])
    try:
        out |= {os.path.join(LIBXDP_BPFFS, "xdp", e) for e in os.listdir(os.path.join(LIBXDP_BPFFS, "xdp"))}
    except FileNotFoundError:
        pass
    for root in bpf.instance_roots():
        try:
            out |= {os.path.join(root, e) for e in os.listdir(root) if not e.startswith("@")}
        except FileNotFoundError:
            pass
    return out


def _test_cgroups() -> set[str]:
    """The fake pods' cgroup directories (tests/launcher_env.py), in every hierarchy."""
    import glob
    return set(glob.glob("/sys/fs/cgroup/vmnet-test-*") + glob.glob("/sys/fs/cgroup/*/vmnet-test-*"))


def _fd_target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "closed since"


def _snapshot() -> dict:
    return {
        "links": _vmnet_links_everywhere(),
        "cgroups": _test_cgroups(),
        "pins": _pins(),
        "netns": set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set(),
        "fds": set(os.listdir("/proc/self/fd")),
    }


def pytest_collection_modifyitems(config, items):
    is_root = os.geteuid() == 0
    for item in items:
        if not is_root and ("netns" in item.keywords or "system" in item.keywords):
            item.add_marker(pytest.mark.skip(reason="needs root: creates kernel objects"))


@pytest.fixture(scope="session", autouse=True)
def libxdp_bpffs_of_the_session():
    """A private LIBXDP_BPFFS (see above), set before anything loads libxdp; removed after."""
    if os.geteuid() != 0 or not os.path.isdir("/sys/fs/bpf"):
        yield None
        return
    bpf.require_bpffs()
    os.makedirs(LIBXDP_BPFFS, exist_ok=True)
    os.environ["LIBXDP_BPFFS"] = LIBXDP_BPFFS
    yield LIBXDP_BPFFS
    for d in (os.path.join(LIBXDP_BPFFS, "xdp"), LIBXDP_BPFFS):
        try:
            os.rmdir(d)
        except OSError:
            pass


@pytest.fixture(scope="session", autouse=True)
def pin_base_of_the_session():
    """The test helpers' instances pin under /sys/fs/bpf/vmnet/@<instance>: made by the session,
    it goes again once empty."""
    from vmnet.priv.instance import pin_base_removed_if_made
    with pin_base_removed_if_made():
        yield


@pytest.fixture(scope="session", autouse=True)
def bind_guard_of_the_session():
    """The bind guard is host-wide and outlives helpers (consumers keep confined sockets).
    Remove it after the session only if this session installed it and no helper of
    another instance runs: a test never removes what it did not create."""
    from vmnet.priv import bindguard
    before = os.geteuid() == 0 and bindguard.installed()
    yield not before            # True: a guard installed now is this session's own
    if os.geteuid() == 0 and not before and bindguard.installed() and not _default_helper_running():
        bindguard.remove()


def _default_helper_running() -> bool:
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect("/run/vmnet/helper.sock")
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.fixture(autouse=True)
def nothing_left_behind(request):
    """Every root test must leave no link, pin, netns or fd behind."""
    if "netns" not in request.keywords and "system" not in request.keywords:
        yield
        return
    # Root tests of concurrent pytest runs on one machine take turns: the
    # before/after comparison is only meaningful when nobody else creates objects.
    lock = os.open("/run/vmnet-tests.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = _snapshot()
        yield
        after = _snapshot()
    finally:
        os.close(lock)
    before["fds"].add(str(lock))
    leaks = {k: sorted(after[k] - before[k]) for k in after if after[k] - before[k]}
    if "fds" in leaks:
        leaks["fds"] = [f"{fd} -> {_fd_target(fd)}" for fd in leaks["fds"]]
    assert not leaks, f"test left kernel objects or fds behind: {leaks}"


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@pytest.fixture
def test_netns():
    """A fresh netns the test thread runs in; removed (with its devices) after."""
    name = _unique("vmnet-t")
    netns.create_named(name)
    try:
        with netns.entered(name):
            from vmnet.priv import links
            links.bring_up("lo")
            yield name
    finally:
        netns.remove_named(name)


@pytest.fixture
def consumer_netns():
    """A second netns for the consumer end of a port."""
    name = _unique("vmnet-c")
    netns.create_named(name)
    try:
        yield name
    finally:
        netns.remove_named(name)


@pytest.fixture
def port_name():
    return "t" + uuid.uuid4().hex[:8]


@pytest.fixture
def instance():
    """A helper instance of the test's own for library calls (vmnet.priv.instance): the
    test's ports never share a program or pins with a production helper's."""
    from vmnet.priv.instance import Instance
    return Instance("t" + uuid.uuid4().hex[:8])


@pytest.fixture
def helper(test_netns):
    """A running `vmnet helper` in the test's netns with its own socket and state."""
    from helpers import HelperProcess
    h = HelperProcess()
    try:
        yield h.start()
    finally:
        h.cleanup()


@pytest.fixture
def metered(test_netns):
    """A helper with its metrics endpoint on a free loopback port: (helper, port)."""
    from helpers import HelperProcess, free_port
    port = free_port()
    h = HelperProcess(f'metrics = "127.0.0.1:{port}"\nmetrics_port_labels = true\n').start()
    try:
        yield h, port
    finally:
        h.cleanup()


@pytest.fixture
def spaces():
    """Namespaces a test's peers and guests live in (tests/guest_env.py), all removed after."""
    from guest_env import Namespaces
    s = Namespaces()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def shared_helper(test_netns):
    """A helper whose ports may share one netns even where binds cannot be confined."""
    from helpers import SHARED_NETNS, HelperProcess
    h = HelperProcess(SHARED_NETNS)
    try:
        yield h.start()
    finally:
        h.cleanup()


@pytest.fixture(scope="module")
def libvirt_env():
    """A real libvirtd with the vmnet hook and a test helper (system tier)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: starts libvirtd")
    from libvirt_env import Libvirt, missing
    reason = missing()
    if reason:
        pytest.skip(reason)
    env = Libvirt()
    try:
        yield env.start()
    finally:
        env.stop()
