"""Hardware inventory of the machine Tacet runs on, in ironic-python-agent's shape."""

from .hints import HintError, find_devices_by_hints, match_root_device_hints, select_root_device
from .inventory import collect_inventory
from .model import Inventory
from .sources import Sources, fixture_sources, live_sources

__all__ = [
    "HintError",
    "Inventory",
    "Sources",
    "collect_inventory",
    "find_devices_by_hints",
    "fixture_sources",
    "live_sources",
    "match_root_device_hints",
    "select_root_device",
]
