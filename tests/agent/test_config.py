"""Unit tests for ``agent.config``: defaults, TOML files, kernel command line, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent import config as config_module
from agent.config import (
    IRONIC_NAMES,
    KERNEL,
    SETTINGS,
    Config,
    ConfigError,
    Setting,
    load_config,
    parse_cmdline,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def load(tmp_path: Path):
    """``load(cmdline, files)``: write the cmdline file and TOML files, then load."""

    def make(cmdline: str | bytes = "", files: dict[str, str] | None = None) -> Config:
        cmdline_file = tmp_path / "cmdline"
        if isinstance(cmdline, bytes):
            cmdline_file.write_bytes(cmdline)
        else:
            cmdline_file.write_text(cmdline)
        config_dir = tmp_path / "etc"
        if files is not None:
            config_dir.mkdir(exist_ok=True)
            for name, text in files.items():
                (config_dir / name).write_text(text)
        return load_config(cmdline_file, config_dir, tmp_path / "state")

    return make


def error_of(load, cmdline: str = "", files: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(cmdline, files)
    return str(info.value)


# -- defaults ----------------------------------------------------------------------------


def test_defaults_without_cmdline_or_config_dir(load, tmp_path: Path) -> None:
    config = load("")
    assert config.mode == "passive"
    assert config.api_urls == ()
    assert config.listen_port == 9999
    assert config.listen_host == "::"
    assert config.agent_token is None
    assert config.advertise_host is None
    assert config.advertise_port is None
    assert config.insecure is False
    assert config.debug is False
    assert config.tls_min_version == "1.2"
    assert config.lookup_timeout == 600.0
    assert config.lookup_interval == 1.0
    assert config.cert_file is None and config.key_file is None
    assert config.cmdline == ""
    assert config.config_dir == tmp_path / "etc"
    assert config.state_dir == tmp_path / "state"
    assert set(config.origins.values()) == {"default"}


def test_default_paths_are_the_system_ones() -> None:
    assert Path("/proc/cmdline") == config_module.DEFAULT_CMDLINE
    assert Path("/etc/tacet") == config_module.DEFAULT_CONFIG_DIR
    assert Path("/run/tacet") == config_module.DEFAULT_STATE_DIR


def test_loading_does_not_create_the_state_dir(load, tmp_path: Path) -> None:
    load("ipa-listen-port=1234")
    assert not (tmp_path / "state").exists()


def test_typical_cmdline_without_ironic_urls_stays_passive_and_is_kept(load) -> None:
    line = (
        "BOOT_IMAGE=/vmlinuz root=/dev/ram0 ro quiet console=ttyS0,115200n8 "
        "BOOTIF=01-52-54-00-12-34-56 ipa-inspection-benchmarks=cpu "
        "ipa-unknown-thing=1 systemd.journald.forward_to_console=yes nofb\n"
    )
    config = load(line)
    assert config.mode == "passive"
    assert config.inspection_targets == ()
    assert config.listen_port == 9999
    assert config.cmdline == line.strip()
    assert set(config.origins.values()) == {"default"}


def test_ironic_inspection_cmdline_selects_inspection_mode(load) -> None:
    """What ironic's agent inspect interface puts on the command line."""
    config = load(
        "BOOTIF=01-52-54-00-12-34-56 "
        "ipa-inspection-callback-url=https://192.0.2.1:6385/v1/continue_inspection/"
    )
    assert config.mode == "inspection"
    assert config.inspection_targets == ("https://192.0.2.1:6385/v1/continue_inspection",)
    assert config.inspection_collectors == ("default", "logs")
    assert not config.lldp_capture


def test_api_url_alone_does_not_inspect_but_explicit_collectors_do(load) -> None:
    """IPA's rule: with collectors set and no callback, post to the API's endpoint."""
    assert load("ipa-api-url=http://192.0.2.1:6385").inspection_targets == ()
    config = load("ipa-api-url=http://192.0.2.1:6385 ipa-inspection-collectors=default,lldp")
    assert config.mode == "active"
    assert config.inspection_targets == ("http://192.0.2.1:6385/v1/continue_inspection",)
    assert config.lldp_capture  # the lldp collector needs the capture


def test_lldp_capture_follows_collect_lldp(load) -> None:
    assert not load("").lldp_capture
    config = load("ipa-collect-lldp=1 ipa-lldp-timeout=5")
    assert config.lldp_capture and config.lldp_timeout == 5.0
    assert config.mode == "passive"  # listening for LLDP frames sends nothing
    # the lldp collector without inspection captures nothing
    assert not load("ipa-inspection-collectors=lldp").lldp_capture


