"""The package boundaries: who may import whom, and no import cycle anywhere.

The picture: ``conductor`` -> ``wire`` <- ``agent``; ``image`` and ``hardware`` are
libraries that import neither side. Checked two ways: statically over every import
statement (including ones inside functions), and by importing in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "conductor", "hardware", "image", "wire")
# package -> packages of ours it may import
ALLOWED = {
    "wire": set(),
    "hardware": set(),
    "image": {"wire"},
    "agent": {"wire", "hardware", "image"},
    # the conductor checks a fleet file's root-device hints with the library's pure parser
    "conductor": {"wire", "hardware"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Our modules that ``name`` imports, wherever the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            targets = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            targets = targets or [target]
        else:
            continue
        for target in targets:
            # "import a.b.c" also runs a/__init__ and a/b/__init__
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate in known and candidate != name:
                    if candidate != target and name.startswith(candidate + "."):
                        # Only passed through on the way to a sibling: Python has begun
                        # this module's own packages before the module itself, so that
                        # adds no order (hardware/__init__ importing hardware.disks,
                        # which imports hardware.model). Naming the package itself
                        # ("from hardware import collect_inventory") still counts.
                        continue
                    found.add(candidate)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_the_walk_sees_relative_and_nested_imports():
    edges = graph()
    assert "agent.commands" in edges["agent.api"]  # a relative import
    assert "wire.certs" in edges["agent.tls"]
    assert len(edges) > 60


def test_own_packages_count_only_when_named(tmp_path):
    known = modules()
    module = tmp_path / "probe.py"
    module.write_text("from hardware.model import Disk\n")
    assert imports_of("hardware.probe", module, known) == {"hardware.model"}
    module.write_text("from hardware import collect_inventory\n")
    assert imports_of("hardware.probe", module, known) == {"hardware"}
    module.write_text("from ..core import Agent\n")
    assert imports_of("agent.extensions.probe", module, known) == {"agent.core"}


def test_packages_import_only_what_the_picture_allows():
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in graph().items()
        for target in targets
        if target.split(".")[0] != name.split(".")[0]
        and target.split(".")[0] not in ALLOWED[name.split(".")[0]]
    )
    assert wrong == []


def test_no_import_cycle():
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(edges[name]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name)
    assert [" -> ".join(c) for c in cycles] == []


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("conductor.client", "agent"),
        ("conductor.cli", "agent"),
        ("conductor.fleet", "agent"),
        ("image.provision", "agent"),
        ("image.download", "conductor"),
        ("wire.tls", "agent"),
    ],
)
def test_importing_loads_no_module_of_the_other_side(module, forbidden):
    code = (
        f"import sys, {module}; "
        f"print(sorted(m for m in sys.modules if m == {forbidden!r} "
        f"or m.startswith({forbidden!r} + '.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_conductor_loads_only_the_hint_parser_of_hardware():
    code = (
        "import sys, conductor.fleet; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('hardware', 'pyudev', 'psutil', 'netifaces', 'aiohttp')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "['hardware', 'hardware.hints', 'hardware.model']"
