"""What an operator sees: progress bars on a terminal (rich), plain lines otherwise, tables."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, TextIO

from .fleet import DONE, LogReporter, Reporter


def rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def interactive(stream: TextIO = sys.stderr) -> bool:
    """Bars only on a terminal and when rich is installed; log lines everywhere else."""
    return stream.isatty() and rich_available()


class RichReporter:
    """One overall bar and one line per node in flight (finished nodes leave the display,
    so thousands of nodes do not make thousands of lines)."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.overall: Any = None
        self.tasks: dict[str, Any] = {}
        self.counts = {"done": 0, "failed": 0, "unreachable": 0}

    def begin(self, total: int, skipped: int) -> None:
        self.progress.start()
        self.overall = self.progress.add_task("fleet", total=total, completed=skipped)

    def step(self, node: str, step: str, number: int, steps: int) -> None:
        description = f"  {node}: {step}"
        if node not in self.tasks:
            self.tasks[node] = self.progress.add_task(description, total=steps)
        self.progress.update(self.tasks[node], description=description, completed=number - 1)

    def end_node(self, node: str, state: str, reason: str | None) -> None:
        task = self.tasks.pop(node, None)
        if task is not None:
            self.progress.remove_task(task)
        self.counts[state] = self.counts.get(state, 0) + 1
        style = "green" if state == DONE else "red"
        text = f"[{style}]{node}: {state}[/{style}]" + (f" - {reason}" if reason else "")
        self.progress.console.print(text, highlight=False)
        summary = ", ".join(f"{n} {s}" for s, n in self.counts.items() if n)
        self.progress.update(self.overall, advance=1, description=f"fleet ({summary})")

    def finish(self) -> None:
        self.progress.stop()


def reporter(plain: bool = False) -> Reporter:
    if not plain and interactive():
        return RichReporter()
    return LogReporter()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """A plain-text table (the same on a terminal and in a pipe; easy to grep)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [title] if title else []
    lines.append("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def human_bytes(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)


def inventory_text(inventory: dict[str, Any]) -> str:
    """The inventory an operator reads: system, CPU/memory, NICs, disks."""
    system = inventory.get("system_vendor") or {}
    cpu = inventory.get("cpu") or {}
    memory = inventory.get("memory") or {}
    boot = inventory.get("boot") or {}
    facts = [
        ("hostname", inventory.get("hostname")),
        ("manufacturer", system.get("manufacturer")),
        ("product", system.get("product_name")),
        ("serial", system.get("serial_number")),
        ("system uuid", system.get("uuid")),
        ("cpu", f"{cpu.get('count', '-')} x {cpu.get('model_name') or '-'}"),
        ("memory", human_bytes(memory.get("total"))),
        ("boot mode", boot.get("current_boot_mode")),
        ("pxe interface", boot.get("pxe_interface")),
        ("bmc", inventory.get("bmc_address")),
    ]
    parts = [table(("system", "value"), facts)]
    nics = [
        (
            n.get("name"),
            n.get("mac_address"),
            n.get("ipv4_address"),
            n.get("has_carrier"),
            n.get("speed_mbps"),
            n.get("driver"),
        )
        for n in inventory.get("interfaces") or []
    ]
    parts.append(table(("nic", "mac", "ipv4", "carrier", "mbps", "driver"), nics))
    disks = [
        (
            d.get("name"),
            human_bytes(d.get("size")),
            d.get("model"),
            d.get("serial"),
            d.get("rotational"),
            d.get("tran"),
        )
        for d in inventory.get("disks") or []
    ]
    parts.append(table(("disk", "size", "model", "serial", "rotational", "tran"), disks))
    return "\n\n".join(parts)
