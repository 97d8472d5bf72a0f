"""Bring the agent up: one TLS listener, the console banner, clean shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from . import __version__, access, logs, memory
from .addresses import HostAddresses, check_listen_host, listen_address
from .commands import Registry
from .config import KERNEL, Config
from .connections import ConnectionTable, fit_descriptor_limit
from .core import Agent
from .extensions import bootloader, log, poll, standby, steps
from .gate import Timeouts, TlsGate
from .inventory_cache import UDEV_CONTROL, InventoryCache
from .malformed import connections
from .netconfig.record import RecordError, record_file
from .netconfig.record import read as read_record
from .power import PowerBackend, SystemPower
from .tls import Identity, IPAddress, load_identity, local_addresses, server_context

LOG = logging.getLogger(__name__)
WARMUP_DELAY = 0.5  # seconds after the listener is up
NETWORK_POLL = 0.2  # seconds between looks at the host's addresses while waiting
UDEV_WAIT = 60.0  # seconds the warm-up keeps looking for a udev daemon that starts late
UDEV_POLL = 0.5
STORM_CHECK = 5.0  # seconds between looks at whether a connection storm is over
# The listen backlog, which asyncio also takes as how many connections to accept in one
# pass of the event loop (create_server listens again with it; 100 is its default).
# 32 kept passes short under emulation, but on real CPUs it made the kernel drop more
# of a storm's connects, and with them now and then a conductor's new connection. A
# queue of 512 behind a batch of 100 did the opposite harm in an emulated guest: a
# storm from 100 addresses queued deeper than the guest could drain in a second, so
# new connections waited 1.5 s instead of 0.55 s and kept-alive polls twice as long;
# the kernel's drops of a storm's excess connects are the cheapest load shedding there is.
BACKLOG = 100


def live_inventory(config: Config) -> Callable[[], dict[str, Any]]:
    """This machine's inventory, as the config asks for it (loop devices or not)."""

    def collect() -> dict[str, Any]:
        # Imported on first use, after the listener is up: keeps start-up short.
        from hardware import collect_inventory, live_sources

        sources = live_sources(cmdline=config.cmdline)
        inventory = collect_inventory(
            sources,
            lldp_timeout=config.lldp_timeout if config.lldp_capture else None,
            allow_loop_devices=config.allow_loop_devices,
        )
        return inventory.to_dict()

    return collect


def build_agent(
    config: Config,
    identity: Identity,
    power: PowerBackend,
    collect_inventory: Callable[[], dict[str, Any]] | None = None,
) -> Agent:
    """The agent, put together in this one place: its command registry with every
    extension registered, its inventory (this machine's unless ``collect_inventory``
    is given) and its power backend."""
    inventory = InventoryCache(
        collect_inventory or live_inventory(config), config.inventory_max_age
    )
    agent = Agent(config, identity, power, Registry(), inventory)
    for extension in (poll, standby, log, steps, bootloader):
        extension.register(agent)
    return agent


async def call_home(agent: Agent, listen_port: int, configured: Sequence[IPAddress] = ()) -> None:
    """As IPA: post the inspection data first (a failure is logged, not fatal), then,
    with an API URL, look up (by the node UUID ironic answered, if any) and heartbeat,
    advertising one of the ``configured`` static addresses when there are any.
    Never started in passive mode."""
    node_uuid = None
    if agent.config.inspection_targets:
        from .inspection import inspect

        node_uuid = await inspect(agent)
    if agent.config.api_urls:
        from .ironic import IronicClient

        await IronicClient(agent, listen_port, node_uuid, configured).run()


def notify_systemd(state: str, environ: dict[str, str] | None = None) -> bool:
    """Tell systemd (``Type=notify``) about ``state``, e.g. ``READY=1``; False outside it.

    The ramdisk orders what can wait (systemd-resolved) after the agent is ready, so that
    under emulation it does not compete with the agent's start for the CPU.
    """
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), target)
    except OSError as exc:
        LOG.warning("cannot notify systemd at %s: %s", address, exc)
        return False
    return True


def routable(addresses: Iterable[Any]) -> list[Any]:
    """The addresses a conductor could reach: neither loopback nor link-local."""
    return sorted((a for a in addresses if not a.is_loopback and not a.is_link_local), key=str)


async def wait_for_network(
    timeout: float,
    addresses: Callable[[], Iterable[Any]] | None = None,
    wanted: Callable[[], Iterable[Any]] = tuple,
    need_routable: bool = True,
) -> list[Any]:
    """Wait up to ``timeout`` s for a routable address (unless not ``need_routable``) and
    for every address ``wanted()`` names to be usable; the routable ones found then
    (empty on timeout without any).

    The ramdisk starts the agent while DHCP is still running, so that importing and
    setting up overlap with it; what needs the address (a generated certificate's IP
    SANs, the lookup in active mode) waits here instead of in systemd's ordering.
    ``wanted`` is asked again on every look: tacet-network's record of the static
    addresses may be written while the agent waits (it always is before networkd, so
    before any address can appear).
    """
    source = addresses or local_addresses
    deadline = time.monotonic() + timeout
    while True:
        usable = set(source())
        found = routable(usable)
        ready = (found or not need_routable) and all(a in usable for a in wanted())
        if ready or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(NETWORK_POLL)


