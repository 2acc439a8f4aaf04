"""What `vmnet doctor` promises: every check answers, gaps come with a fix."""

from __future__ import annotations

import errno
import os
import stat
import types
from types import SimpleNamespace

import pytest

from vmnet import caps, doctor
from vmnet.doctor import Check

unit = pytest.mark.unit

BACKENDS = ["socket", "stream", "dgram", "hubport", "tap", "user", "bridge", "vhost-user"]


def fake_qemu(tmp_path, backends: list[str]) -> str:
    """A stand-in qemu-system-x86_64 answering -version and -netdev help."""
    path = tmp_path / "qemu-system-x86_64"
    listing = "\\n".join(["Available netdev backend types:", *backends])
    path.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  -version) echo "QEMU emulator version 10.0.2 (fake)"; echo "Copyright (c) Fabrice";;\n'
        f"  -netdev) printf '{listing}\\n';;\n"
        "  *) exit 1;;\n"
        "esac\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def row(checks: list[Check], name: str) -> Check:
    (check,) = [c for c in checks if c.name == name]
    return check


@unit
def test_run_checks_returns_every_named_check_once_in_order(tmp_path):
    checks = doctor.run_checks(qemu=str(tmp_path / "absent"))
    assert tuple(c.name for c in checks) == doctor.CHECK_NAMES
    assert len(doctor.CHECK_NAMES) == 20
    for check in checks:
        assert check.status in ("ok", "missing", "warn"), check
        assert check.detail
        if check.status == "missing":
            assert check.fix, f"{check.name} is missing but says nothing about a fix"


@unit
def test_a_probe_that_crashes_becomes_a_warn_row_and_the_others_still_run(monkeypatch, tmp_path):
    def broken():
        raise RuntimeError("boom")
    monkeypatch.setattr(doctor, "check_btf", broken)
    checks = doctor.run_checks(qemu=str(tmp_path / "absent"))
    assert tuple(c.name for c in checks) == doctor.CHECK_NAMES
    btf = row(checks, "btf")
    assert btf.status == "warn" and "boom" in btf.detail


@unit
def test_qemu_missing_at_the_given_path_says_how_to_install_it(tmp_path):
    qemu = row(doctor.run_checks(qemu=str(tmp_path / "no-such-qemu")), "qemu")
    assert qemu.status == "missing"
    assert str(tmp_path / "no-such-qemu") in qemu.detail
    assert "apt-get install qemu-system-x86" in qemu.fix


@unit
def test_qemu_without_af_xdp_is_missing_and_names_the_binary(tmp_path):
    path = fake_qemu(tmp_path, BACKENDS)
    qemu = doctor.check_qemu(path)
    assert qemu.status == "missing"
    assert path in qemu.detail and "af-xdp" in qemu.detail
    assert "--enable-af-xdp" in qemu.fix and "Debian" in qemu.fix


@unit
def test_qemu_with_af_xdp_is_ok_and_reports_its_version(tmp_path):
    path = fake_qemu(tmp_path, BACKENDS + ["af-xdp"])
    qemu = doctor.check_qemu(path)
    assert qemu.status == "ok", qemu
    assert "QEMU emulator version 10.0.2" in qemu.detail
    assert qemu.fix is None


@unit
def test_qemu_comes_from_vmnet_qemu_unless_an_argument_overrides_it(tmp_path, monkeypatch):
    with_xdp = fake_qemu(tmp_path, BACKENDS + ["af-xdp"])
    monkeypatch.setenv("VMNET_QEMU", with_xdp)
    assert doctor.check_qemu().status == "ok"
    assert doctor.check_qemu(str(tmp_path / "absent")).status == "missing"


@unit
def test_format_checks_prints_a_label_per_status_and_the_fix_lines():
    text = doctor.format_checks([
        Check("kernel", "ok", "6.18.0"),
        Check("netkit", "missing", "kernel built without CONFIG_NETKIT", "use the veth backend"),
        Check("memlock", "warn", "hard 8 MiB", "allow --allow-ipc-lock"),
    ])
    assert text.splitlines() == [
        "[ ok ] kernel: 6.18.0",
        "[MISS] netkit: kernel built without CONFIG_NETKIT",
        "       fix: use the veth backend",
        "[warn] memlock: hard 8 MiB",
        "       fix: allow --allow-ipc-lock",
    ]


