"""`vmnet-qemu-wrapper`: vmnet in the shape of a QEMU binary.

libvirt's <emulator> and KubeVirt's virt-launcher start it exactly as they
would start QEMU. Without a `vmnet:` placeholder in the argv (libvirt's
capability probes, `-version`, `-netdev help`) it execs the real QEMU at
once with the argv unchanged, importing nothing else. With placeholders it
fetches the ports' fds from the helper, fills them in, drops every
capability and execs the real QEMU, keeping the fds libvirt passed.

The real QEMU: $VMNET_QEMU, else `qemu` in the configuration file, else
/usr/bin/qemu-system-x86_64. VMNET_WRAPPER_LOG names a file that receives
the argv before and after substitution (for debugging and tests).
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
    if not any("vmnet:" in a for a in args):
        qemu = _real_qemu()
        _log("passthrough", [qemu] + args)
        _exec(qemu, args)
    from .errors import VmnetError
    try:
        from .config import load
        from .handoff import exec_prepared, prepare
        cfg = load()
        qemu = os.environ.get("VMNET_QEMU") or cfg.qemu
        prepared = prepare([qemu] + args, cfg.socket, allow_ipc_lock=cfg.allow_ipc_lock,
                           on_fds=lambda argv, fds: _log("substituted", argv, fds=fds),
                           qemu_multiqueue_fixed=cfg.qemu_multiqueue_fixed)
        _log("memlock", [], memlock=prepared.memlock)
        exec_prepared(prepared, close_inherited=False)
    except VmnetError as exc:
        # libvirt shows QEMU's stderr to the user when start fails
        print(f"vmnet-qemu-wrapper: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


def _exec(qemu: str, args: list):
    try:
        os.execv(qemu, [qemu] + args)
    except OSError as exc:
        print(f"vmnet-qemu-wrapper: cannot execute {qemu}: {exc.strerror}\n"
              "  fix: set 'qemu' in /etc/vmnet/vmnet.toml or VMNET_QEMU to the real QEMU binary",
              file=sys.stderr)
        sys.exit(127)


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
