"""docs/networks.md's examples are what the code does: each JSON example parses without
warnings, each networkd excerpt is part of what the JSON before it renders to, and each
kernel command line of the dracut section is accepted by the generator."""

from __future__ import annotations

from pathlib import Path

from markdown_it import MarkdownIt

from agent.config import cmdline_words
from agent.netconfig import cmdline
from agent.netconfig.render import render
from wire.network_data import parse

DOC = Path(__file__).resolve().parents[2] / "docs" / "networks.md"


def fences() -> list[tuple[str, str]]:
    tokens = MarkdownIt("commonmark").parse(DOC.read_text())
    return [(t.info.strip(), t.content) for t in tokens if t.type == "fence"]


def test_json_examples_parse_and_networkd_excerpts_match_their_rendering():
    rendered: dict[str, str] = {}
    checked_json = checked_ini = 0
    for language, text in fences():
        if language == "json":
            data = parse(text)
            assert data.warnings == (), text
            rendered = render(data)
            checked_json += 1
        elif language == "ini":
            assert any(text in file for file in rendered.values()), text
            checked_ini += 1
    assert checked_json >= 6 and checked_ini >= 3


def test_dracut_examples_are_accepted_by_the_generator():
    lines = [
        line
        for language, text in fences()
        if language == "text" and text.startswith("ip=")
        for line in text.splitlines()
    ]
    assert len(lines) == 4
    for line in lines:
        parameters = cmdline.network_parameters(cmdline_words(line))
        assert parameters == line.split()
        cmdline.bond_options(parameters)
        assert cmdline.generate(parameters)
