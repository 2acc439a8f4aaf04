"""vmnet.priv.confine in a real process: what the exec'd program holds, for each kind of caller."""

import json
import os
import subprocess
import sys

import pytest

# confine, then exec a program that reports its credentials, as QEMU would hold them
CHILD = """
import os, sys
from vmnet.priv.confine import confine
uid = None if sys.argv[1] == "stay" else int(sys.argv[1])
if len(sys.argv) > 3:       # a caller started with ambient capabilities (a pod's, a launcher's)
    import ctypes, prctl
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (prctl.CAP_NET_ADMIN, prctl.CAP_SYS_ADMIN):
        setattr(prctl.cap_inheritable, {12: "net_admin", 21: "sys_admin"}[cap], True)
        assert libc.prctl(47, 2, cap, 0, 0) == 0, ctypes.get_errno()
confine(uid, uid, keep_ipc_lock=sys.argv[2] == "keep")
os.execv(sys.executable, [sys.executable, "-I", "-c",
         "import json; from vmnet.caps import process_credentials; "
         "print(json.dumps(process_credentials()))"])
"""


def confined(who: str, ipc_lock: str, *ambient: str) -> dict:
    out = subprocess.run([sys.executable, "-I", "-c", CHILD, who, ipc_lock, *ambient],
                         capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: drops capabilities it holds")


@needs_root
@pytest.mark.parametrize("who", ["stay", "65534"])
def test_keeping_ipc_lock_leaves_it_alone_for_root_and_for_a_new_uid(who):
    # "stay": the wrapper started by a libvirt that leaves QEMU root's capabilities
    creds = confined(who, "keep")
    assert creds["effective"] == creds["permitted"] == creds["ambient"] == ["ipc_lock"]
    assert creds["bounding"] == [] and creds["no_new_privs"]
    assert creds["uid"] == (0 if who == "stay" else 65534)


@needs_root
@pytest.mark.parametrize("who", ["stay", "65534"])
def test_without_ipc_lock_nothing_is_left(who):
    creds = confined(who, "none")
    assert creds["effective"] == creds["permitted"] == creds["inheritable"] == creds["ambient"] == []
    assert creds["bounding"] == [] and creds["no_new_privs"]


@needs_root
@pytest.mark.parametrize("who", ["stay", "65534"])
@pytest.mark.parametrize("ipc_lock", ["keep", "none"])
def test_ambient_capabilities_the_caller_had_are_gone(who, ipc_lock):
    """A caller whose ambient set carries CAP_NET_ADMIN and CAP_SYS_ADMIN (and would hand them
    to QEMU across exec): after confine, only what the plan keeps."""
    creds = confined(who, ipc_lock, "ambient")
    kept = ["ipc_lock"] if ipc_lock == "keep" else []
    assert creds["ambient"] == creds["effective"] == creds["permitted"] == kept, creds
    assert creds["bounding"] == []
