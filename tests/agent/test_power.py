"""The real power backend answers first and acts DELAY s later, through systemctl."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.power import SystemPower


def fake_tool(bin_dir: Path, name: str, log: Path) -> None:
    tool = bin_dir / name
    tool.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
    tool.chmod(0o755)


@pytest.mark.parametrize(("action", "expected"), [("power_off", "poweroff"), ("reboot", "reboot")])
async def test_systemctl_runs_after_the_command_returned(tmp_path, monkeypatch, action, expected):
    log = tmp_path / "calls"
    fake_tool(tmp_path, "systemctl", log)
    monkeypatch.setenv("PATH", str(tmp_path))
    power = SystemPower()
    power.DELAY = 0.3
    await getattr(power, action)()
    assert not log.exists()  # returned first: the agent's answer goes out before this
    assert power.pending is not None
    await asyncio.wait_for(power.pending, 10)
    assert log.read_text() == f"systemctl {expected}\n"


async def test_no_tool_fails_the_command_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing in it
    with pytest.raises(RuntimeError, match="no way to power"):
        await SystemPower().power_off()


async def test_falls_back_when_systemctl_fails(tmp_path, monkeypatch):
    log = tmp_path / "calls"
    failing = tmp_path / "systemctl"
    failing.write_text(f'#!/bin/sh\necho "systemctl $*" >> {log}\nexit 1\n')
    failing.chmod(0o755)
    fake_tool(tmp_path, "poweroff", log)
    monkeypatch.setenv("PATH", str(tmp_path))  # never the real poweroff
    power = SystemPower()
    power.DELAY = 0.0
    await power.power_off()
    assert power.pending is not None
    await asyncio.wait_for(power.pending, 10)
    assert log.read_text() == "systemctl poweroff\npoweroff -f\n"