@unit
def test_format_checks_of_a_real_run_carries_every_fix(tmp_path):
    checks = doctor.run_checks(qemu=str(tmp_path / "absent"))
    text = doctor.format_checks(checks)
    for check in checks:
        if check.fix:
            assert f"fix: {check.fix}" in text


@unit
def test_check_to_dict_is_plain_data():
    assert Check("btf", "missing", "no BTF", "boot a kernel").to_dict() == {
        "name": "btf", "status": "missing", "detail": "no BTF", "fix": "boot a kernel"}


@unit
@pytest.mark.parametrize("err, status, words", [
    (errno.EAFNOSUPPORT, "missing", "CONFIG_XDP_SOCKETS"),
    (errno.EPERM, "warn", "CAP_NET_RAW"),
])
def test_af_xdp_failure_says_whether_the_kernel_or_the_privileges_are_short(
        monkeypatch, err, status, words):
    def refuse(*args):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(doctor.socket, "socket", refuse)
    check = doctor.check_af_xdp()
    assert check.status == status and words in check.fix


@unit
@pytest.mark.parametrize("release, status", [
    ("6.18.44-fc-v782", "ok"), ("5.9.0", "ok"), ("5.8.18-1-amd64", "missing"), ("weird", "warn"),
])
def test_bpf_link_support_is_inferred_from_the_kernel_version(release, status):
    check = doctor.check_bpf_link(release)
    assert check.status == status
    if status != "warn":
        assert "inferred" in check.detail


@unit
def test_netkit_is_missing_on_kernels_older_than_6_7_without_looking_further(monkeypatch):
    monkeypatch.setattr(doctor, "netkit_config", lambda release: pytest.fail("read config"))
    check = doctor.check_netkit("6.1.0-28-amd64")
    assert check.status == "missing" and "veth backend" in check.fix


@unit
@pytest.mark.parametrize("config, evidence, status", [
    ("y", None, "ok"), ("m", None, "ok"), ("n", "netkit module loaded", "missing"),
    (None, "netkit module loaded", "ok"), (None, None, "warn"),
])
def test_netkit_trusts_the_kernel_config_first_and_says_unknown_without_evidence(
        monkeypatch, config, evidence, status):
    monkeypatch.setattr(doctor, "netkit_config", lambda release: config)
    monkeypatch.setattr(doctor, "netkit_evidence", lambda release: evidence)
    check = doctor.check_netkit("6.18.0")
    assert check.status == status
    if status == "warn":
        assert "unknown" in check.detail
    if status != "ok":
        assert check.fix == "use the veth backend, or boot a kernel with CONFIG_NETKIT (>= 6.7)"


@unit
def test_netkit_matches_this_kernels_config_when_there_is_one():
    release = os.uname().release
    config = doctor.netkit_config(release)
    if config is None:
        pytest.skip("no kernel config to compare with (/boot/config-*, /proc/config.gz)")
    expected = "ok" if config in ("y", "m") else "missing"
    assert doctor.check_netkit(release).status == expected


@unit
def test_netkit_stub_symbols_in_kallsyms_are_not_taken_for_netkit():
    # Kernels without netkit still list out-of-line copies of the stubs in
    # include/net/netkit.h (netkit_peer_dev on this machine's 6.18).
    release = os.uname().release
    if doctor.netkit_config(release) != "n":
        pytest.skip("needs a kernel config that says CONFIG_NETKIT is not set")
    assert doctor.netkit_evidence(release) is None


class FakeGenl:
    """Stands in for pyroute2's GenericNetlinkSocket: the family and its op ids."""
    ops: list[int] | None = None

    def __init__(self):
        self.asyncore = SimpleNamespace()

    def bind(self, proto, msg_class):
        pass

    def discovery(self, proto):
        from pyroute2.netlink.exceptions import NetlinkError
        if self.ops is None:
            raise NetlinkError(errno.ENOENT)
        ops = [SimpleNamespace(get_attr=lambda key, op=op: op) for op in self.ops]
        return SimpleNamespace(get_attr=lambda key, default=None: ops)

    def close(self):
        pass


