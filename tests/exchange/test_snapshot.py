"""Exchange state-machine snapshots (exchange/snapshot.py): ExchangeStateMachine.snapshot/restore.

A restored machine must have the original's state_digest() and book_digest(), re-encode to the
same bytes, and apply every later log entry exactly as the original (replies, market data, dedup
evictions, digests): a property test over random entry streams (hypothesis, derandomized from
SEED) and seeded long streams. Corrupt, truncated, foreign, other-version and other-limits input
must raise SnapshotError with one line.
"""

from __future__ import annotations

import os
import random
import struct
from collections import OrderedDict

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from exchange.__main__ import main
from exchange.dedup import DedupTable
from exchange.snapshot import (
    HEADER_SIZE,
    STATE_FORMAT_VERSION,
    STATE_MAGIC,
    SnapshotError,
    encode_state,
    snapshot_index,
    snapshot_size,
)
from exchange.state_machine import (
    REFUSED_EXHAUSTED,
    ExchangeStateMachine,
    Reply,
    encode_entry,
    encode_instruments,
)
from orderbook import (
    Accepted,
    AddOrder,
    BboChanged,
    Cancelled,
    CancelRejected,
    Command,
    DepthChanged,
    Filled,
    Rejected,
    Replaced,
    ReplaceRejected,
    Side,
    Trade,
)
from orderbook.snapshot import HEADER, MARKET_MAGIC, encode_market, seal
from tests.orderbook.test_properties import random_command, streams

SEED = int(os.environ.get("EXCHANGE_TEST_SEED", "20261201"))
SEQS_MAX, CLIENTS_MAX = 4, 3  # small limits: evictions and floors happen in short streams
CLIENTS = 5
RESTING_MAX = 40  # small resting-order limits: refusals happen in short streams


def entries(commands: list[Command], rng: random.Random) -> list[bytes]:
    """Log payloads: random clients, mostly fresh seqs, some retries (duplicates or too old),
    some seqs reused with another request, some malformed entries."""
    seqs = [0] * CLIENTS
    sent: dict[tuple[int, int], bytes] = {}
    result: list[bytes] = []
    instruments_at = rng.randrange(len(commands) + 1)  # Rule 5: the list, fixed at some entry
    for position, command in enumerate(commands):
        if position == instruments_at:
            result.append(encode_instruments(("X",)))
        client = rng.randrange(CLIENTS)
        roll = rng.random()
        if roll < 0.03:
            result.append(b"\x01\x02")
            continue
        if roll < 0.15 and seqs[client]:
            result.append(sent[client, rng.randint(1, seqs[client])])
            continue
        if roll < 0.18 and seqs[client]:
            seq = rng.randint(1, seqs[client])  # reused with (most likely) another request
        else:
            seqs[client] += 1
            seq = seqs[client]
        payload = encode_entry(client + 1, seq, command)
        sent.setdefault((client, seq), payload)
        result.append(payload)
    return result


def machine_after(payloads: list[bytes]) -> ExchangeStateMachine:
    machine = ExchangeStateMachine(SEQS_MAX, CLIENTS_MAX, resting_orders_max=RESTING_MAX,
                                   resting_per_client_max=RESTING_MAX - 10)
    for payload in payloads:
        machine.apply(machine.applied_index + 1, payload)
    return machine


def seeded_payloads(stream_seed: int, length: int) -> list[bytes]:
    rng = random.Random(stream_seed)
    live: list[str] = []
    return entries([random_command(rng, number, live) for number in range(length)], rng)


def assert_same_future(original: ExchangeStateMachine, restored: ExchangeStateMachine,
                       payloads: list[bytes]) -> None:
    for payload in payloads:
        index = original.applied_index + 1
        assert original.apply(index, payload) == restored.apply(index, payload), index
    assert restored.state_digest() == original.state_digest()
    assert restored.book_digest() == original.book_digest()
    assert restored.snapshot() == original.snapshot()


def test_empty_machine_round_trips() -> None:
    machine = ExchangeStateMachine()
    restored = ExchangeStateMachine.restore(machine.snapshot())
    assert restored.state_digest() == machine.state_digest()
    assert restored.applied_index == 0 and len(restored.dedup) == 0
    assert (restored.dedup.seqs_per_client_max, restored.dedup.clients_max) == (
        machine.dedup.seqs_per_client_max, machine.dedup.clients_max)


@pytest.mark.parametrize("stream_seed", [SEED, SEED + 1])
def test_large_machine_round_trips_and_continues_alike(stream_seed: int) -> None:
    payloads = seeded_payloads(stream_seed, 2000)
    original = machine_after(payloads[:1500])
    assert original.duplicate_count and original.dedup.client_count == CLIENTS_MAX
    data = original.snapshot()
    restored = ExchangeStateMachine.restore(data)
    restored.market._check()
    assert restored.state_digest() == original.state_digest(), f"seed {stream_seed}"
    assert restored.snapshot() == data
    assert (restored.applied_index, restored.executed_count, restored.duplicate_count) == (
        original.applied_index, original.executed_count, original.duplicate_count)
    assert [(c, f, list(r.items())) for c, f, r in restored.dedup.records()] == [
        (c, f, list(r.items())) for c, f, r in original.dedup.records()]
    assert_same_future(original, restored, payloads[1500:])


