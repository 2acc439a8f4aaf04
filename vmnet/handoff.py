"""`vmnet exec` and the QEMU wrapper: fetch a port's fds, fill the argv, drop, exec.

The consumer side of the fd handoff. For every port the argv names
(`key=vmnet:PORT` placeholders, or `--port P`, which appends the port's
-netdev/-device), ask the helper for the socket fds, have it raise this
process's memlock limit, substitute the fd numbers, confine (no_new_privs,
no capabilities, optionally another uid) and exec. The exec'd program
inherits exactly the port sockets beyond what this process inherited
itself; `close_inherited` drops those too (vmnet exec's default), while
the wrapper keeps them, because libvirt passes QEMU fds of its own.
"""

from __future__ import annotations

import dataclasses
import os

from . import argv as argvmod
from .client import Client
from .errors import InvalidInput, MemlockError, NotFound, PermissionDenied
from .model import Port
from .qemu_args import qemu_argv


@dataclasses.dataclass
class Prepared:
    argv: list[str]
    fds: list[int]
    memlock: dict
    keep_ipc_lock: bool


def prepare(argv: list[str], socket_path: str, extra_ports=(), allow_ipc_lock: bool = False,
            on_fds=None) -> Prepared:
    """Fetch fds, fill the argv, get memlock; on_fds(argv, fds) sees the argv before memlock."""
    names = argvmod.ports_in(argv)
    appended = [p for p in extra_ports if p not in names]
    if not names and not appended:
        raise InvalidInput("the command names no vmnet port",
                           fix="use key=vmnet:PORT placeholders (e.g. sock-fds=vmnet:vm1) or --port PORT")
    values, all_fds, extra_args = {}, [], []
    with Client(socket_path) as c:
        try:
            for name in names + appended:
                record, fds = c.call("fds-for-consumer", name=name)
                all_fds += fds
                values[name] = argvmod.port_values(record, fds)
                if name in appended:
                    extra_args += qemu_argv(Port.from_dict(record), fds)
            final_argv = argvmod.substitute(argv, values) + extra_args
            if on_fds:
                on_fds(final_argv, all_fds)
            try:
                memlock, _ = c.call("raise-memlock-for-peer", ports=names + appended)
                keep = False
            except MemlockError:
                # CAP_IPC_LOCK can only be kept by a caller that has it (root,
                # or a launcher that granted it) and only when allowed
                from .caps import process_credentials
                if not allow_ipc_lock or "ipc_lock" not in process_credentials()["permitted"]:
                    raise
                memlock, keep = {"action": "ipc-lock"}, True
        except BaseException:
            for fd in all_fds:
                os.close(fd)
            raise
    return Prepared(final_argv, all_fds, memlock, keep)


def close_all_but(keep: set[int]):
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def exec_prepared(p: Prepared, *, uid: int | None = None, gid: int | None = None,
                  close_inherited: bool = True):
    from .priv.confine import confine
    if uid is not None and os.geteuid() != 0:
        raise PermissionDenied("only root can run the consumer as another user",
                               fix="drop --user/--group, or run vmnet exec as root")
    for fd in p.fds:
        os.set_inheritable(fd, True)
    confine(uid, gid, keep_ipc_lock=p.keep_ipc_lock)
    if close_inherited:
        close_all_but(set(p.fds))
    try:
        os.execvp(p.argv[0], p.argv)
    except OSError as exc:
        raise NotFound(f"cannot execute {p.argv[0]}: {exc.strerror}",
                       fix="give the full path of the program to run") from None
