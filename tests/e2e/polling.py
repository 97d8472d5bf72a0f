"""A conductor polling the guest's agent during a storm, as the storm tests measure it.

:class:`StormConductor` polls ``/v1/status`` two ways at once: over one kept-alive
connection, as Tacet's conductor does (``conductor/http.py``'s pool), and over a new
TLS connection per poll, as a client without a pool would. It counts the connections
its kept-alive session had to make, and keeps the agent's last status.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from .harness import AgentClient


async def poll(get: Callable[[], Awaitable[int]], polls: int, label: str) -> list[float]:
    """``polls`` GET /v1/status at 1 Hz; their seconds, or infinity for a poll that failed
    (the connection, its TLS handshake or the answer)."""
    latencies: list[float] = []
    for _ in range(polls):
        started = time.monotonic()
        try:
            status = await asyncio.wait_for(get(), 30)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            print(
                f"e2e: storm: {label} poll failed after {time.monotonic() - started:.1f} s: {exc!r}"
            )
            status = 0
        latencies.append(time.monotonic() - started if status == 200 else math.inf)
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    return latencies


def summary(latencies: list[float]) -> str:
    answered = [latency for latency in latencies if latency < math.inf]
    return (
        f"{len(answered)} of {len(latencies)} answered, max {max(answered, default=0) * 1000:.0f}"
        f" ms, median {sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms; each (ms): "
        + " ".join(f"{latency * 1000:.0f}" for latency in latencies)
    )


async def delayed(seconds: float, work: Awaitable[list[float]]) -> list[float]:
    await asyncio.sleep(seconds)
    return await work


class StormConductor:
    """Kept-alive and new-connection polls of one agent (``async with``)."""

    def __init__(self, client: AgentClient) -> None:
        self.client = client
        self.made: list[float] = []  # when the kept-alive session opened a connection
        self.open_seen: list[int] = []  # the agent's open connections, as each poll found
        self.last: dict[str, Any] = {}  # the last status answered

        async def connection_made(*_: object) -> None:
            self.made.append(time.monotonic())

        tracing = aiohttp.TraceConfig()
        tracing.on_connection_create_end.append(connection_made)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=client.context, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=30, sock_connect=5),
            trace_configs=[tracing],
        )

    async def __aenter__(self) -> StormConductor:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.session.close()

    async def kept_alive(self) -> int:
        async with self.session.get(
            self.client.base + "/v1/status", server_hostname=self.client.server_hostname
        ) as response:
            self.last.update(await response.json())
            self.open_seen.append(self.last["connections"]["open"])
            return response.status

    async def new_connection(self) -> int:
        return (await self.client.get_json("/v1/status"))[0]

    async def both(self, polls: int) -> tuple[list[float], list[float]]:
        """``polls`` of each kind at 1 Hz, the new-connection ones half a second later."""
        kept, fresh = await asyncio.gather(
            poll(self.kept_alive, polls, "kept-alive"),
            delayed(0.5, poll(self.new_connection, polls, "new-connection")),
        )
        return kept, fresh