def listen_socket(host: str, port: int, backlog: int = 128) -> socket.socket:
    """The one listening socket: dual-stack ``::`` by default, IPv4 when IPv6 is absent."""
    candidates: list[tuple[socket.AddressFamily, str]] = []
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):  # [::1], as in a URL: the address
        host = host[1:-1]
    if host in ("::", ""):
        candidates = [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        candidates = [(family, host)]
    error: OSError | None = None
    for family, address in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and address == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((address, port))
            sock.listen(backlog)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    assert error is not None
    raise error


def certificate_addresses(config: Config, configured: Iterable[IPAddress] = ()) -> set[Any]:
    """The host's addresses, every static one tacet-network configured (up or not: the
    certificate must not need regenerating when a late one comes up), and an
    ``advertise-host`` address."""
    addresses = local_addresses() | set(configured)
    if config.advertise_host:
        # A host name is skipped: the certificate carries IP SANs only, like IPA's.
        with contextlib.suppress(ValueError):
            addresses.add(ipaddress.ip_address(config.advertise_host))
    return addresses


def banner(agent: Agent, sock: socket.socket) -> str:
    """One console line: where the agent listens, its mode and certificate, and every
    URL it will connect to by itself (none in passive mode)."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    config = agent.config
    line = (
        f"tacet-agent {__version__}: listening on https://{shown}:{port} "
        f"mode={config.mode} certificate-sha256={agent.identity.fingerprint}"
    )
    if config.inspection_targets:
        line += f" inspection={','.join(config.inspection_targets)}"
    if config.api_urls:
        line += f" lookup={','.join(config.api_urls)}"
    return line


class AgentServer:
    """The agent and its one TLS listener; ``start``/``stop`` for the daemon and tests."""

    def __init__(
        self,
        config: Config,
        power: PowerBackend | None = None,
        collect_inventory: Any = None,
        network_wait: float = 0.0,
        host_root: Path = Path("/"),
    ) -> None:
        self.config = config
        self.network_wait = network_wait
        self.host_root = host_root  # where /proc is read from (tests: a recorded tree)
        self.record_problem: str | None = None
        self.power = power or SystemPower()
        self.collect_inventory = collect_inventory
        self.agent: Agent | None = None
        self.sock: socket.socket | None = None
        self.runner: web.AppRunner | None = None
        self.warmup: asyncio.Task[Any] | None = None
        self.ironic: asyncio.Task[None] | None = None
        self.tcp_server: asyncio.Server | None = None
        self.connections: ConnectionTable | None = None
        self.trimmer: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self.sock is not None
        port: int = self.sock.getsockname()[1]
        return port

    async def start(self) -> Agent:
        from .api import create_app

        config = self.config
        config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(config.state_dir, 0o700)
        host = HostAddresses(self.host_root, local_addresses)
        configured = await self._wait_for_network(host)
        check_listen_host(config, configured, host)
        identity = load_identity(
            config.state_dir,
            certificate_addresses(config, configured),
            config.cert_file,
            config.key_file,
        )
        agent = build_agent(config, identity, self.power, self.collect_inventory)
        agent.ssl_context = server_context(
            identity, agent.tls_min_version(config.tls_min_version), config.client_ca_file
        )
        # auto_decompress=False: request bodies are taken as sent (ironic never compresses).
        # Decoding them in aiohttp's parser turned a truncated gzip/deflate body, or a br/zstd
        # one, into a plain-text 400 outside the API's JSON faults.
        # keepalive_timeout: aiohttp's own default (3630 s) kept idle connections an hour.
        # The access log, when asked for: agent/access.py.
        access_logging: dict[str, Any] = (
            {"access_log": access.LOGGER, "access_log_class": access.AccessLog}
            if config.access_log
            else {"access_log": None}
        )
        self.runner = web.AppRunner(
            create_app(agent),
            **access_logging,
            handle_signals=False,
            shutdown_timeout=5,
            auto_decompress=False,
            keepalive_timeout=config.idle_timeout,
        )
        await self.runner.setup()
        max_connections = fit_descriptor_limit(config.max_connections)
        table = ConnectionTable(max_connections, config.max_connections_per_peer)
        self.connections = agent.connections = table
        timeouts = Timeouts(config.handshake_timeout, config.header_timeout)
        self.sock = listen_socket(config.listen_host, config.listen_port, BACKLOG)
        context, server = agent.ssl_context, self.runner.server
        assert server is not None
        self.tcp_server = await asyncio.get_running_loop().create_server(
            lambda: TlsGate(
                context,
                connections(server),
                agent.guard,
                config.client_allowlist,
                timeouts,
                table,
            ),
            sock=self.sock,
            backlog=BACKLOG,
        )
        self.agent = agent
        self.trimmer = asyncio.create_task(self._give_back_after_storms(table))
        # The first inventory is collected after the listener is up and has had a moment
        # to answer the conductor's first probes, never before it.
        self.warmup = asyncio.create_task(self._warm_up(agent))
        if config.mode != "passive":
            self.ironic = asyncio.create_task(call_home(agent, self.port, configured))
        return agent

    def configured_addresses(self) -> tuple[IPAddress, ...]:
        """The static addresses tacet-network configured, in its record's order; none
        without a record, or with one that cannot be read (said once in the log)."""
        try:
            record = read_record(record_file(self.config.state_dir))
        except RecordError as exc:
            if self.record_problem != str(exc):
                self.record_problem = str(exc)
                LOG.warning("network record ignored: %s", exc)
            return ()
        # A link-local address is no use to a conductor, and is never in the certificate.
        return tuple(a.ip for a in record.static if not a.ip.is_link_local) if record else ()

    async def _wait_for_network(self, host: HostAddresses) -> tuple[IPAddress, ...]:
        """Wait, up to ``network_wait``, for what the start needs; the static addresses.

        A configured certificate in passive mode needs no address (it listens at once),
        unless ``listen-host`` names one that is not up yet. A generated certificate
        carries the addresses (every static one, up and past IPv6 duplicate address
        detection), and a lookup or an inspection post needs the network.
        """
        config = self.config
        listen = listen_address(config)
        listen_wanted = () if listen is None or listen.is_loopback else (listen,)
        needs_network = config.cert_file is None or config.mode != "passive"
        if self.network_wait <= 0 or not (
            needs_network or any(a not in host() for a in listen_wanted)
        ):
            return self.configured_addresses()

        def wanted() -> tuple[IPAddress, ...]:
            statics = self.configured_addresses() if needs_network else ()
            return statics + listen_wanted

        LOG.info("waiting up to %gs for the network", self.network_wait)
        found = await wait_for_network(self.network_wait, host, wanted, needs_network)
        if needs_network and not found:
            LOG.warning("no routable address after %gs; going on without one", self.network_wait)
        usable = host()
        missing = [str(a) for a in wanted() if a not in usable]
        if missing:
            LOG.warning("not up after %gs: %s; going on", self.network_wait, ", ".join(missing))
        configured = self.configured_addresses()
        if configured:
            LOG.info("static addresses: %s", ", ".join(str(a) for a in configured))
        return configured

    async def _warm_up(self, agent: Agent) -> None:
        await asyncio.sleep(WARMUP_DELAY)
        watching = agent.inventory.watch_udev()
        await agent.inventory.get()
        # The ramdisk starts the agent before systemd-udevd: once udevd runs, its coldplug
        # events (and later hot-plug ones) mark the inventory stale.
        deadline = time.monotonic() + UDEV_WAIT
        while not watching and time.monotonic() < deadline:
            await asyncio.sleep(UDEV_POLL)
            if os.path.exists(UDEV_CONTROL):
                if agent.inventory.watch_udev():
                    agent.inventory.invalidate()
                break

    async def _give_back_after_storms(self, table: ConnectionTable) -> None:
        while True:
            await asyncio.sleep(STORM_CHECK)
            if table.storm_over():
                memory.give_back()

    async def stop(self, reason: str = "agent stopping (SIGTERM)") -> None:
        for task in (self.warmup, self.ironic, self.trimmer):
            if task is not None:
                task.cancel()
        if self.agent is not None:
            await self.agent.executor.stop(reason)
            self.agent.inventory.close()
        if self.tcp_server is not None:
            self.tcp_server.close()
        if self.runner is not None:
            await self.runner.cleanup()


async def serve(
    config: Config,
    power: PowerBackend | None = None,
    stop: asyncio.Event | None = None,
    collect_inventory: Any = None,
    network_wait: float = 0.0,
) -> None:
    """Run until ``stop`` is set or SIGTERM/SIGINT arrives; ``network_wait``: see
    ``AgentServer.start``."""
    # Before the listener: asyncio's accept errors (EMFILE) in one line, rate-limited.
    asyncio.get_running_loop().set_exception_handler(logs.loop_exception_handler)
    server = AgentServer(config, power, collect_inventory, network_wait)
    agent = await server.start()
    assert server.sock is not None
    print(banner(agent, server.sock), flush=True)
    notify_systemd("READY=1")
    if config.origins.get("agent_token") == KERNEL:
        LOG.warning(
            "the agent token came from the kernel command line, which is visible on the "
            "provisioning network and in logs; deliver it as /etc/tacet/token instead"
        )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    waiters: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
    if server.ironic is not None:
        waiters.append(server.ironic)
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        ironic = server.ironic
        if ironic is not None and ironic.done() and not ironic.cancelled():
            failure = ironic.exception()
            if failure is not None:
                # Like IPA: a failed lookup ends the process and systemd starts it again.
                raise SystemExit(f"tacet-agent: active mode failed: {failure}")
            await waiters[0]  # inspection only: done calling home, keep serving
    finally:
        waiters[0].cancel()
        LOG.warning("tacet-agent stopping")
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await server.stop()
        print("tacet-agent: stopped", flush=True)


def configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    root = logging.getLogger()
    root.addHandler(log.AGENT_LOG)
    logs.install(root.handlers)
