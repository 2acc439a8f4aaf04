"""`vmnet exec` and the QEMU wrapper: fetch a port's fds, fill the argv, drop, exec.

The consumer side of the fd handoff. For every port the argv names
(`key=vmnet:PORT` placeholders, or `--port P`, which appends the port's
-netdev/-device), ask the helper for the socket fds, have it raise this
process's memlock limit, substitute the fd numbers, confine (no_new_privs,
no capabilities, optionally another uid) and exec. The exec'd program
inherits exactly the port sockets beyond what this process inherited
itself; `close_inherited` drops those too (vmnet exec's default), while
the wrapper keeps them, because libvirt passes QEMU fds of its own.

When vmnet exec switches to another user it also leaves the caller's
session (new_session: the consumer gets no controlling terminal, so it
cannot push input into the caller's shell with TIOCSTI) and its
environment (target_environment: the user's own HOME, USER, LOGNAME,
SHELL and a plain PATH, as `runuser`/`setpriv --reset-env` give).
"""

from __future__ import annotations

import os

from . import argv as argvmod
from . import qemu_compat
from .client import Client
from .errors import InvalidInput, MemlockError, NotFound, PermissionDenied, VmnetError
from .fields import validate_ifname, validate_mac, validate_mtu, validate_port_name, validate_queues
from .memlock import mib

# what the consumer side reads of a port record, and of what type: a reply without them is no
# answer this vmnet understands (a helper of another version, or no vmnet helper at all)
RECORD_FIELDS = {"name": str, "queues": int, "start_queue": int, "mode": str, "consumer_ifname": str,
                 "mac": str, "mtu": int}


class Prepared:
    """What exec_prepared() runs: the final argv, the port sockets it inherits, the memlock
    plan, whether CAP_IPC_LOCK stays, and inherited fds QEMU must not get. (A plain class:
    this module runs on every VM start, and dataclasses costs it more than its handoff.)"""

    __slots__ = ("argv", "fds", "memlock", "keep_ipc_lock", "close")

    def __init__(self, argv: list[str], fds: list[int], memlock: dict, keep_ipc_lock: bool,
                 close: list[int] | None = None):
        self.argv, self.fds, self.memlock, self.keep_ipc_lock = argv, fds, memlock, keep_ipc_lock
        self.close = close if close is not None else []


def unexpected_reply(verb: str, port: str, why: str) -> VmnetError:
    return VmnetError(f"the helper's answer to {verb} for port {port} is not one this vmnet understands: {why}",
                      fix="run the helper and its clients from the same vmnet version, and check that the "
                          "socket is the vmnet helper's (its log shows what it answered)")


def checked_record(verb: str, port: str, record: dict, fds: list[int], want_fds: bool) -> dict:
    """A port record from the helper, checked before anything reads it: every field the
    argv is built from, of its type and valid by the rules of vmnet.fields; a port of the
    name asked for; as many socket fds as queues (want_fds) or none. Pure."""
    def bad(why):
        return unexpected_reply(verb, port, why)
    for key, kind in RECORD_FIELDS.items():
        if key not in record:
            raise bad(f"it has no {key!r}")
        value = record[key]
        if not isinstance(value, kind) or kind is int and isinstance(value, bool):
            raise bad(f"{key!r} is {type(value).__name__} {str(value)[:40]!r}, not {kind.__name__}")
    if record["name"] != port:
        raise bad(f"it describes port {record['name'][:40]!r}")
    if not isinstance(record.get("extra") or {}, dict):
        raise bad("'extra' is not an object")
    if record["mode"] not in ("native", "skb"):
        raise bad(f"'mode' is {record['mode'][:40]!r}, neither 'native' nor 'skb'")
    bound = record.get("bind_queues")
    try:
        validate_port_name(record["name"])
        validate_queues(record["queues"], record["start_queue"])
        validate_ifname(record["consumer_ifname"])
        validate_mac(record["mac"])
        validate_mtu(record["mtu"])
        if bound is not None:
            if not isinstance(bound, list) or len(bound) != record["queues"]:
                raise bad(f"'bind_queues' is not a list of {record['queues']} queue id(s)")
            for queue in bound:
                validate_queues(1, queue)
    except InvalidInput as exc:
        raise bad(exc.message) from None
    want = record["queues"] if want_fds else 0
    if len(fds) != want:
        raise bad(f"it carried {len(fds)} socket fd(s) for {want}"
                  f"{' (one per queue)' if want_fds else ' (the verb hands out none)'}")
    return record


def checked_memlock(plan: dict, fds: list[int], ports: list[str]) -> dict:
    """The helper's answer to raise-memlock-for-peer, checked (see checked_record). Pure."""
    def bad(why):
        return unexpected_reply("raise-memlock-for-peer", ", ".join(ports), why)
    if fds:
        raise bad(f"it carried {len(fds)} fd(s) (the verb hands out none)")
    if not isinstance(plan.get("action"), str):
        raise bad("it has no 'action' string")
    if plan["action"] == "ipc-lock" and (not isinstance(plan.get("need"), int) or isinstance(plan["need"], bool)):
        raise bad("an 'ipc-lock' plan without the number of bytes it needs ('need')")
    return plan


