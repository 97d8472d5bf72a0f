"""The agent's one typed configuration: defaults, then TOML files, then the kernel command line.

This is the only module that reads the kernel command line. Every value remembers
where it came from, so an invalid setting stops the start with one message naming
the key and its source.
"""

from __future__ import annotations

import itertools
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_CMDLINE = Path("/proc/cmdline")
DEFAULT_CONFIG_DIR = Path("/etc/tacet")
DEFAULT_STATE_DIR = Path("/run/tacet")
KERNEL = "kernel command line"


class ConfigError(ValueError):
    """A setting is invalid; the message names the key and where it came from."""


@dataclass(frozen=True)
class Config:
    api_urls: tuple[str, ...] = ()
    agent_token: str | None = field(default=None, repr=False)
    global_request_id: str | None = None
    listen_host: str = "::"
    listen_port: int = 9999
    advertise_host: str | None = None
    advertise_port: int | None = None
    insecure: bool = False
    api_ca_file: Path | None = None
    lookup_timeout: float = 600.0
    lookup_interval: float = 1.0
    tls_min_version: str = "1.2"
    debug: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    client_allowlist: tuple[str, ...] = ()
    command_history: int = 100
    inventory_max_age: float = 300.0
    max_body_bytes: int = 1024 * 1024
    # Under a hostile network: see agent/connections.py for the policy at the caps.
    max_connections: int = 512
    max_connections_per_peer: int = 64
    handshake_timeout: float = 10.0
    header_timeout: float = 10.0  # for a complete request head (slowloris)
    body_timeout: float = 10.0  # for the whole body, from its head (agent/bodies.py)
    idle_timeout: float = 75.0  # keep-alive; the conductor's pool gives up idle ones at 60 s
    # Attached loop devices as disks, for trying Tacet out: all (True) or only these names.
    allow_loop_devices: bool | tuple[str, ...] = False
    # ironic inspection (agent/inspection.py) and LLDP, under IPA's names and defaults
    inspection_urls: tuple[str, ...] = ()
    inspection_collectors: tuple[str, ...] = ("default", "logs")
    inspection_dhcp_all_interfaces: bool = False
    inspection_dhcp_wait_timeout: float = 60.0
    collect_lldp: bool = False
    access_log: bool = False  # one log line per answered request (agent/access.py)
    lldp_timeout: float = 30.0
    # Read by the ramdisk's network step (agent/netconfig) before the agent starts.
    network_fallback: str = "none"  # what refused network input leaves: nothing, or DHCP
    config_drive_wait: float | None = None  # seconds; None: 30 on virtual media, else 0
    efivars_dir: Path = Path("/sys/firmware/efi/efivars")  # UEFI variables (boot entries)
    cmdline: str = field(default="", repr=False)  # may carry ipa-agent-token
    config_dir: Path = DEFAULT_CONFIG_DIR
    state_dir: Path = DEFAULT_STATE_DIR
    origins: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def mode(self) -> str:
        """``active`` (lookup + heartbeat) when an ironic API URL is configured, else
        ``inspection`` (one inventory post) with a callback URL; ``passive`` (never
        connects out) with neither."""
        return "active" if self.api_urls else "inspection" if self.inspection_urls else "passive"

    @property
    def inspection_targets(self) -> tuple[str, ...]:
        """Where inspection data goes: the callback URL(s), else (as IPA) the API's
        continue_inspection when collectors were set explicitly; none means no inspection."""
        if self.inspection_urls:
            return self.inspection_urls
        if self.api_urls and self.origins.get("inspection_collectors", "default") != "default":
            return tuple(f"{url}/v1/continue_inspection" for url in self.api_urls)
        return ()

    @property
    def lldp_capture(self) -> bool:
        """LLDP is captured into the inventory: asked for, or wanted by inspection."""
        wanted = bool(self.inspection_targets) and "lldp" in self.inspection_collectors
        return self.collect_lldp or wanted


