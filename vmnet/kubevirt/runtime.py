"""The wrapper as a directory: vmnet-qemu-wrapper for a container that has no Python.

KubeVirt's virt-launcher image has bash and coreutils, no Python. The
device plugin mounts this directory read-only into the compute container
and the binding sidecar points <emulator> at its bin/vmnet-qemu-wrapper.
What is in it: Debian's own python3.11 (the one this vmnet runs on), its
standard library without what the wrapper never loads (tests, IDLE, Tk,
the static library for embedding), the shared
libraries its modules load, copied with their loader, and vmnet with the
two packages the wrapper imports (pyroute2, python-prctl).

bin/vmnet-qemu-wrapper is a shell script that starts that Python through
that loader: `ld-linux-x86-64.so.2 --library-path DIR/... python3.11 -I -S
boot.py`. Nothing goes through the environment — no LD_LIBRARY_PATH, no
PYTHONHOME (-I ignores PYTHON* variables anyway; Python finds its library
from its own path) — so QEMU, which the wrapper execs, inherits exactly
the environment libvirt gave the wrapper, less vmnet's VMNET_* variables.
Why not a static binary: the wrapper is vmnet's own handoff code (the same
fd, memlock and confinement rules as `vmnet exec`), and a second
implementation of it in another language would be a second thing to keep
right; the price is the start-up, measured by `vmnet bench` ("wrapper").

etc/vmnet.toml in the directory is the wrapper's configuration (the real
QEMU for libvirt's capability probes, which get no <qemu:env>).
bin/vmnet-cni is the CNI plugin, the same way, for a node whose own
filesystem has no vmnet: the DaemonSet links /opt/cni/bin/vmnet to it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig

from ..errors import InvalidInput, NotFound

# never loaded by the wrapper, and most of the standard library's size
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
               "distutils", "site-packages", "dist-packages"}
# C modules nothing imports but tests (pyroute2's package imports much of the rest: ssl,
# sqlite3, asyncio, ...)
DYNLOAD_SKIP = ("_test", "_ctypes_test", "xxlimited", "_xxsubinterpreters", "_xxtestfuzz", "audioop",
                "ossaudiodev", "_tkinter")
PACKAGES = ("vmnet", "pyroute2", "prctl")
LAUNCHER = """#!/bin/sh
# {program} from {dest}: Debian's python3.11 of this directory, started through this
# directory's own dynamic loader; nothing is set in the environment of what it runs
# (the wrapper takes out what this shell adds, SHLVL and PWD, and boot.py undoes the
# interpreter's C-locale coercion of LC_CTYPE with the value this line records).
d=$(dirname "$(dirname "$(readlink -f "$0")")")
export VMNET_LAUNCHER_LC_CTYPE="${{LC_CTYPE+=$LC_CTYPE}}"
exec "$d/lib64/{loader}" --library-path "$d/usr/lib/x86_64-linux-gnu" \\
    "$d/usr/bin/python{version}" -I -S "$d/boot.py" {entry} "$@"
"""
BOOT = """# The entry point of a runtime directory's programs (vmnet.kubevirt.runtime).
import os
import sys

# LC_CTYPE as the launcher found it ("" unset, "=value" set): Python sets LC_CTYPE=C.UTF-8
# at start-up under the C locale (PEP 538), and what vmnet runs must not inherit that
lc_ctype = os.environ.pop("VMNET_LAUNCHER_LC_CTYPE", None)
if lc_ctype == "":
    os.environ.pop("LC_CTYPE", None)
elif lc_ctype is not None:
    os.environ["LC_CTYPE"] = lc_ctype[1:]
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "site"))
entry = sys.argv.pop(1)
sys.argv[0] = os.path.join(here, "bin", entry)
if entry == "vmnet-qemu-wrapper":
    import vmnet.config
    vmnet.config.DEFAULT_PATH = os.path.join(here, "etc", "vmnet.toml")
    from vmnet.wrapper import main
else:                   # vmnet-cni: run on the node by the container runtime, with the node's config
    from vmnet.kubevirt.cni import main
