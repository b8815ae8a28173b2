"""Order-object reuse (book.py Rule 6): retired orders are recycled for new adds only when nobody
else holds them, and the reuse really happens on an ordinary stream."""

from __future__ import annotations

import random

from orderbook import AddOrder, CancelOrder, Market, Side
from orderbook.book import Book


def test_held_order_is_never_reused_after_cancel_or_fill() -> None:
    book = Book("AAPL")
    book.add("held-cancel", Side.BUY, 100, 10)
    book.add("held-fill", Side.SELL, 200, 5)
    cancelled = book.order("held-cancel")
    filled = book.order("held-fill")
    assert cancelled is not None and filled is not None
    book.cancel("held-cancel")
    book.add("taker", Side.BUY, 200, 5)  # fills held-fill completely
    for i in range(20):
        book.add(f"new{i}", Side.BUY, 90 - i, 1)
    assert cancelled.order_id == "held-cancel" and cancelled.price == 100
    assert filled.order_id == "held-fill" and filled.price == 200
    assert all(book.order(f"new{i}") not in (cancelled, filled) for i in range(20))


def test_unheld_retired_orders_are_reused() -> None:
    book = Book("AAPL")
    book.add("a", Side.BUY, 100, 10)
    first = id(book.order("a"))
    book.cancel("a")
    book.add("b", Side.BUY, 101, 3)
    reused = book.order("b")
    assert reused is not None and id(reused) == first  # the retired object came back
    assert (reused.order_id, reused.price, reused.open_qty) == ("b", 101, 3)
    assert book.depth() == ([(101, 3, 1)], [])


def test_reuse_does_not_change_a_seeded_stream() -> None:
    """The same commands on a book whose retired pool is disabled give the same digest."""
    rng = random.Random(7)
    commands: list[AddOrder | CancelOrder] = []
    live: list[str] = []
    for n in range(3000):
        if live and rng.random() < 0.3:
            commands.append(CancelOrder(live.pop(rng.randrange(len(live)))))
        else:
            side = Side.BUY if rng.random() < 0.5 else Side.SELL
            price = 0 if rng.random() < 0.1 else 1000 + rng.randint(-20, 20)
            commands.append(AddOrder(f"o{n}", "AAPL", side, price, rng.randint(1, 50)))
            live.append(f"o{n}")
    with_reuse, without_reuse = Market(), Market()
    for market in (with_reuse, without_reuse):  # create the book the same way in both
        market.apply(AddOrder("setup", "AAPL", Side.BUY, 1, 1))
        market.apply(CancelOrder("setup"))
    book = without_reuse.book("AAPL")
    assert book is not None
    book._retired = _NeverKeeps()  # type: ignore[assignment]
    out_a = [e.to_dict() for cmd in commands for e in with_reuse.apply(cmd)]
    out_b = [e.to_dict() for cmd in commands for e in without_reuse.apply(cmd)]
    assert out_a == out_b
    assert with_reuse.digest() == without_reuse.digest()


class _NeverKeeps(list):  # type: ignore[type-arg]
    """A retired pool that drops everything: every add builds a new Order."""

    def append(self, item: object) -> None:
        pass

