"""BMC addresses through ipmitool, only when an IPMI device node exists."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from .model import Bmc
from .runner import CommandRunner

IPMI_TIMEOUT = 10.0
# IPA walks the LAN channels too: the BMC's NIC is not always on channel 1.
LAN_CHANNELS = range(1, 12)


def _fields(text: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and key.strip() not in result:
            result[key.strip()] = value.strip()
    return result


def parse_lan_print(text: str) -> tuple[str | None, str | None]:
    """(IPv4 address, MAC) from ``ipmitool lan print``; unset values are None."""
    fields = _fields(text)
    address = fields.get("IP Address")
    try:
        if address is None or ipaddress.IPv4Address(address) == ipaddress.IPv4Address(0):
            address = None
    except ValueError:
        address = None
    mac = (fields.get("MAC Address") or "").lower() or None
    if mac in (None, "00:00:00:00:00:00") or not re.match(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", mac):
        mac = None
    return address, mac


_V6_ADDRESS = re.compile(r"^\s*Address:\s*([0-9a-fA-F:]+)(?:/\d+)?", re.MULTILINE)


def parse_lan6_print(text: str) -> str | None:
    """First usable global IPv6 address from ``ipmitool lan6 print``."""
    for match in _V6_ADDRESS.finditer(text):
        try:
            address = ipaddress.IPv6Address(match.group(1))
        except ValueError:
            continue
        if not (address.is_unspecified or address.is_link_local):
            return str(address)
    return None


class BmcCollector:
    def __init__(self, has_ipmi_device: Callable[[], bool], runner: CommandRunner) -> None:
        self.has_ipmi_device = has_ipmi_device
        self.runner = runner

    def collect(self) -> Bmc:
        if not self.has_ipmi_device():
            return Bmc(address=None, v6address=None, mac=None)
        address = mac = None
        for channel in LAN_CHANNELS:
            output = self.runner.run(["ipmitool", "lan", "print", str(channel)], IPMI_TIMEOUT)
            if output is None:
                if channel == 1:
                    break  # no ipmitool, or the BMC does not answer at all
                continue
            found_address, found_mac = parse_lan_print(output)
            mac = mac or found_mac
            if found_address:
                address, mac = found_address, found_mac or mac
                break
        v6 = None
        if address or mac:
            output = self.runner.run(["ipmitool", "lan6", "print"], IPMI_TIMEOUT)
            v6 = parse_lan6_print(output) if output else None
        return Bmc(address=address, v6address=v6, mac=mac)
