"""Where hooks installed by earlier vmnet versions import the hook from.

`vmnet libvirt install-hook` now installs a hook that imports
vmnet.libvirt.hook; a hook installed before the move keeps working until it
is installed again.
"""

from .libvirt.hook import run  # noqa: F401