def test_equal_states_give_equal_bytes() -> None:
    payloads = seeded_payloads(SEED + 2, 600)
    first, second = machine_after(payloads), machine_after(payloads)
    assert first.snapshot() == second.snapshot() == first.snapshot()
    assert machine_after(payloads[:-1]).snapshot() != first.snapshot()


@seed(SEED)
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(streams, streams, st.integers(0, 2**32))
def test_restored_machine_applies_like_the_original(prefix: list[Command],
                                                    suffix: list[Command],
                                                    stream_seed: int) -> None:
    rng = random.Random(stream_seed)
    payloads = entries(prefix + suffix, rng)
    original = machine_after(payloads[:len(prefix)])
    restored = ExchangeStateMachine.restore(original.snapshot())
    restored.market._check()
    assert_same_future(original, restored, payloads[len(prefix):])


def test_every_event_type_round_trips_in_a_reply() -> None:
    events = (
        Accepted("a"), Rejected("b\udcff", "why"), Filled("a", "c", 5, 6), Cancelled("a", 0),
        CancelRejected("x", "not found"), Replaced("a", 9, 0), ReplaceRejected("y", "no"),
        Trade("SYM", 5, 6), BboChanged("SYM", 1, 2, 3, 4),
        DepthChanged("SYM", ((5, 6, 1), (4, 1, 1)), ((7, 8, 2),)),
        DepthChanged("SYM", (), ()), Accepted("ордер"),
    )
    machine = ExchangeStateMachine(SEQS_MAX, CLIENTS_MAX)
    reply = Reply(7, 3, "ордер", events, 11, duplicate=True, error="broken ☂",
                  request_digest=2**64 - 1)
    machine.dedup = DedupTable.restore(SEQS_MAX, CLIENTS_MAX, [
        (7, 2, OrderedDict([(3, reply)])),
        (1, 0, OrderedDict([(9, Reply(1, 9, "", (), 12, request_digest=5))]))],
        evicted_floors_max=3, evicted=[(4, 8), (2, 1)])
    data = machine.snapshot()
    restored = ExchangeStateMachine.restore(data)
    assert restored.dedup.lookup(7, 3) == reply
    assert restored.dedup.lookup(1, 9) == Reply(1, 9, "", (), 12, request_digest=5)
    assert [(c, f) for c, f, _ in restored.dedup.records()] == [(7, 2), (1, 0)]
    assert list(restored.dedup.evicted_floors()) == [(4, 8), (2, 1)]
    assert restored.dedup.evicted_floors_max == 3
    assert restored.snapshot() == data


def test_a_version_1_snapshot_is_refused_with_one_line() -> None:
    data = bytearray(small_snapshot())
    struct.pack_into("<I", data, 8, 1)
    with pytest.raises(SnapshotError, match="version 1 is not supported"):
        ExchangeStateMachine.restore(bytes(data))


def test_a_version_2_snapshot_is_refused_with_one_line() -> None:
    data = bytearray(small_snapshot())
    struct.pack_into("<I", data, 8, 2)
    with pytest.raises(SnapshotError, match="version 2 is not supported"):
        ExchangeStateMachine.restore(bytes(data))


def test_instruments_limits_and_refusals_round_trip() -> None:
    machine = ExchangeStateMachine(resting_orders_max=3, resting_per_client_max=2)
    machine.apply(1, encode_entry(1, 1, AddOrder("1.1", "X", Side.BUY, 100, 5)))
    machine.apply(2, encode_instruments(("X", "Y")))
    for seq in range(2, 5):
        machine.apply(1 + seq, encode_entry(1, seq, AddOrder(f"1.{seq}", "Y", Side.BUY, 90, 5)))
    refused = machine.dedup.lookup(1, 4)
    assert refused is not None and refused.refusal == REFUSED_EXHAUSTED
    restored = ExchangeStateMachine.restore(machine.snapshot())
    assert restored.instruments == frozenset({"X", "Y"}) and restored.instruments_index == 2
    assert (restored.resting_orders_max, restored.resting_per_client_max) == (3, 2)
    assert restored.live_orders_of(1) == 2 and restored.dedup.lookup(1, 4) == refused
    assert restored.state_digest() == machine.state_digest()
    assert restored.snapshot() == machine.snapshot()
    unfixed = ExchangeStateMachine.restore(ExchangeStateMachine().snapshot())
    assert unfixed.instruments is None and unfixed.instruments_index == 0


