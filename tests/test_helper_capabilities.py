"""The capability sets vmnet ships are enough: the systemd unit's and the DaemonSet's.

The helper is started with exactly that set as its bounding set (root, so
its effective set is the same), makes a port, confines and hands out its
sockets. Where the kernel runs the bind guard (the kernel matrix), the
guard this session installed is removed first, so that this helper has to
load, attach and pin it with just those capabilities. Capabilities this
machine's root does not have itself (no CAP_SYS_RESOURCE here) cannot be
given, and are reported.
"""

from __future__ import annotations

import os
import pathlib
import re

import pytest
from guard_gate import guard_available
from helpers import HelperProcess

from vmnet.caps import CAP_NAMES, process_credentials
from vmnet.client import Client
from vmnet.priv import bindguard

pytestmark = pytest.mark.netns
REPO = pathlib.Path(__file__).parent.parent


def unit_set() -> list[str]:
    text = (REPO / "systemd" / "vmnet-helper.service").read_text()
    line = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M).group(1)
    return [c.lower().removeprefix("cap_") for c in line.split()]


def daemonset_set() -> list[str]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (the test extra installs it)")
    ds = yaml.safe_load((REPO / "deploy" / "kubernetes" / "daemonset.yaml").read_text())
    helper = next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "helper")
    return [c.lower() for c in helper["securityContext"]["capabilities"]["add"]]


def bounded_to(caps: list[str]):
    import prctl
    keep = {CAP_NAMES.index(c) for c in caps}

    def drop():
        for cap in range(int(open("/proc/sys/kernel/cap_last_cap").read()) + 1):
            if cap not in keep:
                prctl.capbset_drop(cap)
    return drop


@pytest.mark.parametrize("where, caps", [("systemd unit", unit_set), ("DaemonSet", daemonset_set)])
def test_the_shipped_capability_set_runs_the_helper(test_netns, consumer_netns, port_name, where, caps,
                                                    bind_guard_of_the_session):
    wanted = caps()
    have = set(process_credentials()["bounding"])
    given = [c for c in wanted if c in have]
    guard_ok, why = guard_available()
    if guard_ok and bindguard.installed() and bind_guard_of_the_session:
        bindguard.remove()          # this session's own guard: the helper below must install it
    h = HelperProcess("allow_unconfined = true\n" if not guard_ok else "")
    h.preexec = bounded_to(given)
    try:
        h.start()
        creds = process_credentials(h.proc.pid)
        assert set(creds["effective"]) == set(given) and set(creds["bounding"]) == set(given)
        status = h.vmnet_json("status")["helper"]["protection"]
        assert status["mode"] == ("kernel" if guard_ok else "unconfined-allowed"), status
        h.vmnet_json("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", "65534")
        with Client(h.socket) as c:
            record, fds = c.call("fds-for-consumer", name=port_name)
        for fd in fds:
            os.close(fd)
        assert len(fds) == 1
        if guard_ok:
            assert h.vmnet_json("port", "show", port_name)["confined"] is True
        h.vmnet_json("port", "del", port_name)
    finally:
        h.cleanup()
    missing = sorted(set(wanted) - have)
    if missing:
        print(f"{where}: not given here (this machine's root lacks them): {', '.join(missing)}")
    if not guard_ok:
        print(f"{where}: the bind guard was not exercised: {why}")
