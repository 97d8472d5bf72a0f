"""Shared test helpers: build small sysfs-like trees from dicts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass(frozen=True)
class Link:
    """A symlink to create in a fake tree (target is written verbatim)."""

    target: str


def build_tree(root: Path, spec: dict[str, str | bytes | Link | None]) -> Path:
    """Create files (str/bytes), symlinks (Link) and empty dirs (None) under root."""
    for rel, content in spec.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        elif isinstance(content, Link):
            os.symlink(content.target, path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


@pytest.fixture
def tree(tmp_path: Path):
    def make(spec: dict[str, str | bytes | Link | None]) -> Path:
        return build_tree(tmp_path, spec)

    return make