def test_snapshot_index_and_size_read_the_header() -> None:
    payloads = seeded_payloads(SEED + 3, 50)
    data = machine_after(payloads).snapshot()
    assert snapshot_index(data) == len(payloads)
    assert snapshot_size(data[:HEADER_SIZE]) == len(data)
    with pytest.raises(SnapshotError, match="shorter than its 52-byte header"):
        snapshot_size(data[:10])
    with pytest.raises(SnapshotError, match="checksum mismatch"):
        snapshot_index(data[:-1] + bytes([data[-1] ^ 1]))


def test_limits_are_kept_and_checked() -> None:
    data = ExchangeStateMachine(SEQS_MAX, CLIENTS_MAX).snapshot()
    restored = ExchangeStateMachine.restore(data, seqs_per_client_max=SEQS_MAX,
                                            clients_max=CLIENTS_MAX)
    assert (restored.dedup.seqs_per_client_max, restored.dedup.clients_max) == (SEQS_MAX,
                                                                                CLIENTS_MAX)
    with pytest.raises(SnapshotError, match="dedup limits .* this replica runs with"):
        ExchangeStateMachine.restore(data, seqs_per_client_max=128, clients_max=CLIENTS_MAX)


# ---- bad input ---------------------------------------------------------------------------------

def small_snapshot() -> bytes:
    return machine_after(seeded_payloads(SEED + 4, 40)).snapshot()


def test_byte_flips_are_refused() -> None:
    data = small_snapshot()
    for position in range(0, len(data), 3):
        corrupt = bytearray(data)
        corrupt[position] ^= 0x10
        with pytest.raises(SnapshotError):
            ExchangeStateMachine.restore(bytes(corrupt))


def test_truncations_are_refused() -> None:
    data = small_snapshot()
    for length in list(range(0, HEADER.size + 2)) + list(range(HEADER.size + 2, len(data), 7)):
        with pytest.raises(SnapshotError, match="truncated"):
            ExchangeStateMachine.restore(data[:length])


def test_market_snapshot_is_foreign_here() -> None:
    with pytest.raises(SnapshotError,
                       match="not a snapshot of kind 'exchange state': magic b'MUMARKET'"):
        ExchangeStateMachine.restore(encode_market(ExchangeStateMachine().market))


def test_future_version_is_named() -> None:
    data = bytearray(small_snapshot())
    struct.pack_into("<I", data, 8, 9)
    with pytest.raises(SnapshotError, match="version 9 is newer than supported"):
        ExchangeStateMachine.restore(bytes(data))


def test_checksum_valid_but_malformed_bodies_raise_only_snapshot_error() -> None:
    body = small_snapshot()[HEADER.size:]
    for position in range(0, len(body), 2):
        corrupt = bytearray(body)
        corrupt[position] ^= 0x01
        try:
            ExchangeStateMachine.restore(seal(STATE_MAGIC, [bytes(corrupt)], STATE_FORMAT_VERSION))
        except SnapshotError as exc:
            assert "\n" not in str(exc)


def test_checksum_valid_truncated_bodies_are_refused() -> None:
    body = small_snapshot()[HEADER.size:]
    for length in range(0, len(body), 5):
        with pytest.raises(SnapshotError, match="malformed"):
            ExchangeStateMachine.restore(seal(STATE_MAGIC, [body[:length]],
                                              STATE_FORMAT_VERSION))


def test_encode_state_is_the_method() -> None:
    machine = machine_after(seeded_payloads(SEED + 5, 30))
    assert encode_state(machine) == machine.snapshot()
    assert machine.snapshot()[:8] == STATE_MAGIC != MARKET_MAGIC


def test_bench_snapshot_command_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench-snapshot", "--orders", "300", "--rounds", "1", "--no-pickle"]) == 0
    out = capsys.readouterr().out
    assert "bytes per live order" in out and "restore" in out


def test_bench_snapshot_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench-snapshot", "--orders", "0"]) == 2
    assert "error" in capsys.readouterr().err


def test_bench_state_builds_past_one_clients_resting_limit() -> None:
    """The bench's orders name their clients, so a state larger than one client's resting-order
    limit builds (it once named none, and every add past the limit was refused)."""
    from exchange.limits import RESTING_ORDERS_PER_CLIENT_MAX
    from exchange.snapshot_bench import build_state

    orders = RESTING_ORDERS_PER_CLIENT_MAX + 500
    machine, entries = build_state(orders, seed=1)
    assert machine.market.order_count() == orders
    assert entries < 2 * orders


def test_side_enum_is_kept() -> None:
    machine = machine_after([encode_entry(1, 1, AddOrder("a", "X", Side.SELL, 5, 1))])
    restored = ExchangeStateMachine.restore(machine.snapshot())
    book = restored.market.book("X")
    assert book is not None and book.asks.levels and not book.bids.levels
