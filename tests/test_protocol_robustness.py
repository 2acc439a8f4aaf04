"""The helper's socket against hostile or broken clients, spoken to with raw sockets.

Anyone on the machine may connect to the helper (the socket is 0666 and
every request is judged on SO_PEERCRED), so whatever arrives — bad JSON,
oversized or empty messages, fds, silence, too many connections — must
get a clear error or a closed connection, never a crash, a leaked fd or a
helper that stops answering others.
"""

from __future__ import annotations

import array
import json
import os
import random
import socket
import time

import pytest
from helpers import HelperProcess

from vmnet import protocol

pytestmark = pytest.mark.netns

STATUS = b'{"verb":"status"}'


# --- raw-socket helpers ------------------------------------------------------

def connect(path: str, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def receive_reply(sock: socket.socket) -> dict:
    """One reply, decoded; any fds it carried are closed (no test here expects any)."""
    data, anc, _, _ = sock.recvmsg(protocol.MAX_REPLY, socket.CMSG_SPACE(protocol.MAX_FDS * 4))
    fds = array.array("i")
    for level, kind, blob in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(blob[:len(blob) - len(blob) % fds.itemsize])
    for fd in fds:
        os.close(fd)
    assert data, "the helper closed the connection instead of replying"
    assert not fds, f"the helper sent {len(fds)} fd(s) with a reply that should carry none"
    return json.loads(data)


def exchange(sock: socket.socket, payload: bytes, fds=()) -> dict:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([payload], anc)
    return receive_reply(sock)


def assert_refused(reply: dict, code: str = "invalid-input") -> dict:
    assert reply["ok"] is False, reply
    assert reply["error"]["code"] == code, reply
    return reply["error"]


def assert_status_works(path: str):
    with connect(path, timeout=5.0) as sock:
        reply = exchange(sock, STATUS)
    assert reply["ok"] is True, reply
    assert "helper" in reply["result"]


# what the helper holds for each open connection: the socket and a pidfd of its peer
PER_CONNECTION = 2


def baseline_fd_count(helper) -> int:
    """The helper's fd count with no client connected.

    Measured while one connection is open (after a full round trip, so every
    earlier connection, such as the start-up probe, has been reaped) minus that one's.
    """
    with connect(helper.socket) as sock:
        assert exchange(sock, STATUS)["ok"] is True
        return helper.fd_count() - PER_CONNECTION


def kernel_refuses_fds_to_the_helper() -> bool:
    """Linux >= 6.16 has SO_PASSRIGHTS, which the helper sets to 0 on its socket."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.setsockopt(socket.SOL_SOCKET, 83, 0)
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_for_fd_count(helper, expected: int, timeout: float = 5.0) -> int:
    """Poll until the helper holds `expected` fds (closed connections take a loop turn)."""
    deadline = time.monotonic() + timeout
    while True:
        count = helper.fd_count()
        if count == expected or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def wait_for_log(helper, text: str, timeout: float = 5.0) -> bool:
    """Whether `text` shows up in the helper's log (some lines follow the event they report)."""
    deadline = time.monotonic() + timeout
    while text not in helper.read_log():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def assert_closed_without_reply(sock: socket.socket):
    """The helper closed this connection; it sent nothing first."""
    try:
        data = sock.recv(protocol.MAX_REPLY)
    except ConnectionResetError:          # closed while our own data was still unread
        return
    assert data == b"", f"expected the connection to be closed, got a reply: {data[:200]!r}"


# --- malformed requests ------------------------------------------------------

@pytest.mark.parametrize("payload", [
    b"{",
    b"not json at all",
    b'{"verb": "status",}',
    b"\xff\xfe\x00garbage",
    b'{"verb": "st\xe9tus"}',           # latin-1, not UTF-8
])
def test_malformed_json_is_refused_as_invalid_input_and_the_connection_keeps_working(helper, payload):
    with connect(helper.socket) as sock:
        error = assert_refused(exchange(sock, payload))
        assert "not valid JSON" in error["message"]
        assert error.get("fix")
        reply = exchange(sock, STATUS)
        assert reply["ok"] is True, reply


@pytest.mark.parametrize("payload, words", [
    (b"[]", "must be an object"),
    (b'"status"', "must be an object"),
    (b"null", "must be an object"),
    (b'{"args": {}}', "must be an object"),
    (b'{"verb": "status", "args": {}, "extra": 1}', "must be an object"),
    (b'{"verb": "status", "args": []}', '"args" must be an object'),
    (b'{"verb": "status", "args": "x"}', '"args" must be an object'),
])
def test_json_that_is_not_a_request_object_is_refused_as_invalid_input(helper, payload, words):
    with connect(helper.socket) as sock:
        assert words in assert_refused(exchange(sock, payload))["message"]
        assert exchange(sock, STATUS)["ok"] is True


def test_a_message_over_the_size_limit_is_refused_naming_the_limit(helper):
    with connect(helper.socket) as sock:
        for size in (protocol.MAX_MESSAGE + 1, protocol.MAX_MESSAGE + 8192):   # both fit the socket buffer
            payload = STATUS + b" " * (size - len(STATUS))
            error = assert_refused(exchange(sock, payload))
            assert f"{protocol.MAX_MESSAGE}-byte limit" in error["message"]
        # the rest of the oversized record was discarded: the next request is read cleanly
        assert exchange(sock, STATUS)["ok"] is True
    assert "byte limit" in helper.read_log()


def test_a_message_of_exactly_the_size_limit_is_accepted(helper):
    payload = STATUS + b" " * (protocol.MAX_MESSAGE - len(STATUS))
    assert len(payload) == protocol.MAX_MESSAGE
    with connect(helper.socket) as sock:
        reply = exchange(sock, payload)
    assert reply["ok"] is True, reply


@pytest.mark.parametrize("verb", ["no-such-verb", "", "STATUS", "port_create", "helper", 5, None, ["status"]])
def test_an_unknown_verb_is_refused_naming_the_known_verbs(helper, verb):
    with connect(helper.socket) as sock:
        error = assert_refused(exchange(sock, json.dumps({"verb": verb}).encode()))
    assert "unknown verb" in error["message"]
    for known in protocol.VERBS:
        assert known in error["fix"]


@pytest.mark.parametrize("verb, args, argument", [
    ("port-show", {"name": 5}, "name"),
    ("port-show", {"name": None}, "name"),
    ("port-show", {"name": ["a"]}, "name"),
    ("port-show", {}, "name"),
    ("fds-for-consumer", {"name": {"a": 1}}, "name"),
    ("port-delete", {"name": 5}, "name"),
    ("port-delete", {"name": "nosuchport", "missing_ok": "yes"}, "missing_ok"),
    ("port-delete", {"name": "nosuchport", "missing_ok": 1}, "missing_ok"),
    ("port-create", {"name": 5, "consumer_uid": 64001}, "name"),
    ("port-create", {"name": "p", "consumer_uid": "64001"}, "consumer_uid"),
    ("port-create", {"name": "p", "consumer_uid": True}, "consumer_uid"),      # bool is not int
    ("port-create", {"name": "p", "consumer_uid": 64001, "queues": 1.0}, "queues"),
    ("port-create", {"name": "p", "consumer_uid": 64001, "queues": False}, "queues"),
    ("raise-memlock-for-peer", {"ports": "p"}, "ports"),
    ("raise-memlock-for-peer", {"ports": [5]}, "ports"),
])
def test_arguments_of_the_wrong_type_are_refused_as_invalid_input(helper, verb, args, argument):
    with connect(helper.socket) as sock:
        error = assert_refused(exchange(sock, json.dumps({"verb": verb, "args": args}).encode()))
        assert argument in error["message"]
        assert exchange(sock, STATUS)["ok"] is True
    assert helper.vmnet_json("port", "list")["ports"] == []


# --- fds sent to the helper --------------------------------------------------
# Closing a received fd can sleep (the last reference of a TCP socket with
# SO_LINGER and an undrained send queue), so the helper must never receive
# any: Linux >= 6.16 refuses them at the sender (SO_PASSRIGHTS = 0); older
# kernels deliver them, and the helper closes them off its loop and drops the
# connection. test_helper_security.py plays the lingering socket itself.

def send_fds_and_expect_refusal(helper, payload: bytes, fds: list[int]):
    """Send fds with payload; assert what this kernel lets happen; the connection is gone after."""
    with connect(helper.socket) as sock:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        if kernel_refuses_fds_to_the_helper():
            with pytest.raises(PermissionError):
                sock.sendmsg([payload], anc)
            assert exchange(sock, STATUS)["ok"] is True       # nothing reached the helper
            return
        sock.sendmsg([payload], anc)
        error = assert_refused(receive_reply(sock))
        assert "accepts none" in error["message"] and "dropped" in error["message"]
        assert_closed_without_reply(sock)
    assert "accepts none" in helper.read_log()


def test_fds_sent_to_the_helper_never_stay_with_it(helper):
    baseline = baseline_fd_count(helper)
    read_end, write_end = os.pipe()
    try:
        send_fds_and_expect_refusal(helper, STATUS, [read_end, write_end])
        # ours are untouched: still open, still the same pipe
        os.fstat(read_end)
        os.write(write_end, b"still here")
        assert os.read(read_end, 100) == b"still here"
    finally:
        os.close(read_end)
        os.close(write_end)
    assert wait_for_fd_count(helper, baseline) == baseline
    assert_status_works(helper.socket)


def test_more_fds_than_a_reply_ever_carries_never_stay_with_the_helper(helper):
    baseline = baseline_fd_count(helper)
    read_end, write_end = os.pipe()
    copies = [os.dup(read_end) for _ in range(protocol.MAX_FDS + 36)]     # the kernel allows 253
    try:
        send_fds_and_expect_refusal(helper, STATUS, copies)
    finally:
        for fd in [read_end, write_end, *copies]:
            os.close(fd)
    assert wait_for_fd_count(helper, baseline) == baseline


def test_fds_sent_with_an_empty_payload_never_stay_with_the_helper(helper):
    baseline = baseline_fd_count(helper)
    read_end, write_end = os.pipe()
    try:
        send_fds_and_expect_refusal(helper, b"", [read_end])
    finally:
        os.close(read_end)
        os.close(write_end)
    assert wait_for_fd_count(helper, baseline) == baseline


# --- fuzzing -----------------------------------------------------------------

_VALID_REQUESTS = [
    b'{"verb":"status"}',
    b'{"verb":"status","args":{}}',
    b'{"verb":"port-list","args":{}}',
    b'{"verb":"port-show","args":{"name":"fuzz"}}',
]
_JSON_TOKENS = [b"{", b"}", b"[", b"]", b'"', b":", b",", b"null", b"true", b"1e999", b"-0",
                b"\\u0000", b"\\ud800", b"\xff", b"\x00", b"NaN", b'"verb"', b'"args"']


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """A valid request with a few byte-level edits: usually broken, now and then still valid."""
    out = bytearray(data)
    if rng.random() < 0.3:         # make it long: pad the name or the args with a big string
        out = bytearray(data.replace(b'"fuzz"', b'"' + b"x" * rng.randint(0, 1900) + b'"'))
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        pos = rng.randint(0, len(out))
        if op == 0 and out:
            out[min(pos, len(out) - 1)] = rng.randrange(256)
        elif op == 1:
            out[pos:pos] = bytes([rng.randrange(256)])
        elif op == 2 and out:
            del out[pos:pos + rng.randint(1, 8)]
        elif op == 3:
            out[pos:pos] = rng.choice(_JSON_TOKENS)
        elif op == 4:
            out = out[:pos]
        else:
            start = rng.randint(0, len(out))
            out[pos:pos] = out[start:start + rng.randint(1, 40)]
    return bytes(out[:2000])


def _fuzz_messages(count: int, seed: int = 1234) -> list[bytes]:
    rng = random.Random(seed)
    messages = []
    for _ in range(count):
        if rng.random() < 0.5:
            messages.append(rng.randbytes(rng.randint(0, 2000)))
        else:
            messages.append(_mutate(rng, rng.choice(_VALID_REQUESTS)))
    return messages


def test_random_and_mutated_messages_get_json_replies_and_leak_nothing(helper):
    baseline = baseline_fd_count(helper)
    messages = _fuzz_messages(1000)
    codes = {}
    sock = connect(helper.socket)
    try:
        for i, payload in enumerate(messages):
            if i % 250 == 0 and i:                      # spread over a few connections
                sock.close()
                sock = connect(helper.socket)
            sock.sendmsg([payload])
            if not payload:
                # an empty record: the helper may close the connection (see the empty-message test)
                data = sock.recv(protocol.MAX_REPLY)
                if data == b"":
                    sock.close()
                    sock = connect(helper.socket)
                    continue
                reply = json.loads(data)
            else:
                reply = receive_reply(sock)
            assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), (payload, reply)
            if reply["ok"]:                    # a mutation that is still a valid request
                assert isinstance(reply["result"], dict)
            else:
                assert reply["error"]["message"], (payload, reply)
                codes[reply["error"]["code"]] = codes.get(reply["error"]["code"], 0) + 1
    finally:
        sock.close()
    assert helper.proc.poll() is None, helper.read_log()[-3000:]
    # a fuzzed request is refused (invalid-input) or names a port that does not exist
    assert set(codes) <= {"invalid-input", "not-found"}, (codes, helper.read_log()[-3000:])
    assert codes.get("invalid-input", 0) > 500
    assert "internal error" not in helper.read_log()
    assert_status_works(helper.socket)
    assert wait_for_fd_count(helper, baseline) == baseline


