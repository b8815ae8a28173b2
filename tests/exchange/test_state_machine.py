"""The replicated state machine: determinism, exactly-once, malformed entries."""

import random

import pytest

from exchange.state_machine import (
    BATCH_HEADER,
    ENTRY_HEADER,
    ExchangeStateMachine,
    encode_batch,
    encode_entry,
)
from orderbook import AddOrder, CancelOrder, Filled, ReplaceOrder, Side, Trade, encode_command


def _add(client: int, seq: int, side: Side, price: int, qty: int) -> bytes:
    return encode_entry(client, seq, AddOrder(f"{client}.{seq}", "AAPL", side, price, qty))


def test_fill_splits_order_events_from_market_data():
    sm = ExchangeStateMachine()
    sm.apply(1, _add(1, 1, Side.SELL, 100, 10))
    applied = sm.apply(2, _add(2, 1, Side.BUY, 100, 4))
    kinds = [type(e).__name__ for e in applied.reply.events]
    assert kinds[0] == "Accepted"
    assert any(isinstance(e, Filled) for e in applied.reply.events)
    assert any(isinstance(e, Trade) for e in applied.market_data)
    assert not any(isinstance(e, Trade) for e in applied.reply.events)
    assert applied.reply.order_id == "2.1"
    assert applied.reply.log_index == 2


def test_retried_request_returns_original_reply_without_executing_again():
    sm = ExchangeStateMachine()
    payload = _add(7, 1, Side.BUY, 100, 10)
    first = sm.apply(1, payload)
    digest = sm.book_digest()
    again = sm.apply(2, payload)  # the same (client, seq) committed twice (a retry)
    assert again.reply.duplicate
    assert again.reply.events == first.reply.events
    assert again.reply.log_index == 1
    assert sm.book_digest() == digest
    assert sm.executed_count == 1 and sm.duplicate_count == 1
    looked_up = sm.lookup(7, 1, memoryview(payload)[ENTRY_HEADER.size:])
    assert looked_up is not None and looked_up.duplicate and looked_up.log_index == 1


def test_seq_reused_with_another_request_is_an_error_naming_the_seq():
    sm = ExchangeStateMachine()
    sm.apply(1, _add(7, 1, Side.BUY, 100, 10))
    digest, chain = sm.book_digest(), sm.chain
    other = _add(7, 1, Side.SELL, 90, 5)
    reused = sm.apply(2, other)
    assert "seq 1 of client 7 was already used by a different request (log entry 1)" \
        in reused.reply.error
    assert not reused.reply.duplicate and reused.reply.events == ()
    assert sm.book_digest() == digest and sm.chain != chain
    assert sm.executed_count == 1 and sm.duplicate_count == 0
    looked_up = sm.lookup(7, 1, memoryview(other)[ENTRY_HEADER.size:])
    assert looked_up is not None and "already used" in looked_up.error
    stored = sm.dedup.lookup(7, 1)
    assert stored is not None and stored.error == ""  # the original reply stands


def test_malformed_entries_are_deterministic_errors_not_crashes():
    sm = ExchangeStateMachine()
    short = sm.apply(1, b"\x01\x02")
    assert short.reply.error
    garbage = sm.apply(2, ENTRY_HEADER.pack(3, 1) + b"\xff\xff\xff")
    assert "malformed" in garbage.reply.error
    retry = sm.apply(3, ENTRY_HEADER.pack(3, 1) + b"\xff\xff\xff")
    assert retry.reply.duplicate and retry.reply.error == garbage.reply.error
    assert sm.applied_index == 3


