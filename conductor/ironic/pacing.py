"""Which polled answers ironic hears as heartbeats: the changes, and a slow refresh.

A heartbeat costs ironic the node's lock, several database writes and a command-status
request of its own. While an agent works on a long step (an image being written, a disk
being erased), every poll finds what the last one found, and ironic's heartbeat would
find that the step still runs and do nothing but refresh its timestamps. So a heartbeat
is handed to ironic only when what ironic decides from has changed since ironic last
heard: the node's side (state, target, step, maintenance) or the agent's command list.
Otherwise one refresh per ``refresh`` seconds keeps ironic's callback-timeout clock
(``provision_updated_at``) as fresh as an agent heartbeating on its own would; the
first refresh of a node comes at a random point of that period, so a conductor's
refreshes spread evenly over it.

Pure bookkeeping: no ironic, no clock of its own (``now`` is passed in).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

from conductor.client import CommandResult

# What ironic decides from on the agent's side: each command, its name and status.
CommandsSeen = tuple[tuple[str, str, str], ...]


def commands_seen(results: Iterable[CommandResult]) -> CommandsSeen:
    """The agent's command list reduced to what a heartbeat's outcome depends on."""
    return tuple((result.id, result.command_name, result.status) for result in results)


def refresh_period(
    heartbeat_timeout: float, callback_timeout: float, poll_interval: float
) -> float:
    """Half the shortest of the limits that a heartbeat holds off (a limit of 0 or less
    is off), as IPA heartbeats at least twice per ``ramdisk_heartbeat_timeout``; never
    below one poll interval, which is as often as a change can be seen anyway."""
    limits = [value for value in (heartbeat_timeout, callback_timeout) if value > 0]
    if not limits:
        return float("inf")
    return max(min(limits) / 2, poll_interval)


@dataclass(frozen=True)
class _Heard:
    seen: Hashable  # what the node and its agent looked like when ironic last heard
    refresh_at: float


class HeartbeatPacer:
    """Per node: what ironic last heard, and when it should hear again regardless."""

    def __init__(self, uniform: Callable[[float, float], float] = random.uniform) -> None:
        self._uniform = uniform
        self._heard: dict[str, _Heard] = {}

    def due(self, uuid: str, seen: Hashable, now: float) -> bool:
        """Whether ironic must hear this answer: never heard, changed, or refresh time."""
        heard = self._heard.get(uuid)
        return heard is None or heard.seen != seen or now >= heard.refresh_at

    def changed(self, uuid: str, seen: Hashable) -> bool:
        """Whether this answer is news to ironic (never heard, or not what it last heard);
        a due answer that is not news is only a refresh."""
        heard = self._heard.get(uuid)
        return heard is None or heard.seen != seen

    def heard(self, uuid: str, seen: Hashable, now: float, period: float) -> None:
        """ironic processed a heartbeat for what ``seen`` describes, at ``now``."""
        first = uuid not in self._heard
        wait = self._uniform(0.0, period) if first else period
        self._heard[uuid] = _Heard(seen, now + wait)

    def forget(self, uuid: str) -> None:
        """The next answer is handed to ironic whatever it says."""
        self._heard.pop(uuid, None)

    def keep_only(self, uuids: set[str]) -> None:
        """Drop the nodes no longer polled."""
        for uuid in list(self._heard):
            if uuid not in uuids:
                del self._heard[uuid]
