"""Market: one book per symbol, market-wide ids, cancel/replace by id, digest over all books."""

from __future__ import annotations

from orderbook import AddOrder, CancelOrder, Market, ReplaceOrder, Side
from tests.orderbook.helpers import BUY, SELL, Harness, accept


def test_books_are_created_per_symbol_and_isolated() -> None:
    h = Harness()
    h.add("a", BUY, 100, 10, symbol="AAA")
    assert h.add("b", SELL, 100, 10, symbol="BBB") == [accept("b")]  # no cross across symbols
    assert h.market.symbols() == ["AAA", "BBB"]
    assert h.depth("AAA") == ([(100, 10, 1)], [])
    assert h.depth("BBB") == ([], [(100, 10, 1)])


def test_cancel_and_replace_find_the_book_by_id() -> None:
    h = Harness()
    h.add("a", BUY, 100, 10, symbol="AAA")
    assert h.replace("a", 5)[0] == {"event": "replace", "id": "a", "qty": 15, "price": 100}
    assert h.cancel("a", "AAA") == [{"event": "cancel", "id": "a", "qty": 15}]


def test_digest_is_order_independent_of_book_creation() -> None:
    one, two = Market(), Market()
    one.apply(AddOrder("a", "AAA", Side.BUY, 100, 1))
    one.apply(AddOrder("b", "BBB", Side.BUY, 100, 1))
    two.apply(AddOrder("b", "BBB", Side.BUY, 100, 1))
    two.apply(AddOrder("a", "AAA", Side.BUY, 100, 1))
    assert one.digest() == two.digest()
    assert len(one.digest()) == 32


def test_digest_covers_waiting_stops_and_last_trade_price() -> None:
    base = [AddOrder("s", "X", Side.SELL, 100, 1), AddOrder("b", "X", Side.BUY, 100, 1)]
    one, two = Market(), Market()
    for cmd in base:
        one.apply(cmd)
        two.apply(cmd)
    one.apply(AddOrder("st", "X", Side.BUY, 0, 5, stop=105))
    assert one.digest() != two.digest()
    one.apply(CancelOrder("st"))
    two.apply(AddOrder("x", "X", Side.BUY, 0, 5, stop=105))
    two.apply(CancelOrder("x"))
    assert one.digest() == two.digest()
    three = Market()
    three.apply(AddOrder("s", "X", Side.SELL, 101, 1))
    three.apply(AddOrder("b", "X", Side.BUY, 101, 1))
    assert three.digest() != two.digest()  # only the last trade price differs


def test_replace_without_symbol_in_other_book() -> None:
    market = Market()
    market.apply(AddOrder("a", "AAA", Side.BUY, 100, 10))
    events = market.apply(ReplaceOrder("a", 0, 101))
    assert [e.to_dict()["event"] for e in events] == ["replace", "depth_change", "bbo"]
    book = market.book("AAA")
    assert book is not None and book.bbo() == (101, 10, 0, 0)


def test_engine_leaves_no_garbage_cycles() -> None:
    # Orders are freed by reference counting (unlinking clears prev/next/level), so a server
    # may run with the cyclic collector off (see `python -m orderbook bench --no-gc`).
    import gc
    import random

    from tests.orderbook.test_properties import random_command

    gc.collect()
    gc.disable()
    try:
        market = Market()
        rng = random.Random(5)
        live: list[str] = []
        for number in range(5000):
            market.apply(random_command(rng, number, live))
        assert market.order_count() > 0
        assert gc.collect() == 0
    finally:
        gc.enable()