def test_inspection_callback_must_be_http_urls(load) -> None:
    with pytest.raises(ConfigError, match="ipa-inspection-callback-url=mdns"):
        load("ipa-inspection-callback-url=mdns")


# -- TOML files --------------------------------------------------------------------------


def test_toml_file_values_are_applied(load, tmp_path: Path) -> None:
    config = load(
        "",
        {
            "tacet.toml": (
                'listen-host = "127.0.0.1"\n'
                "listen-port = 8443\n"
                "insecure = true\n"
                "lookup-timeout = 30.5\n"
                'tls-min-version = "1.3"\n'
                "command-history = 7\n"
                "inventory-max-age = 12\n"
                "max-body-bytes = 2048\n"
                'cert-file = "/etc/tacet/cert.pem"\n'
                'key-file = "/etc/tacet/key.pem"\n'
                'api-ca-file = "/etc/tacet/ca.pem"\n'
            )
        },
    )
    assert config.listen_host == "127.0.0.1"
    assert config.listen_port == 8443
    assert config.insecure is True
    assert config.lookup_timeout == 30.5
    assert config.tls_min_version == "1.3"
    assert config.command_history == 7
    assert config.inventory_max_age == 12.0
    assert config.max_body_bytes == 2048
    assert config.cert_file == Path("/etc/tacet/cert.pem")
    assert config.key_file == Path("/etc/tacet/key.pem")
    assert config.api_ca_file == Path("/etc/tacet/ca.pem")
    path = str(tmp_path / "etc" / "tacet.toml")
    assert config.origins["listen_port"] == path
    assert config.origins["cert_file"] == path


def test_toml_files_apply_in_name_order_later_wins(load, tmp_path: Path) -> None:
    # Written in reverse order so that creation order cannot be what decides.
    config = load(
        "",
        {
            "20-late.toml": "listen-port = 2000\n",
            "10-early.toml": 'listen-port = 1000\nlisten-host = "10.0.0.1"\n',
        },
    )
    assert config.listen_port == 2000
    assert config.listen_host == "10.0.0.1"
    assert config.origins["listen_port"] == str(tmp_path / "etc" / "20-late.toml")
    assert config.origins["listen_host"] == str(tmp_path / "etc" / "10-early.toml")


def test_only_toml_files_are_read(load) -> None:
    config = load(
        "",
        {"a.toml": "listen-port = 1000\n", "b.conf": "this is = not [toml", "c.toml.bak": "x"},
    )
    assert config.listen_port == 1000


def test_toml_list_of_api_urls(load) -> None:
    config = load("", {"a.toml": 'api-url = ["http://a:6385/", " https://b:6385 "]\n'})
    assert config.api_urls == ("http://a:6385", "https://b:6385")
    assert config.mode == "active"


def test_toml_native_boolean_false(load) -> None:
    config = load("", {"a.toml": "insecure = false\ndebug = true\n"})
    assert config.insecure is False
    assert config.debug is True


# -- kernel command line -----------------------------------------------------------------


def test_cmdline_wins_over_files(load) -> None:
    config = load(
        "ipa-listen-port=2000 tacet.command-history=3",
        {"a.toml": "listen-port = 1000\ncommand-history = 50\nmax-body-bytes = 99\n"},
    )
    assert config.listen_port == 2000
    assert config.command_history == 3
    assert config.max_body_bytes == 99
    assert config.origins["listen_port"] == KERNEL
    assert config.origins["command_history"] == KERNEL


def test_every_ipa_name(load) -> None:
    config = load(
        "ipa-api-url=http://192.0.2.1:6385 ipa-agent-token=tok ipa-global-request-id=req-1 "
        "ipa-listen-host=::1 ipa-listen-port=8443 ipa-advertise-host=192.0.2.5 "
        "ipa-advertise-port=443 ipa-insecure=1 ipa-lookup-timeout=30 ipa-lookup-interval=2.5 "
        "ipa-tls-min-version=1.3 ipa-debug=true "
        "ipa-inspection-callback-url=http://192.0.2.1:6385/v1/continue_inspection "
        "ipa-inspection-collectors=default,lldp ipa-inspection-dhcp-all-interfaces "
        "ipa-inspection-dhcp-wait-timeout=0 ipa-collect-lldp=1 ipa-lldp-timeout=2"
    )
    assert config.api_urls == ("http://192.0.2.1:6385",)
    assert config.agent_token == "tok"
    assert config.global_request_id == "req-1"
    assert config.listen_host == "::1"
    assert config.listen_port == 8443
    assert config.advertise_host == "192.0.2.5"
    assert config.advertise_port == 443
    assert config.insecure is True
    assert config.lookup_timeout == 30.0
    assert config.lookup_interval == 2.5
    assert config.tls_min_version == "1.3"
    assert config.debug is True
    assert config.inspection_urls == ("http://192.0.2.1:6385/v1/continue_inspection",)
    assert config.inspection_collectors == ("default", "lldp")
    assert config.inspection_dhcp_all_interfaces is True
    assert config.inspection_dhcp_wait_timeout == 0.0
    assert config.collect_lldp is True
    assert config.lldp_timeout == 2.0
    for name in IRONIC_NAMES.values():
        assert config.origins[SETTINGS[name].field] == KERNEL, name


