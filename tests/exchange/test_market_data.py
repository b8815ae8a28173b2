"""Market-data fan-out: every trade, conflated BBO/depth for a subscriber that falls behind."""

import random

import pytest

from exchange.market_data import (
    CONFLATE_AFTER,
    SUBSCRIBER_QUEUE_MAX,
    MarketDataHub,
    StreamEnded,
    Update,
    merge_depth,
)
from orderbook import BboChanged, DepthChanged, Trade


def _drain(subscription) -> list[tuple[Update, bool]]:
    out = []
    while got := subscription.next_updates(1000):
        out += got
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_a_slow_subscriber_gets_every_trade_and_conflated_bbo_and_depth(seed):
    rng = random.Random(seed)
    hub = MarketDataHub()
    slow = hub.subscribe([], include_depth=True)
    published: list[Update] = []
    book: dict[str, dict[str, dict[int, tuple[int, int, int]]]] = {}
    for index in range(1, 4 * CONFLATE_AFTER):
        symbol = rng.choice("AB")
        price = 100 + rng.randrange(10)
        level = (price, rng.randrange(5) * 10, rng.randrange(3))
        side = "bids" if price < 105 else "asks"
        book.setdefault(symbol, {"bids": {}, "asks": {}})[side][price] = level
        depth = DepthChanged(symbol, (level,) if side == "bids" else (),
                             (level,) if side == "asks" else ())
        events = [Trade(symbol, price, index), BboChanged(symbol, index, 1, index + 1, 1), depth]
        batch = [Update(index, symbol, event) for event in events if rng.random() < 0.8]
        published += batch
        hub.publish(batch)
    got = _drain(slow)
    trades = [u.event for u, _ in got if isinstance(u.event, Trade)]
    assert trades == [u.event for u in published if isinstance(u.event, Trade)], seed
    assert [u.index for u, _ in got] == sorted(u.index for u, _ in got), seed  # log order
    assert any(conflated for _, conflated in got) and slow.conflated_count > 0, seed
    assert len(got) + slow.conflated_count == len(published), seed
    for symbol in "AB":  # the last BBO is never lost; applying the depth changes gives the book
        last = [u.event for u in published if u.symbol == symbol and type(u.event) is BboChanged]
        seen = [u.event for u, _ in got if u.symbol == symbol and type(u.event) is BboChanged]
        assert seen[-1] == last[-1], seed
        levels: dict[str, dict[int, tuple[int, int, int]]] = {"bids": {}, "asks": {}}
        for update, _ in got:
            if update.symbol == symbol and isinstance(update.event, DepthChanged):
                levels["bids"].update((lv[0], lv) for lv in update.event.bids)
                levels["asks"].update((lv[0], lv) for lv in update.event.asks)
        expected = {side: {} for side in ("bids", "asks")}
        for update in published:
            if update.symbol == symbol and isinstance(update.event, DepthChanged):
                expected["bids"].update((lv[0], lv) for lv in update.event.bids)
                expected["asks"].update((lv[0], lv) for lv in update.event.asks)
        assert levels == expected, seed


def test_a_subscriber_that_keeps_up_sees_every_update_unconflated():
    hub = MarketDataHub()
    subscription = hub.subscribe(["A"], include_depth=False)
    for index in range(1, 3 * CONFLATE_AFTER):
        hub.publish([Update(index, "A", BboChanged("A", index, 1, index + 1, 1)),
                     Update(index, "A", DepthChanged("A", ((1, 1, 1),), ())),
                     Update(index, "B", Trade("B", 1, 1))])
        got = subscription.next_updates(10)
        assert [(u.index, conflated) for u, conflated in got] == [(index, False)]


def test_too_many_queued_trades_end_the_stream_and_merge_depth_keeps_order():
    hub = MarketDataHub()
    subscription = hub.subscribe([], include_depth=True)
    hub.publish(Update(i, "A", Trade("A", 1, 1)) for i in range(SUBSCRIBER_QUEUE_MAX + 1))
    assert hub.subscriber_count == 0
    assert len(_drain_until_end(subscription)) == SUBSCRIBER_QUEUE_MAX
    merged = merge_depth(DepthChanged("A", ((101, 1, 1), (100, 2, 1)), ((103, 1, 1),)),
                         DepthChanged("A", ((102, 5, 1), (100, 0, 0)), ((104, 1, 1),)))
    assert merged.bids == ((102, 5, 1), (101, 1, 1), (100, 0, 0))
    assert merged.asks == ((103, 1, 1), (104, 1, 1))


def _drain_until_end(subscription) -> list[tuple[Update, bool]]:
    out = []
    with pytest.raises(StreamEnded, match="trades behind"):
        while True:
            out += subscription.next_updates(1000)
    return out
