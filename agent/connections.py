"""How many connections the agent holds, and which one gives way when it is full.

The policy, in one place:

- At most ``max_total`` connections are open at once, and at most ``max_per_peer`` from
  one address. A peer at its own cap makes room with its own oldest *unsettled*
  connection (no complete request head yet: mid-handshake, idle after it, or sending
  headers slowly); when it has none, its new connection is refused (closed at once).
  So a conductor behind the same address as a storm (a NAT) still gets its turn.
- When the agent is full, an unsettled connection is closed to make room: the oldest
  of the peer holding the most unsettled connections, but only if that peer holds more
  of them than the new connection's peer does. Otherwise the new connection is refused.
  So a conductor polling from its own address gets in while a storm from other
  addresses fills the agent. A connection that sent a request (a
  conductor waiting on a long command, an idle keep-alive one) is never closed to make
  room: the keep-alive idle timeout ends those.

Every refusal and eviction is counted (the ``connection`` count in ``/v1/status``) and
logged, rate-limited (see ``agent.logs``).
"""

from __future__ import annotations

import collections
import logging
import resource
from dataclasses import dataclass
from typing import Protocol

LOG = logging.getLogger(__name__)
DESCRIPTOR_HEADROOM = 256  # files, the image, subprocesses, the journal, beyond connections


class Evictable(Protocol):
    def evict(self) -> None: ...


@dataclass(frozen=True)
class Admission:
    admitted: bool
    reason: str = ""


class ConnectionTable:
    """Open connections by peer, and the unsettled ones (no request head yet) by peer,
    with the peers bucketed by how many unsettled connections they hold: finding the
    heaviest peer and its oldest unsettled connection costs O(1)."""

    def __init__(self, max_total: int, max_per_peer: int) -> None:
        self.max_total = max_total
        self.max_per_peer = max_per_peer
        self.peers: dict[Evictable, str] = {}
        self.per_peer: collections.Counter[str] = collections.Counter()
        self.unsettled: dict[str, dict[Evictable, None]] = {}  # per peer, the oldest first
        self.buckets: dict[int, dict[str, None]] = collections.defaultdict(dict)
        self.heaviest = 0  # the most unsettled connections any one peer holds
        self.counts: collections.Counter[str] = collections.Counter()
        self.high_water = 0  # the most connections open at once since ``storm_over``

    def storm_over(self) -> bool:
        """Whether the table was at least half full and has since drained (to 1/8).

        Resets the high-water mark when it says so: one storm, one answer."""
        if self.high_water >= self.max_total // 2 and len(self.peers) <= self.max_total // 8:
            self.high_water = len(self.peers)
            return True
        return False

    def admit(self, connection: Evictable, peer: str) -> Admission:
        if self.per_peer[peer] >= self.max_per_peer:
            if peer not in self.unsettled:
                self.counts["refused"] += 1
                return Admission(
                    False, f"{self.max_per_peer} connections from this address already, all in use"
                )
            self._evict(next(iter(self.unsettled[peer])))
        elif len(self.peers) >= self.max_total:
            mine = len(self.unsettled.get(peer, ()))
            if self.heaviest <= mine:
                self.counts["refused"] += 1
                return Admission(
                    False, f"{self.max_total} connections already, none to close in its favour"
                )
            victim_peer = next(iter(self.buckets[self.heaviest]))
            self._evict(next(iter(self.unsettled[victim_peer])))
        self.peers[connection] = peer
        self.per_peer[peer] += 1
        held = self.unsettled.setdefault(peer, {})
        held[connection] = None
        self._rebucket(peer, len(held) - 1, len(held))
        self.high_water = max(self.high_water, len(self.peers))
        return Admission(True)

    def _evict(self, connection: Evictable) -> None:
        self.counts["evicted"] += 1
        self.leave(connection)
        connection.evict()

    def settled(self, connection: Evictable) -> None:
        """The connection sent a request head: it no longer gives way to new ones."""
        peer = self.peers.get(connection)
        held = self.unsettled.get(peer, {}) if peer is not None else {}
        if connection in held:
            assert peer is not None
            del held[connection]
            if not held:
                del self.unsettled[peer]
            self._rebucket(peer, len(held) + 1, len(held))

    def leave(self, connection: Evictable) -> None:
        self.settled(connection)
        peer = self.peers.pop(connection, None)
        if peer is None:
            return
        self.per_peer[peer] -= 1
        if self.per_peer[peer] <= 0:
            del self.per_peer[peer]

    def _rebucket(self, peer: str, before: int, after: int) -> None:
        """Move ``peer`` to the bucket of its new count of unsettled connections."""
        if before:
            self.buckets[before].pop(peer, None)
        if after:
            self.buckets[after][peer] = None
        if after > self.heaviest:
            self.heaviest = after
        while self.heaviest and not self.buckets.get(self.heaviest):
            self.buckets.pop(self.heaviest, None)
            self.heaviest -= 1

    def __len__(self) -> int:
        return len(self.peers)

    def summary(self) -> dict[str, int]:
        """Open now, the cap, and since start: refused at once, closed to make room."""
        return {
            "open": len(self.peers),
            "max": self.max_total,
            "refused": self.counts["refused"],
            "evicted": self.counts["evicted"],
        }


def descriptors_for(max_connections: int) -> int:
    return max_connections + DESCRIPTOR_HEADROOM


def fit_descriptor_limit(max_connections: int) -> int:
    """The connection cap this process's descriptor limit can carry.

    Raises the soft ``RLIMIT_NOFILE`` up to the hard one when the cap needs it; when even
    the hard limit is too low, returns a lower cap and says so once. Accepting beyond
    the descriptors makes ``accept()`` fail (EMFILE) for every client, legitimate or not.
    """
    needed = descriptors_for(max_connections)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            LOG.warning("cannot raise the descriptor limit to %d: %s", target, exc)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return max_connections
    fitted = max(1, soft - DESCRIPTOR_HEADROOM)
    LOG.warning(
        "the descriptor limit (%d, hard %s) cannot carry max-connections=%d; using %d "
        "(raise LimitNOFILE to at least %d)",
        soft,
        "unlimited" if hard == resource.RLIM_INFINITY else hard,
        max_connections,
        fitted,
        needed,
    )
    return fitted
