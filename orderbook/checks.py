"""Invariant checks for a Book (sortedcontainers-style `_check`): assert, never mutate.

Rule 1: each side's SortedKeys (itself checked) equals its level dict's keys; no empty level
        at rest.
Rule 2: each level's linked list, quantity and count agree with its orders; every resting order
        has open quantity, the level's price, is indexed, is not IOC; an AON order is never
        partially filled.
Rule 3: waiting stops are indexed, untouched (open = qty) and not yet reached by the last trade.
Rule 4: the book is not crossed at rest except where all-or-none orders block the cross: the best
        non-AON limit bid is below the best non-AON limit ask, and a resting non-AON market order
        faces no non-AON limit order.
Rule 5: no per-command state survives a command (pending stops, touched levels, replace state);
        the published BBO and the cached best keys equal what the book holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orderbook.side import EMPTY_KEY, BookSide, Order

if TYPE_CHECKING:
    from orderbook.book import Book


def check_side(book: Book, side: BookSide) -> list[Order]:
    """Rules 1-2 for one side; returns its orders in priority order."""
    side.keys._check()
    assert list(side.keys) == sorted(side.levels), "keys out of sync with levels"
    result: list[Order] = []
    for key in side.keys:
        level = side.levels[key]
        assert level.key == key == side.key_of(level.price)
        assert level.is_buy == side.is_buy
        assert level.count > 0, f"empty level {level.price} at rest"
        orders = level.orders()
        assert len(orders) == level.count
        assert sum(order.open_qty for order in orders) == level.qty
        assert level.head is orders[0] and level.tail is orders[-1]
        previous = None
        for order in orders:
            assert order.prev is previous
            assert order.level is level and order.book is book
            assert order.is_buy == side.is_buy
            assert order.price == level.price
            assert 0 < order.open_qty <= order.qty
            assert not order.ioc, "an IOC order rests"
            assert not order.aon or order.open_qty == order.qty, "AON partially filled"
            assert book._orders.get(order.order_id) is order
            previous = order
        result.extend(orders)
    return result


def check_stops(book: Book) -> list[Order]:
    """Rule 3; returns the waiting stop orders."""
    stops = book.stop_orders()
    last = book.last_trade_price
    assert len(stops) == len(book._stop_entries)
    for order in stops:
        assert order.level is None and order.book is book
        assert book._orders.get(order.order_id) is order
        assert order.open_qty == order.qty
        assert last != 0
        assert order.stop > last if order.is_buy else order.stop < last
    return stops


def check_uncrossed(bids: list[Order], asks: list[Order]) -> None:
    """Rule 4."""
    plain_bids = [order for order in bids if not order.aon]
    plain_asks = [order for order in asks if not order.aon]
    limit_bids = [order.price for order in plain_bids if order.price]
    limit_asks = [order.price for order in plain_asks if order.price]
    if limit_bids and limit_asks:
        assert max(limit_bids) < min(limit_asks), f"crossed: {max(limit_bids)} >= {min(limit_asks)}"
    if any(not order.price for order in plain_bids):
        assert not limit_asks, "resting market bid faces a limit ask"
    if any(not order.price for order in plain_asks):
        assert not limit_bids, "resting market ask faces a limit bid"


def check_book(book: Book) -> None:
    """Every invariant of `book` (O(n)); for tests and debugging."""
    bids = check_side(book, book.bids)
    asks = check_side(book, book.asks)
    check_stops(book)
    check_uncrossed(bids, asks)
    assert not book._pending, "stop orders left pending after a command"
    assert not book._touched, "touched levels left after a command"
    assert book._stale_order is None, "replace state left after a command"
    assert book._bbo == book.bbo(), "published BBO differs from the book"
    for side in (book.bids, book.asks):
        assert side.best == (side.keys.first() if side.keys else EMPTY_KEY), "stale best key"
