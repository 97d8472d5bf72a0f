"""The hardware inventory, collected off the event loop and cached.

Collected once after the listener is up, refreshed when older than a maximum age,
when udev reports a block or net device change, or when a caller asks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

LOG = logging.getLogger(__name__)
UDEV_CONTROL = "/run/udev/control"  # exists while systemd-udevd runs


class InventoryCache:
    def __init__(self, collect: Callable[[], dict[str, Any]], max_age: float) -> None:
        self.collect = collect
        self.max_age = max_age
        self.value: dict[str, Any] | None = None
        self.collected_at = 0.0
        self.stale = True
        self.lock = asyncio.Lock()
        self.monitor: Any = None
        self._text: str | None = None
        self._text_of: dict[str, Any] | None = None

    def json_text(self, value: Any) -> str | None:
        """The JSON of ``value`` when it is the cached inventory, encoded once per collection.

        A conductor polling ``poll.get_hardware_info`` gets the same inventory again and
        again; encoding it per request was the agent's largest single cost in the kept-alive
        1,000-agent inventory sweep of bench/fleet.py. Nothing modifies a collected
        inventory (callers only read it), so its text stays right until the next collection.
        """
        if value is None or value is not self.value:
            return None
        if self._text_of is not value:
            self._text = json.dumps(value)
            self._text_of = value
        return self._text

    def invalidate(self) -> None:
        self.stale = True

    async def get(self, refresh: bool = False) -> dict[str, Any]:
        value = self.value
        fresh = time.monotonic() - self.collected_at <= self.max_age
        if fresh and not (refresh or self.stale or value is None or self.lock.locked()):
            return value  # the common case, without taking the lock
        async with self.lock:
            age = time.monotonic() - self.collected_at
            if refresh or self.stale or self.value is None or age > self.max_age:
                self.stale = False
                self.value = await asyncio.get_running_loop().run_in_executor(None, self.collect)
                self.collected_at = time.monotonic()
            return self.value

    def watch_udev(self) -> bool:
        """Invalidate on udev block/net events; False when there is no udev to watch."""
        if not os.path.exists(UDEV_CONTROL):
            LOG.info("inventory: no udev daemon; refreshing by age only")
            return False
        try:
            import pyudev

            context = pyudev.Context()
            monitor = pyudev.Monitor.from_netlink(context)
            monitor.filter_by("block")
            monitor.filter_by("net")
            monitor.start()
        except Exception as exc:  # no udev (containers, microVMs): age-based refresh only
            LOG.info("inventory: not watching udev (%s)", exc)
            return False

        def on_event() -> None:
            while monitor.poll(timeout=0) is not None:
                self.invalidate()

        asyncio.get_running_loop().add_reader(monitor.fileno(), on_event)
        self.monitor = monitor
        return True

    def close(self) -> None:
        if self.monitor is not None:
            asyncio.get_running_loop().remove_reader(self.monitor.fileno())
            self.monitor = None
