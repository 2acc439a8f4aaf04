"""Live migration: what a vmnet NIC costs at the switch-over, against QEMU's tap on the same bridge.

The same TCG test guest is migrated twice in one run with QEMU's own live
migration (what libvirt drives underneath: a destination QEMU started with
-incoming, QMP `migrate` on the source), once on a vmnet NIC and once on a
tap NIC, both plugged into one Linux bridge where the host pings the guest
every 10 ms throughout, in alternating rounds (vmnet, tap, vmnet, ...:
a busy machine slows both), medians reported. The vmnet guest moves from one port to another
(the destination's made incoming, with the same MAC), as it moves between
the ports of two hosts; the tap guest moves from one tap to another. Reported
for each: QEMU's own downtime figure, the migration's total time, and the
pings lost. Goal: vmnet loses no more than tap + 1.

libvirt's side of a migration (the hook on both hosts, two libvirtds) is
tested with a real guest in tests/test_vm_migration.py, which prints the
pings it loses; it is not timed here because two libvirtds add their own
seconds to every number. Everything made here is removed before this
returns, also on errors and Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import time

from .. import network, testguest
from ..priv import links, netns
from .launcher import BenchHelper, uninterrupted
from .qemuguest import (Guest, create_tap, kill_stragglers, prepare_files, qemu_problem, start_tap_guest,
                        start_vmnet_guest, tap_device_arg, tap_netdev_arg)

BRIDGE = "mbr0"
HOST_IP = "198.19.0.1"
BOOT_TIMEOUT = 240.0
PING_INTERVAL = 0.01
MAC = "52:54:00:6d:69:67"
MTU = 1500                  # the bridge's, for both NICs


def _quiet(*_):
    pass


class Qmp:
    """QEMU's monitor protocol on a unix socket: one command at a time."""

    def __init__(self, path: str, timeout: float = 30.0):
        self.sock = testguest.connect_unix(path, timeout)
        self.buf = b""
        self._read()                                # the greeting
        self.command("qmp_capabilities")

    def _read(self) -> dict:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise OSError("QEMU closed its monitor")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def command(self, name: str, **arguments):
        self.sock.sendall(json.dumps({"execute": name, "arguments": arguments}).encode() + b"\n")
        while True:
            msg = self._read()
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise RuntimeError(f"QMP {name}: {msg['error'].get('desc')}")

    def close(self):
        self.sock.close()