# --- slow, silent, empty and too many clients --------------------------------

def test_silent_clients_do_not_block_others_and_are_dropped_after_the_idle_timeout(helper):
    baseline = baseline_fd_count(helper)
    silent = []
    try:
        for _ in range(5):
            silent.append(connect(helper.socket))
        with connect(helper.socket, timeout=5.0) as active:
            assert exchange(active, STATUS)["ok"] is True
        for sock in silent:                    # idle_timeout is 5 s in tests/helpers.py
            sock.settimeout(15.0)
            assert_closed_without_reply(sock)
    finally:
        for sock in silent:
            sock.close()
    assert helper.proc.poll() is None
    assert wait_for_fd_count(helper, baseline) == baseline


def test_clients_beyond_max_clients_are_closed_without_a_reply_until_a_slot_frees(test_netns):
    limited = HelperProcess(extra_config="admin_clients = 4\n")      # root: the admins' pool
    clients = []
    try:
        limited.start()
        baseline = baseline_fd_count(limited)
        for _ in range(4):
            clients.append(connect(limited.socket))
            assert exchange(clients[-1], STATUS)["ok"] is True    # accepted and registered
        with connect(limited.socket, timeout=10.0) as fifth:
            assert_closed_without_reply(fifth)
        assert wait_for_log(limited, "refused a connection from pid")
        assert wait_for_log(limited, "uid 0 already has 4 connection(s)")
        for sock in clients:
            sock.close()
        clients.clear()
        assert wait_for_fd_count(limited, baseline) == baseline
        assert_status_works(limited.socket)
        assert limited.proc.poll() is None
    finally:
        for sock in clients:
            sock.close()
        limited.cleanup()


