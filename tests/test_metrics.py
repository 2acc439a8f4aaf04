"""The helper's Prometheus endpoint, scraped over loopback while ports come and go.

The exposition is parsed with prometheus_client's own parser; the counters
must move exactly as the requests the test made.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request

import pytest
from helpers import HelperProcess

pytest.importorskip("prometheus_client", reason="prometheus_client is not installed (install.sh installs it)")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from vmnet.client import Client  # noqa: E402
from vmnet.errors import VmnetError  # noqa: E402

pytestmark = pytest.mark.netns


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def scrape(port: int) -> dict:
    """{(name, labels as a sorted tuple): value} of every sample."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def metered(test_netns):
    port = _free_port()
    h = HelperProcess(f'metrics = "127.0.0.1:{port}"\n').start()
    try:
        yield h, port
    finally:
        h.cleanup()


def test_counters_follow_a_create_delete_loop(metered, consumer_netns, port_name):
    h, port = metered
    before = scrape(port)
    assert value(before, "vmnet_helper_start_time_seconds") > 0
    assert value(before, "vmnet_helper_restarts_total") == 0
    assert value(before, "process_resident_memory_bytes") > 0
    loops = 5
    for i in range(loops):
        name = f"{port_name[:9]}{i}"
        h.vmnet_json("port", "add", name, "--netns", consumer_netns, "--consumer-user", "65534")
        during = scrape(port)
        assert value(during, "vmnet_ports", backend="veth", mode="native") == 1
        assert value(during, "vmnet_port_info", port=name, backend="veth", mode="native", queues="1",
                     consumer_uid="65534", pod="") == 1
        assert value(during, "vmnet_port_xdp_redirected_packets_total", port=name, queue="0") >= 0
        assert value(during, "vmnet_port_host_tx_packets_total", port=name) is not None
        assert value(during, "vmnet_port_holder_alive", port=name) == 0
        if i == 0:
            with Client(h.socket) as c:                 # root takes the sockets: one handoff
                _, fds = c.call("fds-for-consumer", name=name)
                for fd in fds:
                    os.close(fd)
            assert value(scrape(port), "vmnet_port_holder_alive", port=name) == 1
        h.vmnet_json("port", "del", name)
    after = scrape(port)
    assert value(after, "vmnet_requests_total", verb="port-create") == loops
    assert value(after, "vmnet_requests_total", verb="port-delete") == loops
    assert value(after, "vmnet_port_create_seconds_count") == loops
    assert value(after, "vmnet_port_delete_seconds_count") == loops
    assert 0 < value(after, "vmnet_port_create_seconds_sum") < loops * 5
    assert value(after, "vmnet_consumer_handoffs_total") == 1
    assert value(after, "vmnet_ports", backend="veth", mode="native") is None       # none left
    # a refusal, by verb and code
    with pytest.raises(VmnetError), Client(h.socket) as c:
        c.call("port-show", name="absent")
    assert value(scrape(port), "vmnet_refusals_total", verb="port-show", code="not-found") == 1


def test_a_restart_is_counted(metered):
    h, port = metered
    h.kill()
    h.start()
    assert value(scrape(port), "vmnet_helper_restarts_total") == 1


@pytest.mark.parametrize("arg, words", [
    ("nope", "is not ADDRESS:PORT"), ("127.0.0.1:0", "is not 1-65535"), ("example.org:9465", "is not an IP address"),
])
def test_bad_metrics_values_are_clear_errors(arg, words):
    out = subprocess.run([sys.executable, "-I", "-m", "vmnet", "helper", "--metrics", arg],
                         capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and words in out.stderr, out.stderr


def test_a_busy_metrics_port_stops_the_helper_saying_so(test_netns):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    h = HelperProcess(f'metrics = "127.0.0.1:{busy.getsockname()[1]}"\n')
    try:
        with pytest.raises(RuntimeError) as exc:
            h.start(timeout=30)
        assert "cannot serve metrics on 127.0.0.1:" in str(exc.value) and "EADDRINUSE" in str(exc.value)
    finally:
        busy.close()
        h.cleanup()
