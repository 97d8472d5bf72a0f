"""tacet-agent: the daemon that runs in the ramdisk and serves the command API."""

__version__ = "0.1.0"