def test_ironic_names_match_protocol_section_3() -> None:
    assert set(IRONIC_NAMES) == {
        "ipa-api-url",
        "ipa-agent-token",
        "ipa-global-request-id",
        "ipa-listen-host",
        "ipa-listen-port",
        "ipa-advertise-host",
        "ipa-advertise-port",
        "ipa-insecure",
        "ipa-lookup-timeout",
        "ipa-lookup-interval",
        "ipa-tls-min-version",
        "ipa-debug",
        "ipa-inspection-callback-url",
        "ipa-inspection-collectors",
        "ipa-inspection-dhcp-all-interfaces",
        "ipa-inspection-dhcp-wait-timeout",
        "ipa-collect-lldp",
        "ipa-lldp-timeout",
    }


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_setting_has_a_tacet_name(load, name: str) -> None:
    values = {
        "api-url": "http://x",
        "insecure": "yes",
        "debug": "on",
        "allow-loop-devices": "1",
        "inspection-callback-url": "http://x",
        "inspection-dhcp-all-interfaces": "1",
        "collect-lldp": "1",
        "access-log": "1",
        "tls-min-version": "1.3",
        "cert-file": "/c",
        "key-file": "/k",
        "network-fallback": "dhcp",
    }
    value = values.get(name, "42")
    extra = ""
    if name == "cert-file":
        extra = " tacet.key-file=/k"
    elif name == "key-file":
        extra = " tacet.cert-file=/c"
    config = load(f"tacet.{name}={value}{extra}")
    field = SETTINGS[name].field
    assert config.origins[field] == KERNEL
    assert getattr(config, field) != getattr(Config(), field)


def test_tacet_name_wins_over_file(load) -> None:
    config = load("tacet.listen-port=7000", {"a.toml": "listen-port = 1000\n"})
    assert config.listen_port == 7000
    assert config.origins["listen_port"] == KERNEL


def test_later_cmdline_token_wins(load) -> None:
    config = load("ipa-listen-port=1000 tacet.listen-port=2000 ipa-debug=1 ipa-debug=0")
    assert config.listen_port == 2000
    assert config.debug is False


def test_quoted_values(load) -> None:
    config = load(
        "ipa-api-url=\"http://a:6385/,http://b:6385\" tacet.listen-host='::1' "
        'ipa-global-request-id="req with spaces"'
    )
    assert config.api_urls == ("http://a:6385", "http://b:6385")
    assert config.listen_host == "::1"
    assert config.global_request_id == "req with spaces"


def test_tokens_after_double_dash_are_ignored(load) -> None:
    config = load("ipa-listen-port=1000 -- ipa-listen-port=2000 tacet.foo=1 ipa-listen-port=abc")
    assert config.listen_port == 1000


def test_unbalanced_quote_falls_back_to_whitespace_split(load) -> None:
    config = load('foo="unterminated ipa-listen-port=1234')
    assert config.listen_port == 1234


def test_non_utf8_bytes_in_other_parameters_are_ignored(load) -> None:
    config = load(b"vendor=\xff\xfe ipa-listen-port=8080\n")
    assert config.listen_port == 8080


def test_parse_cmdline_pairs() -> None:
    assert parse_cmdline('a=1 flag b="x y" c=d=e -- f=2') == [
        ("a", "1"),
        ("flag", ""),
        ("b", "x y"),
        ("c", "d=e"),
    ]


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "on", " On "])
def test_true_values(load, text: str) -> None:
    assert load(f"ipa-insecure='{text}'").insecure is True


