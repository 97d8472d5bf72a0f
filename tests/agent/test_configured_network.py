"""The agent and the static addresses tacet-network configured (its record in the state
directory): it waits for all of them (IPv6 past duplicate address detection), puts them
in its certificate, advertises one, and checks listen-host against them."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from pathlib import Path

import pytest
from cryptography import x509

import agent.daemon
from agent.addresses import HostAddresses, check_listen_host, parse_if_inet6
from agent.config import ConfigError
from agent.daemon import AgentServer, wait_for_network
from agent.ironic import IronicClient, advertised_host
from agent.netconfig import record
from agent.power import RecordingPower
from agent.tls import GENERATED_FACTS

from .conftest import FakeInventory, make_config

ip = ipaddress.ip_address
LOOPBACK = {ip("127.0.0.1"), ip("::1")}
STATIC_V4 = ip("192.0.2.10")
STATIC_V6 = ip("2001:db8:100::10")
LEASED = ip("198.51.100.7")

# /proc/net/if_inet6 as the kernel writes it (address, ifindex, prefix length, scope,
# flags, name; hex): a static address during DAD (flags 0xc0: tentative, permanent),
# then after it (0x80), a link-local one, loopback, and one whose DAD failed (0x88).
IF_INET6_DURING_DAD = (
    "20010db8010000000000000000000010 03 40 00 c0 bond0.100\n"
    "fe80000000000000505400fffe7ac011 03 40 20 80 bond0.100\n"
    "00000000000000000000000000000001 01 80 10 80       lo\n"
)
IF_INET6_AFTER_DAD = IF_INET6_DURING_DAD.replace(" 40 00 c0 ", " 40 00 80 ")
IF_INET6_DAD_FAILED = IF_INET6_DURING_DAD.replace(" 40 00 c0 ", " 40 00 88 ")


def write_record(state_dir: Path, *addresses: str) -> None:
    interfaces = [{"name": "bond0.100", "mac": None, "kind": "vlan", "addresses": list(addresses)}]
    record.write(
        {"version": 1, "source": "network_data", "interfaces": interfaces},
        record.record_file(state_dir),
    )


class Host:
    """A host coming up: ``present`` addresses per look, and its /proc under ``root``."""

    def __init__(self, root: Path, steps: list[tuple[set, str]]) -> None:
        self.root = root
        self.steps = steps
        self.looks = 0
        (root / "proc/net").mkdir(parents=True, exist_ok=True)
        self.show(0)

    def show(self, step: int) -> None:
        (self.root / "proc/net/if_inet6").write_text(self.steps[step][1])

    def __call__(self) -> set:
        step = min(self.looks, len(self.steps) - 1)
        self.show(step)
        self.looks += 1
        return LOOPBACK | self.steps[step][0]


def san_addresses(pem: str) -> set:
    cert = x509.load_pem_x509_certificate(pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.IPAddress))


def test_parse_if_inet6():
    flags = parse_if_inet6(IF_INET6_DURING_DAD + "garbage line\n")
    assert flags == {STATIC_V6: 0xC0, ip("fe80::5054:ff:fe7a:c011"): 0x80, ip("::1"): 0x80}


@pytest.mark.parametrize(
    ("if_inet6", "usable"), [(IF_INET6_DURING_DAD, False), (IF_INET6_AFTER_DAD, True)]
)
def test_a_tentative_ipv6_address_is_not_usable_yet(tmp_path, if_inet6, usable):
    (tmp_path / "proc/net").mkdir(parents=True)
    (tmp_path / "proc/net/if_inet6").write_text(if_inet6)
    host = HostAddresses(tmp_path, lambda: LOOPBACK | {STATIC_V4, STATIC_V6})
    assert (STATIC_V6 in host()) is usable
    assert STATIC_V4 in host()


def test_a_failed_duplicate_address_check_is_not_usable(tmp_path):
    (tmp_path / "proc/net").mkdir(parents=True)
    (tmp_path / "proc/net/if_inet6").write_text(IF_INET6_DAD_FAILED)
    assert STATIC_V6 not in HostAddresses(tmp_path, lambda: {STATIC_V6})()


def test_without_ipv6_in_the_kernel_the_present_addresses_count(tmp_path):
    assert HostAddresses(tmp_path, lambda: {STATIC_V4})() == {STATIC_V4}


async def test_the_wait_lasts_until_every_static_address_is_usable(tmp_path, monkeypatch):
    monkeypatch.setattr(agent.daemon, "NETWORK_POLL", 0.01)
    steps = [
        (set(), IF_INET6_DURING_DAD),
        ({STATIC_V4}, IF_INET6_DURING_DAD),  # routable, but not all there
        ({STATIC_V4, STATIC_V6}, IF_INET6_DURING_DAD),  # IPv6 still tentative
        ({STATIC_V4, STATIC_V6}, IF_INET6_AFTER_DAD),
    ]
    host = Host(tmp_path, steps)
    statics = (STATIC_V4, STATIC_V6)
    found = await wait_for_network(30, HostAddresses(tmp_path, host), lambda: statics)
    assert found == [STATIC_V4, STATIC_V6]
    assert host.looks == 4


async def test_the_wait_without_static_addresses_ends_at_the_first_lease(tmp_path, monkeypatch):
    monkeypatch.setattr(agent.daemon, "NETWORK_POLL", 0.01)
    host = Host(tmp_path, [(set(), ""), ({LEASED}, "")])
    assert await wait_for_network(30, HostAddresses(tmp_path, host)) == [LEASED]
    assert host.looks == 2


async def start_server(tmp_path: Path, host: Host, wait: float = 30, **overrides) -> AgentServer:
    config = make_config(tmp_path / "state", **overrides)
    server = AgentServer(config, RecordingPower(), FakeInventory(), wait, tmp_path)
    await server.start()
    return server


async def test_the_certificate_carries_every_static_address(tmp_path, monkeypatch):
    monkeypatch.setattr(agent.daemon, "NETWORK_POLL", 0.01)
    write_record(tmp_path / "state", "192.0.2.10/24", "2001:db8:100::10/64")
    steps = [
        ({STATIC_V4}, IF_INET6_DURING_DAD),
        ({STATIC_V4, STATIC_V6}, IF_INET6_DURING_DAD),
        ({STATIC_V4, STATIC_V6}, IF_INET6_AFTER_DAD),
    ]
    host = Host(tmp_path, steps)
    monkeypatch.setattr(agent.daemon, "local_addresses", host)
    server = await start_server(tmp_path, host)
    try:
        assert server.agent is not None
        assert {STATIC_V4, STATIC_V6} <= san_addresses(server.agent.identity.cert_pem)
        assert host.looks >= 3  # it waited for the end of DAD
    finally:
        await server.stop("test finished")


async def test_a_record_written_while_the_agent_waits_is_read(tmp_path, monkeypatch):
    """tacet-network and the agent start side by side; networkd (and so any address)
    only after tacet-network has written its record."""
    monkeypatch.setattr(agent.daemon, "NETWORK_POLL", 0.01)
    state = tmp_path / "state"

    class Late(Host):
        def __call__(self) -> set:
            if self.looks == 3:
                write_record(state, "192.0.2.10/24", "2001:db8:100::10/64")
            return super().__call__()

    host = Late(
        tmp_path,
        [
            (set(), ""),
            (set(), ""),
            (set(), ""),
            ({STATIC_V4}, IF_INET6_DURING_DAD),
            ({STATIC_V4, STATIC_V6}, IF_INET6_AFTER_DAD),
        ],
    )
    monkeypatch.setattr(agent.daemon, "local_addresses", host)
    server = await start_server(tmp_path, host)
    try:
        assert server.agent is not None
        assert {STATIC_V4, STATIC_V6} <= san_addresses(server.agent.identity.cert_pem)
        assert host.looks >= 5
    finally:
        await server.stop("test finished")


async def test_a_static_address_still_down_at_the_deadline_is_in_the_certificate(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(agent.daemon, "NETWORK_POLL", 0.01)
    write_record(tmp_path / "state", "192.0.2.10/24", "2001:db8:100::10/64")
    host = Host(tmp_path, [({STATIC_V4}, "")])  # the IPv6 address never comes up
    monkeypatch.setattr(agent.daemon, "local_addresses", host)
    with caplog.at_level(logging.WARNING):
        server = await start_server(tmp_path, host, wait=0.2)
    try:
        assert server.agent is not None
        assert {STATIC_V4, STATIC_V6} <= san_addresses(server.agent.identity.cert_pem)
        assert "not up after 0.2s: 2001:db8:100::10" in caplog.text
    finally:
        await server.stop("test finished")


@pytest.mark.parametrize("keep_facts", [True, False])
async def test_a_new_static_address_makes_a_new_certificate(tmp_path, monkeypatch, keep_facts):
    """The reused certificate must cover the configured addresses: checked from the
    facts file, or (without it) from the certificate itself."""
    monkeypatch.setattr(agent.daemon, "NETWORK_POLL", 0.01)
    host = Host(tmp_path, [({LEASED}, "")])
    monkeypatch.setattr(agent.daemon, "local_addresses", host)
    first = await start_server(tmp_path, host)
    assert first.agent is not None
    before = first.agent.identity
    await first.stop("restart")
    again = await start_server(tmp_path, host)  # nothing changed: reused
    assert again.agent is not None and again.agent.identity.fingerprint == before.fingerprint
    await again.stop("restart")
    if not keep_facts:
        (tmp_path / "state" / GENERATED_FACTS).unlink()
    write_record(tmp_path / "state", "192.0.2.10/24")
    host.steps = [({LEASED, STATIC_V4}, "")]
    second = await start_server(tmp_path, host)
    try:
        assert second.agent is not None
        after = second.agent.identity
        assert after.fingerprint != before.fingerprint
        assert {STATIC_V4, LEASED} <= san_addresses(after.cert_pem)
    finally:
        await second.stop("test finished")


async def test_a_static_link_local_address_is_not_waited_for(tmp_path, monkeypatch):
    monkeypatch.setattr(agent.daemon, "NETWORK_POLL", 0.01)
    write_record(tmp_path / "state", "fe80::10/64", "192.0.2.10/24")
    host = Host(tmp_path, [({STATIC_V4}, "")])
    monkeypatch.setattr(agent.daemon, "local_addresses", host)
    server = await start_server(tmp_path, host)
    try:
        assert server.configured_addresses() == (STATIC_V4,)
        assert host.looks < 10  # not the whole wait
    finally:
        await server.stop("test finished")


async def test_a_broken_record_is_logged_and_ignored(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(agent.daemon, "NETWORK_POLL", 0.01)
    path = record.record_file(tmp_path / "state")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 1, "source": "dhcp", "interfaces": [{}]}))
    host = Host(tmp_path, [({LEASED}, "")])
    monkeypatch.setattr(agent.daemon, "local_addresses", host)
    with caplog.at_level(logging.WARNING):
        server = await start_server(tmp_path, host)
    try:
        assert caplog.text.count("network record ignored") == 1
        assert server.agent is not None
        assert LEASED in san_addresses(server.agent.identity.cert_pem)
    finally:
        await server.stop("test finished")


# -- advertising ------------------------------------------------------------------------


def test_advertised_host_prefers_explicit_then_the_routed_static_then_the_first():
    configured = (ip("192.0.2.10"), ip("203.0.113.10"))
    assert advertised_host("node-1.example", configured, "203.0.113.10") == "node-1.example"
    assert advertised_host(None, configured, "203.0.113.10") == "203.0.113.10"
    assert advertised_host(None, configured, "198.51.100.7") == "192.0.2.10"  # a DHCP lease
    assert advertised_host(None, configured, None) == "192.0.2.10"
    assert advertised_host(None, (ip("2001:db8::10"),), "2001:db8::10") == "2001:db8::10"
    assert advertised_host(None, (), "198.51.100.7") == "198.51.100.7"
    assert advertised_host(None, (), None) == "127.0.0.1"


def test_the_heartbeats_callback_uses_a_static_address(tmp_path, monkeypatch):
    from agent.daemon import build_agent
    from agent.tls import load_identity

    monkeypatch.setattr(agent.ironic, "route_address", lambda url: "198.51.100.7")
    config = make_config(tmp_path, api_urls=("https://127.0.0.1:6385",))
    built = build_agent(config, load_identity(tmp_path, []), RecordingPower(), dict)
    client = IronicClient(built, 9999, None, (STATIC_V6, STATIC_V4))
    assert client.callback() == "https://[2001:db8:100::10]:9999"
    assert IronicClient(built, 9999).callback() == "https://198.51.100.7:9999"


async def test_active_mode_advertises_the_configured_address(tmp_path, monkeypatch):
    monkeypatch.setattr(agent.daemon, "NETWORK_POLL", 0.01)
    write_record(tmp_path / "state", "192.0.2.10/24")
    host = Host(tmp_path, [({STATIC_V4}, "")])
    monkeypatch.setattr(agent.daemon, "local_addresses", host)
    seen: list[tuple] = []

    async def call_home(agent_, port, configured=()):
        seen.append(tuple(configured))

    monkeypatch.setattr(agent.daemon, "call_home", call_home)
    server = await start_server(tmp_path, host, api_urls=("https://127.0.0.1:9",))
    try:
        await asyncio.wait_for(server.ironic, 5)  # type: ignore[arg-type]
        assert seen == [(STATIC_V4,)]
    finally:
        await server.stop("test finished")


# -- listen-host --------------------------------------------------------------------------


def test_listen_host_on_every_address_or_loopback_is_not_checked():
    for host in ("::", "0.0.0.0", "127.0.0.1", "::1", "agent.example"):
        check_listen_host(make_config(Path("/nonexistent"), listen_host=host), (), set)


def test_listen_host_present_or_configured():
    config = make_config(Path("/nonexistent"), listen_host="192.0.2.10")
    check_listen_host(config, (), lambda: {STATIC_V4})
    with pytest.raises(ConfigError) as caught:
        check_listen_host(config, (STATIC_V4,), lambda: {LEASED})
    assert str(caught.value) == (
        "listen-host=192.0.2.10 (default): configured by tacet-network but not up on this"
        " host (yet); addresses up: 198.51.100.7"
    )
    with pytest.raises(ConfigError) as caught:
        check_listen_host(config, (STATIC_V6,), lambda: LOOPBACK | {LEASED})
    assert str(caught.value) == (
        "listen-host=192.0.2.10 (default): not an address of this host (configured by"
        " tacet-network: 2001:db8:100::10; present: 198.51.100.7)"
    )


async def test_a_listen_host_that_is_not_here_stops_the_start(tmp_path, monkeypatch):
    monkeypatch.setattr(agent.daemon, "NETWORK_POLL", 0.01)
    write_record(tmp_path / "state", "192.0.2.10/24")
    host = Host(tmp_path, [({STATIC_V4}, "")])
    monkeypatch.setattr(agent.daemon, "local_addresses", host)
    config = make_config(tmp_path / "state", listen_host="203.0.113.5")
    server = AgentServer(config, RecordingPower(), FakeInventory(), 0.2, tmp_path)
    with pytest.raises(ConfigError, match=r"203\.0\.113\.5 .*not an address of this host"):
        await server.start()
    assert server.sock is None  # nothing was bound


async def test_passive_with_a_configured_certificate_waits_only_for_its_listen_host(
    tmp_path, monkeypatch
):
    """A configured certificate in passive mode listens at once, but an address it is
    told to listen on must be up first (binding it sooner fails)."""
    from agent.tls import generate_certificate

    monkeypatch.setattr(agent.daemon, "NETWORK_POLL", 0.01)
    write_record(tmp_path / "state", "192.0.2.10/24")
    host = Host(tmp_path, [(set(), ""), (set(), ""), ({STATIC_V4}, "")])
    monkeypatch.setattr(agent.daemon, "local_addresses", host)
    cert_pem, key_pem = generate_certificate("node-1", LOOPBACK)
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    bound: list[str] = []

    def listen_socket(address: str, port: int, backlog: int = 128):
        bound.append(address)  # the address is not on this machine: bind loopback instead
        return real_listen_socket("127.0.0.1", 0, backlog)

    real_listen_socket = agent.daemon.listen_socket
    monkeypatch.setattr(agent.daemon, "listen_socket", listen_socket)
    config = make_config(tmp_path / "state", listen_host="192.0.2.10", cert_file=cert, key_file=key)
    server = AgentServer(config, RecordingPower(), FakeInventory(), 30, tmp_path)
    await server.start()
    try:
        assert bound == ["192.0.2.10"]
        assert host.looks >= 3
    finally:
        await server.stop("test finished")