# -- value parsers: text -> value, raising ValueError with a reason ----------------------
def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError("must be a port number between 1 and 65535")
    return port


def _positive_int(text: str) -> int:
    number = int(text)
    if number < 1:
        raise ValueError("must be a positive integer")
    return number


def _positive_float(text: str) -> float:
    number = float(text)
    if not number > 0:
        raise ValueError("must be a positive number")
    return number


def _seconds(text: str) -> float:
    number = float(text)
    if not number >= 0:
        raise ValueError("must be a number of seconds, 0 or more")
    return number


LOOP_NAME = re.compile(r"loop[0-9]+")


NETWORK_FALLBACKS = ("none", "dhcp")
MAX_CONFIG_DRIVE_WAIT = 300.0


def _network_fallback(text: str) -> str:
    if text not in NETWORK_FALLBACKS:
        raise ValueError(f"must be one of {', '.join(NETWORK_FALLBACKS)}")
    return text


def _config_drive_wait(text: str) -> float:
    problem = f"must be a number of seconds from 0 to {MAX_CONFIG_DRIVE_WAIT:g}"
    try:
        number = float(text)
    except ValueError:
        raise ValueError(problem) from None
    if not 0 <= number <= MAX_CONFIG_DRIVE_WAIT:
        raise ValueError(problem)
    return number


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true/false (or 1/0)")


def _loop_devices(text: str) -> bool | tuple[str, ...]:
    """true/false, or the only loop devices to see (``loop3,loop4``; ``/dev/`` optional)."""
    try:
        return _bool(text)
    except ValueError:
        pass
    names = tuple(part.strip().removeprefix("/dev/") for part in text.split(",") if part.strip())
    if not names or not all(LOOP_NAME.fullmatch(name) for name in names):
        raise ValueError("must be true/false or loop device names (loop3,loop4)")
    return names


def _urls(text: str) -> tuple[str, ...]:
    urls = tuple(part.strip().rstrip("/") for part in text.split(",") if part.strip())
    if not urls:
        raise ValueError("must list at least one URL")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL")
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
    return urls


def _tls_version(text: str) -> str:
    value = text.strip().removeprefix("TLSv").removeprefix("tlsv")
    if value not in ("1.2", "1.3"):
        raise ValueError("must be 1.2 or 1.3")
    return value


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text.strip()


def _path(text: str) -> Path:
    return Path(_text(text))


def _patterns(text: str) -> tuple[str, ...]:
    patterns = tuple(part.strip() for part in text.split(",") if part.strip())
    if not patterns:
        raise ValueError("must list at least one name pattern")
    return patterns


# Per-node secrets land in the config directory (baked into the image, or unpacked from
# the initrd iPXE appends). These well-known names are used when present.
CLIENT_CA_NAME = "client-ca.pem"
SERVER_CERT_NAME = "server-cert.pem"
SERVER_KEY_NAME = "server-key.pem"
TOKEN_NAME = "token"


def _discover_files(config_dir: Path, values: dict[str, Any], origins: dict[str, str]) -> None:
    """Fill unset file settings from the well-known files in the config directory."""
    ca = config_dir / CLIENT_CA_NAME
    if "client_ca_file" not in values and ca.is_file():
        values["client_ca_file"], origins["client_ca_file"] = ca, str(ca)
    cert, key = config_dir / SERVER_CERT_NAME, config_dir / SERVER_KEY_NAME
    if "cert_file" not in values and "key_file" not in values and cert.is_file() and key.is_file():
        values["cert_file"], origins["cert_file"] = cert, str(cert)
        values["key_file"], origins["key_file"] = key, str(key)
    token = config_dir / TOKEN_NAME
    if "agent_token" not in values and token.is_file():
        if token.stat().st_mode & 0o077:
            raise ConfigError(f"{token}: the token file must not be readable by others (0600)")
        try:
            text = token.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{token}: cannot read the token: {exc}") from None
        if not text:
            raise ConfigError(f"{token}: the token file is empty")
        values["agent_token"], origins["agent_token"] = text, str(token)


