"""``tacet-passive``: ironic's ``direct`` deploy, with the conductor polling the agent.

ironic's heartbeat handling stays as it is. Instead of the agent calling ironic's
lookup and heartbeat, a periodic task of this interface polls the agents of the nodes
mapped to this conductor in the states an agent would heartbeat in, and turns each
answer into what those calls do: on first contact verify the agent and the node's
MACs, send it the lookup data (``poll.set_node_info``) and record its URL and
certificate; then call this interface's own ``heartbeat`` under the node's lock, so
ironic's deploy, clean, service and rescue processing runs unchanged. Inspection
takes the inventory from ``get_hardware_info`` into ironic's inspection hooks.

ironic's own agent client, which every step obtains with
``agent_client.get_client(task)``, is the plugin's: that public function returns the
client cached on the task, so each public method of this interface first caches a
``ConductorAgentClient`` there: ironic's client with a User-Agent naming this
conductor, as the poller's, and in ``mtls`` trust (the agents demand a client
certificate) with ``requests.Session.cert`` set to ``[tacet] client_cert_file``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ironic import objects
from ironic.common import async_steps, exception, states
from ironic.common import utils as common_utils
from ironic.conductor import cleaning, deployments, periodics, servicing, task_manager
from ironic.conductor import inspection as conductor_inspection
from ironic.conductor import utils as manager_utils
from ironic.db import api as db_api
from ironic.drivers.modules import agent, agent_client, deploy_utils
from ironic.drivers.modules.inspector import interface as inspector_common
from oslo_config import cfg
from oslo_log import log
from oslo_utils import timeutils

from conductor import pki
from conductor.client import USER_AGENT, Trust
from wire.heap import limit_heaps, release_free_memory

from . import addresses, options
from .bridge import Abandoned, shared_loop
from .pacing import HeartbeatPacer, refresh_period
from .polling import (
    ALIVE,
    FIRST_CONTACT,
    REFUSED,
    Answer,
    Identity,
    Poller,
    PollSettings,
    Target,
)

CONF = cfg.CONF
options.register(CONF)
LOG = log.getLogger(__name__)

INTERFACE_NAME = "tacet-passive"
# What the plugin itself runs on the agent at first contact. ironic recognises a freshly
# booted agent by a command list holding nothing but get_<type>_steps; these are the
# plugin's stand-in for lookup, so they do not make the agent any less fresh.
FIRST_CONTACT_COMMANDS = frozenset({"get_hardware_info", "set_node_info", "node_info"})
FRESH_AGENT = "tacet_fresh_agent"
REBOOT_FIELDS = {
    "clean": async_steps.CLEANING_REBOOT,
    "service": async_steps.SERVICING_REBOOT,
    "deploy": async_steps.DEPLOYMENT_REBOOT,
}
POLLED_STATES = (
    states.DEPLOYWAIT,
    states.CLEANWAIT,
    states.SERVICEWAIT,
    states.RESCUEWAIT,
    states.INSPECTWAIT,
)
VIF_KEYS = (
    "cleaning_vif_port_id",
    "provisioning_vif_port_id",
    "inspection_vif_port_id",
    "servicing_vif_port_id",
    "rescuing_vif_port_id",
    "tenant_vif_port_id",
)


def _poll_spacing() -> int:
    return int(CONF.tacet.poll_interval)


def _poll_enabled() -> bool:
    return int(CONF.tacet.poll_interval) > 0


CALLBACK_TIMEOUTS = {
    states.DEPLOYWAIT: "deploy_callback_timeout",
    states.CLEANWAIT: "clean_callback_timeout",
    states.SERVICEWAIT: "service_callback_timeout",
    states.RESCUEWAIT: "rescue_callback_timeout",
}
STEP_FIELDS = {
    states.DEPLOYWAIT: "deploy_step",
    states.CLEANWAIT: "clean_step",
    states.SERVICEWAIT: "service_step",
}
# What one query per sweep reads of every candidate (ironic's iter_nodes adds uuid,
# driver and conductor_group in front).
ROW_FIELDS = (
    "id",
    "reservation",
    "deploy_interface",
    "provision_state",
    "target_provision_state",
    "maintenance",
    "deploy_step",
    "clean_step",
    "service_step",
    "provision_updated_at",
    "updated_at",
)
# What a sweep reads of driver_internal_info, and how many nodes' at a time
AGENT_FIELDS = ("agent_url", "agent_verify_ca", "agent_secret_token")
AGENT_FIELDS_BATCH = 500


@dataclass(frozen=True)
class _Row:
    """One polled node as the sweep's single query saw it."""

    uuid: str
    id: int
    reservation: str | None  # the conductor holding the node's lock, if any
    deploy_interface: str | None
    provision_state: str
    target_provision_state: str | None
    maintenance: bool
    deploy_step: dict[str, Any] | None
    clean_step: dict[str, Any] | None
    service_step: dict[str, Any] | None
    provision_updated_at: datetime | None
    updated_at: datetime | None
    # What the sweep needs of driver_internal_info (AGENT_FIELDS), as last read
    agent: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, result: tuple[Any, ...]) -> _Row:
        uuid, _driver, _group, *fields = result
        values = dict(zip(ROW_FIELDS, fields, strict=True))
        values["maintenance"] = bool(values["maintenance"])
        return cls(uuid=uuid, **values)

    def node_side(self) -> str:
        """What ironic's heartbeat processing decides from on the node's side."""
        step_field = STEP_FIELDS.get(self.provision_state)
        step = getattr(self, step_field) if step_field else None
        return json.dumps(
            [self.provision_state, self.target_provision_state, self.maintenance, step],
            sort_keys=True,
            default=str,
        )