@pytest.mark.parametrize("text", ["0", "false", "False", "no", "off"])
def test_false_values(load, text: str) -> None:
    config = load(f"ipa-insecure={text}", {"a.toml": "insecure = true\n"})
    assert config.insecure is False
    assert config.origins["insecure"] == KERNEL


@pytest.mark.parametrize(("text", "expected"), [("1.2", "1.2"), ("TLSv1.3", "1.3")])
def test_tls_min_version_spellings(load, text: str, expected: str) -> None:
    assert load(f"ipa-tls-min-version={text}").tls_min_version == expected


def test_tls_min_version_as_toml_number(load) -> None:
    assert load("", {"a.toml": "tls-min-version = 1.3\n"}).tls_min_version == "1.3"


# -- mode --------------------------------------------------------------------------------


def test_one_api_url_is_active(load) -> None:
    config = load("ipa-api-url=https://ironic.example:6385/")
    assert config.mode == "active"
    assert config.api_urls == ("https://ironic.example:6385",)


def test_comma_separated_api_urls_are_active(load) -> None:
    config = load("ipa-api-url=http://192.0.2.1:6385,https://[2001:db8::1]:6385/,")
    assert config.mode == "active"
    assert config.api_urls == ("http://192.0.2.1:6385", "https://[2001:db8::1]:6385")
    assert config.origins["api_urls"] == KERNEL


def test_mode_property() -> None:
    assert Config().mode == "passive"
    assert Config(api_urls=("http://x",)).mode == "active"


# -- origins -----------------------------------------------------------------------------


def test_origins_record_each_source(load, tmp_path: Path) -> None:
    config = load(
        "ipa-listen-port=2000 tacet.debug=1",
        {"10.toml": 'listen-host = "::1"\nlisten-port = 1\n', "20.toml": "insecure = true\n"},
    )
    assert config.origins["listen_port"] == KERNEL
    assert config.origins["debug"] == KERNEL
    assert config.origins["listen_host"] == str(tmp_path / "etc" / "10.toml")
    assert config.origins["insecure"] == str(tmp_path / "etc" / "20.toml")
    assert config.origins["api_urls"] == "default"
    assert config.origins["tls_min_version"] == "default"


# -- errors: kernel command line ---------------------------------------------------------

KERNEL_ERRORS = [
    ("ipa-listen-port=99999", "ipa-listen-port", "between 1 and 65535"),
    ("ipa-listen-port=0", "ipa-listen-port", "between 1 and 65535"),
    ("ipa-listen-port=abc", "ipa-listen-port", "not a number"),
    ("ipa-listen-port=", "ipa-listen-port", "not a number"),
    ("tacet.listen-port=70000", "tacet.listen-port", "between 1 and 65535"),
    ("ipa-advertise-port=-1", "ipa-advertise-port", "between 1 and 65535"),
    ("ipa-api-url=ftp://x", "ipa-api-url", "not an http(s) URL"),
    ("ipa-api-url=", "ipa-api-url", "at least one URL"),
    ("ipa-api-url=,", "ipa-api-url", "at least one URL"),
    ("ipa-api-url=http://", "ipa-api-url", "not an http(s) URL"),
    ("ipa-api-url=ironic:6385", "ipa-api-url", "not an http(s) URL"),
    ("ipa-api-url=http://a,ftp://b", "ipa-api-url", "ftp://b"),
    ("ipa-api-url=http://a:99999", "ipa-api-url", "out of range"),
    ("tacet.foo=1", "tacet.foo", "unknown Tacet setting"),
    ("tacet.listen_port=1", "tacet.listen_port", "unknown Tacet setting"),
    ("ipa-insecure=maybe", "ipa-insecure", "true/false"),
    ("ipa-debug=2", "ipa-debug", "true/false"),
    ("ipa-tls-min-version=1.1", "ipa-tls-min-version", "1.2 or 1.3"),
    ("ipa-tls-min-version=", "ipa-tls-min-version", "1.2 or 1.3"),
    ("ipa-lookup-timeout=0", "ipa-lookup-timeout", "positive"),
    ("ipa-lookup-timeout=-5", "ipa-lookup-timeout", "positive"),
    ("ipa-lookup-timeout=nan", "ipa-lookup-timeout", "positive"),
    ("ipa-lookup-interval=soon", "ipa-lookup-interval", "not a number"),
    ("ipa-listen-host=", "ipa-listen-host", "must not be empty"),
    ("ipa-listen-host='  '", "ipa-listen-host", "must not be empty"),
    ("tacet.command-history=0", "tacet.command-history", "positive integer"),
    ("tacet.max-body-bytes=1.5", "tacet.max-body-bytes", "not a number"),
    ("tacet.cert-file=", "tacet.cert-file", "must not be empty"),
]