@unit
@pytest.mark.parametrize("ops, status", [
    ([1, 5, 10, 11, 12, 13, 14, 15], "missing"),
    ([1, 5, 10, 11, 12, 13, 14, 15, 16], "ok"),
    (None, "missing"),
])
def test_queue_lease_looks_for_the_queue_create_op_in_the_netdev_family(monkeypatch, ops, status):
    from vmnet.priv import netdev_genl
    monkeypatch.setattr(FakeGenl, "ops", ops)
    monkeypatch.setattr(netdev_genl, "GenericNetlinkSocket", FakeGenl)
    monkeypatch.setattr(netdev_genl, "zero_copy_devices", lambda: {})
    monkeypatch.setattr(netdev_genl, "_supported", None)        # asked once per process otherwise
    check = doctor.check_queue_lease()
    assert check.status == status
    if status == "missing":
        assert "veth" in check.fix
    else:
        assert "netkit-lease" in check.detail and "could only receive" in check.detail


@unit
def test_queue_lease_probe_answers_on_this_kernel():
    check = doctor.check_queue_lease()
    assert check.status in ("ok", "missing"), check
    assert "netdev" in check.detail


@unit
def test_bpffs_is_found_only_as_a_bpf_mount_at_sys_fs_bpf():
    assert doctor.bpffs_mounted("sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,mode=700 0 0\n")
    assert not doctor.bpffs_mounted("tmpfs /sys/fs/bpf tmpfs rw 0 0\nbpf /run/bpf bpf rw 0 0\n")


@unit
@pytest.mark.parametrize("hard, sys_resource, status", [
    (8 << 20, False, "warn"), (8 << 20, True, "ok"), (64 << 20, False, "ok"),
    (doctor.INFINITY, False, "ok"),
])
def test_memlock_warns_only_when_a_queue_cannot_fit_and_the_limit_cannot_be_raised(
        monkeypatch, hard, sys_resource, status):
    monkeypatch.setattr(doctor.resource, "getrlimit", lambda which: (8 << 20, hard))
    monkeypatch.setattr(caps, "has_capability", lambda name, pid="self": sys_resource)
    check = doctor.check_memlock()
    assert check.status == status
    assert "32 MiB" in check.detail
    if status == "warn":
        assert check.fix == ("give the helper CAP_SYS_RESOURCE, or allow the CAP_IPC_LOCK "
                             "fallback (--allow-ipc-lock)")


@unit
@pytest.mark.parametrize("effective, status", [
    (["net_admin", "net_raw", "bpf"], "ok"), (["net_admin", "net_raw", "sys_admin"], "ok"),
    (["net_admin", "bpf"], "missing"), ([], "missing"),
])
def test_privileges_need_net_admin_net_raw_and_bpf_or_sys_admin(monkeypatch, effective, status):
    monkeypatch.setattr(caps, "process_credentials",
                        lambda pid="self": {"uid": 1000, "effective": effective})
    check = doctor.check_privileges()
    assert check.status == status
    if status == "missing":
        assert "CAP_NET_ADMIN" in check.fix


@pytest.mark.netns
def test_af_xdp_check_is_ok_as_root():
    if os.geteuid() != 0 or not caps.has_capability("net_raw"):
        pytest.skip("needs root with CAP_NET_RAW")
    check = doctor.check_af_xdp()
    assert check.status == "ok", check
    assert row(doctor.run_checks(), "af-xdp").status == "ok"


@unit
@pytest.mark.parametrize("fs, status, says", [
    ("tmpfs", "ok", "go with the ports at a reboot"),
    ("ext4", "ok", "outlive a reboot"),
    ("ext4 (no journal)", "warn", "skips and reads each inode freed"),
])
def test_state_dir_says_what_its_file_system_means(monkeypatch, fs, status, says):
    seen = []
    monkeypatch.setattr(doctor, "filesystem", lambda path: seen.append(path) or fs)
    config = types.SimpleNamespace(state_dir="/run/vmnet-doctor-test-absent/ports")
    check = doctor.check_state_dir(config)
    assert check.status == status and says in check.detail, check
    assert seen == ["/run"]                 # the nearest directory that exists: the records' is made later
    if status == "warn":
        assert "no ports left" in check.fix and "state_dir" in check.fix


@unit
def test_state_dir_on_a_real_tmpfs_is_ok(tmp_path):
    if doctor.filesystem("/dev/shm") != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm on this machine")
    check = doctor.check_state_dir(types.SimpleNamespace(state_dir="/dev/shm/vmnet-doctor-test/ports"))
    assert check.status == "ok" and "tmpfs" in check.detail, check
