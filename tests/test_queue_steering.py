"""Multi-queue ports whose consumer reads only some queues (vmnet.priv.queuewatch).

A real helper, a 4-queue veth port and vmnet's responder behind it relaying to a tap in a
guest netns (tests/guest_env.py). The responder is told by signal to read only its first k
queues, as QEMU does once its guest enables k queue pairs. Flows from the host to the guest
(16 UDP flows, each from its own port, hashed by the kernel over the host end's transmit
queues) must all be answered once the helper has seen which queues are read; the XSK
program's per-queue counters show where the frames went.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from guest_env import Guest, py_in, run_in

from vmnet.priv import queuewatch

pytestmark = pytest.mark.netns

NOBODY = 65534
HOST_IP, GUEST_IP = "10.79.0.1", "10.79.0.2"
FLOWS = 16

ECHO = ("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('0.0.0.0',7))\n"
        "while True:\n d,a=s.recvfrom(2048);s.sendto(d,a)\n")

# each flow from a source port of its own, retried until answered or out of time; prints the
# flows answered on the first try and in all
FLOWS_SCRIPT = """
import json, socket, sys, time
target, flows, budget = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
first, answered = 0, 0
deadline = time.monotonic() + budget
for i in range(flows):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 41000 + i))
    s.settimeout(0.3)
    tries = 0
    while time.monotonic() < deadline:
        tries += 1
        s.sendto(b"x" * 64, (target, 7))
        try:
            s.recvfrom(2048)
        except socket.timeout:
            continue
        answered += 1
        first += tries == 1
        break
    s.close()
