"""One sweep over many passive agents, without ironic: what each answer means.

The ironic side (``deploy.py``) says who to poll and how to trust each agent
(``Target``); this module talks to the agents with Tacet's client, bounded and
jittered, and returns one ``Answer`` per node. It never changes ironic's state.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conductor.client import (
    USER_AGENT,
    AgentClient,
    AgentError,
    HeldOff,
    Inventory,
    Options,
    Trust,
    Unauthenticated,
    Untrusted,
    describe,
)
from conductor.http import DEFAULT_KEPT_ALIVE, Pool

from .pacing import CommandsSeen, commands_seen

# What an answer means for the node
ALIVE = "alive"  # a known agent answered with its command list: maybe a heartbeat
FIRST_CONTACT = "first-contact"  # a new agent, verified and identified, node_info sent
REFUSED = "refused"  # not this node's agent (identity or trust): fail the node
UNREACHABLE = "unreachable"  # no answer this sweep


@dataclass(frozen=True)
class Identity:
    """What the node's agent must show: every port MAC, and serials when known."""

    macs: frozenset[str] = frozenset()
    system_serial: str | None = None
    system_uuid: str | None = None


def identity_problems(expected: Identity, inventory: Inventory) -> list[str]:
    """What the inventory says that does not fit the node (empty: it is the node)."""
    return inventory.differences(expected.macs, expected.system_serial, expected.system_uuid)


@dataclass(frozen=True)
class Target:
    """One node to poll this sweep."""

    uuid: str
    address: str  # host:port
    trust: Trust
    token: str | None = field(default=None, repr=False)
    # First contact only: who the agent must be, and the lookup data to send it.
    identity: Identity | None = None
    node_info: dict[str, Any] | None = field(default=None, repr=False)
    # Inspection wants the inventory; node_info is not sent (no steps follow).
    want_inventory: bool = False

    @property
    def first_contact(self) -> bool:
        return self.identity is not None


@dataclass(frozen=True)
class Answer:
    uuid: str
    kind: str
    address: str
    version: str | None = None
    certificate: str | None = None  # PEM the agent was verified by (first contact)
    inventory: dict[str, Any] | None = None
    reason: str | None = None
    commands: CommandsSeen | None = None  # ALIVE: the agent's command list, reduced


@dataclass
class PollSettings:
    concurrency: int = 64
    jitter: float = 1.0  # each poll starts after a random delay up to this (seconds)
    timeout: float = 10.0  # per request
    connect_timeout: float = 5.0
    user_agent: str = USER_AGENT  # with the conductor's name, so agents' logs say who polled
    kept_alive: int = DEFAULT_KEPT_ALIVE  # agents whose connection stays open between sweeps


class Poller:
    """Polls sweeps of targets on one event loop; keeps clients (and connections) between sweeps."""

    def __init__(self, settings: PollSettings, pool: Pool | None = None) -> None:
        self.settings = settings
        self.pool = pool or Pool(max_kept_alive=settings.kept_alive)
        self._clients: dict[str, tuple[tuple[Any, ...], AgentClient]] = {}

    def _client(self, target: Target) -> AgentClient:
        key = (target.address, target.trust, target.token)
        kept = self._clients.get(target.uuid)
        if kept is not None and kept[0] == key:
            return kept[1]
        options = Options(
            target.trust,
            target.token,
            timeout=self.settings.timeout,
            connect_timeout=self.settings.connect_timeout,
            retries=0,
            deadline=self.settings.timeout * 2,
            user_agent=self.settings.user_agent,
        )
        client = AgentClient(target.address, options, pool=self.pool)
        self._clients[target.uuid] = (key, client)
        return client

    def forget(self, keep: set[str]) -> None:
        """Drop the clients of nodes no longer polled."""
        for uuid in list(self._clients):
            if uuid not in keep:
                del self._clients[uuid]
        self.pool.keep_only({client.address for _key, client in self._clients.values()})

    async def sweep(self, targets: list[Target]) -> list[Answer]:
        gate = asyncio.Semaphore(max(1, self.settings.concurrency))

        async def one(target: Target) -> Answer:
            if self.settings.jitter > 0:
                await asyncio.sleep(random.uniform(0, self.settings.jitter))
            async with gate:
                return await self.poll(target)

        return list(await asyncio.gather(*(one(t) for t in targets)))

    async def poll(self, target: Target) -> Answer:
        client = self._client(target)
        try:
            if target.first_contact:
                return await self._first_contact(client, target)
            # The command list (as ironic's own heartbeat processing reads it) rather
            # than the status: whether it changed says whether ironic need hear at all.
            commands = commands_seen(await client.list_commands())
            return Answer(target.uuid, ALIVE, target.address, commands=commands)
        except Untrusted as exc:
            self._clients.pop(target.uuid, None)
            return Answer(target.uuid, REFUSED, target.address, reason=describe(exc))
        except Unauthenticated as exc:
            self._clients.pop(target.uuid, None)
            # At first contact the agent refuses this conductor (its client certificate,
            # or its token): not this conductor's agent, or one set up for another CA.
            # Being held off is a wait, not a refusal.
            refused = target.first_contact and not isinstance(exc, HeldOff)
            kind = REFUSED if refused else UNREACHABLE
            return Answer(target.uuid, kind, target.address, reason=describe(exc))
        except AgentError as exc:
            self._clients.pop(target.uuid, None)
            return Answer(target.uuid, UNREACHABLE, target.address, reason=describe(exc))
        except (TimeoutError, OSError) as exc:
            self._clients.pop(target.uuid, None)
            return Answer(target.uuid, UNREACHABLE, target.address, reason=str(exc) or repr(exc))

    async def _first_contact(self, client: AgentClient, target: Target) -> Answer:
        """Verify the agent, check it is the node, then hand it the lookup data."""
        assert target.identity is not None
        await client.verify_server()
        certificate = client.seen_certificate
        if certificate is None and target.trust.cafile is not None:
            certificate = Path(target.trust.cafile).read_text()
        inventory = await client.get_hardware_info()
        problems = identity_problems(target.identity, inventory)
        if problems:
            self._clients.pop(target.uuid, None)
            return Answer(
                target.uuid,
                REFUSED,
                target.address,
                reason=f"the agent at {target.address} is not this node: " + "; ".join(problems),
            )
        if target.node_info is not None:
            await client.set_node_info(target.node_info)
        status = await client.status()
        # Later polls trust exactly the certificate seen now: keep this client, whose
        # context already does, under the key later targets will carry.
        return Answer(
            target.uuid,
            FIRST_CONTACT,
            target.address,
            version=status.version,
            certificate=certificate,
            inventory=inventory.raw,
        )
