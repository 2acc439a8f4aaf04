"""`vmnet-qemu-wrapper`: vmnet in the shape of a QEMU binary.

libvirt's <emulator> and KubeVirt's virt-launcher start it exactly as they
would start QEMU. Without a `vmnet:` placeholder or a tap netdev in the
argv (libvirt's capability probes, `-version`, `-netdev help`) it execs the
real QEMU at once with the argv unchanged, importing nothing but the argv
rules. With placeholders it
fetches the ports' fds from the helper, fills them in, drops every
capability and execs the real QEMU, keeping the fds libvirt passed.

Tap takeover (KubeVirt, docs/kubevirt.md): a tap netdev whose fds are a
vmnet placeholder tap is replaced by its port's af-xdp netdev
(vmnet.kubevirt.takeover); the tap and vhost fds are closed before QEMU
starts.

The real QEMU: $VMNET_QEMU, else `qemu` in the configuration file, else
/usr/bin/qemu-system-x86_64. VMNET_WRAPPER_LOG names a file that receives
the argv before and after substitution (for debugging and tests). QEMU
gets libvirt's environment without vmnet's own VMNET_* variables and
without what a shell in between adds (SHLVL, PWD, OLDPWD, _: the wrapper
directory's launcher is a shell script; libvirt never sets them).
"""

import os
import sys


def _real_qemu() -> str:
    if os.environ.get("VMNET_QEMU"):
        return os.environ["VMNET_QEMU"]
    from .config import load
    return load().qemu


def main():
    args = sys.argv[1:]
    placeholders = any("vmnet:" in a for a in args)
    from .kubevirt import takeover as tk
    if not placeholders and not tk.might_take_over(args):
        _passthrough(args)
    from .errors import VmnetError
    try:
        taps = [(t, *found) for t in tk.tap_netdevs(args) if (found := tk.placeholder_port(t))]
        if not placeholders and not taps:
            _passthrough(args)          # taps, but none of them vmnet's
        from .config import load
        from .handoff import exec_prepared, prepare
        cfg = load()
        qemu = os.environ.get("VMNET_QEMU") or cfg.qemu
        if taps:
            _log("takeover", [qemu] + args, taps=[{"netdev": t.id, "port": p, "tap": n, "fds": list(t.fds),
                                                   "vhostfds": list(t.vhostfds)} for t, p, n in taps])
        prepared = prepare([qemu] + args, cfg.socket, allow_ipc_lock=cfg.allow_ipc_lock,
                           on_fds=lambda argv, fds: _log("substituted", argv, fds=fds),
                           qemu_multiqueue_fixed=cfg.qemu_multiqueue_fixed, takeover=taps)
        _log("memlock", [], memlock=prepared.memlock, closed=prepared.close)
        exec_prepared(prepared, close_inherited=False, environ=_qemu_environ())
    except VmnetError as exc:
        # libvirt shows QEMU's stderr to the user when start fails
        print(f"vmnet-qemu-wrapper: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:        # noqa: BLE001 (a bug: one line for libvirt's log, never a traceback)
        import traceback
        _log("error", [], traceback=traceback.format_exc())
        what = " ".join(str(exc).split())[:200]
        print(f"vmnet-qemu-wrapper: error: internal error, QEMU not started ({type(exc).__name__}: {what})\n"
              "  fix: report it, with the traceback that VMNET_WRAPPER_LOG=/path records", file=sys.stderr)
        sys.exit(1)


def _passthrough(args: list):
    qemu = _real_qemu()
    _log("passthrough", [qemu] + args)
    _exec(qemu, args)


def _exec(qemu: str, args: list):
    try:
        os.execve(qemu, [qemu] + args, _qemu_environ())
    except OSError as exc:
        print(f"vmnet-qemu-wrapper: cannot execute {qemu}: {exc.strerror}\n"
              "  fix: set 'qemu' in /etc/vmnet/vmnet.toml or VMNET_QEMU to the real QEMU binary",
              file=sys.stderr)
        sys.exit(127)


SHELL_ADDED = ("SHLVL", "PWD", "OLDPWD", "_")


def _qemu_environ() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("VMNET_") and k not in SHELL_ADDED}


def _log(kind: str, argv: list, **extra):
    path = os.environ.get("VMNET_WRAPPER_LOG")
    if not path:
        return
    import json
    try:
        with open(path, "a") as f:
            f.write(json.dumps({"event": kind, "pid": os.getpid(), "uid": os.getuid(),
                                "argv": argv, **extra}) + "\n")
    except OSError as exc:       # a debug log must never stop the VM
        print(f"vmnet-qemu-wrapper: cannot write {path}: {exc.strerror}", file=sys.stderr)


if __name__ == "__main__":
    main()