main()
"""
PROGRAMS = ("vmnet-qemu-wrapper", "vmnet-cni")


def _libraries(binaries: list[str]) -> tuple[str, dict[str, str]]:
    """(the dynamic loader, {soname: file} of every shared library the binaries load), from ldd."""
    loader, libs = None, {}
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True)
        if out.returncode != 0:
            continue                    # "not a dynamic executable"
        for line in out.stdout.splitlines():
            parts = line.split()
            if "=>" in parts:
                target = parts[parts.index("=>") + 1] if len(parts) > parts.index("=>") + 1 else ""
                if target.startswith("/"):
                    libs[os.path.basename(target)] = os.path.realpath(target)
            elif parts and parts[0].startswith("/"):
                loader = parts[0]
    if loader is None:
        raise NotFound("ldd found no dynamic loader for Python", fix="is this a Debian system with ldd?")
    return loader, libs


def _skipped_dynload(name: str) -> bool:
    return name.endswith(".so") and name.split(".")[0].startswith(DYNLOAD_SKIP)


def _copy_stdlib(src: str, dst: str) -> None:
    dynload = os.path.join(src, "lib-dynload")

    def ignore(directory, names):
        if directory == src:
            return [n for n in names if n in STDLIB_SKIP or n.startswith("config-")]
        if directory == dynload:
            return [n for n in names if _skipped_dynload(n)]
        return [n for n in names if n == "__pycache__"]      # remade below, for this layout
    shutil.copytree(src, dst, ignore=ignore, symlinks=True)


def _package_paths(name: str) -> list[str]:
    import importlib.util
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise NotFound(f"python package {name} is not installed", fix="install vmnet with install.sh")
    if spec.submodule_search_locations:
        return [list(spec.submodule_search_locations)[0]]
    paths = [spec.origin]
    if name == "prctl":                     # python-prctl: prctl.py and its C module _prctl
        paths += glob.glob(os.path.join(os.path.dirname(spec.origin), "_prctl*.so"))
    return paths


def build(dest: str, qemu: str | None = None, config_text: str = "") -> dict:
    """Make (or remake) the runtime directory `dest`; returns what went in."""
    if not os.path.isabs(dest):
        raise InvalidInput(f"runtime directory {dest!r} must be an absolute path")
    python = os.path.realpath(sys.executable)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stdlib = sysconfig.get_paths()["stdlib"]
    if not stdlib.startswith("/usr/lib/"):
        raise NotFound(f"this Python's library is {stdlib}, not Debian's /usr/lib/python{version}",
                       fix="build the runtime with vmnet installed on Debian's python3")
    tmp = dest.rstrip("/") + ".new"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    _copy_stdlib(stdlib, os.path.join(tmp, "usr/lib", f"python{version}"))
    os.makedirs(os.path.join(tmp, "usr/bin"))
    shutil.copy2(python, os.path.join(tmp, "usr/bin", f"python{version}"))
    site = os.path.join(tmp, "site")
    os.makedirs(site)
    binaries = [python] + [p for p in glob.glob(os.path.join(stdlib, "lib-dynload", "*.so"))
                           if not _skipped_dynload(os.path.basename(p))]
    for name in PACKAGES:
        for path in _package_paths(name):
            target = os.path.join(site, os.path.basename(path))
            if os.path.isdir(path):
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(path, target)
                if path.endswith(".so"):
                    binaries.append(path)
    loader, libs = _libraries(binaries)
    libdir = os.path.join(tmp, "usr/lib/x86_64-linux-gnu")
    os.makedirs(libdir)
    for soname, path in sorted(libs.items()):
        shutil.copy2(path, os.path.join(libdir, soname))
    os.makedirs(os.path.join(tmp, "lib64"))
    shutil.copy2(os.path.realpath(loader), os.path.join(tmp, "lib64", os.path.basename(loader)))
    # bytecode once, here: the directory is read-only where it runs
    subprocess.run([python, "-I", "-m", "compileall", "-q", "-j", "0", site,
                    os.path.join(tmp, "usr/lib", f"python{version}")], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.makedirs(os.path.join(tmp, "bin"))
    for program in PROGRAMS:
        path = os.path.join(tmp, "bin", program)
        with open(path, "w") as f:
            f.write(LAUNCHER.format(program=program, dest=dest, loader=os.path.basename(loader),
                                    version=version, entry=program))
        os.chmod(path, 0o755)
    with open(os.path.join(tmp, "boot.py"), "w") as f:
        f.write(BOOT)
    os.makedirs(os.path.join(tmp, "etc"))
    with open(os.path.join(tmp, "etc", "vmnet.toml"), "w") as f:
        f.write(config_text or "")
        if qemu:
            f.write(f'qemu = "{qemu}"\n')
    for root, dirs, files in os.walk(tmp):
        for n in dirs:
            os.chmod(os.path.join(root, n), 0o755)
        for n in files:
            p = os.path.join(root, n)
            if not os.path.islink(p):
                os.chmod(p, 0o755 if os.access(p, os.X_OK) else 0o644)
    old = dest.rstrip("/") + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(dest):
        os.rename(dest, old)
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    size = sum(os.path.getsize(os.path.join(r, n)) for r, _, fs in os.walk(dest) for n in fs
               if not os.path.islink(os.path.join(r, n)))
    return {"path": dest, "wrapper": os.path.join(dest, "bin", "vmnet-qemu-wrapper"),
            "cni": os.path.join(dest, "bin", "vmnet-cni"),
            "python": version, "libraries": len(libs), "bytes": size}
