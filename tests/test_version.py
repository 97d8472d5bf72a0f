"""One version: what pyproject.toml says is what the agent reports and the conductor sends."""

from __future__ import annotations

import tomllib
from pathlib import Path

import agent
from wire import __version__


def test_the_code_carries_pyprojects_version():
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert project["project"]["version"] == __version__ == agent.__version__
