"""Installing the libvirt hook with the right interpreter (and, optionally, config).

The committed hooks/vmnet starts with a placeholder interpreter; the
installed copy runs with vmnet's own Python (-I -S: isolated, no
site-packages until needed) so it is fast for domains that do not use vmnet,
and carries the one setting it needs (the helper's socket) so that a VM
start parses no configuration file. Run install-hook again after changing
it. (libvirt's QEMU user is the helper's setting: it resolves consumers.)

The wrapper libvirt's <emulator> names is installed the same way
(`vmnet libvirt install-wrapper`): pip's console script starts Python with
site, which costs every VM start about 4 ms of CPU for nothing the wrapper
uses (in a boot storm, all of them at once); the installed launcher starts
vmnet's Python with -I -S and puts vmnet's site-packages on its path itself.
"""

from __future__ import annotations

import os
import sys
from importlib import resources

from ..config import load
from ..errors import InvalidInput, from_oserror


def hook_text(config_path: str | None = None) -> str:
    text = (resources.files("vmnet.hooks") / "vmnet").read_text()
    lines = text.splitlines(keepends=True)
    lines[0] = f"#!{sys.executable} -IS\n"
    out = "".join(lines)
    if config_path:
        out = out.replace("CONFIG = None\n", f"CONFIG = {os.path.abspath(config_path)!r}\n", 1)
    # what the hook needs from the configuration, read now rather than on every VM start
    cfg = load(config_path)
    settings = {"socket": cfg.socket}
    out = out.replace("SETTINGS = None ", f"SETTINGS = {settings!r} ", 1)
    site_packages = _site_packages()
    if site_packages:
        out = out.replace("SITE_PACKAGES = None ", f"SITE_PACKAGES = {site_packages!r} ", 1)
    return out


def _site_packages() -> str | None:
    """Where vmnet is installed, or None for an editable install (found through site.main())."""
    # vmnet/libvirt/hookinstall.py -> the directory holding the vmnet package
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return package_parent if os.path.basename(package_parent) == "site-packages" else None


WRAPPER = """#!{python} -IS
# vmnet-qemu-wrapper, installed by `vmnet libvirt install-wrapper`: vmnet's Python
# started isolated and without site (-I -S), with vmnet's site-packages put on its
# path here; pip's console script would load site on every VM start.
import sys

SITE_PACKAGES = {site_packages!r}
if SITE_PACKAGES:
    sys.path.append(SITE_PACKAGES)
else:                   # an editable install, or packages elsewhere: site finds them
    import site
    site.main()
from vmnet.wrapper import main
main()
"""
# what the wrapper imports on its way to QEMU, beside the standard library
WRAPPER_PACKAGES = ("vmnet", "prctl", "_prctl")


def _all_in(directory: str | None) -> bool:
    """Whether every package the wrapper imports is found in `directory`."""
    import importlib.util
    if directory is None:
        return False
    for name in WRAPPER_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not os.path.abspath(spec.origin).startswith(directory + os.sep):
            return False
    return True


def wrapper_text() -> str:
    if len(sys.executable) > 120 or any(c.isspace() for c in sys.executable):
        raise InvalidInput(f"vmnet's Python {sys.executable} cannot be named in a #! line (spaces, or longer "
                           "than the kernel reads)", fix="install vmnet under a shorter path without spaces")
    site_packages = _site_packages()
    return WRAPPER.format(python=sys.executable, site_packages=site_packages if _all_in(site_packages) else None)


def _install(path: str, text: str, what: str) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)       # a symlink there (an older install's) is replaced, not followed
    except OSError as exc:
        raise from_oserror(exc, f"cannot install the {what} at {path}") from None


def install_hook(path: str, config_path: str | None = None):
    _install(path, hook_text(config_path), "hook")


def install_wrapper(path: str):
    _install(path, wrapper_text(), "wrapper")