def test_too_old_seq_is_refused_not_executed():
    sm = ExchangeStateMachine(seqs_per_client_max=2)
    for seq in range(1, 4):
        sm.apply(seq, _add(5, seq, Side.BUY, 100 + seq, 1))
    before = sm.book_digest()
    old = sm.apply(4, _add(5, 1, Side.BUY, 100, 1))  # seq 1 was evicted: cannot tell if new
    assert not old.reply.duplicate
    assert "older than" in old.reply.error
    assert old.reply.events == ()
    assert sm.book_digest() == before
    assert sm.executed_count == 3


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_log_gives_same_digests(seed):
    rng = random.Random(seed)
    log = []
    for _ in range(1, 400):
        client = rng.randint(1, 5)
        seq = rng.randint(1, 60)  # repeats on purpose: duplicates and too-old seqs
        roll = rng.random()
        if roll < 0.7:
            side = rng.choice((Side.BUY, Side.SELL))
            cmd = AddOrder(f"{client}.{seq}", rng.choice(("A", "B")), side,
                           rng.randint(95, 105), rng.randint(1, 5) * 10)
        elif roll < 0.85:
            cmd = CancelOrder(f"{client}.{rng.randint(1, 60)}")
        else:
            cmd = ReplaceOrder(f"{client}.{rng.randint(1, 60)}", qty_delta=10)
        log.append(encode_entry(client, seq, cmd))
    a, b = ExchangeStateMachine(seqs_per_client_max=8), ExchangeStateMachine(seqs_per_client_max=8)
    for index, payload in enumerate(log, start=1):
        ra, rb = a.apply(index, payload), b.apply(index, payload)
        assert ra.reply == rb.reply, f"seed {seed} index {index}"
    assert a.state_digest() == b.state_digest(), f"seed {seed}"
    assert a.book_digest() == b.book_digest(), f"seed {seed}"
    c = ExchangeStateMachine(seqs_per_client_max=8)
    for index, payload in enumerate(log[:-1], start=1):
        c.apply(index, payload)
    assert c.state_digest() != a.state_digest(), f"seed {seed}"


def _body(client: int, seq: int, side: Side, price: int, qty: int) -> tuple[int, int, bytes]:
    return client, seq, encode_command(AddOrder(f"{client}.{seq}", "AAPL", side, price, qty))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_batch_applies_like_its_requests_one_by_one(seed):
    rng = random.Random(seed)
    requests = [_body(1 + rng.randrange(4), seq, rng.choice((Side.BUY, Side.SELL)),
                      100 + rng.randrange(5), 1 + rng.randrange(9)) for seq in range(1, 200)]
    requests += requests[:10]  # retries of requests already executed, in the same log
    single, batched = ExchangeStateMachine(), ExchangeStateMachine()
    single_replies = [single.apply(i + 1, ENTRY_HEADER.pack(c, s) + b).reply
                      for i, (c, s, b) in enumerate(requests)]
    batched_replies = []
    index = 0
    position = 0
    while position < len(requests):
        size = 1 + rng.randrange(40)
        chunk = requests[position : position + size]
        position += size
        index += 1
        applied = batched.apply_entry(index, encode_batch(chunk))
        assert [a.index for a in applied] == [index] * len(chunk), seed
        batched_replies += [a.reply for a in applied]
    assert [(r.client_id, r.seq, r.events, r.duplicate) for r in single_replies] == \
        [(r.client_id, r.seq, r.events, r.duplicate) for r in batched_replies], seed
    assert single.book_digest() == batched.book_digest(), seed
    assert batched.duplicate_count == single.duplicate_count == 10, seed
    assert batched.executed_count == single.executed_count, seed


def test_single_and_batch_entries_mix_and_malformed_batches_are_replies():
    sm = ExchangeStateMachine()
    assert not sm.apply(1, _add(7, 1, Side.SELL, 100, 5)).reply.error  # format 0 still decodes
    applied = sm.apply_entry(2, encode_batch([_body(7, 2, Side.BUY, 100, 2),
                                               _body(8, 1, Side.BUY, 100, 2)]))
    assert [(a.reply.client_id, a.reply.seq) for a in applied] == [(7, 2), (8, 1)]
    assert any(isinstance(e, Filled) for e in applied[1].reply.events)
    bad_version = BATCH_HEADER.pack(0, 99, 1) + b"\x00" * 40
    assert "version 99" in sm.apply_entry(3, bad_version)[0].reply.error
    truncated = encode_batch([_body(9, 1, Side.BUY, 90, 1), _body(9, 2, Side.BUY, 90, 1)])[:-5]
    out = sm.apply_entry(4, truncated)
    assert [a.reply.seq for a in out] == [1, 0] and "malformed" in out[1].reply.error
    assert sm.applied_index == 4
    again = ExchangeStateMachine()  # a replica that applies the same entries agrees
    for index, payload in enumerate([_add(7, 1, Side.SELL, 100, 5),
                                     encode_batch([_body(7, 2, Side.BUY, 100, 2),
                                                   _body(8, 1, Side.BUY, 100, 2)]),
                                     bad_version, truncated], start=1):
        again.apply_entry(index, payload)
    assert again.state_digest() == sm.state_digest()
