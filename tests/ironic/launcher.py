"""A real ironic (from PyPI, in its own virtualenv) on 127.0.0.1, for tests that drive Tacet.

``tools/setup-ironic`` installs ironic into a virtualenv outside the repository
(``TACET_IRONIC_VENV``); :func:`locate_ironic` finds it. :class:`IronicService` writes an
``ironic.conf`` (sqlite in a temporary directory, noauth, the all-in-one ``ironic``
command with ``rpc_transport = none``, short periodic intervals, everything else at
ironic's defaults, the agent's TLS settings included), creates the schema, starts the
process, waits for its API and stops it. :class:`IronicApi` is a small JSON client for
the REST API, with helpers that wait for a node's provision state.
"""

from __future__ import annotations

import configparser
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.ports import free_port

IRONIC_VERSION = os.environ.get("TACET_IRONIC_VERSION", "39.0.0")
DEFAULT_VENV = Path("/var/tmp/tacet-ironic") / f"venv-{IRONIC_VERSION}"
API_VERSION = "latest"
# States in which ironic waits for the agent (target_provision_state stays set).
WAIT_STATES = frozenset({"wait call-back", "clean wait", "inspect wait", "service wait"})
# States in which ironic has given up (target_provision_state may stay set too).
FAILURE_STATES = frozenset(
    {"deploy failed", "clean failed", "inspect failed", "service failed", "error"}
)
START_TIMEOUT = float(os.environ.get("TACET_IRONIC_START_TIMEOUT", "120"))
# Loopback only: a proxy from the environment must never see these requests.
NO_PROXY = {"no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}


class IronicError(AssertionError):
    """ironic (or its installation) did not do what the test needs; the message says why."""


@dataclass(frozen=True)
class IronicInstall:
    venv: Path
    version: str

    @property
    def bin(self) -> Path:
        return self.venv / "bin"


def locate_ironic() -> IronicInstall:
    """The virtualenv ``tools/setup-ironic`` made (``TACET_IRONIC_VENV`` or the default)."""
    venv = Path(os.environ.get("TACET_IRONIC_VENV", str(DEFAULT_VENV)))
    python = venv / "bin" / "python"
    if not (venv / "bin" / "ironic").is_file() or not python.is_file():
        raise IronicError(
            f"no ironic in {venv}: run tools/setup-ironic (or point TACET_IRONIC_VENV at"
            " a virtualenv with ironic installed)"
        )
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('ironic'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise IronicError(f"ironic in {venv} does not import: {done.stderr.strip()}")
    version = done.stdout.strip()
    if version != IRONIC_VERSION:
        raise IronicError(
            f"{venv} has ironic {version}, not {IRONIC_VERSION} (TACET_IRONIC_VERSION):"
            " run tools/setup-ironic"
        )
    return IronicInstall(venv, version)


# --- configuration ---------------------------------------------------------------------

# What the tests need to be quick: ironic's defaults poll every 60 s and let an agent
# stay silent for 300 s. Nothing here touches TLS: [agent] require_tls, verify_ca and
# tls_minimum_version stay at ironic's defaults (a test checks ironic loaded them so).
QUICK = {
    "conductor": {
        "heartbeat_interval": "2",
        "sync_power_state_interval": "-1",  # fake power: nothing to sync
        "check_provision_state_interval": "5",
        "deploy_callback_timeout": "300",
        "clean_callback_timeout": "300",
        "inspect_wait_timeout": "300",
        # Measured against a 2-core test machine, not a conductor host.
        "minimum_required_memory": "128",
    },
    "api": {"ramdisk_heartbeat_timeout": "30"},
    "agent": {
        # After standby.power_off ironic polls the power state; fake power never
        # changes by itself, so ironic powers off hard after these attempts.
        "post_deploy_get_power_state_retries": "1",
        "post_deploy_get_power_state_retry_interval": "1",
        "command_wait_interval": "1",
    },
}


# Automated cleaning wipes metadata only (the agent's erase_devices_metadata), as most
# operators set it up. Left unset, ironic would also run the agent's erase_devices at
# the priority the agent reports (10): a full erase of every disk.
METADATA_CLEANING = {"deploy": {"erase_devices_priority": "0"}}


def ironic_config(
    workdir: Path, api_port: int, overrides: dict[str, dict[str, str]] | None = None
) -> configparser.ConfigParser:
    """ironic.conf for one all-in-one process on 127.0.0.1:``api_port`` (see module doc).

    Interfaces: ``manual-management`` and ``fake-hardware`` with ``fake`` power, ``noop``
    (or ``fake``) management, ``pxe`` (or ``fake``) boot, ``direct`` deploy and ``agent``
    inspection. Every path ironic writes is under ``workdir``.
    """
    api = f"http://127.0.0.1:{api_port}"
    dirs = {
        name: workdir / name
        for name in (
            "tftp",
            "tftp-master",
            "http",
            "images",
            "instances",
            "certificates",
            "deploy-logs",
            "locks",
            "state",
            "tmp",
        )
    }
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    config = configparser.ConfigParser(interpolation=None)
    config.read_dict(
        {
            "DEFAULT": {
                "auth_strategy": "noauth",
                "rpc_transport": "none",
                "host": "tacet-test-conductor",
                "my_ip": "127.0.0.1",
                "debug": "true",  # oslo.config logs every option ironic loaded
                "log_file": str(workdir / "ironic.log"),
                "use_stderr": "false",
                "state_path": str(dirs["state"]),
                "tempdir": str(dirs["tmp"]),
                "enabled_hardware_types": "manual-management,fake-hardware",
                "enabled_boot_interfaces": "pxe,fake",
                "enabled_deploy_interfaces": "direct,fake",
                "enabled_power_interfaces": "fake",
                "enabled_management_interfaces": "noop,fake",
                "enabled_inspect_interfaces": "agent,no-inspect",
                "enabled_network_interfaces": "noop",
                "enabled_console_interfaces": "no-console",
                "enabled_raid_interfaces": "no-raid",
                "enabled_rescue_interfaces": "no-rescue",
                "enabled_vendor_interfaces": "no-vendor",
                "enabled_bios_interfaces": "no-bios",
                "enabled_firmware_interfaces": "no-firmware",
                "enabled_storage_interfaces": "noop",
            },
            "api": {"host_ip": "127.0.0.1", "port": str(api_port)},
            "database": {"connection": f"sqlite:///{workdir / 'ironic.sqlite'}"},
            "dhcp": {"dhcp_provider": "none"},
            "service_catalog": {"endpoint_override": api},
            "pxe": {
                "tftp_server": "127.0.0.1",
                "tftp_root": str(dirs["tftp"]),
                "tftp_master_path": str(dirs["tftp-master"]),
                "images_path": str(dirs["images"]),
                "instance_master_path": str(dirs["instances"]),
            },
            "deploy": {"http_root": str(dirs["http"])},
            "agent": {
                "certificates_path": str(dirs["certificates"]),
                "deploy_logs_local_path": str(dirs["deploy-logs"]),
            },
            "oslo_concurrency": {"lock_path": str(dirs["locks"])},
        }
    )
    for extra in (QUICK, METADATA_CLEANING, overrides or {}):
        config.read_dict(extra)
    return config


# --- the process -------------------------------------------------------------------------


@dataclass
class IronicService:
    """One all-in-one ironic process; ``start``/``stop``, its log kept in ``workdir``."""

    install: IronicInstall
    workdir: Path
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    api_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    ready_seconds: float = 0.0  # from starting the process to the API answering

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def conf(self) -> Path:
        return self.workdir / "ironic.conf"

    @property
    def log(self) -> Path:
        return self.workdir / "ironic.log"

    @property
    def console(self) -> Path:
        """What the process wrote to stdout/stderr (before its log file is open)."""
        return self.workdir / "ironic.out"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **NO_PROXY,
            "PATH": f"{self.install.bin}:{os.environ['PATH']}",
            "PYTHONWARNINGS": "ignore",  # its dependencies' deprecation noise
            # stevedore caches the entry points it found under XDG_CACHE_HOME; one of its
            # own keeps a plugin installed after an earlier start from being seen.
            "XDG_CACHE_HOME": str(self.workdir / "cache"),
        }

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.api_port = self.api_port or free_port()
        config = ironic_config(self.workdir, self.api_port, self.overrides)
        with self.conf.open("w") as out:
            config.write(out)

    def create_schema(self) -> None:
        done = subprocess.run(
            [
                str(self.install.bin / "ironic-dbsync"),
                "--config-file",
                str(self.conf),
                "create_schema",
            ],
            capture_output=True,
            text=True,
            env=self.env(),
            check=False,
        )
        if done.returncode != 0:
            raise IronicError(f"ironic-dbsync create_schema failed:\n{done.stderr[-4000:]}")

    def start(self) -> None:
        self.write_config()
        self.create_schema()
        started = time.monotonic()
        with self.console.open("wb") as out:
            self.process = subprocess.Popen(
                [str(self.install.bin / "ironic"), "--config-file", str(self.conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
                start_new_session=True,  # its workers go with it in stop()
            )
        self.wait_ready()
        self.ready_seconds = time.monotonic() - started

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until the API answers and the conductor has registered its drivers."""
        deadline = time.monotonic() + timeout
        api = IronicApi(self.url)
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise IronicError(f"ironic exited with {self.process.returncode}\n{self.tail()}")
            try:
                drivers = api.get("/v1/drivers")["drivers"]
                if {d["name"] for d in drivers} >= {"manual-management", "fake-hardware"}:
                    return
            except (OSError, IronicError):
                pass
            time.sleep(0.5)
        raise IronicError(f"ironic's API did not come up within {timeout:g}s\n{self.tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def tail(self, lines: int = 80) -> str:
        parts = []
        for path in (self.console, self.log):
            if path.is_file():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} (last {len(text)} lines) ---\n" + "\n".join(text))
        return "\n".join(parts)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def loaded_options(self) -> dict[str, str]:
        """``group.option -> value`` as oslo.config logged them at start (debug on)."""
        found: dict[str, str] = {}
        for line in self.log_text().splitlines():
            # "... DEBUG oslo_service.backend... [-] agent.require_tls = True log_opt_values ..."
            _, sep, rest = line.partition("[-] ")
            if not sep or " = " not in rest:
                continue
            name, _, value = rest.partition(" = ")
            if " " in name.strip():
                continue
            found.setdefault(name.strip(), value.rsplit(" log_opt_values", 1)[0].strip())
        return found


# --- enrolling ---------------------------------------------------------------------------


def node_body(
    deploy_kernel: str,
    deploy_ramdisk: str,
    *,
    name: str | None = None,
    boot_mode: str = "bios",
    root_device: dict[str, str] | None = None,
    instance_info: dict[str, Any] | None = None,
    automated_clean: bool = False,
    passive_address: str | None = None,
) -> dict[str, Any]:
    """A ``POST /v1/nodes`` body: ``manual-management`` with ``pxe`` boot, ``fake`` power,
    ``direct`` deploy and ``agent`` inspection, or with ``passive_address`` (the agent's
    host:port) Tacet's plugin: ``tacet-manual-management``, ``tacet-pxe``, ``tacet-passive``."""
    body: dict[str, Any] = {
        "driver": "manual-management",
        "boot_interface": "pxe",
        "deploy_interface": "direct",
        "power_interface": "fake",
        "management_interface": "noop",
        "inspect_interface": "agent",
        "network_interface": "noop",
        "automated_clean": automated_clean,
        "driver_info": {"deploy_kernel": deploy_kernel, "deploy_ramdisk": deploy_ramdisk},
        "properties": {"cpu_arch": "x86_64", "capabilities": f"boot_mode:{boot_mode}"},
        "instance_info": instance_info or {},
    }
    if name is not None:
        body["name"] = name
    if root_device is not None:
        body["properties"]["root_device"] = root_device
    if passive_address is not None:
        body["driver"] = "tacet-manual-management"
        body["boot_interface"] = "tacet-pxe"
        body["deploy_interface"] = "tacet-passive"
        body["driver_info"]["tacet_address"] = passive_address
    return body


# --- the REST API --------------------------------------------------------------------------


class IronicApi:
    """JSON in, JSON out, one exception (:class:`IronicError`) for every non-2xx answer."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        req.add_header("X-OpenStack-Ironic-API-Version", API_VERSION)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with self.opener.open(req, timeout=30) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise IronicError(f"{method} {path}: {exc.code} {detail}") from None
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def patch(self, path: str, ops: list[dict[str, Any]]) -> Any:
        return self.request("PATCH", path, ops)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    # -- nodes --
    def node(self, ident: str) -> dict[str, Any]:
        node: dict[str, Any] = self.get(f"/v1/nodes/{ident}")
        return node

    def set_provision_state(self, ident: str, target: str, **extra: Any) -> None:
        self.request("PUT", f"/v1/nodes/{ident}/states/provision", {"target": target, **extra})

    def wait_for_state(
        self,
        ident: str,
        wanted: str | set[str],
        timeout: float,
        failed: set[str] | frozenset[str] = frozenset(),
        poll: float = 0.5,
        alive: Callable[[], str | None] | None = None,
    ) -> dict[str, Any]:
        """The node once ``provision_state`` is one of ``wanted`` and nothing is in flight;
        :class:`IronicError` when it reaches a state in ``failed``, time runs out, or
        ``alive`` (checked on each poll) returns why waiting is pointless."""
        targets = {wanted} if isinstance(wanted, str) else wanted
        deadline = time.monotonic() + timeout
        node = self.node(ident)
        while time.monotonic() < deadline:
            problem = alive() if alive is not None else None
            if problem:
                raise IronicError(f"node {ident} {node['provision_state']!r}: {problem}")
            node = self.node(ident)
            state = node["provision_state"]
            if state in targets and node["target_provision_state"] is None:
                return node
            if state in targets and state in WAIT_STATES | FAILURE_STATES:
                return node  # these keep their target
            if state in failed:
                raise NodeFailed(node)
            time.sleep(poll)
        raise IronicError(
            f"node {ident} still {node['provision_state']!r} (target"
            f" {node['target_provision_state']!r}) after {timeout:g}s, not {sorted(targets)};"
            f" last_error: {node.get('last_error')}"
        )


class NodeFailed(IronicError):
    def __init__(self, node: dict[str, Any]) -> None:
        self.node = node
        super().__init__(
            f"node {node['uuid']} reached {node['provision_state']!r}: {node.get('last_error')}"
        )


def main() -> int:
    """``python -m tests.ironic.launcher WORKDIR``: run ironic by hand, as the tests do."""
    workdir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("ironic-run")
    service = IronicService(locate_ironic(), workdir.resolve())
    service.start()
    print(f"ironic {service.install.version} API at {service.url}; log {service.log}", flush=True)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
