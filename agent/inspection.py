"""Inspection: post this machine's inventory to ironic's ``continue_inspection``, as IPA does.

ironic's ``agent`` inspect interface boots the ramdisk with
``ipa-inspection-callback-url=<api>/v1/continue_inspection`` and waits in ``inspect wait``
for one POST of ``{"inventory": ..., <plugin data>}``; its inspection hooks read the
inventory and the plugin data (``root_disk``, ``boot_interface``, ``lldp_raw``,
``pci_devices``, ``error``, ``logs``). docs/ironic.md lists what is sent. This runs once
at start, only when a callback URL (or, as in IPA, an API URL with explicit collectors)
is configured: never in passive mode.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from .extensions.steps import MANAGER, MANAGER_VERSION
from .ironic import BACKOFF_MAX, REQUEST_TIMEOUT, api_context

if TYPE_CHECKING:
    from .core import Agent

LOG = logging.getLogger(__name__)

SUPPORTED_COLLECTORS = ("default", "logs", "lldp", "pci-devices")
SYSFS = Path("/sys")
DHCP_POLL = 2.0  # seconds between looks at the interfaces' addresses
SHOWN_ANSWER = 300  # characters of an error answer kept in the log

Addresses = Callable[[], dict[str, tuple[str, ...]]]


class InspectionFailed(RuntimeError):
    pass


def unsupported_collectors(names: tuple[str, ...]) -> list[str]:
    return [name for name in names if name not in SUPPORTED_COLLECTORS]


def inventory_for_ironic(inventory: dict[str, Any]) -> dict[str, Any]:
    """The inventory as ironic's API accepts it: each interface needs a MAC string
    (ironic's schema refuses null, and its hooks skip interfaces without one)."""
    interfaces = [i for i in inventory.get("interfaces") or [] if i.get("mac_address")]
    return {**inventory, "interfaces": interfaces}


def default_root_disk(inventory: dict[str, Any], allow_loop: bool) -> dict[str, Any] | None:
    """The disk a deploy without root-device hints would use (IPA sends its guess too)."""
    from hardware.disks import is_loop_device
    from hardware.hints import NoMatchingDisk, select_root_device
    from hardware.model import Disk

    disks = [Disk(**disk) for disk in inventory.get("disks") or []]
    if not allow_loop:
        disks = [disk for disk in disks if not is_loop_device(disk.name)]
    try:
        chosen = select_root_device(disks)
    except NoMatchingDisk:
        return None
    found: dict[str, Any] = next(d for d in inventory["disks"] if d["name"] == chosen.name)
    return found


def lldp_raw(inventory: dict[str, Any]) -> dict[str, Any]:
    """Per interface name, the raw TLVs (``[[type, hex], ...]``) ironic's LLDP hooks parse."""
    return {
        i["name"]: i["lldp"] for i in inventory.get("interfaces") or [] if i.get("lldp") is not None
    }


def inspection_data(
    inventory: dict[str, Any],
    collectors: tuple[str, ...],
    allow_loop: bool = False,
    logs: str | None = None,
    pci: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The body of the POST: the inventory plus the plugin data IPA's collectors add."""
    data: dict[str, Any] = {"inventory": inventory_for_ironic(inventory)}
    root = default_root_disk(inventory, allow_loop)
    if root is not None:
        data["root_disk"] = root
    data["boot_interface"] = (inventory.get("boot") or {}).get("pxe_interface")
    data["configuration"] = {
        "collectors": list(collectors),
        "managers": [{"name": MANAGER, "version": MANAGER_VERSION}],
    }
    if "lldp" in collectors:
        data["lldp_raw"] = lldp_raw(inventory)
    if pci is not None:
        data["pci_devices"] = pci
    if logs is not None:
        data["logs"] = logs
    unknown = unsupported_collectors(collectors)
    # ironic's ramdisk-error hook fails the inspection with this text, as IPA's would
    # for a collector it cannot load.
    data["error"] = (
        f"inspection collector(s) {', '.join(unknown)} not supported by this agent "
        f"(supported: {', '.join(SUPPORTED_COLLECTORS)})"
        if unknown
        else None
    )
    return data


def live_addresses() -> dict[str, tuple[str, ...]]:
    from hardware.net import NetifacesAddresses

    return {name: a.ipv4 for name, a in NetifacesAddresses().addresses().items()}


async def wait_for_dhcp(agent: Agent, addresses: Addresses = live_addresses) -> bool:
    """IPA's wait before inspecting: until the PXE interface (all interfaces with a link,
    with ``inspection-dhcp-all-interfaces``) has an IPv4 address, at most
    ``inspection-dhcp-wait-timeout`` seconds. True when nothing is missing."""
    config = agent.config
    if not config.inspection_dhcp_wait_timeout:
        return True
    inventory = await agent.inventory.get()
    interfaces = inventory.get("interfaces") or []
    if config.inspection_dhcp_all_interfaces:
        wanted = [i["name"] for i in interfaces if i.get("has_carrier") is not False]
    else:
        pxe = (inventory.get("boot") or {}).get("pxe_interface")
        if not pxe:
            LOG.warning("inspection: no PXE interface known (BOOTIF); not waiting for DHCP")
            return False
        wanted = [i["name"] for i in interfaces if (i.get("mac_address") or "") == pxe.lower()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.inspection_dhcp_wait_timeout
    while True:
        found = await loop.run_in_executor(None, addresses)
        missing = [name for name in wanted if not found.get(name)]
        if not missing:
            return True
        if loop.time() >= deadline:
            LOG.warning(
                "inspection: no IPv4 address after %gs on %s",
                config.inspection_dhcp_wait_timeout,
                ", ".join(missing),
            )
            return False
        LOG.info("inspection: waiting for DHCP on %s", ", ".join(missing))
        await asyncio.sleep(DHCP_POLL)


async def collect(agent: Agent, addresses: Addresses = live_addresses) -> dict[str, Any]:
    config = agent.config
    await wait_for_dhcp(agent, addresses)
    inventory = await agent.inventory.get()
    if _without_ipv4(inventory, await asyncio.get_running_loop().run_in_executor(None, addresses)):
        inventory = await agent.inventory.get(refresh=True)  # addresses came after it
    pci = None
    if "pci-devices" in config.inspection_collectors:
        from hardware.pci import pci_devices

        pci = await asyncio.get_running_loop().run_in_executor(None, pci_devices, SYSFS)
    logs = None
    if "logs" in config.inspection_collectors:
        from .extensions.log import collect_archive

        try:
            archive = await asyncio.get_running_loop().run_in_executor(None, collect_archive)
            logs = base64.b64encode(archive).decode()
        except Exception as exc:  # IPA too sends its data without logs then
            LOG.warning("inspection: cannot collect the logs: %s", exc)
    return inspection_data(
        inventory, config.inspection_collectors, bool(config.allow_loop_devices), logs, pci
    )


def _without_ipv4(inventory: dict[str, Any], found: dict[str, tuple[str, ...]]) -> bool:
    """Some interface has an IPv4 address now that the inventory does not show."""
    return any(
        found.get(i.get("name", "")) and not i.get("ipv4_address")
        for i in inventory.get("interfaces") or []
    )


def node_uuid_of(answer: Any) -> str | None:
    """ironic answers ``{"uuid": ...}`` (the base API version, which IPA and Tacet use)
    or, from API 1.84, ``{"node": {"uuid": ...}, "config": ...}``."""
    if not isinstance(answer, dict):
        return None
    uuid = answer.get("uuid")
    if uuid is None and isinstance(answer.get("node"), dict):
        uuid = answer["node"].get("uuid")
    return uuid if isinstance(uuid, str) else None


async def post(agent: Agent, data: dict[str, Any]) -> str | None:
    """POST ``data`` to the inspection URL(s), retrying like the lookup: connection errors
    (the next URL then), 409 and 5xx, with backoff until ``lookup-timeout``. Returns the
    node UUID ironic answered; raises InspectionFailed when ironic refuses or never answers.
    No API version header is sent (as IPA), so ironic answers ``{"uuid": ...}``."""
    config = agent.config
    urls = list(config.inspection_targets)
    body = json.dumps(data)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if config.global_request_id:
        headers["X-OpenStack-Request-ID"] = config.global_request_id
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.lookup_timeout
    delay = config.lookup_interval
    current = 0
    connector = aiohttp.TCPConnector(ssl=api_context(config))
    async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT) as session:
        while True:
            url = urls[current % len(urls)]
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    text = await response.text(errors="replace")
                    if response.status < 300:
                        try:
                            answer = json.loads(text) if text else None
                        except ValueError:
                            answer = None
                        return node_uuid_of(answer)
                    if response.status != 409 and response.status < 500:
                        raise InspectionFailed(
                            f"{url} refused the inspection data ({response.status}): "
                            f"{text[:SHOWN_ANSWER]}"
                        )
                    LOG.warning("inspection: %s answered %d; trying again", url, response.status)
            except aiohttp.ClientConnectorCertificateError as exc:
                raise InspectionFailed(f"{url}: certificate not trusted: {exc}") from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                LOG.warning("inspection: %s unreachable: %s", url, exc)
                current += 1
            if loop.time() + delay > deadline:
                raise InspectionFailed(f"no answer within {config.lookup_timeout:g}s")
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, BACKOFF_MAX)


async def inspect(agent: Agent, addresses: Addresses = live_addresses) -> str | None:
    """Collect and post once; the node UUID ironic answered, None when it failed (logged
    and shown on the console: like IPA, the agent goes on to lookup or keeps serving)."""
    try:
        data = await collect(agent, addresses)
        uuid = await post(agent, data)
    except Exception as exc:  # whatever went wrong, the lookup still follows
        if not isinstance(exc, InspectionFailed):
            LOG.exception("inspection: unexpected failure")
        message = f"tacet-agent: inspection FAILED: {exc}"
        LOG.error(message)
        print(message, flush=True)
        return None
    message = f"tacet-agent: inspection data accepted (node {uuid or 'not named'})"
    LOG.warning(message)
    print(message, flush=True)
    return uuid
