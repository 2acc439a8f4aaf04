"""The helper's records and intents on disk (vmnet.priv.state)."""

from __future__ import annotations

import json
import os

import pytest

from vmnet.priv.state import StateDir

pytestmark = pytest.mark.unit


def test_a_create_adds_one_entry_to_the_records_directory(tmp_path):
    """Intents and temporary files live in a directory of their own: the records' directory
    (thousands of entries on a busy host) sees only the record's rename."""
    state = StateDir(str(tmp_path / "ports"))
    state.write_intent("vm1", {"name": "vm1"})
    assert os.listdir(state.path) == ["work"] and os.listdir(state.work) == ["vm1.intent"]
    state.write("vm1", {"name": "vm1", "queues": 1})
    state.remove_intent("vm1")
    assert sorted(os.listdir(state.path)) == ["vm1.json", "work"] and os.listdir(state.work) == []
    assert state.read("vm1") == {"name": "vm1", "queues": 1} and state.names() == ["vm1"]


def test_intents_of_earlier_versions_beside_the_records_are_read_and_removed(tmp_path):
    state = StateDir(str(tmp_path / "ports"))
    os.makedirs(state.path)
    with open(os.path.join(state.path, "old.intent"), "w") as f:
        json.dump({"name": "old", "backend": "veth"}, f)
    state.write_intent("new", {"name": "new"})
    assert state.intents() == {"old": {"name": "old", "backend": "veth"}, "new": {"name": "new"}}
    state.remove_intent("old")
    state.remove_intent("new")
    state.remove_intent("never")            # idempotent
    assert state.intents() == {}


def test_an_intent_cut_short_still_names_its_port(tmp_path):
    """An intent is written in place: one whose helper died between its open and its write is
    empty, and still says which port to look for."""
    state = StateDir(str(tmp_path / "ports"))
    state.write_intent("vm1", {"name": "vm1", "backend": "veth"})
    open(os.path.join(state.work, "vm2.intent"), "w").close()
    assert state.intents() == {"vm1": {"name": "vm1", "backend": "veth"}, "vm2": {"name": "vm2"}}


def test_writes_cut_short_by_a_crash_are_swept_and_never_read(tmp_path):
    state = StateDir(str(tmp_path / "ports"))
    state.write("vm1", {"name": "vm1"})
    for leftover in (os.path.join(state.work, "vm2.json.tmp"), os.path.join(state.path, "vm3.json.tmp")):
        with open(leftover, "w") as f:
            f.write('{"name": "vm')
    assert state.names() == ["vm1"]
    assert os.listdir(state.work) == [] and sorted(os.listdir(state.path)) == ["vm1.json", "work"]
