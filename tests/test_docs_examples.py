"""Every shell example in the repository's Markdown runs, for real, or is listed here with
the reason it cannot run inside a unit test.

The fenced ``sh``/``bash``/``shell``/``console`` blocks of README.md, docs/**/*.md and the
other README.md files are found with a Markdown parser (markdown-it-py, which rich
brings), so a file added later is picked up without being named here. A block is known
by the name in a ``<!-- docs-test: NAME -->`` comment just above it, or else by its file
and first line. A block that is neither in RUNS nor in NOT_RUN fails the test, and so
does an entry that names no block.

A run happens in a fresh directory, inside a network namespace of its own (so 127.0.0.1:9999
and 127.0.0.1:8000 are free and nothing leaves the machine) and a PID namespace (so
whatever the example starts in the background ends with it), with ``.venv/bin`` on the
PATH. Its setup steps stand for what the surrounding text says is already there: the
files ``tacet pki dev ./pki`` makes, an agent started from ``pki/node-1.cpio`` (a real
agent whose only disk is a file: tests/docs_agent.py), a small raw image served on
127.0.0.1:8000, a fleet file and a node.json for that node.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parent.parent
SHELL = {"sh", "bash", "shell", "console"}
MARKER = re.compile(r"<!--\s*docs-test:\s*([\w.-]+)\s*-->")


@dataclass(frozen=True)
class Block:
    file: str  # relative to the repository
    line: int  # of the opening fence, 1-based
    key: str  # the marker's name, or "FILE: first line"
    text: str


def markdown_files() -> list[Path]:
    """README.md, docs/**/*.md and every other README.md, skipping hidden directories
    (the virtualenv, git's) so installed packages' READMEs are not ours."""
    found = {ROOT / "README.md", *ROOT.glob("docs/**/*.md")}
    for directory, subdirectories, files in os.walk(ROOT):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        found.update(Path(directory) / f for f in files if f == "README.md")
    return sorted(p for p in found if p.is_file())


def shell_blocks(path: Path) -> list[Block]:
    relative = str(path.relative_to(ROOT))
    tokens = MarkdownIt("commonmark").parse(path.read_text())
    blocks = []
    for index, token in enumerate(tokens):
        if token.type != "fence" or token.info.split(maxsplit=1)[:1] == []:
            continue
        if token.info.split()[0] not in SHELL:
            continue
        before = tokens[index - 1] if index > 0 else None
        marker = MARKER.search(before.content) if before and before.type == "html_block" else None
        first = next((line.strip() for line in token.content.splitlines() if line.strip()), "")
        key = marker.group(1) if marker else f"{relative}: {first}"
        line = (token.map or [0])[0] + 1
        blocks.append(Block(relative, line, key, token.content))
    return blocks


def all_blocks() -> list[Block]:
    return [block for path in markdown_files() for block in shell_blocks(path)]


@dataclass(frozen=True)
class Run:
    """How a block runs: what is there before it, and what its output must show."""

    setup: tuple[str, ...]  # in order, from SETUP
    expect: tuple[str, ...]  # substrings of the block's output (stdout and stderr)


RUNS: dict[str, Run] = {
    "pki-dev": Run(
        (),
        (
            "CA certificate: pki/ca.pem",
            "conductor profile: pki/conductor.toml now uses this client",
            "initrd: pki/node-1.cpio",
            "then: tacet status 127.0.0.1 --pki pki",
        ),
    ),
    "conductor-commands": Run(
        ("pki", "agent", "image", "fleet"),
        ("passive", "TEST0001", "root uuid:", "1 done (fleet.results.json)"),
    ),
    "conductor-reference": Run(
        ("pki", "agent", "image", "fleet", "node.json"),
        (
            "passive",
            '"certificate_fingerprint"',
            '"uuid": "11111111-2222-3333-4444-555555555555"',
            "root uuid:",
            "set_node_info",
            "node-1-logs.tar.gz: ",
            "127.0.0.1:9999: powering off",
            "1 done (run-1.json)",
        ),
    ),
    "networks-bundle": Run(
        ("pki",),
        ("network data: network_data.json (in the initrd as /etc/tacet/network_data.json)",),
    ),
}

# Blocks run by a test function of their own (name -> that function's name).
OWN_TESTS: dict[str, str] = {
    "workstation-walk": "test_the_workstation_walk",
    "demo": "test_the_demo_agent_answers_the_commands_it_prints",
}

NOT_RUN: dict[str, str] = {
    "tools": "tools/test is the CI command itself (.ci/run), and build-ramdisk needs root,"
    " debootstrap and minutes: the ramdisk is built and booted by tools/test-e2e",
    "bench-fleet": "a timed benchmark of up to 5,000 agents that prints figures; it must run"
    " alone (bench/), not inside the unit suite",
    "dib-elements/README.md: tools/build-ramdisk"
    "                      # -> /var/tmp/tacet-ramdisk/out/tacet-ramdisk.{kernel,initramfs}": (
        "builds the ramdisk: needs root, debootstrap and minutes; run by tools/test-e2e"
    ),
    "tools/vm/README.md: apt-get install --no-install-recommends qemu-system-x86 qemu-utils"
    " ipxe-qemu ovmf \\": "installs packages and boots QEMU guests for several minutes to"
    " record fixtures; done by hand when hardware/ changes",
    "tools/vm/README.md: python3 -m hardware.record_fixture /tmp/fx": "runs inside a QEMU"
    " guest's /init (tools/vm), not on the host",
}

NODE_UUID = "11111111-2222-3333-4444-555555555555"
SETUP = {
    "pki": "tacet pki dev ./pki > setup.log",
    "agent": f"""{sys.executable} -m tests.docs_agent pki/node-1.cpio agent-work > agent.log 2>&1 &
for _ in $(seq 150); do grep -q 'listening on' agent.log && break; sleep 0.2; done
grep -q 'listening on' agent.log || {{ cat agent.log; exit 97; }}""",
    "image": """mkdir -p images && truncate -s 8M images/x.img && mkfs.ext4 -q -F images/x.img
python3 -m http.server --bind 127.0.0.1 --directory images 8000 > http.log 2>&1 &
for _ in $(seq 150); do (exec 3<>/dev/tcp/127.0.0.1/8000) 2>/dev/null && break; sleep 0.2; done""",
    "fleet": """cat > fleet.toml <<EOF
poll_interval = 0.2
[defaults]
cafile = "pki/ca.pem"
cert = "pki/clients/conductor.pem"
key = "pki/clients/conductor-key.pem"
[defaults.image]
url = "http://127.0.0.1:8000/x.img"
checksum = "sha256:$(sha256sum images/x.img | cut -d' ' -f1)"
[[nodes]]
name = "node-1"
address = "127.0.0.1"
token_file = "pki/nodes/node-1/token"
EOF""",
    "node.json": f"echo '{json.dumps({'node': {'uuid': NODE_UUID}, 'config': {}})}' > node.json",
}
BLOCK_STARTS = "=== the example ==="


def run_in_namespaces(work: Path, setup: tuple[str, ...], block: str, timeout: float = 240) -> str:
    """Setup steps, then the block with ``bash -e -o pipefail``, in fresh network and PID
    namespaces; returns the block's output, failing with all of it when anything fails."""
    (work / "example.sh").write_text(block)
    script = "\n".join(
        [
            "set -euo pipefail",
            "ip link set lo up",
            *(SETUP[step] for step in setup),
            f"echo '{BLOCK_STARTS}'",
            "bash -e -o pipefail example.sh 2>&1",
        ]
    )
    (work / "harness.sh").write_text(script + "\n")
    namespaces = ["unshare", "--net", "--pid", "--fork", "--kill-child"]
    if os.geteuid() != 0:
        namespaces.append("--map-root-user")
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}:/usr/sbin:/sbin",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("TACET_PKI", None)
    done = subprocess.run(
        [*namespaces, "bash", "harness.sh"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    logs = "".join(
        f"\n--- {name} ---\n{(work / name).read_text(errors='replace')[-3000:]}"
        for name in ("agent.log", "http.log")
        if (work / name).exists()
    )
    assert done.returncode == 0, f"exit status {done.returncode}:\n{output}{logs}"
    assert BLOCK_STARTS in output, output
    return output.split(BLOCK_STARTS, 1)[1]


def block_named(key: str) -> Block:
    matches = [block for block in all_blocks() if block.key == key]
    assert len(matches) == 1, f"{key}: {len(matches)} blocks carry this name"
    return matches[0]


def test_every_shell_example_is_run_or_listed():
    blocks = all_blocks()
    assert blocks, "no shell examples found: is the Markdown parser seeing the files?"
    keys = [block.key for block in blocks]
    problems = [
        f"{key}: more than one block has this name" for key in set(keys) if keys.count(key) > 1
    ]
    for block in blocks:
        if block.key not in RUNS and block.key not in NOT_RUN and block.key not in OWN_TESTS:
            problems.append(
                f"{block.file}:{block.line}: a shell example that is neither run nor listed;"
                " name it (<!-- docs-test: NAME --> above the fence) and add NAME to RUNS in"
                " tests/test_docs_examples.py, or to NOT_RUN with the reason"
            )
    for key, function in OWN_TESTS.items():
        if not callable(globals().get(function)):
            problems.append(f"{key}: {function} is not a test in tests/test_docs_examples.py")
    for key in [*RUNS, *NOT_RUN, *OWN_TESTS]:
        if key not in keys:
            problems.append(f"{key}: listed in tests/test_docs_examples.py but no block has it")
    listed = [*RUNS, *NOT_RUN, *OWN_TESTS]
    problems += [f"{key}: listed twice" for key in set(listed) if listed.count(key) > 1]
    problems += [f"{key}: give the reason it is not run" for key, why in NOT_RUN.items() if not why]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("key", sorted(RUNS))
def test_example_runs(key, tmp_path):
    for tool in ("unshare", "ip", "cpio", "mkfs.ext4", "python3"):
        assert shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"), tool
    run = RUNS[key]
    output = run_in_namespaces(tmp_path, run.setup, block_named(key).text)
    for expected in run.expect:
        assert expected in output, f"{key}: {expected!r} not in the output:\n{output}"


WALK_EXPECT = ("passive", "written to device", "holds the image")


def test_the_workstation_walk(tmp_path):
    """README's walk as printed: as root, a real loop device, tacet-agent from the node
    bundle with loop devices allowed, an image over http on 127.0.0.1, cmp."""
    assert os.geteuid() == 0, "the walk needs root (losetup)"
    for tool in ("unshare", "losetup", "mkfs.ext4", "cmp", "python3"):
        assert shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"), tool
    disk = tmp_path / "disk.img"
    try:
        output = run_in_namespaces(tmp_path, ("pki",), block_named("workstation-walk").text)
    finally:
        attached = subprocess.run(
            ["losetup", "--noheadings", "--output", "NAME", "--associated", str(disk)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        for device in attached:  # the walk failed before its last line
            subprocess.run(["losetup", "--detach", device], check=False)
    for expected in WALK_EXPECT:
        assert expected in output, f"{expected!r} not in the output:\n{output}"
    assert not attached, "the walk left its loop device attached"


def test_the_demo_agent_answers_the_commands_it_prints(tmp_path):
    """README's first command as printed (tools/setup is what CI ran before the tests), in
    the test's own network namespace; then every curl command the demo prints, as printed."""
    block = block_named("demo").text
    assert "./tools/setup && ./tools/demo-agent" in block
    script = r"""cd ROOT
TACET_DEMO_DIR=WORK/demo ./tools/setup > WORK/setup.log 2>&1
TACET_DEMO_DIR=WORK/demo ./tools/demo-agent > WORK/demo.log 2>&1 &
for _ in $(seq 150); do grep -q 'listening on' WORK/demo.log && break; sleep 0.2; done
grep -q 'listening on' WORK/demo.log || { cat WORK/demo.log; exit 97; }
# the commands the demo printed (indented under "In another terminal:"), continuation
# lines joined
sed -n '/In another terminal:/,/^[^ ]/p' WORK/demo.log | grep '^  ' | sed 's/^  *//' \
    | sed -e ':a' -e '/\\$/N; s/\\\n//; ta' > WORK/printed.sh
cat WORK/printed.sh
test "$(grep -c '^curl ' WORK/printed.sh)" = 2
while read -r command; do eval "$command -sS --fail-with-body"; echo; done < WORK/printed.sh
""".replace("ROOT", str(ROOT)).replace("WORK", str(tmp_path))
    output = run_in_namespaces(tmp_path, (), script)
    assert '"mode": "passive"' in output or '"mode":"passive"' in output, output
    assert '"command_status": "SUCCEEDED"' in output or '"command_status":"SUCCEEDED"' in output
    assert '"interfaces"' in output, output
