"""The one error family of vmnet.

Every failure a user can meet is a VmnetError with a stable code (for
scripts, JSON output and the helper's wire replies), the errno when the
kernel gave one, a message naming the object, and the fix. The CLI turns
these into exit codes in exactly one place (vmnet.cli).
"""

from __future__ import annotations

import errno as _errno
import os


class VmnetError(Exception):
    code = "error"
    exit_code = 1

    def __init__(self, message: str, *, fix: str | None = None, errno: int | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.errno = errno

    def __str__(self) -> str:
        text = self.message
        if self.errno:
            text += f" ({_errno.errorcode.get(self.errno, self.errno)}: {os.strerror(self.errno)})"
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text

    def to_dict(self) -> dict:
        out = {"code": self.code, "message": self.message}
        if self.fix:
            out["fix"] = self.fix
        if self.errno:
            out["errno"] = self.errno
        return out


class InvalidInput(VmnetError):
    """A name, number, path or option that vmnet refuses before touching anything."""
    code = "invalid-input"
    exit_code = 2


class NotFound(VmnetError):
    code = "not-found"
    exit_code = 3


class AlreadyExists(VmnetError):
    code = "already-exists"
    exit_code = 4


class IfindexTaken(AlreadyExists):
    """The ifindex vmnet chose for a consumer end is taken in that netns: choose another."""
    code = "ifindex-taken"


class NotSupported(VmnetError):
    """The kernel, device or QEMU lacks a feature; says the minimum that has it."""
    code = "not-supported"
    exit_code = 5


class MemlockError(VmnetError):
    """The consumer could not lock the UMEM it needs and no fallback was allowed."""
    code = "memlock"
    exit_code = 6


class KernelError(VmnetError):
    """The kernel refused an operation vmnet expected to work."""
    code = "kernel"
    exit_code = 7


class PermissionDenied(VmnetError):
    code = "permission-denied"
    exit_code = 8


class HelperUnavailable(VmnetError):
    """No helper answers on the socket."""
    code = "helper-unavailable"
    exit_code = 10


class InUse(VmnetError):
    """A port's sockets are held by a live consumer; they go to one process at a time."""
    code = "in-use"
    exit_code = 11


class CheckFailed(VmnetError):
    """A selftest or doctor check did not pass."""
    code = "check-failed"
    exit_code = 9


def from_oserror(exc: OSError, what: str, fix: str | None = None) -> VmnetError:
    """Name the object an OSError was about and keep its errno."""
    err = exc.errno or 0
    cls = {
        _errno.ENOENT: NotFound,
        _errno.ENODEV: NotFound,
        _errno.EEXIST: AlreadyExists,
        _errno.EPERM: PermissionDenied,
        _errno.EACCES: PermissionDenied,
        _errno.EOPNOTSUPP: NotSupported,
    }.get(err, KernelError)
    return cls(what, fix=fix, errno=err or None)