@dataclass(frozen=True)
class Setting:
    field: str
    parse: Callable[[str], Any]
    ironic_name: str | None = None  # the ipa-* kernel parameter, when ironic has one
    secret: bool = False


SETTINGS: dict[str, Setting] = {
    "api-url": Setting("api_urls", _urls, "ipa-api-url"),
    "agent-token": Setting("agent_token", _text, "ipa-agent-token", secret=True),
    "global-request-id": Setting("global_request_id", _text, "ipa-global-request-id"),
    "listen-host": Setting("listen_host", _text, "ipa-listen-host"),
    "listen-port": Setting("listen_port", _port, "ipa-listen-port"),
    "advertise-host": Setting("advertise_host", _text, "ipa-advertise-host"),
    "advertise-port": Setting("advertise_port", _port, "ipa-advertise-port"),
    "insecure": Setting("insecure", _bool, "ipa-insecure"),
    "api-ca-file": Setting("api_ca_file", _path),
    "lookup-timeout": Setting("lookup_timeout", _positive_float, "ipa-lookup-timeout"),
    "lookup-interval": Setting("lookup_interval", _positive_float, "ipa-lookup-interval"),
    "tls-min-version": Setting("tls_min_version", _tls_version, "ipa-tls-min-version"),
    "debug": Setting("debug", _bool, "ipa-debug"),
    "cert-file": Setting("cert_file", _path),
    "key-file": Setting("key_file", _path),
    "client-ca-file": Setting("client_ca_file", _path),
    "client-allowlist": Setting("client_allowlist", _patterns),
    "command-history": Setting("command_history", _positive_int),
    "inventory-max-age": Setting("inventory_max_age", _positive_float),
    "max-body-bytes": Setting("max_body_bytes", _positive_int),
    "max-connections": Setting("max_connections", _positive_int),
    "max-connections-per-peer": Setting("max_connections_per_peer", _positive_int),
    "handshake-timeout": Setting("handshake_timeout", _positive_float),
    "header-timeout": Setting("header_timeout", _positive_float),
    "body-timeout": Setting("body_timeout", _positive_float),
    "idle-timeout": Setting("idle_timeout", _positive_float),
    "allow-loop-devices": Setting("allow_loop_devices", _loop_devices),
    "inspection-callback-url": Setting("inspection_urls", _urls, "ipa-inspection-callback-url"),
    "inspection-collectors": Setting(
        "inspection_collectors", _patterns, "ipa-inspection-collectors"
    ),
    "inspection-dhcp-all-interfaces": Setting(
        "inspection_dhcp_all_interfaces", _bool, "ipa-inspection-dhcp-all-interfaces"
    ),
    "inspection-dhcp-wait-timeout": Setting(
        "inspection_dhcp_wait_timeout", _seconds, "ipa-inspection-dhcp-wait-timeout"
    ),
    "collect-lldp": Setting("collect_lldp", _bool, "ipa-collect-lldp"),
    "access-log": Setting("access_log", _bool),
    "lldp-timeout": Setting("lldp_timeout", _positive_float, "ipa-lldp-timeout"),
    "efivars-dir": Setting("efivars_dir", _path),
    "network-fallback": Setting("network_fallback", _network_fallback),
    "config-drive-wait": Setting("config_drive_wait", _config_drive_wait),
}
IRONIC_NAMES = {s.ironic_name: name for name, s in SETTINGS.items() if s.ironic_name}
TACET_PREFIX = "tacet."


def read_kernel_cmdline(cmdline_file: Path = DEFAULT_CMDLINE) -> str:
    """The kernel command line: the one reader of ``/proc/cmdline`` (OSError if unreadable).
    Bytes that are not UTF-8 may belong to other parameters, which are not ours."""
    return cmdline_file.read_bytes().decode("utf-8", errors="replace")


