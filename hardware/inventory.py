"""Assemble the full inventory, each collector isolated from the others' failures."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from .bmc import BmcCollector
from .boot import BootCollector
from .cpu import CpuCollector
from .disks import DiskCollector
from .dmi import SystemCollector
from .memory import MemoryCollector
from .model import Inventory
from .net import InterfaceCollector
from .sources import Sources, live_sources

LOG = logging.getLogger(__name__)

# Seconds a single collector may take before its part is reported as null. BMC
# queries go through ipmitool, which can hang on a wedged BMC for a long time.
DEFAULT_TIMEOUTS = {"bmc": 25.0}
DEFAULT_TIMEOUT = 10.0


def collectors(
    sources: Sources,
    lldp_timeout: float | None = None,
    allow_loop_devices: bool | Collection[str] = False,
) -> dict[str, Callable[[], Any]]:
    """Inventory part name to a zero-argument function that collects it."""
    facts = functools.cache(sources.facts)  # several parts need it; read the host once

    return {
        "interfaces": InterfaceCollector(
            sources.sysfs,
            sources.addresses.addresses,
            sources.ethtool,
            lldp=None
            if lldp_timeout is None
            else (lambda names: sources.lldp(names, lldp_timeout)),
            procfs=sources.procfs,
        ).collect,
        "disks": DiskCollector(sources.sysfs, sources.udev, allow_loop_devices).collect,
        "cpu": CpuCollector(
            sources.sysfs,
            sources.procfs,
            architecture=lambda: facts().architecture,
            logical_count=lambda: facts().logical_cpus,
        ).collect,
        "memory": MemoryCollector(
            sources.sysfs, lambda: facts().memory_total, sources.runner
        ).collect,
        "system_vendor": SystemCollector(sources.sysfs).collect,
        "boot": BootCollector(sources.sysfs, sources.cmdline).collect,
        "bmc": BmcCollector(lambda: bool(facts().ipmi_devices), sources.runner).collect,
        "hostname": lambda: facts().hostname,
    }


def collect_inventory(
    sources: Sources | None = None,
    timeouts: dict[str, float] | None = None,
    lldp_timeout: float | None = None,
    allow_loop_devices: bool | Collection[str] = False,
) -> Inventory:
    """The IPA-compatible inventory; a failed or slow part becomes null, and is logged.

    ``lldp_timeout`` (seconds) turns on LLDP capture on physical NICs; without it
    every ``lldp`` is null and collection stays fast. ``allow_loop_devices`` lists
    attached loop devices among the disks (see :class:`hardware.disks.DiskCollector`).
    """
    sources = sources or live_sources()
    limits = {**DEFAULT_TIMEOUTS, **(timeouts or {})}
    if lldp_timeout is not None:
        limits["interfaces"] = limits.get("interfaces", DEFAULT_TIMEOUT) + lldp_timeout
    parts = collectors(sources, lldp_timeout, allow_loop_devices)
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    pool = ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="inventory")
    try:
        started = time.monotonic()
        futures = {name: pool.submit(function) for name, function in parts.items()}
        for name, future in futures.items():
            limit = limits.get(name, DEFAULT_TIMEOUT)
            remaining = max(0.0, started + limit - time.monotonic())
            try:
                results[name] = future.result(timeout=remaining)
            except FutureTimeout:
                errors[name] = f"timed out after {limit:g}s"
                LOG.error("inventory: %s collector timed out after %gs", name, limit)
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
                LOG.exception("inventory: %s collector failed", name)
    finally:
        # A hung collector keeps its thread; never let it hold up the answer.
        pool.shutdown(wait=False, cancel_futures=True)
    return Inventory(
        interfaces=results.get("interfaces"),
        disks=results.get("disks"),
        cpu=results.get("cpu"),
        memory=results.get("memory"),
        system_vendor=results.get("system_vendor"),
        boot=results.get("boot"),
        bmc=results.get("bmc"),
        hostname=results.get("hostname"),
        collection_errors=errors,
    )
