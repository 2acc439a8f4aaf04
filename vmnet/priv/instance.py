"""Which helper instance a port belongs to, so that no helper touches another's ports.

Several helpers can run on one host (the test suite runs its own next to a
production one), each with its own socket and state directory. At start a
helper removes what a crash left half-made, so it must be able to tell its
own objects from another instance's. The default instance keeps the paths
vmnet always used: pins in /sys/fs/bpf/vmnet/<port>/ and host ends with no
marker. Any other instance pins in /sys/fs/bpf/vmnet/@<instance>/<port>/
and sets the alias "vmnet@<instance>" on the host end of every port it
makes. Port names never start with "@", so the default instance never
mistakes another instance's directory for a port.
"""

from __future__ import annotations

from ..model import validate_instance

PIN_BASE = "/sys/fs/bpf/vmnet"
ALIAS_PREFIX = "vmnet@"


class Instance:
    __slots__ = ("name",)

    def __init__(self, name: str = ""):
        self.name = validate_instance(name)

    @property
    def is_default(self) -> bool:
        return not self.name

    @property
    def pin_root(self) -> str:
        return PIN_BASE if self.is_default else f"{PIN_BASE}/@{self.name}"

    @property
    def alias(self) -> str | None:
        """The marker on the host ends this instance makes (None: no marker)."""
        return None if self.is_default else ALIAS_PREFIX + self.name

    def owns_device(self, alias: str | None) -> bool:
        """Whether a vmn-* device with this alias was made by this instance."""
        if self.is_default:
            return not (alias or "").startswith(ALIAS_PREFIX)
        return alias == self.alias

    def describe(self) -> str:
        return "default" if self.is_default else self.name

    def __eq__(self, other):
        return isinstance(other, Instance) and other.name == self.name

    def __hash__(self):
        return hash(self.name)

    def __repr__(self):
        return f"Instance({self.name!r})"


DEFAULT = Instance()
