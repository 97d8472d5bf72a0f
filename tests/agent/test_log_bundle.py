"""The log bundle's process list: read with psutil, since the ramdisk has no ``ps``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time

import psutil

from agent.extensions import log
from agent.extensions.log import ProcessRow, format_process_table, process_rows


def test_process_rows_include_this_process_with_its_command_line():
    me = next(row for row in process_rows() if row.pid == os.getpid())
    assert me.command == " ".join(psutil.Process().cmdline())
    assert sys.executable.split("/")[-1] in me.command
    assert me.user == psutil.Process().username()
    assert me.rss_kib > 0 and me.mem_percent > 0
    assert me.state in ("R", "S")


def test_a_sleeping_child_is_listed_as_sleeping_with_its_arguments():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "marker-arg"])
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).status() != psutil.STATUS_SLEEPING:
            assert time.monotonic() < deadline, "the child never went to sleep"
            time.sleep(0.05)
        row = next(row for row in process_rows() if row.pid == child.pid)
        assert row.state == "S"
        assert row.command.endswith("time.sleep(30) marker-arg")
    finally:
        child.kill()
        child.wait()


def test_the_table_has_ps_aux_columns():
    now = time.mktime((2026, 12, 7, 12, 0, 0, 0, 0, -1))
    rows = [
        ProcessRow("root", 1, 0.3, 0.5, 12345, "S", now - 3600, "/sbin/init splash"),
        ProcessRow(
            "a-very-long-user-name", 42, 12.0, 1.5, 99, "R", now - 3 * 86400, "[kworker/0:1]"
        ),
    ]
    lines = format_process_table(rows, now=now).splitlines()
    assert lines[0].split() == ["USER", "PID", "%CPU", "%MEM", "RSS", "STAT", "START", "COMMAND"]
    assert lines[1].split() == [
        "root",
        "1",
        "0.3",
        "0.5",
        "12345",
        "S",
        "11:00",
        "/sbin/init",
        "splash",
    ]
    assert lines[2].split()[:6] == ["a-very-long-", "42", "12.0", "1.5", "99", "R"]
    assert lines[2].split()[6] == time.strftime("%b%d", time.localtime(now - 3 * 86400))
    assert lines[2].endswith("[kworker/0:1]")


def test_the_bundle_carries_ps_txt_without_running_ps(monkeypatch):
    ran = []
    monkeypatch.setattr(log.subprocess, "run", lambda *a, **k: ran.append(a))
    data = log.collect_archive({})
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        text = archive.extractfile("ps.txt").read().decode()
    assert ran == []  # no program was started, ps or any other
    assert "not installed" not in text
    line = next(line for line in text.splitlines() if line.split()[1] == str(os.getpid()))
    assert " ".join(psutil.Process().cmdline()) in line


def test_a_command_with_newlines_stays_on_one_line_of_the_table():
    """CI runners start shells whose script (an argument) spans lines; ps shows them as ``?``."""
    row = ProcessRow("root", 7, 0.0, 0.0, 1, "S", time.time(), "bash -c set -e\n\tmake\x1b[0m")
    lines = format_process_table([row]).splitlines()
    assert len(lines) == 2
    assert lines[1].endswith("bash -c set -e??make?[0m")


def test_every_line_of_the_bundled_table_is_one_process():
    child = subprocess.Popen([sys.executable, "-c", "import time\ntime.sleep(30)", "two\nlines"])
    try:
        data = log.collect_archive({})
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            text = archive.extractfile("ps.txt").read().decode()
        rows = text.splitlines()[1:]
        assert all(len(line.split()) >= 8 and line.split()[1].isdigit() for line in rows)
        line = next(line for line in rows if line.split()[1] == str(child.pid))
        assert line.endswith("import time?time.sleep(30) two?lines")
    finally:
        child.kill()
        child.wait()


def test_the_process_table_is_taken_before_any_program_runs(monkeypatch):
    """The agent's RSS in ps.txt is its own, not swollen by the journal it just read."""
    order = []
    monkeypatch.setattr(log, "process_rows", lambda: order.append("ps") or [])
    monkeypatch.setattr(log, "_run", lambda argv: order.append(argv[0]) or b"")
    log.collect_archive({"journal.txt": ["journalctl"], "nstat.txt": ["nstat"]})
    assert order == ["ps", "journalctl", "nstat"]


def test_the_bundle_splits_the_agents_own_memory():
    data = log.collect_archive({})
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        text = archive.extractfile("agent-memory.txt").read().decode()
    fields = dict(line.split(":", 1) for line in text.splitlines())
    assert {"VmRSS", "VmHWM", "RssAnon", "RssFile"} <= fields.keys(), text
    assert all(key.startswith(("Vm", "Rss")) for key in fields), text
    assert int(fields["RssAnon"].split()[0]) > 0


def test_an_unreadable_status_file_is_said_not_raised(tmp_path):
    assert (
        log.own_memory(str(tmp_path / "gone"))
        == f"{tmp_path / 'gone'}: No such file or directory\n".encode()
    )
