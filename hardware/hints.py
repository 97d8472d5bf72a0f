"""Root-device hints: pick the disk ironic's ``root_device`` property describes.

Semantics follow ironic's documentation: every given hint must match; ``size`` is in
GiB; string comparisons are case-insensitive; a value may carry an operator
(``s==``, ``s!=``, ``<in>``, ``<all-in>``, ``<or>``, ``==``, ``!=``, ``>=``, ``<=``,
``>``, ``<``, ``<range-in>``). Without an operator a string hint means ``s==`` and a
number ``==``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

from .model import Disk

GIB = 1024**3
MIN_DEFAULT_ROOT_SIZE = 4 * GIB

HINT_TYPES: dict[str, type] = {
    "size": int,
    "model": str,
    "wwn": str,
    "serial": str,
    "vendor": str,
    "wwn_with_extension": str,
    "wwn_vendor_extension": str,
    "name": str,
    "rotational": bool,
    "hctl": str,
    "by_path": str,
    "tran": str,
}

NUMERIC_OPS: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq,
    "=": operator.ge,  # ironic/oslo quirk: a bare "=" means "at least"
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
STRING_OPS: dict[str, Callable[[str, str], bool]] = {
    "s==": operator.eq,
    "s!=": operator.ne,
    "s>=": operator.ge,
    "s<=": operator.le,
    "s>": operator.gt,
    "s<": operator.lt,
}
LIST_OPS = ("<in>", "<all-in>", "<or>", "<range-in>")
ALL_OPS = sorted([*NUMERIC_OPS, *STRING_OPS, *LIST_OPS], key=len, reverse=True)
_TRUE = {"1", "t", "true", "on", "y", "yes"}
_FALSE = {"0", "f", "false", "off", "n", "no"}


class HintError(ValueError):
    """The hints themselves are malformed (the conductor sent something invalid)."""


class NoMatchingDisk(LookupError):
    """Well-formed hints (or the default rule) that no disk satisfies."""


@dataclass(frozen=True)
class Hint:
    name: str
    op: str
    values: tuple[str, ...]  # lower-cased; strings URL-quoted like ironic does
    flag: bool | None = None  # for boolean hints


def _split(expression: str) -> tuple[str, list[str]]:
    text = expression.strip().lower()
    for op in ALL_OPS:
        if text.startswith(op) and (
            len(text) == len(op) or not text[len(op)].isalnum() or op[0] == "<"
        ):
            if op in ("<or>",):
                values = [part.strip() for part in text.split("<or>") if part.strip()]
            elif op == "<range-in>":
                values = [text[len(op) :].strip()]
            elif op == "<all-in>":
                values = text[len(op) :].split()
            else:
                values = [text[len(op) :].strip()]
            return op, values
    return "", [text]


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def parse_hints(hints: Mapping[str, Any] | None) -> list[Hint]:
    """Validate and normalise a ``root_device`` dict; raises :class:`HintError`."""
    if not hints:
        return []
    if not isinstance(hints, Mapping):
        raise HintError(f"root device hints must be an object, not {type(hints).__name__}")
    unknown = sorted(set(hints) - set(HINT_TYPES))
    if unknown:
        raise HintError(
            f"unknown root device hint(s) {', '.join(unknown)}; "
            f"valid hints are {', '.join(sorted(HINT_TYPES))}"
        )
    parsed = []
    for name, raw in hints.items():
        kind = HINT_TYPES[name]
        if kind is bool:
            flag = _bool(raw)
            if flag is None:
                raise HintError(f"root device hint {name!r} is not a boolean: {raw!r}")
            parsed.append(Hint(name, "", (), flag))
            continue
        if kind is str and not isinstance(raw, str):
            raise HintError(f"root device hint {name!r} must be a string, got {raw!r}")
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            raise HintError(f"root device hint {name!r} must be a number or expression: {raw!r}")
        op, values = _split(str(raw))
        if not values or not all(values):
            raise HintError(f"root device hint {name!r} has an empty expression: {raw!r}")
        if kind is int:
            op = op or "=="
            _check_numeric(name, op, values, raw)
        else:
            op = op or "s=="
            if op in NUMERIC_OPS:
                raise HintError(f"root device hint {name!r}: operator {op!r} needs a number")
            values = [quote(value) for value in values]
        parsed.append(Hint(name, op, tuple(values)))
    return parsed


def _check_numeric(name: str, op: str, values: list[str], raw: Any) -> None:
    if op in STRING_OPS or op in ("<in>", "<all-in>"):
        raise HintError(f"root device hint {name!r}: operator {op!r} does not apply to numbers")
    numbers = _range_bounds(values[0])[1:3] if op == "<range-in>" else values
    for value in numbers:
        try:
            number = int(str(value))
        except ValueError:
            raise HintError(f"root device hint {name!r} is not an integer: {raw!r}") from None
        if number <= 0:
            raise HintError(f"root device hint {name!r} must be a positive integer: {raw!r}")


_RANGE = re.compile(r"^([\[(])\s*(\S+)\s+(\S+)\s*([\])])$")


def _range_bounds(text: str) -> tuple[str, str, str, str]:
    match = _RANGE.match(text)
    if not match:
        raise HintError(f"<range-in> needs '[ low high ]' with [ or ( brackets, got {text!r}")
    low_bracket, low, high, high_bracket = match.groups()
    return low_bracket, low, high, high_bracket


def _matches_number(hint: Hint, value: float) -> bool:
    if hint.op == "<or>":
        return any(value == float(v) for v in hint.values)
    if hint.op == "<range-in>":
        low_bracket, low, high, high_bracket = _range_bounds(hint.values[0])
        above = value >= float(low) if low_bracket == "[" else value > float(low)
        below = value <= float(high) if high_bracket == "]" else value < float(high)
        return above and below
    return NUMERIC_OPS[hint.op](value, float(hint.values[0]))


def _matches_string(hint: Hint, value: str) -> bool:
    if hint.op == "<in>":
        return hint.values[0] in value
    if hint.op == "<all-in>":
        return all(v in value for v in hint.values)
    if hint.op == "<or>":
        return value in hint.values
    if hint.op == "<range-in>":
        return False
    return STRING_OPS[hint.op](value, hint.values[0])


def _matches(hint: Hint, disk: Mapping[str, Any]) -> bool:
    value = disk.get(hint.name)
    if value is None or value == "":
        return False
    if hint.flag is not None:
        return _bool(value) is hint.flag
    if hint.name == "size":
        return _matches_number(hint, float(value) / GIB)
    return _matches_string(hint, quote(str(value).strip().lower()))


def _as_mapping(disk: Disk | Mapping[str, Any]) -> Mapping[str, Any]:
    return asdict(disk) if isinstance(disk, Disk) else disk


def find_devices_by_hints(disks: Iterable[Disk], hints: Mapping[str, Any]) -> Iterator[Disk]:
    """Every disk that satisfies all hints, in the given order."""
    parsed = parse_hints(hints)
    for disk in disks:
        mapping = _as_mapping(disk)
        if all(_matches(hint, mapping) for hint in parsed):
            yield disk


def match_root_device_hints(disks: Iterable[Disk], hints: Mapping[str, Any]) -> Disk | None:
    return next(find_devices_by_hints(disks, hints), None)


def select_root_device(disks: Iterable[Disk], hints: Mapping[str, Any] | None = None) -> Disk:
    """The disk for the OS: the first one matching the hints, else the smallest >= 4 GiB."""
    candidates = list(disks)
    if hints:
        found = match_root_device_hints(candidates, hints)
        if found is None:
            names = ", ".join(d.name for d in candidates) or "none"
            raise NoMatchingDisk(
                f"no disk matches root device hints {dict(hints)} (disks: {names})"
            )
        return found
    big_enough = [d for d in candidates if d.size >= MIN_DEFAULT_ROOT_SIZE]
    if not big_enough:
        raise NoMatchingDisk("no disk of at least 4 GiB found")
    return min(big_enough, key=lambda d: (d.size, d.name))
