"""The connection table's policy at its caps, and the descriptor limit fitted to them."""

from __future__ import annotations

import resource
from types import SimpleNamespace

import pytest

from agent import connections
from agent.connections import ConnectionTable, fit_descriptor_limit


class Conn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True

    def __repr__(self) -> str:
        return self.name


def fill(table: ConnectionTable, peer: str, count: int) -> list[Conn]:
    made = [Conn(f"{peer}-{i}") for i in range(count)]
    for conn in made:
        assert table.admit(conn, peer).admitted
    return made


def test_a_peer_at_its_cap_makes_room_with_its_own_oldest_unsettled_connection():
    table = ConnectionTable(max_total=100, max_per_peer=3)
    held = fill(table, "a", 3)
    table.settled(held[0])
    assert table.admit(Conn("a-new"), "a").admitted
    assert [c.evicted for c in held] == [False, True, False]
    assert table.per_peer["a"] == 3 and table.counts["evicted"] == 1


def test_a_peer_at_its_cap_with_every_connection_in_use_is_refused():
    table = ConnectionTable(max_total=100, max_per_peer=3)
    for conn in fill(table, "a", 3):
        table.settled(conn)
    refused = table.admit(Conn("a-new"), "a")
    assert not refused.admitted and "3 connections from this address" in refused.reason
    assert table.admit(Conn("b-0"), "b").admitted
    assert table.counts["refused"] == 1


def test_full_table_closes_the_heaviest_peers_oldest_unsettled_connection():
    table = ConnectionTable(max_total=5, max_per_peer=10)
    storm = fill(table, "storm", 3)
    fill(table, "other", 2)
    newcomer = Conn("conductor")
    assert table.admit(newcomer, "conductor").admitted
    assert [c.evicted for c in storm] == [True, False, False]
    assert len(table) == 5 and table.per_peer["storm"] == 2


def test_a_peer_does_not_displace_lighter_or_equal_peers():
    table = ConnectionTable(max_total=4, max_per_peer=10)
    fill(table, "a", 2)
    fill(table, "b", 2)
    refused = table.admit(Conn("a-new"), "a")  # a holds 2, as many as the heaviest
    assert not refused.admitted and "none to close" in refused.reason
    assert table.admit(Conn("c-0"), "c").admitted  # c holds none: it gets a slot


def test_settled_connections_are_never_closed_to_make_room():
    table = ConnectionTable(max_total=2, max_per_peer=10)
    held = fill(table, "a", 2)
    for conn in held:
        table.settled(conn)
    assert not table.admit(Conn("b-0"), "b").admitted
    assert not any(c.evicted for c in held)
    table.leave(held[0])
    table.leave(held[0])  # twice: connection_lost after an eviction
    assert len(table) == 1 and table.admit(Conn("b-1"), "b").admitted


def test_buckets_follow_the_unsettled_counts():
    table = ConnectionTable(max_total=100, max_per_peer=100)
    a = fill(table, "a", 3)
    fill(table, "b", 1)
    assert table.heaviest == 3
    for conn in a:
        table.settled(conn)
    assert table.heaviest == 1
    for conn in a:
        table.leave(conn)
    assert table.heaviest == 1 and "a" not in table.per_peer and "a" not in table.unsettled


def fake_resource(soft: int, hard: int, settable: bool = True) -> SimpleNamespace:
    state = {"limits": (soft, hard)}

    def setrlimit(which: int, limits: tuple[int, int]) -> None:
        if not settable or limits[0] > state["limits"][1]:
            raise ValueError("not allowed")
        state["limits"] = limits

    return SimpleNamespace(
        RLIMIT_NOFILE=resource.RLIMIT_NOFILE,
        RLIM_INFINITY=resource.RLIM_INFINITY,
        getrlimit=lambda which: state["limits"],
        setrlimit=setrlimit,
        state=state,
    )


def test_the_soft_descriptor_limit_is_raised_to_carry_the_cap(monkeypatch):
    fake = fake_resource(1024, 4096)
    monkeypatch.setattr(connections, "resource", fake)
    assert fit_descriptor_limit(2000) == 2000
    assert fake.state["limits"] == (2000 + connections.DESCRIPTOR_HEADROOM, 4096)


def test_a_hard_limit_too_low_lowers_the_cap_and_says_so(monkeypatch, caplog):
    fake = fake_resource(1024, 1024)
    monkeypatch.setattr(connections, "resource", fake)
    assert fit_descriptor_limit(2000) == 1024 - connections.DESCRIPTOR_HEADROOM
    assert "cannot carry max-connections=2000" in caplog.text
    assert len(caplog.records) == 1


@pytest.mark.parametrize("soft", [768, 100000])
def test_a_sufficient_limit_is_left_alone(monkeypatch, soft):
    fake = fake_resource(soft, 100000)
    monkeypatch.setattr(connections, "resource", fake)
    assert fit_descriptor_limit(512) == 512
    assert fake.state["limits"] == (soft, 100000)


def test_a_storm_is_over_once_a_table_at_least_half_full_has_drained():
    table = ConnectionTable(max_total=16, max_per_peer=16)
    conns = fill(table, "a", 7)
    assert not table.storm_over()  # never half full: no storm
    conns += fill(table, "a", 1)
    assert not table.storm_over()  # half full, not drained
    for conn in conns[2:]:
        table.leave(conn)
    assert table.storm_over()
    assert not table.storm_over()  # said once per storm


def test_memory_is_given_back():
    from agent import memory
    from wire import heap

    assert memory.give_back() is (heap.release_free_memory() is not None)
