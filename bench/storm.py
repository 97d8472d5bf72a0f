"""A connection storm against a real tacet-agent on loopback: what a conductor sees, and the
agent's memory and log.

A tacet-agent process (default settings: 512 connections, 64 per address, 10 s handshake
and header timeouts) gets ``--idle`` TCP connections that never start TLS, ``--tls`` TLS
connections that never send a request and ``--slowloris`` ones dripping a request head a
byte a second, all from 127.0.0.2 and up and each reconnecting as soon as the agent
closes it, for ``--seconds``; meanwhile /v1/status is polled at 1 Hz from 127.0.0.1, a
new TLS connection per poll. Prints the polls' p50/p99 (and any failed), the agent's RSS
before, at its peak and ``--settle`` s after the storm, its log lines over the storm, and
the connections refused or closed (the agent's ``connection`` and ``handshake``
rejection counts, the storm's own view). First, the agent's RSS per held connection:
``--hold`` idle TCP connections, then as many TLS ones after their handshake.

    .venv/bin/python bench/storm.py [--seconds 60] [--settle 30] [--idle 2400] [--tls 500]
        [--slowloris 100] [--hold 400]

Measured on 2 cores and 24 GiB; the storm clients share those cores with the agent.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.agent.storm import AgentProcess, memory_per_connection, run_storm  # noqa: E402

MIB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=30.0)
    parser.add_argument("--idle", type=int, default=2400)
    parser.add_argument("--tls", type=int, default=500)
    parser.add_argument("--slowloris", type=int, default=100)
    parser.add_argument("--hold", type=int, default=400, help="connections held for memory")
    args = parser.parse_args()
    for use_tls in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            agent = AgentProcess(Path(tmp))
            try:
                each = asyncio.run(memory_per_connection(agent, args.hold, use_tls))
            finally:
                agent.stop()
        kind = "TLS, handshake done, no request" if use_tls else "TCP, no TLS"
        print(f"RSS per held connection ({kind}, {args.hold} held): {each / 1024:.1f} KiB")
    with tempfile.TemporaryDirectory() as tmp:
        agent = AgentProcess(Path(tmp))
        try:
            result = asyncio.run(
                run_storm(agent, args.seconds, args.settle, args.idle, args.tls, args.slowloris)
            )
        finally:
            agent.stop()
    counts = result.counts
    total = args.idle + args.tls + args.slowloris
    print(
        f"storm: {total} connections ({args.idle} TCP idle, {args.tls} TLS idle, "
        f"{args.slowloris} slowloris), {args.seconds:g} s"
    )
    print(
        f"polls answered: {len(counts.polls)}, failed: {len(counts.failed_polls)} "
        f"{counts.failed_polls[:3]}"
    )
    print(
        f"poll p50 {counts.p50 * 1000:.1f} ms, p99 {counts.percentile(0.99) * 1000:.1f} ms, "
        f"max {max(counts.polls, default=0) * 1000:.1f} ms"
    )
    print(
        f"agent RSS: before {result.rss_before / MIB:.1f} MiB, peak {result.rss_peak / MIB:.1f} "
        f"MiB, {args.settle:g} s after {result.rss_after / MIB:.1f} MiB"
    )
    print(f"agent log lines during the storm: {result.log_lines}")
    print(f"agent rejections: {result.rejections}")
    print(
        f"storm connects: {counts.connected}, closed by the agent: {counts.closed_by_agent}, "
        f"failed (refused, reset, timed out): {counts.connect_failures}"
    )


if __name__ == "__main__":
    main()
