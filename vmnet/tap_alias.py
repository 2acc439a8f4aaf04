"""The alias that marks a placeholder tap as a port's: written by the helper, read by the wrapper.

The helper makes a pod's placeholder tap with its port (vmnet.priv.tap) and
writes this alias on it; the wrapper, in the pod, reads it back to learn
which port stands behind the tap libvirt opened (vmnet.kubevirt.takeover);
and the helper reads it again before it deletes a tap or calls a port
broken, since a device vmnet did not mark is never its to touch. Both sides
must spell it alike, and the privileged package must not import the
wrapper's code: hence this pure core module.
"""

from __future__ import annotations

ALIAS_PREFIX = "vmnet placeholder of port "


def alias_for(port: str) -> str:
    """The alias the helper writes on port's placeholder tap."""
    return ALIAS_PREFIX + port


def port_of_alias(alias: str | None) -> str | None:
    """The port a placeholder tap's alias names (None: not a placeholder)."""
    if alias and alias.startswith(ALIAS_PREFIX):
        return alias[len(ALIAS_PREFIX):] or None
    return None
