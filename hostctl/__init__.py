"""hostctl: the host side of dittotui. Reads a libvirt host and scales worker vCPUs on it."""

__version__ = "0.1.0"
