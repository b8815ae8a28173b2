"""The dedup table: exactly-once lookups, deterministic bounded eviction."""

import random

import pytest

from exchange.dedup import DedupTable


def test_lookup_returns_recorded_reply_and_nothing_else():
    table: DedupTable[str] = DedupTable(seqs_per_client_max=4, clients_max=4)
    table.record(1, 1, "a")
    assert table.lookup(1, 1) == "a"
    assert table.lookup(1, 2) is None
    assert table.lookup(2, 1) is None
    assert not table.is_too_old(1, 2)


def test_evicted_seqs_become_too_old_never_executable():
    table: DedupTable[int] = DedupTable(seqs_per_client_max=3, clients_max=4)
    for seq in range(1, 7):
        table.record(9, seq, seq * 10)
    assert len(table) == 3
    assert [table.lookup(9, s) for s in (4, 5, 6)] == [40, 50, 60]
    for seq in (1, 2, 3):
        assert table.lookup(9, seq) is None
        assert table.is_too_old(9, seq)
    assert not table.is_too_old(9, 7)


def test_least_recently_applied_client_is_evicted_first():
    table: DedupTable[str] = DedupTable(seqs_per_client_max=2, clients_max=2)
    table.record(1, 1, "x")
    table.record(2, 1, "y")
    table.record(1, 2, "x2")  # client 1 is now the most recent
    table.record(3, 1, "z")  # evicts client 2
    assert table.client_count == 2
    assert table.lookup(2, 1) is None
    assert table.lookup(1, 1) == "x"
    assert table.lookup(3, 1) == "z"


@pytest.mark.parametrize("seed", [11, 12])
def test_probe_answers_like_lookup_and_is_too_old(seed):
    rng = random.Random(seed)
    table: DedupTable[str] = DedupTable(seqs_per_client_max=4, clients_max=3)
    for _ in range(2000):
        client, seq = rng.randrange(1, 6), rng.randrange(1, 40)
        assert table.probe(client, seq) == (table.lookup(client, seq),
                                            table.is_too_old(client, seq)), seed
        if table.lookup(client, seq) is None and not table.is_too_old(client, seq):
            table.record(client, seq, f"{client}.{seq}")


def test_evicted_client_keeps_its_floor_and_a_late_retry_is_too_old():
    table: DedupTable[str] = DedupTable(seqs_per_client_max=4, clients_max=1,
                                        evicted_floors_max=2)
    table.record(1, 5, "a")
    table.record(1, 3, "b")
    table.record(2, 1, "y")  # evicts client 1: its floor is its highest stored seq, 5
    assert table.lookup(1, 3) is None
    assert table.is_too_old(1, 3) and table.is_too_old(1, 5) and not table.is_too_old(1, 6)
    assert list(table.evicted_floors()) == [(1, 5)]
    table.record(1, 6, "c")  # client 1 comes back with its floor; client 2 is evicted
    assert list(table.evicted_floors()) == [(2, 1)]
    assert [(c, f) for c, f, _ in table.records()] == [(1, 5)]
    assert table.is_too_old(1, 4) and not table.is_too_old(1, 7)


def test_evicted_floors_are_bounded_oldest_eviction_forgotten_first():
    table: DedupTable[str] = DedupTable(seqs_per_client_max=1, clients_max=1,
                                        evicted_floors_max=2)
    for client_id in range(1, 5):
        table.record(client_id, 10, "r")
    assert list(table.evicted_floors()) == [(2, 10), (3, 10)]
    assert not table.is_too_old(1, 10)  # forgotten: beyond both bounds
    assert table.is_too_old(2, 10)
