"""Which helper instance a port belongs to, so that no helper touches another's ports.

Several helpers can run on one host (the test suite runs its own next to a
production one), each with its own socket and state directory. At start a
helper removes what a crash left half-made, so it must be able to tell its
own objects from another instance's. The default instance keeps the paths
vmnet always used: pins in /sys/fs/bpf/vmnet/<port>/ and host ends with no
marker. Any other instance pins in /sys/fs/bpf/vmnet/@<instance>/<port>/
and sets the alias "vmnet@<instance>" on the host end of every port it
makes. Port names never start with "@", so the default instance never
mistakes another instance's directory for a port.

One live helper per instance: a second one would take the first one's live
ports for a crash's leftovers and remove them. The helper holds an flock on
<pin root>/+helper (bpffs, so host-wide whatever mount namespace the helper
runs in) while it runs; the directory goes when it stops, and a crash's
stays until the next helper of the instance takes it over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os

from ..errors import AlreadyExists, KernelError
from ..fields import validate_instance

PIN_BASE = "/sys/fs/bpf/vmnet"
ALIAS_PREFIX = "vmnet@"
LOCK = "+helper"


@contextlib.contextmanager
def pin_base_removed_if_made():
    """For a run whose instances pin under PIN_BASE (the benchmark's, the test suite's): where
    the run made that directory, it goes again at the end once empty (a helper of the host's
    own that pinned there meanwhile keeps it: rmdir removes only an empty directory)."""
    made = os.geteuid() == 0 and not os.path.isdir(PIN_BASE)
    try:
        yield
    finally:
        if made:
            try:
                os.rmdir(PIN_BASE)
            except OSError:
                pass


class Instance:
    __slots__ = ("name",)

    def __init__(self, name: str = ""):
        self.name = validate_instance(name)

    @property
    def is_default(self) -> bool:
        return not self.name

    @property
    def pin_root(self) -> str:
        return PIN_BASE if self.is_default else f"{PIN_BASE}/@{self.name}"

    @property
    def alias(self) -> str | None:
        """The marker on the host ends this instance makes (None: no marker)."""
        return None if self.is_default else ALIAS_PREFIX + self.name

    def owns_device(self, alias: str | None) -> bool:
        """Whether a vmn-* device with this alias was made by this instance."""
        if self.is_default:
            return not (alias or "").startswith(ALIAS_PREFIX)
        return alias == self.alias

    def describe(self) -> str:
        return "default" if self.is_default else self.name

    def __eq__(self, other):
        return isinstance(other, Instance) and other.name == self.name

    def __hash__(self):
        return hash(self.name)

    def __repr__(self):
        return f"Instance({self.name!r})"


DEFAULT = Instance()


def hold(instance: Instance) -> int:
    """Take `instance` for this helper: the fd of its held lock (release() gives it back).
    Refused when another live helper holds it."""
    path = os.path.join(instance.pin_root, LOCK)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise KernelError(f"cannot make {path}", errno=exc.errno,
                          fix="the helper needs bpffs at /sys/fs/bpf, writable (vmnet doctor)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno != errno.EWOULDBLOCK:
            raise KernelError(f"cannot lock {path}", errno=exc.errno) from None
        which = f"instance {instance.name!r}" if instance.name else "the default instance"
        raise AlreadyExists(f"another vmnet helper is running {which} (it holds {path})",
                            fix="stop it first, or give this helper an instance of its own (instance = \"NAME\" "
                                "in its vmnet.toml, with its own socket and state_dir)") from None
    return fd


def release(instance: Instance, fd: int) -> None:
    """Give the instance back: its lock directory goes (and an instance's root, if empty)."""
    try:
        os.rmdir(os.path.join(instance.pin_root, LOCK))
    except OSError:
        pass
    if not instance.is_default:
        try:
            os.rmdir(instance.pin_root)
        except OSError:
            pass
    os.close(fd)
