"""tacet-agent's command line: plain help text, and the loop-device opt-in flag."""

from __future__ import annotations

import re

import pytest

from agent.__main__ import load, main, parser
from agent.config import ConfigError


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--bundle FILE" in text and "--allow-loop-devices" in text
    assert not re.search(r"``|:mod:|:func:|:class:", text), text


@pytest.mark.parametrize(
    ("argv", "cmdline", "allowed", "origin"),
    [
        ([], "quiet", False, "default"),
        (["--allow-loop-devices"], "quiet", True, "--allow-loop-devices"),
        ([], "tacet.allow-loop-devices=1", True, "kernel command line"),
        ([], "tacet.allow-loop-devices", True, "kernel command line"),  # a bare flag
        (
            [],
            "tacet.allow-loop-devices=loop3,/dev/loop12",
            ("loop3", "loop12"),
            "kernel command line",
        ),
    ],
)
def test_allow_loop_devices(tmp_path, argv, cmdline, allowed, origin):
    (tmp_path / "cmdline").write_text(cmdline + "\n")
    args = parser().parse_args(["--cmdline-file", str(tmp_path / "cmdline"), *argv])
    config = load(args, tmp_path / "etc")
    assert config.allow_loop_devices == allowed and type(config.allow_loop_devices) is type(allowed)
    assert config.origins["allow_loop_devices"] == origin


def test_allow_loop_devices_in_a_toml_file(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "try.toml").write_text("allow-loop-devices = true\n")
    (tmp_path / "cmdline").write_text("quiet\n")
    args = parser().parse_args(["--cmdline-file", str(tmp_path / "cmdline")])
    config = load(args, tmp_path / "etc")
    assert config.allow_loop_devices
    assert config.origins["allow_loop_devices"] == str(tmp_path / "etc" / "try.toml")


@pytest.mark.parametrize("value", ["sda", "loop", "loop3,nvme0n1", ","])
def test_allow_loop_devices_names_only_loop_devices(tmp_path, value):
    (tmp_path / "cmdline").write_text(f"tacet.allow-loop-devices={value}\n")
    args = parser().parse_args(["--cmdline-file", str(tmp_path / "cmdline")])
    with pytest.raises(ConfigError, match="must be true/false or loop device names"):
        load(args, tmp_path / "etc")


def test_a_listen_host_refused_at_start_is_a_configuration_error(tmp_path, monkeypatch, capsys):
    import agent.daemon

    async def serve(config, power=None, network_wait=0.0):
        raise ConfigError("listen-host=203.0.113.5 (default): not an address of this host")

    monkeypatch.setattr(agent.daemon, "serve", serve)
    monkeypatch.setattr(agent.daemon, "configure_logging", lambda debug: None)
    (tmp_path / "cmdline").write_text("quiet\n")
    code = main(["--cmdline-file", str(tmp_path / "cmdline"), "--config-dir", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err == (
        "tacet-agent: configuration error: listen-host=203.0.113.5 (default):"
        " not an address of this host\n"
    )
