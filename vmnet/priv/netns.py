"""Entering the consumer's network namespace for the duration of a block.

AF_XDP sockets bind to ifindexes of the netns they were created in, and
QEMU resolves ifname= in its own netns: so the helper creates the sockets
(and attaches the program) after setns() into the consumer's netns.
setns() moves only the calling thread, and `entered` always moves it back.

Also which netns a pod's port may go in (`require_pod_netns`): one of that
pod's own — never the host's, the helper's (where the host ends are), or
one where another pod or a port of no pod already has a consumer end.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os

from ..errors import InvalidInput, KernelError, NotFound, PermissionDenied
from ..fields import HOST_NETNS_INO, netns_id as _id_of_path, validate_netns

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703
NSFS_MAGIC = 0x6E736673
STATFS_SIZE = 120                   # sizeof(struct statfs) on 64-bit Linux

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise KernelError("cannot enter network namespace", errno=err)


def _fstatfs_type(fd: int) -> int:
    buf = ctypes.create_string_buffer(STATFS_SIZE)
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ctypes.c_long.from_buffer(buf).value        # f_type comes first


def open_netns(ref: str) -> int:
    """Open a validated netns reference; refuse paths that are not a netns.

    Nothing here can block: the path is opened with O_PATH (which never
    opens what it names: a FIFO there would block a plain open() until a
    writer came) and is opened for real only once fstatfs says it is nsfs.
    """
    path = validate_netns(ref)
    try:
        handle = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"network namespace {ref} does not exist",
                       fix="create it with 'ip netns add NAME' or give /proc/<pid>/ns/net of a running process") from None
    except PermissionError:
        raise InvalidInput(f"the helper may not open network namespace reference {ref}",
                           fix="give /run/netns/<name>, or /proc/<pid>/ns/net of a process the helper "
                               "may inspect (opening it needs ptrace access to that process)") from None
    except OSError as exc:
        raise InvalidInput(f"network namespace reference {ref} cannot be opened ({exc.strerror})",
                           fix="give /proc/<pid>/ns/net or /run/netns/<name>") from None
    try:
        if _fstatfs_type(handle) != NSFS_MAGIC:
            raise InvalidInput(f"{ref} is not a network namespace (not a file of nsfs)",
                               fix="give /proc/<pid>/ns/net or /run/netns/<name>")
        try:
            fd = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_CLOEXEC)
        except PermissionError:
            raise InvalidInput(f"the helper may not open network namespace reference {ref}",
                               fix="give a netns the helper can open") from None
    finally:
        os.close(handle)
    try:
        nstype = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            raise InvalidInput(f"{ref} is not a network namespace",
                               fix="give /proc/<pid>/ns/net or /run/netns/<name>") from None
        raise
    if nstype != CLONE_NEWNET:
        os.close(fd)
        raise InvalidInput(f"{ref} is a namespace, but not a network namespace",
                           fix="give /proc/<pid>/ns/net or /run/netns/<name>")
    return fd


def require_pod_netns(fd: int, ref: str, pod: dict, records) -> None:
    """Refuse to make pod `pod`'s port in the open netns `fd` (named `ref`) unless that netns
    can only be the pod's own, whatever allow_unconfined says.

    A pod's port puts its consumer end and a tap owned by the pod's uid in that netns, and
    hands its sockets to whatever process runs there: in the host's netns (the initial one,
    or pid 1's) or the helper's (where every port's host end is) that is the host; in a
    netns where another pod, or a port that is no pod's, has its consumer end, two tenants
    share one. `records` are the helper's ports; ports of the same pod (its other
    interfaces) are fine."""
    st = os.fstat(fd)
    here = f"{st.st_dev}:{st.st_ino}"
    own = "give the pod sandbox's own network namespace (its CNI_NETNS)"
    if st.st_ino == HOST_NETNS_INO or here == _id_of_path("/proc/1/ns/net"):
        raise PermissionDenied(
            f"network namespace {ref} is the host's (the initial one, pid 1's): a pod's port there "
            "would put its consumer end and a tap its consumer owns on the host", fix=own)
    if here in (_id_of_path(f"/proc/{os.getpid()}/ns/net"), _id_of_path("/proc/thread-self/ns/net")):
        raise PermissionDenied(
            f"network namespace {ref} is the vmnet helper's own, where the host end of every port "
            "is: a pod's consumer end cannot go there", fix=own)
    for record in records:
        other = record.get("consumer_pod") or None
        if other and other.get("uid") == pod.get("uid"):
            continue
        where = record.get("consumer_netns_id")
        if where is None and record.get("netns"):
            try:
                where = _id_of_path(validate_netns(record["netns"]))
            except InvalidInput:
                where = None
        if where == here:
            name = record.get("name")
            whose = f"of pod {other.get('uid')}" if other else "of no pod"
            raise PermissionDenied(
                f"network namespace {ref} already holds the consumer end of port {name} ({whose}): "
                "a pod's port needs a network namespace of that pod's own",
                fix=f"{own}; if port {name} is left over, delete it ('vmnet port del {name}')")


@contextlib.contextmanager
def entered(ref: str | None):
    """Run the block in netns `ref` (None: stay where we are)."""
    if ref is None:
        yield
        return
    target = open_netns(ref)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def same_netns(ref: str | None) -> bool:
    if ref is None:
        return True
    return os.stat(validate_netns(ref)).st_ino == os.stat("/proc/thread-self/ns/net").st_ino


def command_in(ref: str) -> list[str]:
    """The prefix that runs a command in netns `ref` (a name or /run/netns/<name>): nsenter,
    which, unlike `ip netns exec`, leaves /sys and the mount namespace as they are."""
    return ["nsenter", f"--net={validate_netns(ref)}"]


def create_named(name: str) -> str:
    """Create /run/netns/<name> (as 'ip netns add' does); return its path."""
    from pyroute2 import netns as _pr_netns
    path = validate_netns(name)
    try:
        _pr_netns.create(name)
    except OSError as exc:
        raise KernelError(f"cannot create network namespace {name}", errno=exc.errno) from None
    return path


def remove_named(name: str) -> bool:
    """Remove /run/netns/<name>; idempotent. Devices inside go with it."""
    from pyroute2 import netns as _pr_netns
    if not os.path.exists(validate_netns(name)):
        return False
    _pr_netns.remove(name)
    return True
