"""Reading credentials from /proc/<pid>/status text."""

from __future__ import annotations

import pytest

from vmnet import caps

pytestmark = pytest.mark.unit

STATUS_IPC_LOCK_ONLY = """\
Name:\tqemu-system-x86
Umask:\t0022
State:\tS (sleeping)
Tgid:\t4242
Pid:\t4242
PPid:\t1
Uid:\t65534\t65534\t65534\t65534
Gid:\t65534\t65534\t65534\t65534
FDSize:\t64
Groups:\t
NStgid:\t4242
VmLck:\t       0 kB
CapInh:\t0000000000000000
CapPrm:\t0000000000004000
CapEff:\t0000000000004000
CapBnd:\t0000000000000000
CapAmb:\t0000000000004000
NoNewPrivs:\t1
Seccomp:\t0
Cpus_allowed_list:\t0-3
"""

STATUS_ROOT = """\
Name:\tbash
Uid:\t0\t0\t0\t0
Gid:\t0\t0\t0\t0
Groups:\t0 4 27
CapInh:\t0000000000000000
CapPrm:\t000001ffffffffff
CapEff:\t000001ffffffffff
CapBnd:\t000001ffffffffff
CapAmb:\t0000000000000000
NoNewPrivs:\t0
"""


def test_cap_eff_4000_is_ipc_lock_alone():
    creds = caps.parse_status(STATUS_IPC_LOCK_ONLY)
    assert creds["effective"] == ["ipc_lock"]
    assert creds["permitted"] == ["ipc_lock"]
    assert creds["ambient"] == ["ipc_lock"]
    assert creds["inheritable"] == []
    assert creds["bounding"] == []


def test_no_new_privs_1_is_true():
    assert caps.parse_status(STATUS_IPC_LOCK_ONLY)["no_new_privs"] is True


def test_no_new_privs_0_or_absent_is_false():
    assert caps.parse_status(STATUS_ROOT)["no_new_privs"] is False
    text = "\n".join(l for l in STATUS_ROOT.splitlines() if not l.startswith("NoNewPrivs"))
    assert caps.parse_status(text)["no_new_privs"] is False


def test_uid_gid_and_empty_groups_are_read():
    creds = caps.parse_status(STATUS_IPC_LOCK_ONLY)
    assert (creds["uid"], creds["gid"], creds["groups"]) == (65534, 65534, [])


def test_groups_are_read_as_integers():
    assert caps.parse_status(STATUS_ROOT)["groups"] == [0, 4, 27]


def test_uid_and_gid_are_the_effective_ids():
    text = STATUS_ROOT.replace("Uid:\t0\t0\t0\t0", "Uid:\t1000\t107\t0\t107").replace(
        "Gid:\t0\t0\t0\t0", "Gid:\t1000\t108\t0\t108")
    creds = caps.parse_status(text)
    assert (creds["uid"], creds["gid"]) == (107, 108)


def test_full_root_mask_lists_every_known_capability_in_bit_order():
    creds = caps.parse_status(STATUS_ROOT)
    assert creds["effective"] == list(caps.CAP_NAMES)
    assert len(creds["effective"]) == 41
    assert creds["effective"][0] == "chown"
    assert creds["effective"][-1] == "checkpoint_restore"
    assert {"net_admin", "net_raw", "ipc_lock", "sys_admin", "sys_resource", "bpf", "perfmon"} <= set(
        creds["effective"])
    assert creds["ambient"] == []


@pytest.mark.parametrize("name, bit", [
    ("net_bind_service", 10), ("net_admin", 12), ("net_raw", 13), ("ipc_lock", 14),
    ("sys_admin", 21), ("sys_resource", 24), ("perfmon", 38), ("bpf", 39), ("checkpoint_restore", 40),
])
def test_capability_names_match_linux_capability_h_bits(name, bit):
    assert caps.cap_names(1 << bit) == [name]


def test_unknown_high_bits_are_named_by_number():
    assert caps.cap_names(1 << 41) == ["cap_41"]
    assert caps.cap_names(1 << 63) == ["cap_63"]


def test_empty_mask_has_no_capabilities():
    assert caps.cap_names(0) == []


def test_kubevirt_launcher_mask_is_net_bind_service():
    assert caps.cap_names(0x400) == ["net_bind_service"]


def test_missing_capability_lines_read_as_empty_sets():
    creds = caps.parse_status("Uid:\t1\t1\t1\t1\nGid:\t1\t1\t1\t1\n")
    for label in ("effective", "permitted", "inheritable", "bounding", "ambient"):
        assert creds[label] == []


def test_process_credentials_of_self_reads_this_process():
    import os
    creds = caps.process_credentials()
    assert creds["uid"] == os.geteuid()
    assert creds["gid"] == os.getegid()
