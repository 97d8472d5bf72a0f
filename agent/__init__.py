"""tacet-agent: the daemon that runs in the ramdisk and serves the command API."""

from wire import __version__

__all__ = ["__version__"]
