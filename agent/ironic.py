"""Active mode: look the node up in ironic's API, then heartbeat (docs/protocol.md); and the
TLS context the inspection post (``inspection.py``) shares with them.

Nothing in this module runs in passive mode (neither ``ipa-api-url`` nor
``ipa-inspection-callback-url``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from wire.tls import client_context

from . import __version__
from .commands import CommandResult
from .config import Config
from .core import Agent

LOG = logging.getLogger(__name__)

LOOKUP_VERSION = "1.62"
HEARTBEAT_VERSION = "1.68"
BACKOFF_MAX = 60.0
CONFLICT_PAUSE = 5.0
HEARTBEAT_AFTER_COMMAND = 5.0
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, connect=10)


class LookupFailed(RuntimeError):
    pass


def route_address(api_url: str) -> str | None:
    """The local address the kernel would use to reach the API host (no packet is sent)."""
    parts = urlsplit(api_url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(info[0], socket.SOCK_DGRAM) as probe:
            probe.connect(info[4])
            address: str = probe.getsockname()[0]
            return address
    except (OSError, IndexError):
        return None


def advertised_host(
    explicit: str | None,
    configured: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
    route: str | None,
) -> str:
    """The host of the callback URL ironic is told to reach the agent at.

    An explicit ``advertise-host`` wins. Else, with static addresses configured by
    tacet-network, one of them: the one the kernel would send from toward the API
    (``route``; on the network ironic is on, so ironic can reach it back), else the first
    in the record's order (network_data.json lists the provisioning network first, as
    ironic builds it). A route's source that is not a configured address (a DHCP lease on
    another NIC) loses to them: the static ones are what the operator planned and what
    the certificate was made for. Without static addresses: the route's source, as IPA.
    """
    if explicit:
        return explicit
    if configured:
        for address in configured:
            if route is not None and str(address) == route.split("%", 1)[0]:
                return str(address)
        return str(configured[0])
    return route or "127.0.0.1"


def callback_url(host: str, port: int) -> str:
    try:
        is_v6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        is_v6 = False
    return f"https://[{host}]:{port}" if is_v6 else f"https://{host}:{port}"


def api_context(config: Config) -> ssl.SSLContext:
    """How the ironic API's certificate is checked, for lookup and inspection alike."""
    if config.insecure:
        LOG.warning("ipa-insecure is set: the ironic API's certificate is NOT verified")
    return client_context(cafile=config.api_ca_file, insecure=config.insecure)


class IronicClient:
    def __init__(
        self,
        agent: Agent,
        listen_port: int,
        node_uuid: str | None = None,
        configured: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    ) -> None:
        self.agent = agent
        self.configured = tuple(configured)  # static addresses from tacet-network
        self.config = agent.config
        self.listen_port = listen_port
        self.node_uuid = node_uuid  # from inspection: narrows the lookup, as IPA's does
        self.urls = list(self.config.api_urls)
        self.current = 0
        self.heartbeat_timeout = 300.0
        self.token: str | None = agent.state.get("active_token") or self.config.agent_token
        self.wake = asyncio.Event()
        self.ssl = api_context(self.config)
        agent.async_done_callbacks.append(self._command_done)

    @property
    def api(self) -> str:
        return self.urls[self.current % len(self.urls)]

    def _fail_over(self) -> None:
        self.current += 1

    def _command_done(self, result: CommandResult) -> None:
        # ironic learns about finished async commands from the next heartbeat.
        asyncio.get_running_loop().call_later(HEARTBEAT_AFTER_COMMAND, self.wake.set)

    def headers(self, version: str) -> dict[str, str]:
        headers = {"X-OpenStack-Ironic-API-Version": version, "Accept": "application/json"}
        if self.config.global_request_id:
            headers["X-OpenStack-Request-ID"] = self.config.global_request_id
        return headers

    async def lookup(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        inventory = await self.agent.inventory.get()
        macs = [i["mac_address"] for i in inventory.get("interfaces") or [] if i.get("mac_address")]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.lookup_timeout
        delay = self.config.lookup_interval
        while True:
            try:
                params = {"addresses": ",".join(macs)}
                if self.node_uuid:
                    params["node_uuid"] = self.node_uuid
                async with session.get(
                    f"{self.api}/v1/lookup",
                    params=params,
                    headers=self.headers(LOOKUP_VERSION),
                ) as response:
                    if response.status == 200:
                        data: dict[str, Any] = await response.json()
                        if isinstance(data.get("node"), dict):
                            return data
                        LOG.warning("lookup: answer without a node from %s", self.api)
                    else:
                        LOG.warning("lookup: %s answered %d", self.api, response.status)
                    extra = CONFLICT_PAUSE if response.status == 409 else 0.0
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                LOG.warning("lookup: %s unreachable: %s", self.api, exc)
                self._fail_over()
                extra = 0.0
            if loop.time() + delay > deadline:
                raise LookupFailed(f"no lookup answer within {self.config.lookup_timeout:g}s")
            await asyncio.sleep(delay * random.uniform(0.5, 1.0) + extra)
            delay = min(delay * 2, BACKOFF_MAX)

    def apply_lookup(self, data: dict[str, Any]) -> None:
        config = data.get("config") or {}
        token = config.get("agent_token")
        if isinstance(token, str) and token and token != "******":
            self.token = token
            # Heartbeats need the token itself; kept 0600 in the state dir (tmpfs).
            self.agent.state.update(active_token=token)
        timeout = config.get("heartbeat_timeout")
        if isinstance(timeout, int | float) and timeout > 0:
            self.heartbeat_timeout = float(timeout)
        self.agent.apply_node_info(data)

    def callback(self) -> str:
        explicit = self.config.advertise_host
        route = None if explicit else route_address(self.api)
        host = advertised_host(explicit, self.configured, route)
        return callback_url(host, self.config.advertise_port or self.listen_port)

    async def heartbeat(self, session: aiohttp.ClientSession) -> bool:
        uuid = self.agent.node_uuid
        body = {
            "callback_url": self.callback(),
            "agent_token": self.token,
            "agent_version": __version__,
            "agent_verify_ca": self.agent.identity.cert_pem,
        }
        try:
            async with session.post(
                f"{self.api}/v1/heartbeat/{uuid}",
                json=body,
                headers=self.headers(HEARTBEAT_VERSION),
            ) as response:
                if response.status == 202:
                    return True
                LOG.warning("heartbeat: %s answered %d", self.api, response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            LOG.warning("heartbeat: %s unreachable: %s", self.api, exc)
            self._fail_over()
        return False

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self.ssl)
        async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT) as session:
            data = await self.lookup(session)
            self.apply_lookup(data)
            LOG.warning("lookup: this is node %s", self.agent.node_uuid)
            while True:
                ok = await self.heartbeat(session)
                if ok:
                    wait = self.heartbeat_timeout * random.uniform(0.3, 0.6)
                else:
                    wait = random.uniform(5, 10)
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), wait)
