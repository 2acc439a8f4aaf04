"""The libvirt hook script, shipped as package data for `vmnet libvirt install-hook`."""