@pytest.mark.parametrize(("cmdline", "key", "reason"), KERNEL_ERRORS)
def test_kernel_errors_name_key_and_source(load, cmdline: str, key: str, reason: str) -> None:
    message = error_of(load, f"quiet {cmdline} console=ttyS0")
    assert message.startswith(key), message
    assert f"({KERNEL})" in message
    assert reason in message
    assert "\n" not in message


def test_unknown_tacet_key_lists_known_names(load) -> None:
    message = error_of(load, "tacet.foo=1")
    assert "tacet.listen-port" in message
    assert "tacet.api-url" in message


def test_kernel_error_wins_over_valid_file(load) -> None:
    message = error_of(load, "ipa-listen-port=99999", {"a.toml": "listen-port = 1000\n"})
    assert message.startswith("ipa-listen-port=99999 (kernel command line)")


def test_kernel_error_even_when_overridden_later(load) -> None:
    # Every token is validated, not only the one that would win.
    message = error_of(load, "ipa-listen-port=abc ipa-listen-port=1000")
    assert "ipa-listen-port=abc" in message


# -- errors: files -----------------------------------------------------------------------

FILE_ERRORS = [
    ("listen-port = 99999\n", "listen-port", "between 1 and 65535"),
    ("listen-port = 0\n", "listen-port", "between 1 and 65535"),
    ('listen-port = "abc"\n', "listen-port", "not a number"),
    ("listen-port = 80.5\n", "listen-port", "not a number"),
    ('api-url = "ftp://x"\n', "api-url", "not an http(s) URL"),
    ('api-url = ""\n', "api-url", "at least one URL"),
    ("api-url = []\n", "api-url", "at least one URL"),
    ('insecure = "maybe"\n', "insecure", "true/false"),
    ('tls-min-version = "1.0"\n', "tls-min-version", "1.2 or 1.3"),
    ("foo = 1\n", "foo", "unknown setting"),
    ("ipa-listen-port = 1\n", "ipa-listen-port", "unknown setting"),
    ("[listen-port]\nvalue = 1\n", "listen-port", "not a table"),
    ("listen-port = { value = 1 }\n", "listen-port", "not a table"),
    ("listen-port = [1]\n", "listen-port", "only strings"),
    ("[[api-url]]\nurl = 'http://x'\n", "api-url", "only strings"),
    ("command-history = -1\n", "command-history", "positive integer"),
]


@pytest.mark.parametrize(("text", "key", "reason"), FILE_ERRORS)
def test_file_errors_name_key_and_path(
    load, tmp_path: Path, text: str, key: str, reason: str
) -> None:
    message = error_of(load, "", {"50-site.toml": text})
    assert message.startswith(key), message
    assert f"({tmp_path / 'etc' / '50-site.toml'})" in message
    assert reason in message
    assert "\n" not in message


def test_error_in_later_file_names_that_file(load, tmp_path: Path) -> None:
    message = error_of(
        load, "", {"10-good.toml": "listen-port = 1000\n", "20-bad.toml": "listen-port = 0\n"}
    )
    assert str(tmp_path / "etc" / "20-bad.toml") in message
    assert "10-good.toml" not in message


def test_file_error_even_when_cmdline_overrides(load) -> None:
    message = error_of(load, "ipa-listen-port=1000", {"a.toml": "listen-port = 0\n"})
    assert "a.toml" in message


@pytest.mark.parametrize("text", ["listen-port = \n", "listen-port = 1\nlisten-port = 2\n", "[x"])
def test_invalid_toml_names_the_file(load, tmp_path: Path, text: str) -> None:
    message = error_of(load, "", {"bad.toml": text})
    assert str(tmp_path / "etc" / "bad.toml") in message
    assert "TOML" in message


def test_toml_file_that_cannot_be_read(load, tmp_path: Path) -> None:
    (tmp_path / "etc" / "dir.toml").mkdir(parents=True)
    message = error_of(load, "", {})
    assert str(tmp_path / "etc" / "dir.toml") in message


def test_toml_file_that_is_not_utf8(load, tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "latin1.toml").write_bytes(b'listen-host = "\xe9"\n')
    message = error_of(load, "", None)
    assert str(tmp_path / "etc" / "latin1.toml") in message


# -- errors: cert-file / key-file --------------------------------------------------------


