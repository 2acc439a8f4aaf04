"""The helper's client when the helper's backlog is full (a boot storm): it waits, up to its
timeout, for room, instead of failing at once with EAGAIN."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time

import pytest

from vmnet.client import Client
from vmnet.errors import HelperUnavailable


@pytest.fixture
def full_listener():
    """A SEQPACKET listener with a backlog of one, already filled by one waiting connection."""
    d = tempfile.mkdtemp(prefix="vmnet-client-")
    path = os.path.join(d, "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(0)
    waiting = []
    # fill the backlog: connects that succeed without an accept, until one would block
    for _ in range(4):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.setblocking(False)
        try:
            s.connect(path)
        except BlockingIOError:
            s.close()
            break
        waiting.append(s)
    try:
        yield path, listener, waiting
    finally:
        for s in waiting:
            s.close()
        listener.close()
        os.unlink(path)
        os.rmdir(d)


def test_a_full_backlog_is_waited_out(full_listener):
    path, listener, waiting = full_listener

    def accept_later():
        time.sleep(0.3)
        for _ in range(len(waiting) + 1):
            conn, _ = listener.accept()
            conn.close()

    t = threading.Thread(target=accept_later)
    t.start()
    started = time.monotonic()
    client = Client(path, timeout=5.0)          # EAGAIN at once before the fix
    client.close()
    t.join()
    assert 0.2 < time.monotonic() - started < 5.0


def test_a_backlog_that_stays_full_is_a_clear_error(full_listener):
    path, _, _ = full_listener
    started = time.monotonic()
    with pytest.raises(HelperUnavailable) as err:
        Client(path, timeout=0.5)
    assert 0.4 < time.monotonic() - started < 3.0
    assert "accepted no connection for 0.5 s" in err.value.message and "overloaded" in err.value.fix
