"""Counting and slowing down refused peers: one place for every rejection.

Every refused handshake or request is logged with the peer address, the reason and
the time, and counted by reason (shown in ``/v1/status``). A peer with too many
failures in a short window is turned away for a while; other peers are unaffected.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

LOG = logging.getLogger(__name__)

WINDOW = 60.0  # seconds over which failures are counted per peer
MAX_FAILURES = 10  # failures in the window before a peer is held off
PENALTY = 30.0  # seconds a peer is held off (doubles while it keeps failing, to 15 min)
MAX_PENALTY = 900.0
MAX_PEERS = 10000  # peer records kept; bounds memory under a scan from many addresses


@dataclass
class PeerRecord:
    failures: collections.deque[float] = field(default_factory=collections.deque)
    blocked_until: float = 0.0
    penalty: float = PENALTY


class Guard:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        max_failures: int = MAX_FAILURES,
        max_peers: int = MAX_PEERS,
    ) -> None:
        self.clock = clock
        self.max_failures = max_failures
        self.max_peers = max_peers
        # Least recently refused first: forgetting the oldest is popitem(last=False), O(1)
        # however many peers there are (a min() over them cost O(n) per refusal).
        self.peers: collections.OrderedDict[str, PeerRecord] = collections.OrderedDict()
        self.counts: collections.Counter[str] = collections.Counter()

    def retry_after(self, peer: str) -> float:
        """Seconds until this peer may try again; 0 when it is not held off."""
        record = self.peers.get(peer)
        if record is None:
            return 0.0
        return max(0.0, record.blocked_until - self.clock())

    def refuse(self, peer: str, layer: str, reason: str, hold_off: bool = True) -> None:
        """Log and count one refusal, and hold the peer off after repeated ones.

        ``hold_off``: whether it counts towards the hold-off, i.e. the peer presented
        wrong or no credentials (a token, a client certificate). A connection that ends
        mid-handshake is only logged and counted: it guessed nothing, and a port scan or
        a health check must not get a conductor behind the same address held off.
        """
        now = self.clock()
        self.counts[layer] += 1
        LOG.warning("refused %s from %s: %s", layer, peer, reason)
        if not hold_off:
            return
        record = self.peers.get(peer)
        if record is None:
            record = self.peers[peer] = PeerRecord()
        else:
            self.peers.move_to_end(peer)  # now the most recently refused
        record.failures.append(now)
        while record.failures and record.failures[0] < now - WINDOW:
            record.failures.popleft()
        if len(record.failures) >= self.max_failures:
            record.blocked_until = now + record.penalty
            LOG.warning(
                "holding off %s for %.0f s after %d failures",
                peer,
                record.penalty,
                len(record.failures),
            )
            record.penalty = min(record.penalty * 2, MAX_PENALTY)
            record.failures.clear()
        while len(self.peers) > self.max_peers:
            self.peers.popitem(last=False)

    def throttled(self, peer: str) -> None:
        self.counts["throttled"] += 1

    def summary(self) -> dict[str, int]:
        return dict(self.counts)