def test_cert_file_without_key_file_from_kernel(load) -> None:
    message = error_of(load, "tacet.cert-file=/etc/cert.pem")
    assert "cert-file" in message and "key-file" in message
    assert f"cert-file from {KERNEL}" in message
    assert "key-file from default" in message


def test_key_file_without_cert_file_from_file(load, tmp_path: Path) -> None:
    message = error_of(load, "", {"tls.toml": 'key-file = "/etc/key.pem"\n'})
    assert f"key-file from {tmp_path / 'etc' / 'tls.toml'}" in message
    assert "cert-file from default" in message


def test_cert_and_key_from_different_sources(load) -> None:
    config = load("tacet.key-file=/k.pem", {"a.toml": 'cert-file = "/c.pem"\n'})
    assert config.cert_file == Path("/c.pem")
    assert config.key_file == Path("/k.pem")


# -- secrets -----------------------------------------------------------------------------


def test_agent_token_value(load) -> None:
    config = load('ipa-agent-token="s3cr3t-t0ken"')
    assert config.agent_token == "s3cr3t-t0ken"
    assert config.origins["agent_token"] == KERNEL


def test_invalid_agent_token_is_hidden(load) -> None:
    message = error_of(load, "ipa-agent-token='   '")
    assert message.startswith("ipa-agent-token=<hidden> (kernel command line)")


def test_secret_value_never_in_message(load, monkeypatch: pytest.MonkeyPatch) -> None:
    def reject(text: str) -> str:
        raise ValueError("rejected")

    monkeypatch.setitem(
        SETTINGS, "agent-token", Setting("agent_token", reject, "ipa-agent-token", secret=True)
    )
    message = error_of(load, "ipa-agent-token=s3cr3t-t0ken")
    assert "s3cr3t-t0ken" not in message
    assert message == "ipa-agent-token=<hidden> (kernel command line): rejected"
    message = error_of(load, "", {"a.toml": 'agent-token = "s3cr3t-t0ken"\n'})
    assert "s3cr3t-t0ken" not in message
    assert message.startswith("agent-token=<hidden> (")


def test_token_not_in_other_errors(load) -> None:
    message = error_of(load, "ipa-agent-token=s3cr3t-t0ken ipa-listen-port=99999")
    assert "s3cr3t-t0ken" not in message
    message = error_of(load, "ipa-agent-token=s3cr3t-t0ken tacet.cert-file=/c")
    assert "s3cr3t-t0ken" not in message


def test_token_not_in_invalid_toml_error(load) -> None:
    message = error_of(load, "", {"a.toml": "agent-token = s3cr3t-t0ken\n"})
    assert "s3cr3t-t0ken" not in message


# -- the kernel command line file --------------------------------------------------------


def test_missing_cmdline_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-cmdline"
    with pytest.raises(ConfigError) as info:
        load_config(missing, tmp_path / "etc", tmp_path / "state")
    assert "kernel command line" in str(info.value)
    assert str(missing) in str(info.value)


def test_cmdline_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, tmp_path / "etc", tmp_path / "state")
    assert str(tmp_path) in str(info.value)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


# -- the command line interface ----------------------------------------------------------


def run_agent(tmp_path: Path, cmdline: str, files: dict[str, str] | None = None):
    cmdline_file = tmp_path / "cmdline"
    cmdline_file.write_text(cmdline)
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    for name, text in (files or {}).items():
        (config_dir / name).write_text(text)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "--cmdline-file",
            str(cmdline_file),
            "--config-dir",
            str(config_dir),
            "--state-dir",
            str(tmp_path / "state"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cli_invalid_kernel_port_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_agent(tmp_path, "quiet ipa-listen-port=99999\n")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "ipa-listen-port=99999" in lines[0]
    assert KERNEL in lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "state").exists()


def test_cli_invalid_file_port_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_agent(tmp_path, "", {"site.toml": "listen-port = 0\n"})
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "listen-port=0" in lines[0]
    assert str(tmp_path / "etc" / "site.toml") in lines[0]


def test_bare_boolean_flag_means_true(tmp_path):
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("quiet ipa-debug ipa-insecure\n")
    config = load_config(cmdline, tmp_path / "etc", tmp_path / "state")
    assert config.debug is True and config.insecure is True


def test_repr_never_shows_the_token(tmp_path):
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("ipa-agent-token=very-secret-value\n")
    config = load_config(cmdline, tmp_path / "etc", tmp_path / "state")
    assert config.agent_token == "very-secret-value"
    assert "very-secret-value" not in repr(config)
