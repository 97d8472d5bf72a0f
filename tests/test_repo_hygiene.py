"""The repository stands alone: no traces of the environment it was written in.

Every file git tracks (text files; recorded fixtures aside) is checked for references
that only make sense on one machine or in one way of working: the old protocol file,
absolute host paths, a shared benchmark lock, issue numbers, and talk of rounds or
sessions of work. TLS sessions and benchmark rounds are fine; the patterns are narrow.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SKIPPED_DIRECTORIES = ("tests/fixtures/",)  # recorded machines, byte for byte
THIS_FILE = "tests/test_repo_hygiene.py"  # it spells the patterns out

# Spelled in pieces so that this file does not carry what it looks for.
HOST_ROOT = "/" + "work" + "/"

RULES: dict[str, re.Pattern[str]] = {
    "the old protocol file": re.compile(r"PROTOCOL\.md"),
    "an absolute host path": re.compile(r"(?<![\w.~-])" + re.escape(HOST_ROOT)),
    "a lock file for flock": re.compile(r"\bflock\b[^\n]*\.lock\b"),
    # the noun with a number (with or without "#"), not the verb followed by a count
    "an issue number": re.compile(r"\bissues?\s+#\d+|\bissue\s+\d+\b(?!\s+[a-z])", re.IGNORECASE),
    "talk of rounds of work": re.compile(
        r"\b(?:this|previous|earlier|last|next)\s+round\b|\brounds? of work\b", re.IGNORECASE
    ),
    "talk of sessions of work": re.compile(
        r"\b(?:this|that|previous|earlier|last|next|another)\s+session\b"
        r"|\b(?:work|working|coding|development)\s+sessions?\b",
        re.IGNORECASE,
    ),
    "a figure from an unnamed machine": re.compile(
        r"\b(?:this|the|our)\s+(?:[\w-]+\s+)?development\s+machine\b", re.IGNORECASE
    ),
}


def findings(text: str) -> list[tuple[int, str, str]]:
    """(line number, rule, line) for every line of ``text`` that breaks a rule."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for rule, pattern in RULES.items():
            if pattern.search(line):
                found.append((number, rule, line.strip()))
    return found


def tracked_text_files(root: Path) -> dict[str, str]:
    """Path -> text of every file git tracks under ``root``, binary ones left out."""
    listing = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.decode()
    files = {}
    for name in filter(None, listing.split("\0")):
        if name.startswith(SKIPPED_DIRECTORIES) or name == THIS_FILE:
            continue
        path = root / name
        if not path.is_file():  # deleted in the work tree, or a submodule
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue
        try:
            files[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return files


def report(found: dict[str, list[tuple[int, str, str]]]) -> str:
    return "\n".join(
        f"{name}:{number}: {rule}: {line[:120]}"
        for name, lines in sorted(found.items())
        for number, rule, line in lines
    )


def test_tracked_files_carry_no_traces_of_the_working_environment():
    files = tracked_text_files(ROOT)
    assert len(files) > 100  # the listing worked
    found = {name: lines for name, text in files.items() if (lines := findings(text))}
    assert not found, "\n" + report(found)


@pytest.mark.parametrize(
    "line",
    [
        "Results follow " + "PROTOCOL" + ".md section 1.",
        "see " + "/work" + "/main/docs for the figures",
        "    " + "flock" + " /var/lock/bench.lock python bench/fleet.py",
        "Targets (" + "issue" + " 6), for 1,000 agents",
        "as asked in " + "Issue" + " #12",
        "see " + "issue" + " 3: the lookup",
        "What was measured " + "this" + " round:",
        "figures of the " + "previous" + " round",
        "the " + "earlier" + " session left it half done",
        "decided in a " + "working" + " session",
        "One run on the 2-core " + "development" + " machine",
    ],
)
def test_planted_lines_are_found(line):
    assert findings(f"first line\n{line}\nlast line\n")[0][0] == 2


@pytest.mark.parametrize(
    "line",
    [
        "Reconnects resume the TLS session (abbreviated handshake).",
        "offers each server the session it last got from it",
        "masked user sessions and maintenance timers",
        "RSS growth over the measured rounds (168,067 requests)",
        "udev's coldplug then runs in two rounds:",
        "rate_bytes_per_second = round(rate, 1)",
        "tacet pki issue-client DIR conductor",
        "the CA issues 2 certificates",
        "we " + "issue" + " 2 certificates per node",
        "see docs/protocol.md, Routes",
        "https://example.org" + HOST_ROOT + "readme",
        "installed under ~" + HOST_ROOT + "tacet or ." + HOST_ROOT + "tacet",
        "self.lock = asyncio.Lock()",
    ],
)
def test_legitimate_lines_are_not_found(line):
    assert findings(line) == []


def test_a_planted_file_in_a_repository_is_reported(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "notes.md").write_text("fine\nsee " + "/work" + "/coord for the lock\n")
    (tmp_path / "image.bin").write_bytes(b"\0" + b"/work" + b"/x")
    (tmp_path / "untracked.md").write_text("/work" + "/y\n")
    subprocess.run(["git", "-C", str(tmp_path), "add", "notes.md", "image.bin"], check=True)
    files = tracked_text_files(tmp_path)
    assert sorted(files) == ["notes.md"]  # binary and untracked files are not read
    assert [(n, rule) for n, rule, _ in findings(files["notes.md"])] == [
        (2, "an absolute host path")
    ]
