"""Where a passive agent is: pure parsers for the sources an ironic deployment has."""

from __future__ import annotations

from collections.abc import Iterable

from conductor.client import parse_address


def agent_address(text: str, default_port: int) -> str:
    """``host`` or ``host:port`` (``[v6]:port``) as the client's ``host:port`` form."""
    host, port = parse_address(text.strip(), default_port)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def dnsmasq_lease_address(leases_text: str, macs: Iterable[str]) -> str | None:
    """The address dnsmasq leased to one of ``macs``: the newest lease among them.

    A dnsmasq lease file has one lease a line: ``expiry MAC IP hostname client-id``
    (IPv4; DHCPv6 lines have a DUID in place of the MAC and are skipped, as is the
    ``duid`` line).
    """
    wanted = {mac.lower() for mac in macs}
    best: tuple[int, str] | None = None
    for line in leases_text.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[1].lower() not in wanted:
            continue
        try:
            expiry = int(fields[0])
        except ValueError:
            continue
        if best is None or expiry > best[0]:
            best = (expiry, fields[2])
    return best[1] if best else None


def neutron_fixed_ip(port: dict[str, object]) -> str | None:
    """The first fixed IP of a Neutron port as the API returns it."""
    for entry in port.get("fixed_ips") or []:  # type: ignore[attr-defined]
        if isinstance(entry, dict) and entry.get("ip_address"):
            return str(entry["ip_address"])
    return None
