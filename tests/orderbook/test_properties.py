"""Property tests: random command streams keep every book invariant (tests/orderbook/helpers.py).

Invariants checked after every command: Book._check() (no crossed book at rest except where AON
orders block the cross, structure, stops), quantity conservation per order (filled + open +
cancelled = ordered), depth equal to the sum of resting orders, market-data events agreeing with
the book; and the same stream gives the same events and the same digest.
Seeded: hypothesis runs derandomized from SEED; the plain stress test names its seed in its id.
"""

from __future__ import annotations

import os
import random

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from orderbook import AddOrder, CancelOrder, Command, Market, ReplaceOrder, Side
from tests.orderbook.helpers import Harness

SEED = int(os.environ.get("ORDERBOOK_TEST_SEED", "20261125"))
IDS = [f"o{number}" for number in range(24)]
SYMBOLS = ["X", "Y"]

prices = st.integers(96, 104)
adds = st.builds(
    AddOrder,
    order_id=st.sampled_from(IDS),
    symbol=st.sampled_from(SYMBOLS),
    side=st.sampled_from([Side.BUY, Side.SELL]),
    price=st.one_of(prices, prices, prices, st.just(0)),
    qty=st.integers(1, 30),
    stop=st.one_of(st.just(0), st.just(0), prices),
    aon=st.booleans(),
    ioc=st.sampled_from([False, False, False, True]),
)
cancels = st.builds(CancelOrder, order_id=st.sampled_from(IDS),
                    symbol=st.one_of(st.none(), st.sampled_from(SYMBOLS)))
replaces = st.builds(ReplaceOrder, order_id=st.sampled_from(IDS),
                     qty_delta=st.integers(-30, 20), price=st.one_of(st.just(0), prices),
                     symbol=st.one_of(st.none(), st.sampled_from(SYMBOLS)))
streams = st.lists(st.one_of(adds, adds, adds, cancels, replaces), max_size=60)


def run_stream(stream: list[Command]) -> tuple[list[list[dict[str, object]]], bytes]:
    harness = Harness()
    events = [[e.to_dict() for e in harness.apply(cmd)] for cmd in stream]
    return events, harness.market.digest()


def replay_plain(stream: list[Command]) -> tuple[list[list[dict[str, object]]], bytes]:
    market = Market()
    events = [[e.to_dict() for e in market.apply(cmd)] for cmd in stream]
    return events, market.digest()


@seed(SEED)
@settings(max_examples=250, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(streams)
def test_random_streams_keep_invariants_and_are_deterministic(stream: list[Command]) -> None:
    checked = run_stream(stream)
    assert replay_plain(stream) == checked


def random_command(rng: random.Random, number: int, live: list[str]) -> Command:
    roll = rng.random()
    if roll < 0.15 and live:
        return CancelOrder(rng.choice(live))
    if roll < 0.25 and live:
        return ReplaceOrder(rng.choice(live), rng.randint(-10, 10),
                            rng.choice([0, 0, rng.randint(95, 105)]))
    order_id = f"r{number}"
    live.append(order_id)
    return AddOrder(order_id, rng.choice(SYMBOLS), rng.choice([Side.BUY, Side.SELL]),
                    rng.choice([0] + list(range(95, 106)) * 3), rng.randint(1, 40),
                    rng.choice([0] * 6 + list(range(95, 106))), rng.random() < 0.25,
                    rng.random() < 0.1)


def test_long_seeded_streams() -> None:
    for stream_seed in range(SEED, SEED + 4):
        rng = random.Random(stream_seed)
        live: list[str] = []
        stream = [random_command(rng, number, live) for number in range(1500)]
        try:
            checked = run_stream(stream)
            assert replay_plain(stream) == checked
        except AssertionError as exc:
            raise AssertionError(f"stream seed {stream_seed}: {exc}") from exc


def test_digest_differs_when_state_differs() -> None:
    a, b = Market(), Market()
    for market in (a, b):
        market.apply(AddOrder("o1", "X", Side.BUY, 100, 10))
    assert a.digest() == b.digest()
    b.apply(AddOrder("o2", "X", Side.BUY, 100, 10))
    b.apply(CancelOrder("o2"))
    assert a.digest() != b.digest()  # same resting orders, but the sequence counter moved on
    c = Market()
    c.apply(AddOrder("o1", "X", Side.BUY, 100, 9))
    assert a.digest() != c.digest()
