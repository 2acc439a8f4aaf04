"""vmnet: AF_XDP networking for unprivileged QEMU virtual machines."""

__version__ = "0.1.0"
