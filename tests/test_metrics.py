"""The helper's Prometheus endpoint, scraped over loopback while ports come and go.

The exposition is parsed with prometheus_client's own parser; the counters
must move exactly as the requests the test made.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import HelperProcess, free_port

pytest.importorskip("prometheus_client", reason="prometheus_client is not installed (install.sh installs it)")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from vmnet.client import Client  # noqa: E402
from vmnet.errors import VmnetError  # noqa: E402

pytestmark = pytest.mark.netns


def scrape(port: int) -> dict:
    """{(name, labels as a sorted tuple): value} of every sample."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


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


def _http(connect, request: bytes, timeout: float = 10.0) -> bytes:
    """Send one raw request on a fresh connection and read the whole answer."""
    s = connect()
    s.settimeout(timeout)
    try:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        s.close()


def _tcp(port):
    return lambda: socket.create_connection(("127.0.0.1", port), timeout=10)


def test_over_tcp_only_totals_unless_the_operator_asks_for_ports(test_netns, consumer_netns, port_name):
    """Per-port series name ports, pods and uids: `vmnet port list` shows them only to admins
    and consumers, and a TCP scrape cannot be told apart from anyone else's."""
    port = free_port()
    h = HelperProcess(f'metrics = "127.0.0.1:{port}"\n').start()
    try:
        h.vmnet_json("port", "add", port_name, "--netns", consumer_netns, "--consumer-user", "65534")
        samples = scrape(port)
        assert value(samples, "vmnet_ports", backend="veth", mode="native") == 1
        assert not [k for k in samples if "port" in dict(k[1])], "a per-port series over TCP by default"
        assert port_name not in urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        h.cleanup()


def test_a_unix_metrics_socket_shows_each_peer_the_ports_it_may_see(test_netns, consumer_netns, port_name):
    h = HelperProcess()
    path = os.path.join(h.dir, "metrics.sock")
    with open(h.config, "a") as f:
        f.write(f'metrics = "unix:{path}"\nallow_unconfined = true\n')     # two ports, one netns
    h.start()
    try:
        mine, theirs = port_name, f"{port_name[:8]}x"
        h.vmnet_json("port", "add", mine, "--netns", consumer_netns, "--consumer-user", "65534")
        h.vmnet_json("port", "add", theirs, "--netns", consumer_netns, "--consumer-user", "65533")
        scraper = ("import socket,sys\n"
                   "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                   "s.sendall(b'GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
                   "out=b''\n"
                   "while c:=s.recv(65536): out+=c\n"
                   "sys.stdout.write(out.decode())\n")

        def as_uid(uid):
            def drop():
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            out = subprocess.run([sys.executable, "-I", "-c", scraper, path], capture_output=True, text=True,
                                 timeout=30, preexec_fn=drop)
            assert out.returncode == 0, out.stderr
            return out.stdout

        root = _http(lambda: _unix(path), b"GET /metrics HTTP/1.0\r\n\r\n").decode()
        assert f'port="{mine}"' in root and f'port="{theirs}"' in root
        nobody = as_uid(65534)
        assert nobody.startswith("HTTP/1.1 200 OK")
        assert f'port="{mine}"' in nobody and f'port="{theirs}"' not in nobody
        assert 'vmnet_ports{backend="veth",mode="native"} 2.0' in nobody      # totals: for everyone
        stranger = as_uid(65532)
        assert 'port="' not in stranger and "vmnet_helper_info" in stranger
    finally:
        h.cleanup()


def _unix(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def test_the_endpoint_answers_get_of_metrics_and_names_what_it_refuses(metered):
    h, port = metered
    tcp = _tcp(port)
    assert _http(tcp, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200 OK")
    head = _http(tcp, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
    assert _http(tcp, b"GET /secret HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert _http(tcp, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert _http(tcp, b"\x16\x03\x01garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert _http(tcp, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000).startswith(b"HTTP/1.1 431")
    # a client that says nothing is cut off at the deadline
    silent = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        assert silent.recv(1) == b""
    finally:
        silent.close()


def test_two_thousand_half_open_scrapes_do_not_stall_the_helper(test_netns, consumer_netns, port_name):
    """Issue: each metrics connection took a thread and an fd and was never timed out; ~1,100
    half-open ones (systemd's default soft limit of 1024 fds) made port-create fail."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    port = free_port()
    h = HelperProcess(f'metrics = "127.0.0.1:{port}"\n')
    h.preexec = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
    h.start()
    attackers = []
    try:
        scrape(port)
        fds_before = h.fd_count()
        threads_before = len(os.listdir(f"/proc/{h.proc.pid}/task"))
        for _ in range(2000):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            attackers.append(s)
        for s in attackers:
            try:
                s.send(b"GET / HTTP/1.1\r\n")
            except OSError:
                pass            # still in the handshake: the kernel's backlog is full, as it should be
        worst = 0.0
        for i in range(5):
            name = f"{port_name[:9]}{i}"
            started = time.monotonic()
            h.vmnet_json("port", "add", name, "--netns", consumer_netns, "--consumer-user", "65534")
            h.vmnet_json("port", "del", name)
            worst = max(worst, time.monotonic() - started)
            assert h.fd_count() <= fds_before + 16 + 4, "the metrics endpoint took more fds than its budget"
        assert len(os.listdir(f"/proc/{h.proc.pid}/task")) <= threads_before + 1
        # each one a new CLI process (about 0.3 s of its own): the helper's part never waited
        assert worst < 2.0, f"a create and delete took {worst:.2f} s under the attack"
        assert h.proc.poll() is None
        for s in attackers:
            s.close()
        attackers = []
        deadline = time.monotonic() + 30
        while True:             # the attackers' slots drain within the 5 s deadline
            try:
                assert value(scrape(port), "vmnet_helper_restarts_total") == 0
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        for s in attackers:
            s.close()
        h.cleanup()