def cmdline_words(text: str) -> list[str]:
    """The words of a kernel command line (quotes group), up to a ``--`` (what follows it
    is for init, not the kernel)."""
    try:
        tokens = shlex.split(text)
    except ValueError:
        tokens = text.split()
    return list(itertools.takewhile(lambda token: token != "--", tokens))


def parse_cmdline(text: str) -> list[tuple[str, str]]:
    """``key=value`` tokens of a kernel command line (quotes allowed); flags get ``""``."""
    return [(key, value) for key, _, value in (w.partition("=") for w in cmdline_words(text))]


def _apply(
    values: dict[str, Any],
    origins: dict[str, str],
    name: str,
    raw: Any,
    source: str,
    shown_key: str,
) -> None:
    setting = SETTINGS[name]
    text = (
        ",".join(raw)
        if isinstance(raw, list)
        else str(raw).lower()
        if isinstance(raw, bool)
        else str(raw)
    )
    try:
        values[setting.field] = setting.parse(text)
    except ValueError as exc:
        shown = "<hidden>" if setting.secret else text
        reason = (
            str(exc)
            if not str(exc).startswith(("invalid literal", "could not convert"))
            else ("is not a number")
        )
        raise ConfigError(f"{shown_key}={shown} ({source}): {reason}") from None
    origins[setting.field] = source


def read_config_files(config_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``*.toml`` in the directory, in name order (later files win)."""
    if not config_dir.is_dir():
        return []
    import tomllib  # here: the ramdisk usually has no files, and under emulation it costs 0.3 s

    result = []
    for path in sorted(config_dir.glob("*.toml")):
        try:
            result.append((path, tomllib.loads(path.read_text())))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read TOML: {exc}") from None
    return result


def load_config(
    cmdline_file: Path = DEFAULT_CMDLINE,
    config_dir: Path = DEFAULT_CONFIG_DIR,
    state_dir: Path = DEFAULT_STATE_DIR,
) -> Config:
    values: dict[str, Any] = {}
    origins: dict[str, str] = {f.name: "default" for f in fields(Config)}
    for path, table in read_config_files(config_dir):
        for key, raw in table.items():
            if key not in SETTINGS:
                raise ConfigError(
                    f"{key} ({path}): unknown setting; known: {', '.join(sorted(SETTINGS))}"
                )
            if isinstance(raw, dict):
                raise ConfigError(f"{key} ({path}): must be a value, not a table")
            if isinstance(raw, list) and not all(isinstance(item, str) for item in raw):
                raise ConfigError(f"{key} ({path}): a list must hold only strings")
            _apply(values, origins, key, raw, str(path), key)
    _discover_files(config_dir, values, origins)
    try:
        cmdline = read_kernel_cmdline(cmdline_file)
    except OSError as exc:
        raise ConfigError(
            f"cannot read the kernel command line from {cmdline_file}: {exc}"
        ) from None
    for key, raw in parse_cmdline(cmdline):
        if key.startswith(TACET_PREFIX):
            name = key[len(TACET_PREFIX) :]
            if name not in SETTINGS:
                raise ConfigError(
                    f"{key} ({KERNEL}): unknown Tacet setting; known: "
                    + ", ".join(TACET_PREFIX + n for n in sorted(SETTINGS))
                )
        elif key in IRONIC_NAMES:
            name = IRONIC_NAMES[key]
        else:
            continue  # other kernel parameters are not ours
        if raw == "" and SETTINGS[name].parse in (_bool, _loop_devices):
            raw = "true"  # a bare flag such as ``ipa-debug`` means on
        _apply(values, origins, name, raw, KERNEL, key)
    config = Config(cmdline=cmdline.strip(), config_dir=config_dir, state_dir=state_dir, **values)
    if (config.cert_file is None) != (config.key_file is None):
        raise ConfigError(
            "cert-file and key-file must be given together "
            f"(cert-file from {origins['cert_file']}, key-file from {origins['key_file']})"
        )
    return replace(config, origins=origins)