def test_an_empty_message_does_not_stop_the_helper_serving_others(helper):
    baseline = baseline_fd_count(helper)
    with connect(helper.socket) as bystander, connect(helper.socket) as sender:
        assert exchange(bystander, STATUS)["ok"] is True
        sender.send(b"")
        data = sender.recv(protocol.MAX_REPLY)       # b"": the helper hangs up (pinned down below)
        if data:
            assert json.loads(data)["ok"] is False
        assert exchange(bystander, STATUS)["ok"] is True
    assert_status_works(helper.socket)
    assert helper.proc.poll() is None
    assert wait_for_fd_count(helper, baseline) == baseline


def test_an_empty_message_closes_the_connection_without_a_reply_and_a_new_one_is_served(helper):
    """A message of no bytes is a close (docs/helper.md, vmnet.protocol), although SO_PASSCRED
    gives even an empty message credentials, which would tell it from a hang-up: no reply,
    the connection closed, and the helper serves the next connection."""
    baseline = baseline_fd_count(helper)
    with connect(helper.socket) as sock:
        assert exchange(sock, STATUS)["ok"] is True            # a connection in good standing
        sock.sendmsg([b""])
        assert_closed_without_reply(sock)
    assert_status_works(helper.socket)
    assert helper.proc.poll() is None
    assert wait_for_fd_count(helper, baseline) == baseline
    assert "refused ? from" not in helper.read_log()                  # not taken for a request