print(json.dumps({"first_try": first, "answered": answered}))
"""


def flows(ns: str, budget: float = 20.0) -> dict:
    out = py_in(ns, FLOWS_SCRIPT.replace("sys.argv[1], int(sys.argv[2]), float(sys.argv[3])",
                                         f"{GUEST_IP!r}, {FLOWS}, {budget}"), timeout=budget + 30)
    return json.loads(out.stdout)


def counters(helper, port) -> list[int]:
    return [c["redirected"] for c in helper.vmnet_json("port", "show", port)["queue_counters"]]


def served(helper, port):
    return helper.vmnet_json("port", "show", port).get("queues_served")


def wait_served(helper, port, want, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = served(helper, port)
        if got == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"queues_served is {served(helper, port)}, expected {want}")


def xps(test_netns: str, ifname: str, tx: int) -> list[str]:
    # `ip netns exec` mounts a sysfs of that netns (nsenter would show the host's)
    out = subprocess.run(["ip", "netns", "exec", test_netns, "sh", "-c",
                          " ; ".join(f"cat /sys/class/net/{ifname}/queues/tx-{q}/xps_cpus" for q in range(tx))],
                         capture_output=True, text=True, check=True)
    return [int(v.replace(",", ""), 16) for v in out.stdout.split()]


def serve(guest: Guest, k: int) -> None:
    """The responder reads only its first k queues from now on (its SIGRTMIN+k)."""
    guest.relay.proc.send_signal(signal.SIGRTMIN + k)


@pytest.mark.parametrize("mode", ["native", "skb"])
def test_a_port_sends_only_to_the_queues_its_consumer_reads(metered, test_netns, consumer_netns, port_name,
                                                             spaces, mode):
    from test_metrics import scrape, value
    helper, metrics_port = metered
    helper.vmnet_json("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", str(NOBODY),
                      "--queues", "4", "--mode", mode)
    host = "vmn-" + port_name
    run_in(test_netns, "ip", "addr", "add", f"{HOST_IP}/24", "dev", host)
    guest = Guest(helper, port_name, consumer_netns, spaces)
    echo = None
    try:
        guest.start()
        guest.address(f"{GUEST_IP}/24")
        echo = subprocess.Popen(["nsenter", f"--net=/run/netns/{guest.ns}", "python3", "-c", ECHO],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        tx = 4 + (mode == "skb")

        # every queue read: every flow answered at once, the flows spread over the queues
        before = counters(helper, port_name)
        assert flows(test_netns) == {"first_try": FLOWS, "answered": FLOWS}
        spread = [a - b for a, b in zip(counters(helper, port_name), before)]
        assert sum(1 for n in spread if n) >= 3, spread
        assert served(helper, port_name) is None

        # the guest goes down to 2 queue pairs: the flows hashed onto queues 2-3 wait on their
        # rings until the helper sees it, and then go to queues 0-1
        serve(guest, 2)
        result = flows(test_netns)
        assert result["answered"] == FLOWS, result
        wait_served(helper, port_name, 2)
        assert value(scrape(metrics_port), "vmnet_port_queues_served", port=port_name) == 2
        text = helper.vmnet("port", "show", port_name).stdout
        assert "its consumer reads 2 of 4; the host end sends to queues 0, 1 only" in text, text
        masks = xps(test_netns, host, tx)
        want = [queuewatch.receive_queue(k, mode) < 2 for k in range(tx)]
        assert [bool(m) for m in masks] == want, masks
        before = counters(helper, port_name)
        assert flows(test_netns) == {"first_try": FLOWS, "answered": FLOWS}
        spread = [a - b for a, b in zip(counters(helper, port_name), before)]
        assert spread[2] == spread[3] == 0 and spread[0] + spread[1] >= FLOWS, spread

        # back to 4: QEMU drains what waited on queues 2-3, and every queue serves again
        serve(guest, 4)
        wait_served(helper, port_name, None)
        assert value(scrape(metrics_port), "vmnet_port_queues_served", port=port_name) == 4
        assert xps(test_netns, host, tx) == [0] * tx
        before = counters(helper, port_name)
        assert flows(test_netns) == {"first_try": FLOWS, "answered": FLOWS}
        spread = [a - b for a, b in zip(counters(helper, port_name), before)]
        assert sum(1 for n in spread if n) >= 3, spread

        # down to one
        serve(guest, 1)
        assert flows(test_netns)["answered"] == FLOWS
        wait_served(helper, port_name, 1)
        assert flows(test_netns) == {"first_try": FLOWS, "answered": FLOWS}
    finally:
        if echo is not None:
            echo.kill()
            echo.wait()
        guest.close()
    # the consumer gone: the next one starts with every queue
    wait_served(helper, port_name, None)
    assert xps(test_netns, host, 4 + (mode == "skb")) == [0] * (4 + (mode == "skb"))
    helper.vmnet_json("port", "del", port_name)


def test_the_first_queue_unread_changes_nothing(helper, test_netns, consumer_netns, port_name, spaces):
    """A consumer that reads nothing (a guest booting or paused) is not a reason to steer."""
    helper.vmnet_json("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", str(NOBODY),
                      "--queues", "2")
    run_in(test_netns, "ip", "addr", "add", f"{HOST_IP}/24", "dev", "vmn-" + port_name)
    guest = Guest(helper, port_name, consumer_netns, spaces)
    try:
        guest.start()
        guest.address(f"{GUEST_IP}/24")
        # no ARP (which would wait on one queue): the datagrams go out at once
        run_in(test_netns, "ip", "neigh", "replace", GUEST_IP, "lladdr", guest.record["mac"], "dev",
               "vmn-" + port_name, "nud", "permanent")
        before = [c["redirected"] for c in helper.vmnet_json("port", "show", port_name)["queue_counters"]]
        serve(guest, 1)
        guest.relay.proc.send_signal(signal.SIGSTOP)       # reads nothing at all
        # one datagram from each of 16 ports: both queues get some, and neither ring is read
        py_in(test_netns, "import socket\nfor i in range(16):\n"
                          "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                          f"    s.sendto(b'x', ({GUEST_IP!r}, 7))\n")
        time.sleep(1.0)
        after = [c["redirected"] for c in helper.vmnet_json("port", "show", port_name)["queue_counters"]]
        assert all(a > b for a, b in zip(after, before)), (before, after)
        assert served(helper, port_name) is None
        guest.relay.proc.send_signal(signal.SIGCONT)
    finally:
        guest.close()
    helper.vmnet_json("port", "del", port_name)


@pytest.mark.parametrize("stalled,current,want", [
    ([False, False, False, False], 4, 4),
    ([False, False, True, True], 4, 2),
    ([False, True, False, False], 4, 1),
    ([True, True, True, True], 2, 2),
    ([True, False, False, False], 3, 3),
    ([False, False, False, False], 2, 4),
])
def test_served_count(stalled, current, want):
    assert queuewatch.served_count(stalled, current) == want


def test_xps_masks():
    record = {"queues": 4, "start_queue": 0, "map_keys": [0, 1, 2, 3], "mode": "native", "mode_requested": "auto"}
    assert queuewatch.xps_masks(record, 4, 2) is None
    assert queuewatch.xps_masks(record, 2, 2) == ["00000003", "00000003", "00000000", "00000000"]
    skb = dict(record, mode="skb", mode_requested="skb")
    # transmit queue k reaches queue k - 1 in skb mode; the host end has one more
    assert queuewatch.xps_masks(skb, 2, 40) == ["000000ff,ffffffff"] * 3 + ["00000000"] * 2


class FakeRing:
    """A ring's (producer, consumer) indexes as a test sets them."""

    def __init__(self):
        self.producer = self.consumer = 0

    def indexes(self):
        return self.producer, self.consumer

    def close(self):
        pass


def test_a_queue_stalls_after_its_frames_wait_and_serves_again_once_read():
    rings = [FakeRing() for _ in range(4)]
    watch = queuewatch.QueueWatch([], rings=rings)
    assert watch.tick(0.0) is None and watch.served == 4
    for r in rings:
        r.producer = 5                      # frames on every ring
    rings[0].consumer = rings[1].consumer = 5   # queues 0 and 1 are read
    assert watch.tick(0.1) is None          # 2 and 3 have waited 0 s
    assert watch.tick(0.1 + queuewatch.STALL) == 2
    assert watch.stalled == [False, False, True, True]
    rings[2].consumer = rings[3].consumer = 5   # the guest enables them again: QEMU drains them
    assert watch.tick(0.5) is None          # within MIN_INTERVAL of the last change
    assert watch.tick(0.1 + queuewatch.STALL + queuewatch.MIN_INTERVAL) == 4


def test_a_consumer_flipping_its_rings_changes_the_steering_once_a_second_at_most():
    rings = [FakeRing() for _ in range(2)]
    watch = queuewatch.QueueWatch([], rings=rings)
    changes, now = 0, 0.0
    for step in range(100):                 # 10 s of a QEMU that makes queue 1 stall and drain in turn
        now = step * queuewatch.TICK
        rings[1].producer += 1
        if (step // 4) % 2:
            rings[1].consumer = rings[1].producer
        changes += watch.tick(now) is not None
    assert 2 <= changes <= 10 / queuewatch.MIN_INTERVAL + 1, changes
