"""The running agent: configuration, identity, commands, token and node_info.

It is handed its parts (command registry, inventory, power backend) rather than making
them: ``daemon.build_agent`` puts it together and registers the extensions, so this
module imports none of them.
"""

from __future__ import annotations

import functools
import hmac
import logging
import ssl
import time
from typing import Any

from wire.binding import BINDING_VERSION, binding_hmac, token_digest
from wire.certs import spki_sha256

from . import __version__
from .commands import CommandResult, Executor, Registry
from .config import Config
from .connections import ConnectionTable
from .guard import Guard
from .inventory_cache import InventoryCache
from .power import PowerBackend
from .state import StateStore
from .tls import Identity

LOG = logging.getLogger(__name__)
MASK = "******"


class Agent:
    def __init__(
        self,
        config: Config,
        identity: Identity,
        power: PowerBackend,
        registry: Registry,
        inventory: InventoryCache,
    ) -> None:
        self.config = config
        self.identity = identity
        self.power = power
        self.started_at = time.time()
        self.ssl_context: ssl.SSLContext | None = None
        self.connections: ConnectionTable | None = None  # the listener's, once it listens
        self.state = StateStore(config.state_dir)
        self.registry = registry
        self.executor = Executor(
            registry=self.registry,
            history_limit=config.command_history,
            on_async_done=self._async_done,
        )
        self.guard = Guard()
        self.partition_uuids: dict[str, Any] | None = None  # of the last image written
        self.written_disk: str | None = None  # the device the last image was written to
        self.async_done_callbacks: list[Any] = []
        # A token set after start (set_node_info, lookup) was persisted and wins over the
        # command line, so a restart never falls back to an older or absent token.
        self.token_hash: str | None = self.state.get("token_hash") or (
            token_digest(config.agent_token) if config.agent_token else None
        )
        self.node_info: dict[str, Any] | None = self.state.get("node_info")
        self.inventory = inventory
        self.state.update(mode=config.mode)

    # -- tokens -----------------------------------------------------------------------
    @property
    def has_token(self) -> bool:
        return self.token_hash is not None

    def token_matches(self, presented: str | None) -> bool:
        if not presented or self.token_hash is None:
            return False
        return hmac.compare_digest(token_digest(presented), self.token_hash)

    def set_token(self, token: str) -> None:
        self.token_hash = token_digest(token)
        self.state.update(token_hash=self.token_hash)

    def record_claim(self, peer: str) -> None:
        """Trust on first use happened: say so where an operator will see it."""
        self.state.update(claimed_by=peer, claimed_at=time.time())
        message = f"tacet-agent: CLAIMED by {peer}: from now on every command needs its token"
        LOG.warning(message)
        print(message, flush=True)  # the console, for an operator watching the node

    @property
    def claimed_by(self) -> str | None:
        value = self.state.get("claimed_by")
        return value if isinstance(value, str) else None

    # -- node_info --------------------------------------------------------------------
    def store_node_info(self, node_info: dict[str, Any]) -> None:
        self.node_info = masked(node_info)
        self.state.update(node_info=self.node_info)

    def apply_node_info(self, node_info: dict[str, Any]) -> None:
        """Take node_info (set_node_info or a lookup): its token and TLS floor, then store it
        masked. Callers validate first; a masked token ("******") is never applied."""
        config = node_info.get("config") or {}
        token = config.get("agent_token")
        if isinstance(token, str) and token and token != MASK:
            self.set_token(token)
            LOG.warning("agent token set from node_info")
        if config.get("tls_min_version") == "1.3" and self.ssl_context is not None:
            self.ssl_context.minimum_version = ssl.TLSVersion.TLSv1_3
        self.store_node_info(node_info)

    def tls_min_version(self, configured: str) -> str:
        """The TLS floor to listen with: node_info's ``tls_min_version`` "1.3" (kept in
        the state file) outlives a restart, as its token does; else ``configured``."""
        config = (self.node_info or {}).get("config")
        if isinstance(config, dict) and config.get("tls_min_version") == "1.3":
            return "1.3"
        return configured

    @property
    def node_uuid(self) -> str | None:
        node = (self.node_info or {}).get("node") or {}
        uuid = node.get("uuid") if isinstance(node, dict) else None
        return uuid if isinstance(uuid, str) else None

    def status(self) -> dict[str, Any]:
        status = {
            "started_at": self.started_at,
            "version": __version__,
            "mode": self.config.mode,
            "node_uuid": self.node_uuid,
            "certificate_fingerprint": self.identity.fingerprint,
            "rejections": self.guard.summary(),
        }
        if self.connections is not None:
            status["connections"] = self.connections.summary()
        if self.claimed_by is not None:
            status["claimed_by"] = self.claimed_by
        if self.config.agent_token:
            status["binding"] = self.binding()
        return status

    @functools.cache  # noqa: B019 - one Agent per process; the certificate never changes
    def binding(self) -> dict[str, Any]:
        """Proof that the holder of the pre-shared token serves this certificate.

        See docs/security.md ("Token binding") for the exact construction.
        """
        assert self.config.agent_token is not None
        spki = spki_sha256(self.identity.cert_pem)
        return {
            "version": BINDING_VERSION,
            "spki_sha256": spki,
            "hmac_sha256": binding_hmac(self.config.agent_token, spki),
        }

    def _async_done(self, result: CommandResult) -> None:
        for callback in self.async_done_callbacks:
            callback(result)


def masked(node_info: dict[str, Any]) -> dict[str, Any]:
    """A copy with the agent token (and anything named like a secret) replaced by ******."""

    def secret(key: str) -> bool:
        return any(s in key.lower() for s in ("token", "password", "secret"))

    def walk(value: Any, hidden: bool = False) -> Any:
        """``hidden``: under a secret-named key, where every value is secret."""
        if isinstance(value, dict):
            return {k: walk(v, hidden or secret(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, hidden) for v in value]
        return MASK if hidden and value is not None else value

    result: dict[str, Any] = walk(node_info)
    return result
