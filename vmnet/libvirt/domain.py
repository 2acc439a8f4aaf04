"""The libvirt integration's name for a domain's ports as one unit, which live in vmnet.domain.

The helper runs prepare/release/check for the hook's verbs, so they moved to
the core module vmnet.domain (the helper does not import its callers);
`vmnet.libvirt.domain` stays importable with the same names.
"""

from __future__ import annotations

from ..domain import (cgroup_scope, check, consumer, machine_name, owner_of, parse, prepare, release,
                      shown)

__all__ = ["cgroup_scope", "check", "consumer", "machine_name", "owner_of", "parse", "prepare", "release",
           "shown"]
