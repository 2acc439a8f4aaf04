"""Installing the libvirt hook with the right interpreter (and, optionally, config).

The committed hooks/vmnet starts with a placeholder interpreter; the
installed copy runs with vmnet's own Python (-I -S: isolated, no
site-packages until needed) so it is fast for domains that do not use vmnet,
and carries the one setting it needs (the helper's socket) so that a VM
start parses no configuration file. Run install-hook again after changing
it. (libvirt's QEMU user is the helper's setting: it resolves consumers.)
"""

from __future__ import annotations

import os
import sys
from importlib import resources

from ..config import load
from ..errors import from_oserror


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
    # where vmnet is installed (an editable install is found through site.main() instead)
    # vmnet/libvirt/hookinstall.py -> the directory holding the vmnet package
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.basename(package_parent) == "site-packages":
        out = out.replace("SITE_PACKAGES = None ", f"SITE_PACKAGES = {package_parent!r} ", 1)
    return out


def install_hook(path: str, config_path: str | None = None):
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(hook_text(config_path))
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    except OSError as exc:
        raise from_oserror(exc, f"cannot install the hook at {path}") from None
