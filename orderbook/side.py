"""Resting orders: one side of a book as price levels, each a FIFO of orders.

Rule 1: `keys` (orderbook.keys.SortedKeys) holds exactly the keys of `levels`, and a key sorts
        in priority order: asks by price, bids by -price, market orders (price 0) first on both
        sides (asks key 0, bids key BID_MARKET_KEY), as Liquibook's ComparablePrice sorts them.
Rule 2: a level's orders form a doubly linked list (head = oldest = first to fill); `qty` and
        `count` are the sum of their open quantities and their number. O(1) append and unlink.
Rule 3: a resting order has open_qty > 0 and `level` set; an order off the book has level None.
Rule 4: an emptied level may linger (count 0) only inside one matching pass; `drop` removes it.
Rule 5: `best` is the smallest key (EMPTY_KEY when there is none), kept by `rest` and `drop` so
        the hot path never reads the key container.
Rule 6: `restore` is the only other way levels appear: it installs, on an empty side, levels
        decoded from a snapshot (orderbook.snapshot), keeping Rules 1-5 without matching.

Costs: rest O(log L) for a new level (L levels), O(1) for an existing one; unlink O(1);
restore O(n + L log L).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice, repeat
from typing import TYPE_CHECKING, Final

from orderbook.constants import BID_MARKET_KEY
from orderbook.keys import SortedKeys

EMPTY_KEY: Final = (1 << 63) + 1
"""`best` of an empty side: above every key and above the market-order bound INF_KEY."""

ORDER_FLAG_AON: Final = 1
"""Flag bit of an all-or-none order in OrderColumns.flags (a snapshot's flag column)."""
ORDER_FLAG_IOC: Final = 2
"""Flag bit of an immediate-or-cancel order in OrderColumns.flags."""
ORDER_FLAGS_MAX: Final = ORDER_FLAG_AON | ORDER_FLAG_IOC
FLAG_AON_OF: Final = tuple(bool(flags & ORDER_FLAG_AON) for flags in range(ORDER_FLAGS_MAX + 1))
FLAG_IOC_OF: Final = tuple(bool(flags & ORDER_FLAG_IOC) for flags in range(ORDER_FLAGS_MAX + 1))

if TYPE_CHECKING:
    from orderbook.book import Book


class Order:
    """An accepted order: its terms, its open quantity, and its place in the book.

    `qty` is the order quantity (changed by replace), `open_qty` what is left to fill.
    """

    __slots__ = ("order_id", "is_buy", "price", "qty", "open_qty", "stop", "aon", "ioc",
                 "book", "level", "prev", "next")

    def __init__(self, order_id: str, is_buy: bool, price: int, qty: int, stop: int,
                 aon: bool, ioc: bool, book: Book) -> None:
        self.order_id = order_id
        self.is_buy = is_buy
        self.price = price
        self.qty = qty
        self.open_qty = qty
        self.stop = stop
        self.aon = aon
        self.ioc = ioc
        self.book = book
        self.level: Level | None = None
        # prev/next are set by BookSide.rest; they are never read before that.
        self.prev: Order | None
        self.next: Order | None

    def reset(self, order_id: str, is_buy: bool, price: int, qty: int, stop: int, aon: bool,
              ioc: bool, book: Book) -> None:
        """Make a retired order (off the book, unheld: orderbook.book Rule 6) a new one: __init__'s
        assignments, as a method a mypyc build calls natively (calling __init__ would go
        through the interpreter there)."""
        assert self.level is None
        self.order_id = order_id
        self.is_buy = is_buy
        self.price = price
        self.qty = qty
        self.open_qty = qty
        self.stop = stop
        self.aon = aon
        self.ioc = ioc
        self.book = book


def _bare_new_works() -> bool:
    """True when Order.__new__ allocates without __init__ (pure Python); a mypyc-compiled Order
    has no such allocation (its constructor always runs __init__), so restore builds orders
    through the constructor there."""
    try:
        Order.__new__(Order)
    except TypeError:
        return False
    return True


_BARE_NEW: Final = _bare_new_works()


@dataclass(frozen=True, slots=True)
class OrderColumns:
    """Orders as parallel columns, the layout a snapshot stores them in (one entry per order):
    id, order quantity, open quantity, stop price, flags (ORDER_FLAG_* bits)."""

    ids: Sequence[str]
    qtys: Sequence[int]
    opens: Sequence[int]
    stops: Sequence[int]
    flags: bytes


class Level:
    """All resting orders of one side at one price, oldest first."""

    __slots__ = ("price", "key", "is_buy", "head", "tail", "qty", "count")

    def __init__(self, price: int, key: int, is_buy: bool) -> None:
        self.price = price
        self.key = key
        self.is_buy = is_buy
        self.head: Order | None = None
        self.tail: Order | None = None
        self.qty = 0
        self.count = 0

    def orders(self) -> list[Order]:
        """The level's orders in time priority. O(count)."""
        result: list[Order] = []
        order = self.head
        while order is not None:
            result.append(order)
            order = order.next
        return result


class BookSide:
    """Bids or asks: levels by sort key plus the sorted list of keys."""

    __slots__ = ("is_buy", "keys", "levels", "best")

    def __init__(self, is_buy: bool) -> None:
        self.is_buy = is_buy
        self.keys = SortedKeys()
        self.levels: dict[int, Level] = {}
        self.best = EMPTY_KEY

    def key_of(self, price: int) -> int:
        """Sort key of a price on this side (Rule 1)."""
        if not self.is_buy:
            return price
        return -price if price else BID_MARKET_KEY

    def rest(self, order: Order) -> Level:
        """Append `order` at the back of its price level, creating the level if needed."""
        assert order.open_qty > 0
        price = order.price
        is_buy = self.is_buy
        key = (-price if price else BID_MARKET_KEY) if is_buy else price
        levels = self.levels
        level = levels.get(key)
        if level is None:
            level = Level(price, key, is_buy)
            levels[key] = level
            self.keys.add(key)
            if key < self.best:
                self.best = key
        order.price = level.price  # share one int object per level (memory)
        tail = level.tail
        order.prev = tail
        order.next = None
        if tail is None:
            level.head = order
        else:
            tail.next = order
        level.tail = order
        level.qty += order.open_qty
        level.count += 1
        order.level = level
        return level

    def unlink(self, order: Order) -> Level:
        """Take `order` out of its level (which may become empty; see `drop`). O(1)."""
        level = order.level
        assert level is not None
        prev = order.prev
        nxt = order.next
        if prev is None:
            level.head = nxt
        else:
            prev.next = nxt
        if nxt is None:
            level.tail = prev
        else:
            nxt.prev = prev
        level.qty -= order.open_qty
        level.count -= 1
        order.level = order.prev = order.next = None
        return level

    def drop(self, level: Level) -> None:
        """Remove `level` if it is empty and still in this side. O(log L)."""
        key = level.key
        if level.count == 0 and self.levels.get(key) is level:
            del self.levels[key]
            keys = self.keys
            if key == self.best:
                keys.pop_first()
                self.best = keys.first() if keys else EMPTY_KEY
            else:
                keys.remove(key)

    def best_limit(self) -> Level | None:
        """The best level with a limit price (market orders are not part of depth)."""
        key = self.best
        if key == EMPTY_KEY:
            return None
        if key == 0 or key == BID_MARKET_KEY:
            keys = self.keys
            if len(keys) == 1:
                return None
            key = keys.second()
        return self.levels[key]

    def limit_levels(self) -> list[Level]:
        """Every limit level, best first. O(L)."""
        levels = self.levels
        return [levels[key] for key in self.keys if key != 0 and key != BID_MARKET_KEY]

    def restore(self, book: Book, prices: Sequence[int], counts: Sequence[int],
                columns: OrderColumns, index: dict[str, Order]) -> None:
        """Build and install the resting orders of a snapshot (Rule 6), bypassing matching.

        Level i rests at `prices[i]` and holds the next `counts[i]` orders of `columns`, in time
        priority; each order is created here (attributes set directly: no __init__ frame; with
        bulk allocation and one bulk index update about 2x cheaper per order than calling
        Order(...) and linking) and added to `index` under its id.
        Preconditions (the snapshot decoder checks them and raises before calling): the side is
        empty; the prices' keys strictly increase (priority order); every count >= 1 and they
        add up to len(columns.ids); 0 < open <= qty; flags within ORDER_FLAGS_MAX, no IOC.
        Cost O(n + L log L).
        """
        assert not self.levels and not self.keys and self.best == EMPTY_KEY
        assert len(prices) == len(counts) and sum(counts) == len(columns.ids)
        is_buy = self.is_buy
        levels = self.levels
        keys: list[int] = []
        aons = FLAG_AON_OF
        if _BARE_NEW:
            orders = list(map(Order.__new__, repeat(Order, len(columns.ids))))
        else:
            orders = [Order("", is_buy, 0, 1, 0, False, False, book) for _ in columns.ids]
        opens = columns.opens
        rows = zip(orders, columns.ids, columns.qtys, opens, columns.stops, columns.flags,
                   strict=True)
        start = 0
        for price, count in zip(prices, counts, strict=True):
            key = (-price if price else BID_MARKET_KEY) if is_buy else price
            assert not keys or keys[-1] < key, "levels out of priority order"
            level = Level(price, key, is_buy)
            prev = None
            for order, order_id, qty, open_qty, stop, flags in islice(rows, count):
                order.order_id = order_id
                order.is_buy = is_buy
                order.price = price
                order.qty = qty
                order.open_qty = open_qty
                order.stop = stop
                order.aon = aons[flags]
                order.ioc = False  # never resting (precondition)
                order.book = book
                order.level = level
                order.prev = prev
                order.next = None
                if prev is not None:
                    prev.next = order
                prev = order
            level.head = orders[start]
            level.tail = prev
            level.qty = sum(opens[start:start + count])
            level.count = count
            start += count
            levels[key] = level
            keys.append(key)
        index.update(zip(columns.ids, orders, strict=True))
        self.keys = SortedKeys(keys)
        self.best = keys[0] if keys else EMPTY_KEY
