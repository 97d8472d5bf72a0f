"""This host's addresses as the agent uses them: present, and past IPv6 duplicate address
detection; and the checks on ``listen-host`` against them.

A static IPv6 address is on the interface as soon as networkd adds it, but for a second or
two it is *tentative* while the kernel probes for a duplicate: binding it fails and nothing
reaches it. The kernel's per-address flags (``/proc/net/if_inet6``) tell; netifaces does
not. Read through an injected root so tests replay recorded files.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from pathlib import Path

from .config import Config, ConfigError
from .tls import IPAddress, local_addresses

IF_INET6 = Path("proc/net/if_inet6")
# include/uapi/linux/if_addr.h
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
NOT_READY = IFA_F_TENTATIVE | IFA_F_DADFAILED
ANY_ADDRESS = ("", "::", "0.0.0.0")


def parse_if_inet6(text: str) -> dict[ipaddress.IPv6Address, int]:
    """``/proc/net/if_inet6`` (address, ifindex, prefix, scope, flags, name; hex) to
    each address's flags (pure; lines that do not parse are skipped)."""
    found: dict[ipaddress.IPv6Address, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 6 or len(fields[0]) != 32:
            continue
        try:
            address = ipaddress.IPv6Address(int(fields[0], 16))
            found[address] = found.get(address, 0) | int(fields[4], 16)
        except ValueError:
            continue
    return found


class HostAddresses:
    """The addresses this host can use now: every present one (``present``, netifaces by
    default) but IPv6 ones the kernel still marks tentative or whose probe failed."""

    def __init__(
        self,
        root: Path = Path("/"),
        present: Callable[[], Iterable[IPAddress]] = local_addresses,
    ) -> None:
        self.if_inet6 = root / IF_INET6
        self.present = present

    def ipv6_flags(self) -> dict[ipaddress.IPv6Address, int] | None:
        """None when the kernel has no IPv6 (the file is absent)."""
        try:
            return parse_if_inet6(self.if_inet6.read_text(errors="replace"))
        except OSError:
            return None

    def usable(self) -> set[IPAddress]:
        found = set(self.present())
        flags = self.ipv6_flags()
        if flags is None:
            return found
        return {
            a
            for a in found
            if not (isinstance(a, ipaddress.IPv6Address) and flags.get(a, 0) & NOT_READY)
        }

    def __call__(self) -> set[IPAddress]:
        return self.usable()


def listen_address(config: Config) -> IPAddress | None:
    """The one address ``listen-host`` names; None for every address or a host name."""
    host = config.listen_host.strip()
    if host in ANY_ADDRESS:
        return None
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None  # a name: the bind resolves it, and says so when it cannot


def check_listen_host(
    config: Config,
    configured: Iterable[IPAddress],
    usable: Callable[[], Iterable[IPAddress]],
) -> None:
    """Raise ConfigError, naming the addresses there are, when ``listen-host`` is an
    address that is neither configured nor present (else the bind fails with a bare
    "Cannot assign requested address"), or configured but not up yet."""
    address = listen_address(config)
    if address is None or address.is_loopback:
        return
    planned, up = list(configured), set(usable())
    if address in up:
        return
    origin = config.origins.get("listen_host", "default")
    shown = ", ".join(str(a) for a in sorted(up, key=str) if not a.is_loopback) or "none"
    if address in planned:
        raise ConfigError(
            f"listen-host={config.listen_host} ({origin}): configured by tacet-network but"
            f" not up on this host (yet); addresses up: {shown}"
        )
    raise ConfigError(
        f"listen-host={config.listen_host} ({origin}): not an address of this host"
        f" (configured by tacet-network: {', '.join(map(str, planned)) or 'none'};"
        f" present: {shown})"
    )
