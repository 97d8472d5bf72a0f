"""The agent starts before DHCP is done and waits for an address only where it needs one."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket

from cryptography import x509

import agent.daemon
from agent.daemon import AgentServer, notify_systemd, wait_for_network
from agent.power import RecordingPower
from agent.tls import generate_certificate

from .conftest import FakeInventory, make_config

LOOPBACK = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
LINK_LOCAL = {ipaddress.ip_address("fe80::5054:ff:fe12:3456"), ipaddress.ip_address("169.254.7.1")}
LEASED = ipaddress.ip_address("192.0.2.15")


class Dhcp:
    """Loopback and link-local only for the first ``after`` looks, then a leased address."""

    def __init__(self, after: int | None) -> None:
        self.after = after
        self.looks = 0

    def __call__(self) -> set:
        self.looks += 1
        if self.after is not None and self.looks > self.after:
            return LOOPBACK | LINK_LOCAL | {LEASED}
        return LOOPBACK | LINK_LOCAL


async def test_wait_returns_once_a_routable_address_appears(monkeypatch):
    monkeypatch.setattr(agent.daemon, "NETWORK_POLL", 0.01)
    dhcp = Dhcp(after=3)
    assert await wait_for_network(30, dhcp) == [LEASED]
    assert dhcp.looks == 4


async def test_wait_gives_up_after_the_timeout_with_nothing(monkeypatch):
    monkeypatch.setattr(agent.daemon, "NETWORK_POLL", 0.01)
    dhcp = Dhcp(after=None)
    assert await wait_for_network(0.1, dhcp) == []
    assert dhcp.looks > 1


def san_addresses(pem: str) -> set:
    cert = x509.load_pem_x509_certificate(pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.IPAddress))


async def test_generated_certificate_waits_for_the_leased_address(tmp_path, monkeypatch):
    monkeypatch.setattr(agent.daemon, "NETWORK_POLL", 0.01)
    dhcp = Dhcp(after=5)
    monkeypatch.setattr(agent.daemon, "local_addresses", dhcp)
    server = AgentServer(
        make_config(tmp_path / "state"), RecordingPower(), FakeInventory(), network_wait=30
    )
    started = await server.start()
    try:
        assert LEASED in san_addresses(started.identity.cert_pem)
        assert dhcp.looks > 5
    finally:
        await server.stop("test finished")


async def test_configured_certificate_listens_without_waiting(tmp_path, monkeypatch):
    dhcp = Dhcp(after=None)  # the network never comes up
    monkeypatch.setattr(agent.daemon, "local_addresses", dhcp)
    cert_pem, key_pem = generate_certificate("node-1", LOOPBACK)
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    config = make_config(tmp_path / "state", cert_file=cert, key_file=key)
    server = AgentServer(config, RecordingPower(), FakeInventory(), network_wait=600)
    # Waiting would take 600 s; starting at once is the behaviour under test.
    await asyncio.wait_for(server.start(), 20)
    try:
        assert server.port > 0
    finally:
        await server.stop("test finished")


async def test_active_mode_waits_even_with_a_configured_certificate(tmp_path, monkeypatch):
    monkeypatch.setattr(agent.daemon, "NETWORK_POLL", 0.01)
    dhcp = Dhcp(after=None)
    monkeypatch.setattr(agent.daemon, "local_addresses", dhcp)
    cert_pem, key_pem = generate_certificate("node-1", LOOPBACK)
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    config = make_config(
        tmp_path / "state",
        cert_file=cert,
        key_file=key,
        api_urls=("https://127.0.0.1:9/",),  # nothing listens: the lookup just retries
    )
    server = AgentServer(config, RecordingPower(), FakeInventory(), network_wait=0.3)
    await server.start()
    try:
        assert dhcp.looks > 3  # it looked repeatedly for 0.3 s before giving up
    finally:
        await server.stop("test finished")


def test_notify_systemd_sends_the_state_to_its_socket(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        assert notify_systemd("READY=1", {"NOTIFY_SOCKET": path})
        assert listener.recv(64) == b"READY=1"


def test_notify_systemd_reaches_an_abstract_socket():
    name = f"tacet-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        assert notify_systemd("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert listener.recv(64) == b"READY=1"


def test_notify_systemd_outside_systemd_does_nothing(tmp_path):
    assert not notify_systemd("READY=1", {})
    assert not notify_systemd("READY=1", {"NOTIFY_SOCKET": "relative/path"})
    assert not notify_systemd("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody")})


async def test_warm_up_watches_a_udev_daemon_that_starts_late(tmp_path, monkeypatch):
    control = tmp_path / "udev-control"
    monkeypatch.setattr(agent.daemon, "UDEV_CONTROL", str(control))
    monkeypatch.setattr(agent.daemon, "UDEV_POLL", 0.05)
    monkeypatch.setattr(agent.daemon, "WARMUP_DELAY", 0.0)
    inventory = FakeInventory()
    server = AgentServer(make_config(tmp_path / "state"), RecordingPower(), inventory)
    started = await server.start()
    watched: list[bool] = []

    def watch_udev() -> bool:
        watched.append(control.exists())
        return control.exists()

    monkeypatch.setattr(started.inventory, "watch_udev", watch_udev)
    try:
        for _ in range(100):
            if inventory.calls:
                break
            await asyncio.sleep(0.02)
        assert inventory.calls == 1 and watched == [False]
        await asyncio.sleep(0.2)
        assert (await started.inventory.get())["calls"] == 1  # still the first collection
        control.touch()  # udevd comes up
        for _ in range(100):
            if len(watched) > 1:
                break
            await asyncio.sleep(0.02)
        assert watched == [False, True]
        assert (await started.inventory.get())["calls"] == 2  # coldplug may have changed it
    finally:
        await server.stop("test finished")
