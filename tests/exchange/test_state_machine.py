"""The replicated state machine: determinism, exactly-once, malformed entries."""

import random

import pytest

from exchange.state_machine import (
    BATCH_HEADER,
    ENTRY_HEADER,
    INSTRUMENTS_VERSION,
    REFUSED_EXHAUSTED,
    REFUSED_INVALID,
    REFUSED_NONE,
    ExchangeStateMachine,
    check_instruments,
    encode_batch,
    encode_entry,
    encode_instruments,
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


# ---- the instrument list (Rule 7) and resting-order limits (Rule 8) --------------------------

def _order(client: int, seq: int, symbol: str, side: Side = Side.BUY, price: int = 100,
           qty: int = 10, ioc: bool = False) -> bytes:
    return encode_entry(client, seq, AddOrder(f"{client}.{seq}", symbol, side, price, qty,
                                              ioc=ioc))


def test_instruments_entry_fixes_the_list_and_unknown_symbols_create_no_book():
    sm = ExchangeStateMachine()
    assert sm.apply(1, encode_instruments(("MSFT", "AAPL"))).reply.error == ""
    assert sm.instruments == frozenset({"AAPL", "MSFT"}) and sm.instruments_index == 1
    refused = sm.apply(2, _order(1, 1, "XYZ")).reply
    assert refused.refusal == REFUSED_INVALID and "unknown symbol 'XYZ'" in refused.error
    assert refused.events == () and sm.market.symbols() == [] and sm.executed_count == 0
    retried = sm.apply(3, _order(1, 1, "XYZ")).reply  # exactly-once: the refusal is the reply
    assert retried.duplicate and retried.refusal == REFUSED_INVALID
    assert sm.apply(4, _order(1, 2, "AAPL")).reply.refusal == REFUSED_NONE
    assert sm.market.symbols() == ["AAPL"]


def test_a_second_instruments_entry_changes_nothing_and_says_why():
    sm = ExchangeStateMachine()
    sm.apply(1, encode_instruments(("AAPL",)))
    digest = sm.book_digest()
    same = sm.apply(2, encode_instruments(("AAPL",))).reply
    other = sm.apply(3, encode_instruments(("AAPL", "XYZ"))).reply
    assert same.error == ""
    assert "fixed by log entry 1 (AAPL); entry 3's list (AAPL,XYZ) is ignored" in other.error
    assert sm.instruments == frozenset({"AAPL"}) and sm.book_digest() == digest


def test_state_digest_covers_the_instrument_list():
    a, b, c = ExchangeStateMachine(), ExchangeStateMachine(), ExchangeStateMachine()
    a.apply(1, encode_instruments(("AAPL",)))
    b.apply(1, encode_instruments(("MSFT",)))
    c.apply(1, _order(1, 1, "AAPL", qty=1, ioc=True))  # an entry, no list
    assert len({a.state_digest(), b.state_digest(), c.state_digest()}) == 3
    assert a.book_digest() == b.book_digest()


@pytest.mark.parametrize("symbols", [(), ("A", "A"), (" A",), ("A\n",), ("X" * 17,),
                                     tuple(f"S{n}" for n in range(101))])
def test_invalid_instrument_lists_are_named(symbols):
    assert check_instruments(symbols) is not None


def test_malformed_instruments_entries_change_nothing():
    good = encode_instruments(("AAPL", "MSFT"))
    unsorted = BATCH_HEADER.pack(0, INSTRUMENTS_VERSION, 2) + b"\x04MSFT\x04AAPL"
    not_utf8 = BATCH_HEADER.pack(0, INSTRUMENTS_VERSION, 1) + b"\x06\xff\xfe\xff\xfe\xff\xfe"
    for index, payload in enumerate([good[:-1], good + b"x", unsorted, not_utf8], 1):
        sm = ExchangeStateMachine()
        for earlier in range(1, index):
            sm.apply(earlier, _order(9, earlier, "A", qty=1, ioc=True))
        reply = sm.apply(index, payload).reply
        assert "instruments entry is malformed" in reply.error and sm.instruments is None


def test_resting_orders_per_client_and_in_total_are_refused_at_the_limit():
    sm = ExchangeStateMachine(resting_orders_max=5, resting_per_client_max=3)
    index = 0

    def send(payload: bytes):
        nonlocal index
        index += 1
        return sm.apply(index, payload).reply

    for seq in range(1, 4):
        assert send(_order(1, seq, "A", price=90 + seq)).refusal == REFUSED_NONE
    refused = send(_order(1, 4, "A"))
    assert refused.refusal == REFUSED_EXHAUSTED and "RESTING_ORDERS_PER_CLIENT_MAX" in refused.error
    assert "live orders of client 1 (at most 3" in refused.error and not sm.market.is_live("1.4")
    assert send(_order(1, 5, "A", Side.SELL, 200, ioc=True)).refusal == REFUSED_NONE  # IOC
    assert send(_order(2, 1, "A", Side.SELL, 200)).refusal == REFUSED_NONE
    assert send(_order(2, 2, "A", Side.SELL, 201)).refusal == REFUSED_NONE
    total = send(_order(3, 1, "A", Side.SELL, 202))
    assert total.refusal == REFUSED_EXHAUSTED and "RESTING_ORDERS_MAX" in total.error
    send(encode_entry(1, 6, CancelOrder("1.1")))  # frees a place of client 1 and of the market
    assert sm.live_orders_of(1) == 2
    assert send(_order(1, 7, "A", price=80)).refusal == REFUSED_NONE


def _recount(sm: ExchangeStateMachine) -> dict[int, int]:
    counts: dict[int, int] = {}
    for order_id in sm.market.live_order_ids():
        owner = int(order_id.partition(".")[0])
        counts[owner] = counts.get(owner, 0) + 1
    return counts


@pytest.mark.parametrize("stream_seed", range(20261201, 20261205))
def test_live_counts_follow_fills_cancels_replaces_and_stops(stream_seed):
    """Rule 8's counts equal a recount of the books after every entry (seeded stream)."""
    rng = random.Random(stream_seed)
    sm = ExchangeStateMachine(resting_orders_max=60, resting_per_client_max=25)
    seqs = [0] * 4
    for index in range(1, 1500):
        client = rng.randrange(4)
        seqs[client] += 1
        owner, seq = client + 1, seqs[client]
        live = [o for o in sm.market.live_order_ids() if o.startswith(f"{owner}.")]
        roll = rng.random()
        if roll < 0.2 and live:
            command: object = CancelOrder(rng.choice(live))
        elif roll < 0.35 and live:
            command = ReplaceOrder(rng.choice(live), rng.randint(-10, 10),
                                   rng.choice([0, rng.randint(95, 105)]))
        else:
            command = AddOrder(f"{owner}.{seq}", rng.choice("AB"), rng.choice(list(Side)),
                               rng.choice([0, *range(95, 106)]), rng.randint(1, 30),
                               rng.choice([0] * 5 + list(range(95, 106))), rng.random() < 0.2,
                               rng.random() < 0.1)
        sm.apply(index, encode_entry(owner, seq, command))  # type: ignore[arg-type]
        expected = _recount(sm)
        assert all(sm.live_orders_of(o) == expected.get(o, 0) for o in range(1, 5)), \
            f"stream seed {stream_seed}, entry {index}"
    assert sm.market.order_count() <= 60
