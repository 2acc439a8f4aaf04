"""The helper's record of each port, one JSON file per port, written atomically.

A record is written only once a port is complete, so at start-up a port
with pins or devices but no record is one a crash left half-made, and a
record whose pins or devices are gone describes a port that no longer
works: both are removed. Records live in /run (gone at reboot, like the
ports themselves).
"""

from __future__ import annotations

import json
import os

from ..fields import validate_port_name


class StateDir:
    def __init__(self, path: str):
        self.path = path
        # intents, and records being written, in a directory of their own: it holds a file or
        # two at a time, so a create adds one entry to the big directory (its record's rename)
        # instead of five (on a file system without hashed directories — ext4 without
        # dir_index, as /run is on some hosts — each costs time in proportion to the ports)
        self.work = os.path.join(path, "work")

    def ensure(self):
        os.makedirs(self.work, mode=0o700, exist_ok=True)

    def _file(self, name: str) -> str:
        return os.path.join(self.path, validate_port_name(name) + ".json")

    def write(self, name: str, record: dict):
        self._replace(self._file(name), record)

    def _open_new(self, path: str) -> int:
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:       # the directories, made on first use
            self.ensure()
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)

    def _write_file(self, path: str, data: dict):
        fd = self._open_new(path)
        try:
            os.write(fd, json.dumps(data, sort_keys=True).encode())
        except BaseException:
            os.unlink(path)         # a failed write (ENOSPC) leaves nothing to be read as an intent
            raise
        finally:
            os.close(fd)

    def _replace(self, final: str, data: dict):
        """Write a file whole or not at all: a temporary file, renamed over the old one."""
        tmp = os.path.join(self.work, os.path.basename(final) + ".tmp")
        self._write_file(tmp, data)
        # no fsync: the rename is what keeps a record whole when the helper dies (the page
        # cache outlives the process), and what the kernel dies with — the ports — a record
        # cannot bring back; one cut short by a power loss reads as unreadable, and is then
        # removed as a half-made port's would be (vmnet.priv.daemon's recovery)
        os.replace(tmp, final)

    def read(self, name: str) -> dict | None:
        try:
            with open(self._file(name)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except ValueError:
            return {}           # unreadable: treated as half-made by the caller

    def remove(self, name: str) -> bool:
        try:
            os.unlink(self._file(name))
            return True
        except FileNotFoundError:
            return False

    # An intent is what a port-create will make, written before it starts and removed once
    # the port's record is written: what a helper that stopped in between must remove.
    # (earlier versions kept intents beside the records: those are read and removed too)
    def write_intent(self, name: str, intent: dict):
        # in place, in one write: a helper killed before the write leaves an empty intent, read
        # as the port's name alone (intents()) — and at that point nothing of the port exists yet
        self._write_file(os.path.join(self.work, validate_port_name(name) + ".intent"), intent)

    def remove_intent(self, name: str):
        for directory in (self.work, self.path):
            try:
                os.unlink(os.path.join(directory, validate_port_name(name) + ".intent"))
                return
            except FileNotFoundError:
                pass

    def intents(self) -> dict[str, dict]:
        out = {}
        for directory in (self.path, self.work):
            try:
                entries = os.listdir(directory)
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.endswith(".intent"):
                    try:
                        with open(os.path.join(directory, entry)) as f:
                            out[entry[:-7]] = json.load(f)
                    except (OSError, ValueError):
                        out[entry[:-7]] = {"name": entry[:-7]}
        return out

    def names(self) -> list[str]:
        try:
            entries = os.listdir(self.path)
        except FileNotFoundError:
            return []
        for directory, found in ((self.path, entries), (self.work, _listdir(self.work))):
            for entry in found:
                if entry.endswith(".tmp"):          # a write cut short by a crash
                    os.unlink(os.path.join(directory, entry))
        return sorted(e[:-5] for e in entries if e.endswith(".json"))

    def count_start(self) -> int:
        """Record one more start of this helper instance; how many there have been."""
        self.ensure()
        path = os.path.join(self.path, "starts")
        try:
            with open(path) as f:
                starts = int(f.read().strip() or 0) + 1
        except (FileNotFoundError, ValueError):
            starts = 1
        with open(path + ".tmp", "w") as f:
            f.write(f"{starts}\n")
        os.replace(path + ".tmp", path)
        return starts


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
