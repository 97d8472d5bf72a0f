"""The guard's peer records: bounded, the least recently refused forgotten first, in O(1)."""

from __future__ import annotations

import collections
from typing import Any

from agent.guard import Guard


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingPeers(collections.OrderedDict[str, Any]):
    """The guard's record store, counting every look at a record and every full walk."""

    def __init__(self) -> None:
        super().__init__()
        self.touched = 0
        self.walks = 0

    def __getitem__(self, key: str) -> Any:
        self.touched += 1
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.touched += 1
        return super().get(key, default)

    def __iter__(self) -> Any:
        self.walks += 1
        return super().__iter__()

    def values(self) -> Any:
        self.walks += 1
        return super().values()

    def items(self) -> Any:
        self.walks += 1
        return super().items()


def test_records_are_bounded_and_the_least_recently_refused_go_first():
    guard = Guard(clock=Clock(), max_peers=3)
    for peer in ("a", "b", "c"):
        guard.refuse(peer, "token", "wrong token")
    guard.refuse("a", "token", "wrong token")  # a is now the most recent
    guard.refuse("d", "token", "wrong token")  # one too many: b, the oldest, goes
    assert list(guard.peers) == ["c", "a", "d"]
    assert len(guard.peers["a"].failures) == 2  # a's record survived with its history


def test_a_held_off_peer_stays_held_off_while_its_record_is_kept():
    clock = Clock()
    guard = Guard(clock=clock, max_peers=100)
    for _ in range(10):
        guard.refuse("10.0.0.1", "token", "wrong token")
    assert guard.retry_after("10.0.0.1") == 30.0
    for n in range(99):  # fills the store up to its bound, no further
        guard.refuse(f"10.1.{n // 256}.{n % 256}", "token", "wrong token")
    assert guard.retry_after("10.0.0.1") == 30.0
    guard.refuse("10.2.0.1", "token", "wrong token")
    assert "10.0.0.1" not in guard.peers and len(guard.peers) == 100


def test_refusals_that_do_not_count_make_no_record():
    guard = Guard(clock=Clock(), max_peers=3)
    for n in range(10):
        guard.refuse(f"p{n}", "handshake", "closed mid-handshake", hold_off=False)
    assert not guard.peers
    assert guard.summary() == {"handshake": 10}


def test_each_refusal_touches_a_constant_number_of_records():
    """Past the bound every refusal evicts one record; none walks the store (the old
    eviction looked at every record, so 20,000 refusals cost about 10^8 looks)."""
    guard = Guard(clock=Clock(), max_peers=10000)
    guard.peers = peers = CountingPeers()
    for n in range(20000):
        guard.refuse(f"2001:db8::{n:x}", "token", "wrong token")
    assert len(peers) == 10000
    assert next(iter(peers)) == "2001:db8::2710"  # the 10,001st peer is now the oldest
    assert peers.touched <= 2 * 20000 and peers.walks == 1  # the one walk: iter() above
