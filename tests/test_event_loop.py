"""The helper's event loop against a random sequence of what its clients and consumers do.

Ports are added and deleted, consumer processes connect, ask for sockets on
old and new connections, hang up, exit and are killed, and strangers send
garbage — in an order drawn from a seed (printed, and fixed by
VMNET_TEST_SEED to replay a failure). After every step the helper must be
up; at the end its ports, holders and fds must be what the steps imply.
Bounded: a fixed number of steps, each a few requests.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time

import pytest
from helpers import PYTHON, USER_A, HelperProcess, as_identity
from test_protocol_robustness import baseline_fd_count

from vmnet.client import Client

pytestmark = pytest.mark.netns

STEPS = 400

# A consumer: one connection at a time; commands on stdin, one answer line each.
CONSUMER = r"""
import json, os, socket, sys
from vmnet.client import Client
from vmnet.errors import HelperUnavailable, VmnetError
path = sys.argv[1]
client, fds = None, []
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    try:
        if cmd == "ask":
            for attempt in (0, 1):      # a connection idle past idle_timeout was dropped: open another
                if client is None:
                    client = Client(path)
                try:
                    _, got = client.call("fds-for-consumer", name=arg)
                    break
                except HelperUnavailable:
                    client.close()
                    client = None
                    if attempt:
                        raise
            fds += got
            print(json.dumps({"ok": True, "fds": len(got)}), flush=True)
        elif cmd == "hangup":
            if client is not None:
                client.close()
            client = None
            print(json.dumps({"ok": True}), flush=True)
        elif cmd == "drop":
            for fd in fds:
                os.close(fd)
            fds = []
            print(json.dumps({"ok": True}), flush=True)
    except VmnetError as exc:
        print(json.dumps({"ok": False, "code": exc.code}), flush=True)
    except OSError as exc:
        client = None
        print(json.dumps({"ok": False, "code": "os", "errno": exc.errno}), flush=True)
"""


class Consumer:
    def __init__(self, h):
        consumer = os.path.join(h.dir, "consumer", "consumer.sock")
        self.proc = subprocess.Popen([PYTHON, "-I", "-c", CONSUMER, consumer], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
                                     preexec_fn=as_identity(USER_A, USER_A), env=h.env)

    def say(self, line: str) -> dict:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, f"consumer died: {self.proc.stderr.read()}"
        return json.loads(answer)

    def stop(self, sig=None):
        if self.proc.poll() is None:
            if sig:
                self.proc.send_signal(sig)
            else:
                self.proc.stdin.close()
            self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if not f.closed:
                f.close()


def test_a_random_sequence_of_clients_and_consumers_never_stops_the_helper(test_netns):
    seed = int(os.environ.get("VMNET_TEST_SEED") or random.randrange(2**32))
    print(f"seed {seed} (VMNET_TEST_SEED={seed} replays it)")
    rng = random.Random(seed)
    # no netns per port: every port's consumer end shares the helper's, which only
    # allow_unconfined permits on a kernel without the bind guard
    h = HelperProcess("allow_unconfined = true\n").start()
    names = [f"r{seed % 10000:04d}{i}" for i in range(4)]
    ports: set[str] = set()                 # what the helper must have
    holders: dict[str, Consumer] = {}       # port -> the live consumer holding its sockets
    consumers: list[Consumer] = []
    history = []
    try:
        baseline = baseline_fd_count(h)
        for step in range(STEPS):
            action = rng.choice(["add", "add", "del", "spawn", "ask", "ask", "ask", "hangup", "drop",
                                 "exit", "kill", "garbage", "status"])
            history.append(action)
            if action == "add":
                name = rng.choice(names)
                out = h.vmnet("--json", "port", "add", name, "--consumer-user", str(USER_A))
                assert (out.returncode == 0) == (name not in ports), (step, action, name, out.stderr)
                ports.add(name)
            elif action == "del":
                name = rng.choice(names)
                with Client(h.socket) as c:
                    c.call("port-delete", name=name, missing_ok=True)
                ports.discard(name)
                holders.pop(name, None)
            elif action == "spawn" and len(consumers) < 6:
                consumers.append(Consumer(h))
            elif action == "ask" and consumers:
                who, name = rng.choice(consumers), rng.choice(names)
                got = who.say(f"ask {name}")
                if name not in ports:
                    assert got == {"ok": False, "code": "not-found"}, (step, got)
                elif name in holders:        # another's, or its own again: one live holder at a time
                    assert got == {"ok": False, "code": "in-use"}, (step, got)
                else:
                    assert got["ok"] is True and got["fds"] == 1, (step, got)
                    holders[name] = who
            elif action in ("hangup", "drop") and consumers:
                assert rng.choice(consumers).say(action) == {"ok": True}
            elif action in ("exit", "kill") and consumers:
                who = consumers.pop(rng.randrange(len(consumers)))
                who.stop(signal.SIGKILL if action == "kill" else None)
                for name in [n for n, c in holders.items() if c is who]:
                    del holders[name]
            elif action == "garbage":
                with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
                    s.connect(h.socket)
                    s.send(rng.randbytes(rng.randrange(0, 64)))
                    s.settimeout(5)
                    try:
                        s.recv(65536)
                    except OSError:
                        pass
            elif action == "status":
                with Client(h.socket) as c:
                    assert "helper" in c.call("status")[0]
            assert h.proc.poll() is None, (f"helper exited at step {step} ({action}); seed {seed}; "
                                           f"{history[-10:]}\n{h.read_log()[-3000:]}")
        # consistent: the ports the steps left, each held by the live consumer that took it
        deadline = time.monotonic() + 10
        while True:
            listed = {p["name"]: p for p in h.vmnet_json("port", "list")["ports"]}
            held = {n for n, p in listed.items() if p.get("holder")}
            if held == set(holders) or time.monotonic() > deadline:
                break
            time.sleep(0.1)         # the exit of a consumer killed last is seen on the loop's next pass
        assert set(listed) == ports, seed
        assert held == set(holders), seed
        for name, who in holders.items():
            assert listed[name]["holder"]["pid"] == who.proc.pid, seed
        for name in ports:
            assert h.vmnet_json("port", "show", name)["health"] is None, seed
        for who in consumers:
            who.stop()
        consumers = []
        for name in list(ports):
            h.vmnet_json("port", "del", name)
        ports.clear()
        deadline = time.monotonic() + 10
        while h.fd_count() != baseline and time.monotonic() < deadline:
            time.sleep(0.1)
        assert h.fd_count() == baseline, f"the helper holds {h.fd_count()} fds, {baseline} before; seed {seed}"
        assert "Traceback" not in h.read_log(), h.read_log()[-3000:]
    finally:
        for who in consumers:
            who.stop(signal.SIGKILL)
        h.cleanup()
