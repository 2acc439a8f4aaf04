"""The helper's watch lists, kept port by port, always equal what a look at every port finds.

The server's loop asks for them on every pass (vmnet.priv.daemon.Helper.watch_lists); they
are updated only for the ports a request or an event marked. Here random changes to random
entries, each marked as the helper marks them, are checked against a full rebuild.
"""

from __future__ import annotations

import random

import pytest

from vmnet.priv.daemon import Entry, Helper

pytestmark = pytest.mark.unit


class FakeHolder:
    def __init__(self, pidfd: int):
        self.pidfd = pidfd


class FakeAddr:
    def __init__(self, pidfd: int):
        self.holder = FakeHolder(pidfd)


def bare_helper() -> Helper:
    helper = Helper.__new__(Helper)
    helper.ports = {}
    helper._dirty, helper._lists, helper._holders_of, helper.watch_version = None, {}, {}, 0
    return helper


def rebuilt(helper: Helper) -> dict:
    fresh = bare_helper()
    fresh.ports = helper.ports
    return fresh.watch_lists()


def test_marked_changes_keep_the_lists_equal_to_a_full_look():
    rng = random.Random(20)
    helper = bare_helper()
    for step in range(3000):
        name = f"p{rng.randrange(40)}"
        what = rng.choice(["create", "delete", "pending", "incoming", "queues", "holder", "addr"])
        entry = helper.ports.get(name)
        if what == "create":
            helper.ports[name] = Entry({"name": name})
        elif what == "delete":
            helper.ports.pop(name, None)
        elif entry is None:
            continue
        elif what == "pending":
            entry.pending = [0] if not entry.pending else []
        elif what == "incoming":
            entry.record["migration"] = rng.choice(["incoming", None, "stopped"])
        elif what == "queues":
            entry.queues = object() if entry.queues is None else None
        elif what == "holder":
            entry.holder = rng.choice([None, FakeHolder(5), FakeHolder(-1)])
        else:
            entry.addr = rng.choice([None, FakeAddr(6)])
        helper.changed(name)
        if step % 7 == 0:
            assert helper.watch_lists() == rebuilt(helper), f"step {step}: {what} of {name}"
    assert helper.watch_lists() == rebuilt(helper)


def test_an_unmarked_change_is_not_seen_until_marked_and_the_version_tells_the_server():
    helper = bare_helper()
    helper.ports["a"] = Entry({"name": "a"})
    helper.watch_lists()
    version = helper.watch_version
    helper.ports["a"].pending = [1]
    assert helper.watch_lists()["pending"] == set() and helper.watch_version == version
    helper.changed("a")
    assert helper.watch_lists()["pending"] == {"a"} and helper.watch_version == version + 1
    helper.changed()            # anything may have changed: every port is looked at again
    helper.ports["a"].pending = []
    assert helper.watch_lists()["pending"] == set()
