"""A real agent process under a short connection storm, with a conductor polling it.

3,000 connections (idle TCP ones that never start TLS, TLS ones that never send a
request, slowloris ones dripping a request head) keep reconnecting from 127.0.0.2 and
up while /v1/status is polled at 1 Hz from 127.0.0.1, each poll on a new connection.
The bounds are the agent's promises under a storm, not performance goals (those are
``bench/storm.py``'s figures): every poll answered within 1 s, RSS back within 20 MiB of
where it started once the storm is over, fewer than 100 log lines in all.
"""

from __future__ import annotations

import asyncio

from tests.agent.storm import AgentProcess, run_storm

MIB = 1024 * 1024


def test_a_polling_conductor_is_answered_through_a_connection_storm(tmp_path):
    agent = AgentProcess(tmp_path)
    try:
        result = asyncio.run(
            run_storm(agent, seconds=8, settle=4, idle=2400, tls_idle=500, slowloris=100)
        )
    finally:
        agent.stop()
    counts = result.counts
    assert counts.failed_polls == []
    assert len(counts.polls) >= 6 and max(counts.polls) < 1.0
    assert counts.connected >= 3000  # the storm did reach the agent...
    assert result.rejections.get("connection", 0) > 0  # ...and was turned away at the cap
    assert result.rss_after - result.rss_before < 20 * MIB, result
    assert result.log_lines < 100, agent.log_path.read_text()[-5000:]