def test_a_client_that_hangs_up_before_the_reply_does_not_disturb_the_helper(helper):
    baseline = baseline_fd_count(helper)
    for _ in range(20):
        with connect(helper.socket) as sock:
            sock.sendmsg([STATUS])
    assert_status_works(helper.socket)
    assert helper.proc.poll() is None
    assert wait_for_fd_count(helper, baseline) == baseline


# --- hostile input that once got through ---------------------------------------------

def test_deeply_nested_json_is_refused_as_invalid_input(helper):
    with connect(helper.socket) as sock:
        error = assert_refused(exchange(sock, b"[" * 50_000))
        assert exchange(sock, STATUS)["ok"] is True
    assert "internal error" not in helper.read_log()
    assert error["code"] == "invalid-input"


def test_a_request_cannot_forge_lines_in_the_helpers_log(helper):
    forged = "vmnet-helper: INFO created port forged for pid 1 uid 0 gid 0"
    with connect(helper.socket) as sock:
        assert_refused(exchange(sock, json.dumps({"verb": "port-show",
                                                  "args": {"name": "x\n" + forged}}).encode()),
                       code="invalid-input")
    assert wait_for_log(helper, "refused port-show")
    assert not any(line.startswith(forged) for line in helper.read_log().splitlines())


def test_one_user_cannot_take_every_connection_slot(test_netns):
    import subprocess
    import sys
    from helpers import USER_A, USER_B, as_identity
    limited = HelperProcess(extra_config="max_clients_per_uid = 2\n")
    # USER_A opens three connections and asks on each; another user, then root, ask once
    code = ("import json, socket, sys\n"
            "held, served = [], 0\n"
            "for _ in range(int(sys.argv[2])):\n"
            "    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.connect(sys.argv[1]); s.settimeout(10)\n"
            "    try:\n"
            "        s.send(b'{\"verb\": \"status\"}'); served += bool(s.recv(65536))\n"
            "    except OSError:\n"
            "        pass\n"
            "    held.append(s)\n"
            "print(served)\n")
    try:
        limited.start()

        def served(uid, n):
            out = subprocess.run([sys.executable, "-I", "-c", code, limited.socket, str(n)], capture_output=True,
                                 text=True, preexec_fn=as_identity(uid, uid), timeout=30, cwd="/")
            assert out.returncode == 0, out.stderr
            return int(out.stdout)

        assert served(USER_A, 3) == 2
        assert wait_for_log(limited, f"uid {USER_A} already has 2")
        assert served(USER_B, 1) == 1
        assert_status_works(limited.socket)
    finally:
        limited.cleanup()