class _Bookkeeping:
    """This conductor's memory between sweeps: the poller, each agent's last answer,
    and what ironic last heard of each node."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.poller: Poller | None = None
        self.last_answer: dict[str, float] = {}
        self.conductor = ""  # this conductor's name on the hash ring
        self.pacer = HeartbeatPacer()
        # node -> (its updated_at, AGENT_FIELDS of its driver_internal_info) when read
        self.agent_fields: dict[str, tuple[datetime | None, dict[str, Any]]] = {}

    def agent_fields_of(self, manager: Any, rows: list[_Row]) -> list[_Row]:
        """``rows`` with what they need of driver_internal_info, read again only for the
        nodes saved since it was last read: that JSON (the agent's cached steps, the
        deploy's steps, ...) is the bulk of a node's row, and parsing it for every node
        every sweep was most of a sweep's database work and its memory."""
        stale = [r.uuid for r in rows if self.agent_fields.get(r.uuid, (False,))[0] != r.updated_at]
        for first in range(0, len(stale), AGENT_FIELDS_BATCH):
            batch = stale[first : first + AGENT_FIELDS_BATCH]
            for uuid, _driver, _group, updated_at, info in manager.iter_nodes(
                fields=["updated_at", "driver_internal_info"], filters={"uuid_in": batch}
            ):
                info = info or {}
                kept = {key: info[key] for key in AGENT_FIELDS if key in info}
                self.agent_fields[uuid] = (updated_at, kept)
        known = {r.uuid for r in rows}
        for uuid in list(self.agent_fields):
            if uuid not in known:
                del self.agent_fields[uuid]
        return [
            dataclasses.replace(r, agent=self.agent_fields[r.uuid][1])
            for r in rows
            if r.uuid in self.agent_fields
        ]

    def poller_for(self, settings: PollSettings) -> Poller:
        if self.poller is None or self.poller.settings != settings:
            self.poller = Poller(settings)
        return self.poller


_BOOK = _Bookkeeping()


def conductor_user_agent() -> str:
    """Tacet's User-Agent with this conductor's name as ironic registered it (its
    ``host``, with the JSON-RPC port when it listens on its own), learned from the
    periodic task's manager; ``[DEFAULT] host`` until that first ran."""
    return f"{USER_AGENT} (ironic conductor {_BOOK.conductor or CONF.host})"


def _settings() -> PollSettings:
    return PollSettings(
        concurrency=CONF.tacet.poll_concurrency,
        jitter=min(CONF.tacet.poll_jitter, max(CONF.tacet.poll_interval / 2, 0)),
        timeout=float(CONF.tacet.poll_timeout),
        connect_timeout=min(5.0, float(CONF.tacet.poll_timeout)),
        user_agent=conductor_user_agent(),
        kept_alive=CONF.tacet.kept_alive_agents,
    )


def _agent_timeout() -> int:
    return int(CONF.tacet.agent_timeout or CONF.api.ramdisk_heartbeat_timeout)


class ConductorStopping(Exception):
    """This conductor has begun to stop: the sweep takes no more node locks."""


@functools.cache
def _warn_no_stop_signal() -> None:
    LOG.warning(
        "Passive poll: this ironic's conductor manager has no _shutdown event; a "
        "sweep running when the conductor stops is not cut short"
    )


def conductor_stopping(manager: Any) -> bool:
    """Whether ironic has begun to stop this conductor.

    ironic's ``del_host`` sets the manager's ``_shutdown`` event first, then deregisters
    the conductor, waits for its periodic tasks and (up to ``[conductor]
    graceful_shutdown_timeout``) for its node locks to go. A sweep that went on taking
    locks after that would hold the stop up, and one cut short by the process manager's
    SIGKILL would leave a node locked by a conductor that is gone. ironic offers no
    public way to ask, so this reads that event (never sets it); an ironic without it
    is warned about once, and its sweeps then run to their end.
    """
    event = getattr(manager, "_shutdown", None)
    is_set = getattr(event, "is_set", None)
    if callable(is_set):
        return bool(is_set())
    _warn_no_stop_signal()
    return False


def _stop_if_stopping(manager: Any) -> None:
    """Raise :class:`ConductorStopping` once this conductor has begun to stop."""
    if conductor_stopping(manager):
        raise ConductorStopping()


@contextlib.contextmanager
def _node_lock(
    context: Any, manager: Any, uuid: str, purpose: str, shared: bool = False, retry: bool = True
) -> Iterator[Any]:
    """ironic's ``task_manager.acquire``, refused (:class:`ConductorStopping`) while this
    conductor stops: checked before the lock is taken and again once it is held (then
    released at once), so no lock is taken after the stop began and kept past it."""
    _stop_if_stopping(manager)
    with task_manager.acquire(context, uuid, shared=shared, retry=retry, purpose=purpose) as task:
        _stop_if_stopping(manager)
        yield task


def client_certificate() -> tuple[Path, Path] | None:
    """The conductor's client certificate and key in ``mtls`` trust, None in the others."""
    if CONF.tacet.trust_mode != "mtls":
        return None
    cert, key = CONF.tacet.client_cert_file, CONF.tacet.client_key_file
    if not cert or not key:
        raise exception.InvalidParameterValue(
            "[tacet] trust_mode = mtls needs client_cert_file and client_key_file"
        )
    return Path(cert), Path(key)


def _trust(cafile: Path | None = None, trust_on_first_use: bool = False) -> Trust:
    """How to verify the agent, with the client certificate to present (``mtls``)."""
    pair = client_certificate()
    certfile, keyfile = pair if pair is not None else (None, None)
    return Trust(
        cafile=cafile, trust_on_first_use=trust_on_first_use, certfile=certfile, keyfile=keyfile
    )


def _refresh_period(provision_state: str) -> float:
    """How long ironic may go without a heartbeat from an agent that changed nothing."""
    if CONF.tacet.heartbeat_refresh:
        return float(CONF.tacet.heartbeat_refresh)
    option = CALLBACK_TIMEOUTS.get(provision_state)
    callback = getattr(CONF.conductor, option) if option else 0
    return refresh_period(
        CONF.api.ramdisk_heartbeat_timeout, callback or 0, CONF.tacet.poll_interval
    )


def _first_contact_trust() -> Trust:
    if CONF.tacet.trust_mode in ("claim", "mtls"):
        # mtls: only a conductor with a certificate from the agents' client CA gets an
        # answer at all; the agent's own certificate is still recorded on first contact.
        return _trust(trust_on_first_use=True)
    return _trust()  # token-binding: the pre-shared token's binding


class ConductorAgentClient(agent_client.AgentClient):
    """ironic's agent client naming this conductor in its User-Agent (as the poller's
    does), so an agent's access log says which conductor sent each command; in ``mtls``
    trust it also presents the conductor's client certificate."""

    def __init__(self) -> None:
        super().__init__()
        self.session.headers["User-Agent"] = conductor_user_agent()
        pair = client_certificate()
        if pair is not None:
            self.session.cert = (str(pair[0]), str(pair[1]))


def use_conductor_agent_client(task: Any) -> None:
    """Make ``agent_client.get_client(task)`` answer with a ``ConductorAgentClient``."""
    if not isinstance(getattr(task, "cached_agent_client", None), ConductorAgentClient):
        task.cached_agent_client = ConductorAgentClient()


def _using_conductor_agent_client(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)  # keeps the step and metrics attributes ironic reads
    def wrapper(self: Any, task: Any, *args: Any, **kwargs: Any) -> Any:
        use_conductor_agent_client(task)
        return method(self, task, *args, **kwargs)

    return wrapper


def _lookup_data(node: Any, token: str | None) -> dict[str, Any]:
    """What ironic's lookup would answer, less what the agent has no use for here."""
    config: dict[str, Any] = {
        "heartbeat_timeout": CONF.api.ramdisk_heartbeat_timeout,
        "agent_token_required": True,
        "agent_md5_checksum_enable": CONF.agent.allow_md5_checksum,
        "disable_deep_image_inspection": CONF.conductor.disable_deep_image_inspection,
        "permitted_image_formats": CONF.conductor.permitted_image_formats,
        "tls_min_version": CONF.agent.tls_minimum_version,
    }
    if token and CONF.tacet.trust_mode != "token-binding":
        config["agent_token"] = token
    return {
        "node": {
            "uuid": node.uuid,
            "properties": node.properties,
            "instance_info": node.instance_info,
        },
        "config": config,
    }


class TacetPassiveDeploy(agent.AgentDeploy):
    """ironic's ``direct`` deploy for agents in passive mode: the conductor polls them."""

    def __init__(self) -> None:
        super().__init__()
        # ironic builds its interfaces at start, before its periodic tasks' threads
        # allocate: the limit then holds for those threads' heaps.
        if limit_heaps(CONF.tacet.malloc_arena_max):
            LOG.info(
                "glibc heaps limited to %d ([tacet] malloc_arena_max)", CONF.tacet.malloc_arena_max
            )

    def validate(self, task: Any) -> None:
        """ironic's checks, and in ``mtls`` trust a readable client certificate and key."""
        pair = client_certificate()
        if pair is not None:
            try:
                pki.check_client_pair(*pair)
            except pki.PkiError as exc:
                raise exception.InvalidParameterValue(f"[tacet] client_cert_file: {exc}") from None
        super().validate(task)

    # -- steps -------------------------------------------------------------------------
    def process_next_step(self, task: Any, step_type: str, **kwargs: Any) -> None:
        """ironic's, except that the plugin's first-contact commands leave an agent fresh."""
        node = task.node
        if node.driver_internal_info.get(FRESH_AGENT):
            node.del_driver_internal_info(FRESH_AGENT)
            node.save()
            commands = agent_client.get_client(task).get_commands_status(node)
            names = {str(c.get("command_name")) for c in commands}
            LOG.debug(
                "Node %s: the agent's commands at first contact: %s", node.uuid, sorted(names)
            )
            if names <= FIRST_CONTACT_COMMANDS | {f"get_{step_type}_steps"}:
                self._start_steps(task, step_type)
                return
        super().process_next_step(task, step_type, **kwargs)

    def _start_steps(self, task: Any, step_type: str) -> None:
        """What ironic does with a freshly booted agent: go on with the node's steps."""
        node = task.node
        common_utils.pop_node_nested_field(node, "driver_internal_info", REBOOT_FIELDS[step_type])
        node.save()
        if step_type == "clean":
            task.resume_cleaning()
            cleaning.continue_node_clean(task)
            return
        task.process_event("resume")
        if step_type == "deploy":
            deployments.continue_node_deploy(task)
        else:
            servicing.continue_node_service(task)

    # -- where the agent is ------------------------------------------------------------
    def _agent_address(self, context: Any, node: Any, ports: list[Any]) -> str | None:
        port = CONF.tacet.agent_port
        given = (node.driver_info or {}).get("tacet_address")
        if given:
            return addresses.agent_address(str(given), port)
        if node.network_interface == "neutron":
            from ironic.common import neutron

            client = neutron.get_client(context=context)
            for ironic_port in ports:
                for key in VIF_KEYS:
                    vif = (ironic_port.internal_info or {}).get(key)
                    if not vif:
                        continue
                    found = addresses.neutron_fixed_ip(client.get_port(vif).to_dict())
                    if found:
                        return addresses.agent_address(found, port)
        if CONF.tacet.dnsmasq_leases_file:
            try:
                text = Path(CONF.tacet.dnsmasq_leases_file).read_text()
            except OSError as exc:
                LOG.warning(
                    "Cannot read the dnsmasq leases %s: %s", CONF.tacet.dnsmasq_leases_file, exc
                )
                return None
            found = addresses.dnsmasq_lease_address(text, (p.address for p in ports))
            if found:
                return addresses.agent_address(found, port)
        return None

    # -- the periodic ------------------------------------------------------------------
    @periodics.periodic(spacing=_poll_spacing, enabled=_poll_enabled)
    def _tacet_poll_passive_agents(self, manager: Any, context: Any) -> None:
        """Poll the agents of this conductor's passive nodes; act on what they answer."""
        if conductor_stopping(manager):
            return
        # One query for every candidate: a node whose agent answered before needs no
        # other database access unless ironic must hear its answer.
        candidates = [
            row
            for row in map(
                _Row.of,
                manager.iter_nodes(
                    fields=list(ROW_FIELDS), filters={"provision_state_in": POLLED_STATES}
                ),
            )
            if row.deploy_interface == INTERFACE_NAME
        ]
        # A node locked at this moment (by ironic's own work on it) is not polled this
        # sweep, but keeps what this conductor knows of it: its agent's connection, and
        # what ironic last heard, so the next sweep does not hand ironic a heartbeat
        # that is no news.
        kept = {row.uuid for row in candidates}
        with _BOOK.lock:
            candidates = _BOOK.agent_fields_of(manager, candidates)
        rows = {row.uuid: row for row in candidates if not row.reservation}
        if rows:
            try:
                client_certificate()
            except exception.InvalidParameterValue as exc:
                LOG.error("Passive poll: not polling: %s", exc)
                return
        targets = []
        for row in rows.values():
            try:
                target = self._target(context, manager, row)
            except ConductorStopping:
                return
            except exception.NodeNotFound:
                continue
            except Exception:
                LOG.exception("Passive poll: cannot prepare node %s", row.uuid)
                continue
            if target is not None:
                targets.append(target)
        with _BOOK.lock:
            _BOOK.conductor = manager.host
            poller = _BOOK.poller_for(_settings())
            poller.forget(kept)
            _BOOK.pacer.keep_only(kept)
            if not targets:
                return
            budget = CONF.tacet.poll_timeout * 2 * (len(targets) // poller.settings.concurrency + 1)
            try:
                answers = shared_loop().run(
                    poller.sweep(targets),
                    timeout=budget + 30,
                    abandon=lambda: conductor_stopping(manager),
                )
            except Abandoned:
                LOG.info("Passive poll: conductor %s is stopping; sweep abandoned", manager.host)
                return
        try:
            self._act_on(context, manager, answers, rows)
        finally:
            if CONF.tacet.release_free_memory:
                release_free_memory()

    def _act_on(
        self, context: Any, manager: Any, answers: list[Answer], rows: dict[str, _Row]
    ) -> None:
        now = time.monotonic()
        for done, answer in enumerate(answers):
            if answer.kind in (ALIVE, FIRST_CONTACT):
                _BOOK.last_answer[answer.uuid] = now
            try:
                self._act(context, manager, answer, rows[answer.uuid])
            except ConductorStopping:
                # Unheard answers are heard by whichever conductor takes the nodes over.
                LOG.info(
                    "Passive poll: conductor %s is stopping; %d answers of this sweep left unheard",
                    manager.host,
                    len(answers) - done,
                )
                return
            except (exception.NodeLocked, exception.NodeNotFound):
                continue
            except Exception:
                LOG.exception("Passive poll: acting on node %s failed", answer.uuid)

    def _target(self, context: Any, manager: Any, row: _Row) -> Target | None:
        info = row.agent
        token = info.get("agent_secret_token")
        url = info.get("agent_url")
        verify_ca = info.get("agent_verify_ca")
        if url and verify_ca and row.provision_state != states.INSPECTWAIT:
            address = url.removeprefix("https://").rstrip("/")
            trust = _trust(cafile=Path(verify_ca))
            return Target(row.uuid, address, trust, token)
        # First contact: where is it, who must it be, and what is its token.
        uuid = row.uuid
        node = objects.Node.get_by_uuid(context, uuid)
        token = (node.driver_internal_info or {}).get("agent_secret_token")
        ports = objects.Port.list_by_node_id(context, node.id)
        address = self._agent_address(context, node, ports)
        if address is None:
            LOG.debug("Passive poll: no address known yet for node %s", uuid)
            return None
        mode = CONF.tacet.trust_mode
        if mode == "token-binding" and not token:
            LOG.warning(
                "Passive poll: node %s has no pregenerated agent token; is its boot "
                "interface tacet-pxe or tacet-ipxe?",
                uuid,
            )
            return None
        if mode != "token-binding" and not token:
            with _node_lock(context, manager, uuid, "tacet passive token") as task:
                manager_utils.add_secret_token(task.node)
                task.node.save()
                token = task.node.driver_internal_info["agent_secret_token"]
        properties = node.properties or {}
        identity = Identity(
            macs=frozenset(p.address.lower() for p in ports),
            system_serial=(node.driver_info or {}).get("tacet_system_serial")
            or properties.get("tacet_system_serial"),
        )
        inspecting = node.provision_state == states.INSPECTWAIT
        return Target(
            uuid,
            address,
            _first_contact_trust(),
            token,
            identity=identity,
            node_info=None if inspecting else _lookup_data(node, token),
            want_inventory=inspecting,
        )

    # -- acting on an answer -----------------------------------------------------------
    def _act(self, context: Any, manager: Any, answer: Answer, row: _Row) -> None:
        if answer.kind == REFUSED:
            self._fail(context, manager, answer.uuid, f"tacet passive: {answer.reason}")
            return
        if answer.kind not in (ALIVE, FIRST_CONTACT):
            self._check_timeout(context, manager, answer, row)
            return
        seen = (row.node_side(), answer.commands)
        now = time.monotonic()
        if answer.kind == ALIVE:
            if not _BOOK.pacer.due(answer.uuid, seen, now):
                return  # nothing ironic decides from has changed, and no refresh is due
            if not _BOOK.pacer.changed(answer.uuid, seen):
                self._refresh(answer, row)
                _BOOK.pacer.heard(answer.uuid, seen, now, _refresh_period(row.provision_state))
                return
        LOG.debug("Passive poll: a heartbeat for node %s (a change, or a refresh)", answer.uuid)
        known = answer.kind == ALIVE
        # A known agent's heartbeat needs the exclusive lock: taken at once, without
        # ironic's retries. ironic's heartbeat would skip a node locked elsewhere and say
        # nothing; raised here, NodeLocked leaves the answer unheard, so due next sweep.
        with _node_lock(
            context, manager, answer.uuid, "tacet passive poll", shared=not known, retry=not known
        ) as task:
            node = task.node
            if type(task.driver.deploy) is not type(self):
                return
            if node.provision_state == states.INSPECTWAIT:
                if answer.kind == FIRST_CONTACT:
                    self._continue_inspection(task, manager, answer)
                return
            if node.provision_state not in POLLED_STATES:
                return
            verify_ca = node.driver_internal_info.get("agent_verify_ca")
            version = answer.version or node.driver_internal_info.get("agent_version")
            if answer.kind == FIRST_CONTACT:
                assert answer.certificate is not None
                task.upgrade_lock()  # reloads task.node
                _stop_if_stopping(manager)
                node = task.node
                verify_ca = manager_utils.store_agent_certificate(node, answer.certificate)
                node.set_driver_internal_info(FRESH_AGENT, True)
                node.save()
            self.heartbeat(
                task, f"https://{answer.address}", version or "tacet", agent_verify_ca=verify_ca
            )
        if answer.kind == FIRST_CONTACT:
            _BOOK.pacer.forget(answer.uuid)  # the next answer, with commands, is heard
        else:
            _BOOK.pacer.heard(answer.uuid, seen, now, _refresh_period(row.provision_state))

    def _refresh(self, answer: Answer, row: _Row) -> None:
        """What ironic's heartbeat does for an agent whose step still runs and whose
        answer ironic has heard already: move ``provision_updated_at``, the clock of its
        callback-timeout reaper (``touch_provisioning``, one update, as ironic's heartbeat
        does it). The rest of that heartbeat (the node's lock, the agent's URL and version
        written again, ironic asking the agent for the command list this poll just read,
        which still shows the step running) would change nothing."""
        LOG.debug("Passive poll: a refresh for node %s (no change)", answer.uuid)
        db_api.get_instance().touch_node_provisioning(row.id)

    def _continue_inspection(self, task: Any, manager: Any, answer: Answer) -> None:
        """What ironic's continue_inspection call does, with the polled inventory."""
        task.upgrade_lock()
        _stop_if_stopping(manager)
        node = task.node
        if node.provision_state != states.INSPECTWAIT:
            return
        LOG.info("Passive poll: inventory of node %s received from %s", node.uuid, answer.address)
        task.process_event(
            "resume",
            callback=manager._spawn_worker,
            call_args=(conductor_inspection.continue_inspection, task, answer.inventory or {}, {}),
            err_handler=manager_utils.provisioning_error_handler,
        )

    def _check_timeout(self, context: Any, manager: Any, answer: Answer, row: _Row) -> None:
        if not row.agent.get("agent_url"):
            return  # never answered yet: ironic's own callback timeouts apply
        limit = _agent_timeout()
        seen = _BOOK.last_answer.get(answer.uuid)
        if seen is not None:
            silent = time.monotonic() - seen
        else:
            since = row.provision_updated_at or row.updated_at or timeutils.utcnow()
            silent = (timeutils.utcnow() - since.replace(tzinfo=None)).total_seconds()
        if silent < limit:
            LOG.debug("Passive poll: agent of node %s did not answer (%s)", row.uuid, answer.reason)
            return
        _BOOK.last_answer.pop(answer.uuid, None)
        self._fail(
            context,
            manager,
            answer.uuid,
            f"tacet passive: the agent at {answer.address} has not answered for "
            f"{int(silent)} s (limit {limit} s): {answer.reason}",
        )

    def _fail(self, context: Any, manager: Any, uuid: str, message: str) -> None:
        """The error handler ironic uses for the node's wait state."""
        with _node_lock(context, manager, uuid, "tacet passive failure") as task:
            state = task.node.provision_state
            LOG.error("Node %s: %s", uuid, message)
            if state == states.DEPLOYWAIT:
                deploy_utils.set_failed_state(task, message, collect_logs=False)
            elif state == states.CLEANWAIT:
                manager_utils.cleaning_error_handler(task, message, errmsg=message)
            elif state == states.SERVICEWAIT:
                manager_utils.servicing_error_handler(task, message, errmsg=message)
            elif state == states.RESCUEWAIT:
                manager_utils.rescuing_error_handler(task, message)
            elif state == states.INSPECTWAIT:
                inspector_common.inspection_error_handler(task, message)


def _wrap_task_methods(cls: type) -> None:
    """Every public method that takes the task puts the conductor's agent client on it
    first: those are where ironic's conductor hands this interface a task."""
    for name, method in inspect.getmembers(cls, inspect.isfunction):
        if name.startswith("_"):
            continue
        if list(inspect.signature(method).parameters)[:2] == ["self", "task"]:
            setattr(cls, name, _using_conductor_agent_client(method))


_wrap_task_methods(TacetPassiveDeploy)