def prepare(argv: list[str], socket_path: str, extra_ports=(), allow_ipc_lock: bool = False,
            on_fds=None, qemu_multiqueue_fixed: bool = False, takeover=()) -> Prepared:
    """Fetch fds, fill the argv, get memlock; on_fds(argv, fds) sees the argv before memlock.

    takeover: (TapNetdev, port, tap name) of every placeholder tap netdev to replace by its
    port's af-xdp netdev (vmnet.kubevirt.takeover); their tap and vhost fds are closed at exec.
    When the command is QEMU, each port is first checked against what that QEMU's af-xdp
    can do (vmnet.qemu_compat), before any socket is taken — a taken-over port right after
    (the consumer socket shows no port before it hands it over)."""
    names = argvmod.ports_in(argv)
    appended = [p for p in extra_ports if p not in names]
    taken = [port for _, port, _ in takeover]
    if not names and not appended and not takeover:
        raise InvalidInput("the command names no vmnet port",
                           fix="use key=vmnet:PORT placeholders (e.g. sock-fds=vmnet:vm1) or --port PORT")
    values, all_fds, extra_args = {}, [], []
    with Client(socket_path) as c:
        version = None
        if qemu_compat.is_qemu(argv[0]):
            import shutil
            version = qemu_compat.version_of(shutil.which(argv[0]) or argv[0])
            for name in names + appended:
                record, fds = c.call("port-show", name=name)
                for fd in fds:
                    os.close(fd)
                refused = qemu_compat.refusal(version, checked_record("port-show", name, record, fds, False),
                                              qemu_multiqueue_fixed)
                if refused is not None:
                    raise refused
        try:
            for name in names + appended:
                record, fds = c.call("fds-for-consumer", name=name)
                all_fds += fds
                checked_record("fds-for-consumer", name, record, fds, True)
                values[name] = argvmod.port_values(record, fds)
                if name in appended:
                    from .model import Port         # vmnet exec --port only: not on the wrapper's path
                    from .qemu_args import qemu_argv
                    extra_args += qemu_argv(Port.from_dict(record), fds)
            final_argv = argvmod.substitute(argv, values) + extra_args
            for tap, name, tap_name in takeover:
                from .kubevirt import takeover as tk
                from .qemu_args import netdev_qapi
                record, fds = c.call("fds-for-consumer", name=name, placeholder=tap_name)
                all_fds += fds
                checked_record("fds-for-consumer", name, record, fds, True)
                if version is not None:
                    refused = qemu_compat.refusal(version, record, qemu_multiqueue_fixed)
                    if refused is not None:
                        raise refused
                tk.check_queues(tap, record)
                final_argv = tk.replace(final_argv, tap, netdev_qapi(record, fds, tap.id))
            if on_fds:
                on_fds(final_argv, all_fds)
            try:
                memlock, fds = c.call("raise-memlock-for-peer", ports=names + appended + taken)
                all_fds += fds
                checked_memlock(memlock, fds, names + appended + taken)
                keep = memlock.get("action") == "ipc-lock"      # it holds CAP_IPC_LOCK already
                if keep and not allow_ipc_lock:
                    raise MemlockError(
                        f"the consumer needs to lock {mib(memlock['need'])} more than its memlock limit "
                        "allows; it holds CAP_IPC_LOCK, but "
                        "vmnet drops every capability before it execs and may keep that one only when "
                        "allowed", fix="set allow_ipc_lock = true (or --allow-ipc-lock), or let the helper "
                                       "raise the memlock limit (CAP_SYS_RESOURCE)")
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
    return Prepared(final_argv, all_fds, memlock, keep,
                    close=sorted({fd for tap, _, _ in takeover for fd in tap.all_fds}))


def new_session() -> None:
    """Become the leader of a new session with no controlling terminal.

    setsid() is refused to a process group leader (what a shell makes of
    every command it runs): then fork, and let the parent wait for the
    child, pass it SIGINT/SIGTERM/SIGHUP and exit with its status. Call
    before asking for any fds: the child is the process that holds them.
    """
    import signal
    try:
        os.setsid()
        return
    except PermissionError:
        pass
    child = os.fork()
    if child == 0:
        os.setsid()
        return
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: os.kill(child, signum))
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def target_environment(uid: int, environ: dict | None = None) -> dict:
    """The environment of a command run as another user: that user's, not the caller's."""
    import pwd
    environ = os.environ if environ is None else environ
    try:
        pw = pwd.getpwuid(uid)
        home, name, shell = pw.pw_dir, pw.pw_name, pw.pw_shell
    except KeyError:
        home, name, shell = "/", str(uid), "/bin/sh"
    env = {"HOME": home, "USER": name, "LOGNAME": name, "SHELL": shell or "/bin/sh",
           "PATH": "/usr/local/bin:/usr/bin:/bin"}
    for keep in ("TERM", "LANG", "LC_ALL"):
        if keep in environ:
            env[keep] = environ[keep]
    return env


def close_all_but(keep: set[int]):
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def exec_prepared(p: Prepared, *, uid: int | None = None, gid: int | None = None,
                  close_inherited: bool = True, environ: dict | None = None):
    from .priv.confine import confine
    if uid is not None and os.geteuid() != 0:
        raise PermissionDenied("only root can run the consumer as another user",
                               fix="drop --user/--group, or run vmnet exec as root")
    for fd in p.fds:
        os.set_inheritable(fd, True)
    env = target_environment(uid) if uid is not None else dict(os.environ if environ is None else environ)
    for fd in p.close:
        if fd not in p.fds:
            try:
                os.close(fd)
            except OSError:
                pass
    if uid is not None and os.sep not in p.argv[0]:
        import shutil       # resolve the command with the caller's PATH, before it is replaced
        p.argv[0] = shutil.which(p.argv[0]) or p.argv[0]
    confine(uid, gid, keep_ipc_lock=p.keep_ipc_lock)
    if close_inherited:
        close_all_but(set(p.fds))
    try:
        os.execvpe(p.argv[0], p.argv, env)
    except OSError as exc:
        raise NotFound(f"cannot execute {p.argv[0]}: {exc.strerror}",
                       fix="give the full path of the program to run") from None
