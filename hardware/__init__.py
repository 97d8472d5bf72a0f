"""Hardware inventory of the machine Tacet runs on, in ironic-python-agent's shape.

The names below are loaded on first use, so a user of one pure part (the conductor
checks root-device hints with :mod:`hardware.hints`) does not load every collector.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hints import (
        HintError,
        find_devices_by_hints,
        match_root_device_hints,
        select_root_device,
    )
    from .inventory import collect_inventory
    from .model import Inventory
    from .sources import Sources, fixture_sources, live_sources

_WHERE = {
    "HintError": "hints",
    "find_devices_by_hints": "hints",
    "match_root_device_hints": "hints",
    "select_root_device": "hints",
    "collect_inventory": "inventory",
    "Inventory": "model",
    "Sources": "sources",
    "fixture_sources": "sources",
    "live_sources": "sources",
}
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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'hardware' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