class Pinger:
    """ping every PING_INTERVAL, each line time-stamped (-D), a line for each echo not answered
    before the next is sent (-O)."""

    def __init__(self, ns: str, address: str):
        self.proc = subprocess.Popen(netns.command_in(ns) + ["ping", "-n", "-D", "-O", "-i",
                                      str(PING_INTERVAL), "-W", "1", address],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stop(self, since: float) -> tuple[int, int, list]:
        """(sent, answered, when each unanswered echo was found missing, in ms after `since`, a
        time.time())."""
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        found = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        answered = set(re.findall(r"icmp_seq=(\d+) ttl", out))
        missing = [round((float(t) - since) * 1000) for t, seq in
                   re.findall(r"\[([\d.]+)\] no answer yet for icmp_seq=(\d+)", out) if seq not in answered]
        return (int(found.group(1)), int(found.group(2)), missing) if found else (0, 0, missing)


def measure(tag: str, rounds: int = 3, user: str = "nobody", qemu: str | None = None, progress=_quiet) -> dict:
    from ..qemu_compat import listed
    from ..selftest import consumer_identity
    qemus = listed(qemu if qemu is not None else os.environ.get("VMNET_TEST_QEMU"))
    problem = qemu_problem(qemus[0] if qemus else None)
    if problem:
        return {"skipped": problem}
    uid, gid = consumer_identity(user)
    vmlinuz, moddir = testguest.find_kernel()
    helper = BenchHelper(tag)
    guests: list[Guest] = []
    taps: list[str] = []
    try:
        helper.start()
        work = os.path.join(helper.dir, "migration")
        os.makedirs(work)
        os.chown(work, uid, gid)                    # QEMU (as `user`) makes its sockets here
        with netns.entered(helper.netns):
            from pyroute2 import IPRoute
            with IPRoute() as ip:
                ip.link("add", ifname=BRIDGE, kind="bridge")
                ip.link("set", ifname=BRIDGE, state="up")
            links.add_address(BRIDGE, HOST_IP, 24)
        out = {"qemu": qemus[0], "ping_interval_ms": PING_INTERVAL * 1000, "rounds": rounds}
        runs: dict[str, list] = {"vmnet": [], "tap": []}
        for r in range(rounds):
            for i, kind in enumerate(("vmnet", "tap")):
                progress(f"migration: {kind}", 2 * r + i, 2 * rounds)
                runs[kind].append(_migrate_once(kind, f"198.19.0.{i + 2}", helper, work, qemus[0], vmlinuz,
                                                moddir, user, uid, gid, guests, taps))
                guests.clear()
        for kind, done in runs.items():
            out[kind] = {key: statistics.median(run[key] for run in done)
                         for key in ("downtime_ms", "total_ms", "pings_sent", "pings_lost")}
            out[kind]["runs"] = done
            out[kind]["destination"] = "running" if all(run["destination"] == "running" for run in done) else \
                [run["destination"] for run in done]
        out["vmnet"]["port_activated"] = all(run["port_activated"] for run in runs["vmnet"])
        out["extra_pings_lost"] = out["vmnet"]["pings_lost"] - out["tap"]["pings_lost"]
        return out
    finally:
        with uninterrupted():
            for g in guests:
                g.stop()
            kill_stragglers(helper.dir)
            with contextlib.suppress(Exception), netns.entered(helper.netns):
                for tap in taps:
                    links.delete_link(tap)
            helper.close()


def _migrate_once(kind, address, helper, work, qemu, vmlinuz, moddir, user, uid, gid, guests, taps) -> dict:
    ends = []
    for side in ("src", "dst"):
        key = f"{kind}-{side}"
        serial, log = (os.path.join(work, f"{key}.{ext}") for ext in ("serial", "log"))
        extra = ["-qmp", f"unix:{work}/{key}.qmp,server=on,wait=off"]
        if side == "dst":
            extra += ["-incoming", f"unix:{work}/{kind}.migration"]
        if kind == "vmnet":
            port = f"{helper.tag}{side[0]}"
            g = Guest(key, "vmnet port", address, helper.netns, "vmn-" + port, serial, log, port=port)
            guests.append(g)
            helper.call("port-create", name=port, queues=1, consumer_uid=uid, consumer_gid=gid, mac=MAC, mtu=MTU,
                        attachment=network.attachment_from_options(bridge=BRIDGE).to_dict(),
                        incoming=side == "dst")
            initrd = prepare_files(g, work, moddir, uid, gid)
            start_vmnet_guest(g, qemu=qemu, boot_args=testguest.qemu_boot_args(vmlinuz, initrd, serial) + extra,
                              helper_env=helper.env, consumer_netns=helper.netns, user=user)
        else:
            tap = f"mt{side[0]}-{helper.tag}"
            g = Guest(key, "tap", address, helper.netns, tap, serial, log)
            guests.append(g)
            with netns.entered(helper.netns):
                create_tap(tap, uid, gid)
                taps.append(tap)
                links.set_mtu_up(tap, MTU)
                from pyroute2 import IPRoute
                with IPRoute() as ip:
                    ip.link("set", ifname=tap, master=ip.link_lookup(ifname=BRIDGE)[0])
            initrd = prepare_files(g, work, moddir, uid, gid)
            start_tap_guest(g, qemu=qemu, boot_args=testguest.qemu_boot_args(vmlinuz, initrd, serial) + extra,
                            netdev=tap_netdev_arg("tap0", tap), device=tap_device_arg("tap0", MAC, MTU),
                            uid=uid, gid=gid)
        ends.append(g)
    src, dst = ends
    src.wait_ready(time.monotonic() + BOOT_TIMEOUT)
    qmp_src, qmp_dst = Qmp(f"{work}/{kind}-src.qmp"), Qmp(f"{work}/{kind}-dst.qmp")
    try:
        pinger = Pinger(helper.netns, address)
        time.sleep(1.0)
        started = time.monotonic()
        started_at = time.time()
        qmp_src.command("migrate", uri=f"unix:{work}/{kind}.migration")
        while True:
            info = qmp_src.command("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.05)
        took = time.monotonic() - started
        time.sleep(1.5)
        sent, answered, missing = pinger.stop(started_at + took)
        if info.get("status") != "completed":
            raise RuntimeError(f"the {kind} guest's migration ended {info.get('status')}: {info.get('error-desc')}")
        running = qmp_dst.command("query-status").get("status")
        result = {"downtime_ms": info.get("downtime"), "total_ms": info.get("total-time"),
                  "migrate_s": round(took, 2), "pings_sent": sent, "pings_lost": sent - answered,
                  "lost_ms_after_switch": missing,
                  "destination": running}
        if kind == "vmnet":
            shown = helper.call("port-show", name=dst.port)
            result["port_activated"] = shown.get("migration") is None
        return result
    finally:
        qmp_src.close()
        qmp_dst.close()
        for g in ends:
            g.stop()
        if kind == "vmnet":
            for g in ends:
                helper.call("port-delete", name=g.port, missing_ok=True)
