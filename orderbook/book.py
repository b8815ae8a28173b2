"""One symbol's limit order book: add / cancel / replace with Liquibook's rules, plus queries.

Rule 1: a command never raises on bad input: it returns a reject event with a reason and leaves
        the book unchanged (validation happens before any mutation).
Rule 2: an accepted add gets a sequence number (time priority of stops) and is Accepted before its
        fills. A stop order waits off-book while the last trade price has not reached its stop
        (buy: last < stop, sell: last > stop); with no trade yet it goes straight to the book, as
        in Liquibook.
Rule 3: replace (Liquibook's rule): the order leaves the book and is re-added at the new price and
        quantity through full matching, so it always loses time priority, even for a pure
        quantity decrease. A replace that would take the quantity below what is already filled
        is rejected; one that takes it exactly to the filled quantity cancels the rest.
Rule 4: after the command the book publishes DepthChanged (levels it touched) and BboChanged
        (only when the best bid/ask price or quantity moved), depth first, as Liquibook does.
Rule 5: `digest()` covers every bit of state that decides future events: resting orders in
        priority order with open quantities, waiting stops in trigger order with sequence
        numbers, the last trade price and the sequence counter.
Rule 6: an Order object that left the book (filled, cancelled, IOC remainder) goes to
        `_retired` (at most RETIRED_ORDERS_MAX); an add reuses one only when sys.getrefcount
        proves nothing else holds it, so no caller ever sees an object change identity. Why:
        a reused object is already in the cyclic GC's oldest generation, so the book's growth
        promotes fewer new objects and triggers fewer full collections (each walks every
        resting order). The reuse is invisible to the events and the digest.
Rule 7: `restore` (snapshot decode, orderbook.snapshot) is the one way to build a book other
        than by commands: it installs exactly the Rule 5 state on a fresh book, and the state
        outside Rule 5 is derived (the published BBO) or per-command (empty), so a restored
        book answers every later command as the original would.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from sys import getrefcount
from typing import Final

from sortedcontainers import SortedList

from orderbook.constants import BID_MARKET_KEY, ORDER_ID_BYTES_MAX, PRICE_TICKS_MAX, QTY_MAX
from orderbook.events import (
    Accepted,
    BboChanged,
    Cancelled,
    CancelRejected,
    DepthChanged,
    Event,
    Level,
    Rejected,
    Replaced,
    ReplaceRejected,
)
from orderbook.matching import RETIRED_ORDERS_MAX, Matcher
from orderbook.side import EMPTY_KEY, FLAG_AON_OF, FLAG_IOC_OF, BookSide, Order, OrderColumns
from orderbook.side import Level as BookLevel
from orderbook.types import Side

REASON_BAD_ID: Final = f"order id must be a string of 1..{ORDER_ID_BYTES_MAX} UTF-8 bytes"
REASON_BAD_SIDE: Final = "side must be buy or sell"
REASON_BAD_TYPE: Final = "quantity, price and stop must be integers"
REASON_DUPLICATE: Final = "duplicate order id"
REASON_QTY: Final = "size must be positive"  # Liquibook's text
REASON_QTY_MAX: Final = f"size must be at most {QTY_MAX}"
REASON_PRICE: Final = "price must not be negative"
REASON_PRICE_MAX: Final = f"price must be at most {PRICE_TICKS_MAX}"
REASON_STOP: Final = "stop price must not be negative"
REASON_STOP_MAX: Final = f"stop price must be at most {PRICE_TICKS_MAX}"
REASON_NOT_FOUND: Final = "not found"  # Liquibook's text
REASON_STOP_WAITING: Final = "stop order has not triggered yet"
REASON_BELOW_FILLED: Final = "replace would lower quantity below filled quantity"
REASON_DELTA_TYPE: Final = "qty_delta and price must be integers"

_BUY: Final = Side.BUY  # enum member lookups cost ~75 ns each on the hot path; a global ~15 ns
_SELL: Final = Side.SELL


_DIGEST_ORDER: Final = struct.Struct("<B?qqqq??")
_DIGEST_HEAD: Final = struct.Struct("<qqII")


def valid_text(text: object, bytes_max: int) -> bool:
    """True for a non-empty str of at most `bytes_max` UTF-8 bytes (lone surrogates fail)."""
    if type(text) is not str or not text:
        return False
    if text.isascii():
        return len(text) <= bytes_max
    try:
        return len(text.encode("utf-8")) <= bytes_max
    except UnicodeEncodeError:
        return False


def check_terms(price: object, qty: object, stop: object) -> str | None:
    """Reject reason for an add's numbers, or None when they are acceptable."""
    if type(price) is not int or type(qty) is not int or type(stop) is not int:
        return REASON_BAD_TYPE
    if qty <= 0:
        return REASON_QTY
    if qty > QTY_MAX:
        return REASON_QTY_MAX
    if price < 0:
        return REASON_PRICE
    if price > PRICE_TICKS_MAX:
        return REASON_PRICE_MAX
    if stop < 0:
        return REASON_STOP
    if stop > PRICE_TICKS_MAX:
        return REASON_STOP_MAX
    return None


class Book(Matcher):
    """The limit order book of one symbol. Not thread-safe; deterministic."""

    def __init__(self, symbol: str, orders: dict[str, Order] | None = None) -> None:
        """`orders` is the id index, shared by every book of a Market (ids unique market-wide)."""
        self.symbol = symbol
        self.bids = BookSide(True)
        self.asks = BookSide(False)
        self.last_trade_price = 0
        self._orders = {} if orders is None else orders
        self._events = []
        self._touched = []
        self._stop_bids = SortedList()
        self._stop_asks = SortedList()
        self._stop_entries = {}
        self._pending = []
        self._seq = 0
        self._bbo = (0, 0, 0, 0)
        self._stale_order = None
        self._stale_price = 0
        self._retired: list[Order] = []

    # ---- commands -------------------------------------------------------------------------

    def add(self, order_id: str | object, side: Side | object, price: int | object,
            qty: int | object, stop: int | object = 0, aon: object = False,
            ioc: object = False) -> list[Event]:
        """Add an order (Rules 1-2; its Order object may be a retired one, Rule 6).
        O(log L) plus O(1) per fill. Any value is accepted and checked here (Rule 1), which is
        why the parameters are `object` too: a mypyc build checks native parameter types on
        entry, and would raise where the pure build rejects (`qty=1.5`, `qty=True`)."""
        if (type(order_id) is str and type(price) is int and type(qty) is int
                and type(stop) is int and 0 < qty <= QTY_MAX and 0 <= price <= PRICE_TICKS_MAX
                and 0 <= stop <= PRICE_TICKS_MAX and (side is _BUY or side is _SELL)
                and order_id.isascii() and 0 < len(order_id) <= ORDER_ID_BYTES_MAX
                and order_id not in self._orders):
            # flags are made bools (the Order fields are bools in a compiled build) without a
            # bool() call, which costs more than the rest of this line in pure Python
            return self._accept(order_id, side is _BUY, price, qty, stop,
                                True if aon else False, True if ioc else False)  # noqa: SIM210
        reason = check_terms(price, qty, stop)
        if not valid_text(order_id, ORDER_ID_BYTES_MAX):
            reason = REASON_BAD_ID
        elif side is not _BUY and side is not _SELL:
            reason = REASON_BAD_SIDE
        elif order_id in self._orders:
            reason = REASON_DUPLICATE
        if reason is not None:
            shown = order_id if type(order_id) is str else repr(order_id)
            self._events = [Rejected(shown, reason)]
            return self._events
        assert type(order_id) is str and type(price) is int and type(qty) is int
        assert type(stop) is int  # a valid non-ASCII id: the rare path to acceptance
        return self._accept(order_id, side is _BUY, price, qty, stop, bool(aon), bool(ioc))

    def _accept(self, order_id: str, is_buy: bool, price: int, qty: int, stop: int,
                aon: bool, ioc: bool) -> list[Event]:
        """Run a validated add (Rule 2): accept, match, rest or wait, publish."""
        events: list[Event] = [Accepted(order_id)]
        self._events = events
        self._seq += 1
        retired = self._retired
        while retired:
            order = retired.pop()
            if getrefcount(order) == _UNSHARED_REFS:  # nobody else holds it (Rule 6)
                order.reset(order_id, is_buy, price, qty, stop, aon, ioc, self)
                break
        else:
            order = Order(order_id, is_buy, price, qty, stop, aon, ioc, self)
        self._orders[order_id] = order
        if not (stop and self._hold_stop(order)):
            self._submit(order)
        if self._pending:
            self._run_pending()
        self._publish()
        return events

    def cancel(self, order_id: str | object) -> list[Event]:
        """Cancel a resting or waiting stop order. O(1), O(log L) if its level empties."""
        events: list[Event] = []
        self._events = events
        order = self._orders.get(order_id) if type(order_id) is str else None
        if order is None or order.book is not self:
            events.append(CancelRejected(str(order_id), REASON_NOT_FOUND))
            return events
        return self.cancel_order(order)

    def cancel_order(self, order: Order) -> list[Event]:
        """Cancel a live order of this book already looked up by id (Market's fast path)."""
        assert order.book is self
        events: list[Event] = [Cancelled(order.order_id, order.open_qty)]
        self._events = events
        del self._orders[order.order_id]
        if order.level is None:
            self._drop_stop(order)
        else:
            self._take_off(order)
        self._publish()
        if len(self._retired) < RETIRED_ORDERS_MAX:
            self._retired.append(order)
        return events

    def replace(self, order_id: str | object, qty_delta: int | object = 0,
                price: int | object = 0) -> list[Event]:
        """Change a resting order's quantity and/or price (Rule 3). Rematches like an add.
        Any value is accepted and checked (Rule 1; `object` as in `add`)."""
        events: list[Event] = []
        self._events = events
        order = self._orders.get(order_id) if type(order_id) is str else None
        reason = None
        if order is None or order.book is not self:
            reason = REASON_NOT_FOUND
        elif type(qty_delta) is not int or type(price) is not int:
            reason = REASON_DELTA_TYPE
        elif order.level is None:
            reason = REASON_STOP_WAITING
        elif price < 0:
            reason = REASON_PRICE
        elif price > PRICE_TICKS_MAX:
            reason = REASON_PRICE_MAX
        elif qty_delta < -order.open_qty:
            reason = REASON_BELOW_FILLED
        elif order.qty + qty_delta > QTY_MAX:
            reason = REASON_QTY_MAX
        if reason is not None or order is None:
            events.append(ReplaceRejected(str(order_id), reason or REASON_NOT_FOUND))
            return events
        assert type(order_id) is str and type(qty_delta) is int and type(price) is int
        new_price = price or order.price
        order.qty += qty_delta
        events.append(Replaced(order_id, order.qty, new_price))
        open_qty = order.open_qty + qty_delta
        self._take_off(order)
        if open_qty == 0:
            del self._orders[order_id]
            events.append(Cancelled(order_id, 0))
        else:
            order.open_qty = open_qty
            self._stale_order, self._stale_price = order, order.price
            order.price = new_price
            try:
                self._submit(order)
                if self._pending:
                    self._run_pending()
            finally:
                self._stale_order = None
        self._publish()
        return events

    def restore(self, last_trade_price: int, seq: int,
                bids: tuple[Sequence[int], Sequence[int], OrderColumns],
                asks: tuple[Sequence[int], Sequence[int], OrderColumns],
                stops: tuple[Sequence[int], Sequence[int], int, OrderColumns]) -> None:
        """Install a snapshot's state on this fresh, empty book (Rule 7), bypassing matching.

        `bids`/`asks` are (level prices in priority order, order count per level, the resting
        orders as columns in priority order), as BookSide.restore takes them. `stops` are
        (sequence numbers, prices, number of buy stops, columns) of the waiting stop orders,
        buy stops then sell stops, each in trigger order. Every order is created here with
        `book=self` and added to the market's shared id index.
        Preconditions (the decoder checks them and raises SnapshotError): ids unique market
        wide, stops untouched and not yet reached by `last_trade_price`, stop seqs distinct
        and <= `seq`, in trigger order. Cost O(n + L log L).
        """
        assert self._seq == 0 and self.last_trade_price == 0
        assert not self.bids.levels and not self.asks.levels and not self._stop_entries
        self.last_trade_price = last_trade_price
        self._seq = seq
        index = self._orders
        self.bids.restore(self, *bids, index)
        self.asks.restore(self, *asks, index)
        seqs, prices, buy_count, columns = stops
        entries = self._stop_entries
        buy_stops: list[tuple[int, int, Order]] = []
        sell_stops: list[tuple[int, int, Order]] = []
        rows = zip(seqs, prices, columns.ids, columns.qtys, columns.opens, columns.stops,
                   columns.flags, strict=True)
        for number, (stop_seq, price, order_id, qty, open_qty, stop, flags) in enumerate(rows):
            is_buy = number < buy_count
            assert open_qty == qty and 0 < stop_seq <= seq
            order = Order(order_id, is_buy, price, qty, stop, FLAG_AON_OF[flags],
                          FLAG_IOC_OF[flags], self)
            entry = (stop if is_buy else -stop, stop_seq, order)
            (buy_stops if is_buy else sell_stops).append(entry)
            entries[order_id] = entry
            index[order_id] = order
        self._stop_bids = SortedList(buy_stops)
        self._stop_asks = SortedList(sell_stops)
        self._bbo = self.bbo()

    # ---- helpers (each mutates only what its name says) ---------------------------------------

    def _take_off(self, order: Order) -> None:
        """Unlink a resting order and drop its level if that emptied it."""
        side = self.bids if order.is_buy else self.asks
        level = side.unlink(order)
        self._touched.append(level)
        side.drop(level)

    def _hold_stop(self, order: Order) -> bool:
        """Park a stop order off-book unless the last trade already reached it (Rule 2)."""
        last = self.last_trade_price
        stop = order.stop
        if not last or (last >= stop if order.is_buy else last <= stop):
            return False
        entry = (stop if order.is_buy else -stop, self._seq, order)
        (self._stop_bids if order.is_buy else self._stop_asks).add(entry)
        self._stop_entries[order.order_id] = entry
        return True

    def _drop_stop(self, order: Order) -> None:
        entry = self._stop_entries.pop(order.order_id)
        (self._stop_bids if order.is_buy else self._stop_asks).remove(entry)

    def _publish(self) -> None:
        """Append DepthChanged and BboChanged for what this command changed (Rule 4)."""
        touched = self._touched
        if not touched:
            return
        self._touched = []
        if len(touched) == 1:  # the common case: one level, no sorting
            level = touched[0]
            if not level.price:
                return
            price = level.price
            entry = ((price, level.qty, level.count),)
            if level.is_buy:
                self._events.append(DepthChanged(self.symbol, entry, ()))
                if price < self._bbo[0]:
                    return  # below the unchanged best bid: BBO cannot have moved
            else:
                self._events.append(DepthChanged(self.symbol, (), entry))
                if price > self._bbo[2] > 0:
                    return  # above the unchanged best ask: BBO cannot have moved
            self._publish_bbo()
            return
        changed: dict[int, BookLevel] = {}
        for level in touched:
            if level.price:
                changed[level.key] = level
        if not changed:
            return
        bids: list[Level] = []
        asks: list[Level] = []
        for key in sorted(changed):
            level = changed[key]
            (bids if level.is_buy else asks).append((level.price, level.qty, level.count))
        self._events.append(DepthChanged(self.symbol, tuple(bids), tuple(asks)))
        self._publish_bbo()

    def _publish_bbo(self) -> None:
        bids, asks = self.bids, self.asks
        key = bids.best
        if key < 0 and key != BID_MARKET_KEY and 0 < asks.best < EMPTY_KEY:  # inline fast path
            bid = bids.levels[key]
            ask = asks.levels[asks.best]
            bbo = (bid.price, bid.qty, ask.price, ask.qty)
        else:
            bbo = self.bbo()
        if bbo != self._bbo:
            self._bbo = bbo
            self._events.append(BboChanged(self.symbol, bbo[0], bbo[1], bbo[2], bbo[3]))

    # ---- queries ------------------------------------------------------------------------------

    def bbo(self) -> tuple[int, int, int, int]:
        """(bid price, bid qty, ask price, ask qty) of the best limit levels; 0s when empty."""
        key = self.bids.best
        if key < 0 and key != BID_MARKET_KEY:
            bid = self.bids.levels[key]
            bid_price, bid_qty = bid.price, bid.qty
        else:
            bid_price, bid_qty = self._best_limit(self.bids)
        key = self.asks.best
        if 0 < key < EMPTY_KEY:
            ask = self.asks.levels[key]
            return bid_price, bid_qty, ask.price, ask.qty
        ask_price, ask_qty = self._best_limit(self.asks)
        return bid_price, bid_qty, ask_price, ask_qty

    @staticmethod
    def _best_limit(side: BookSide) -> tuple[int, int]:
        level = side.best_limit()
        return (level.price, level.qty) if level is not None else (0, 0)

    def depth(self, levels: int | None = None
              ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """Aggregated limit levels (price, open qty, order count), best first. O(L)."""
        bids = [(lv.price, lv.qty, lv.count) for lv in self.bids.limit_levels()]
        asks = [(lv.price, lv.qty, lv.count) for lv in self.asks.limit_levels()]
        if levels is not None:
            return bids[:levels], asks[:levels]
        return bids, asks

    def resting_orders(self) -> list[Order]:
        """Every resting order, bids then asks, each in priority order. O(n)."""
        result: list[Order] = []
        for side in (self.bids, self.asks):
            for key in side.keys:
                result.extend(side.levels[key].orders())
        return result

    def stop_orders(self) -> list[Order]:
        """Waiting stop orders, buy stops then sell stops, each in trigger order."""
        return [entry[2] for entry in self._stop_bids] + [entry[2] for entry in self._stop_asks]

    def waiting_stops(self) -> list[tuple[int, Order]]:
        """Waiting stop orders with their sequence numbers, buy stops then sell stops, each in
        trigger order (what a snapshot stores)."""
        return ([(entry[1], entry[2]) for entry in self._stop_bids]
                + [(entry[1], entry[2]) for entry in self._stop_asks])

    @property
    def sequence(self) -> int:
        """Adds accepted so far (the sequence counter of Rule 2)."""
        return self._seq

    def order(self, order_id: str) -> Order | None:
        """The live order with this id in this book, or None."""
        order = self._orders.get(order_id)
        return order if order is not None and order.book is self else None

    def digest(self) -> bytes:
        """sha256 of the canonical state (Rule 5)."""
        hasher = hashlib.sha256()
        self.digest_into(hasher)
        return hasher.digest()

    def digest_into(self, hasher: hashlib._Hash) -> None:
        """Feed the canonical encoding of this book into `hasher`."""
        symbol = self.symbol.encode("utf-8")
        stops = self.stop_orders()
        resting = self.resting_orders()
        hasher.update(_DIGEST_HEAD.pack(self.last_trade_price, self._seq, len(resting),
                                        len(stops)))
        hasher.update(bytes([len(symbol)]) + symbol)
        seqs = {entry[2].order_id: entry[1] for entry in self._stop_entries.values()}
        for order in resting + stops:
            order_id = order.order_id.encode("utf-8")
            hasher.update(bytes([len(order_id)]) + order_id)
            hasher.update(_DIGEST_ORDER.pack(1 if order.level is None else 0, order.is_buy,
                                             order.price, order.qty, order.open_qty,
                                             order.stop, order.aon, order.ioc))
            if order.level is None:
                hasher.update(struct.pack("<q", seqs[order.order_id]))

    def _check(self) -> None:
        """Assert every invariant (orderbook.checks); never mutates."""
        from orderbook.checks import check_book

        check_book(self)


def _unshared_refs() -> int:
    """sys.getrefcount of an Order held by one local only, measured by the same build (pure
    or compiled) as Book.add: 2 in pure CPython 3.11 (the local and the call's argument), 1 or
    2 in a mypyc build (which may pass its local without a new reference). Any other value
    turns Order reuse off (Rule 6) rather than trust a count this code does not understand."""
    probe = Order("probe", True, 1, 1, 0, False, False, Book("PROBE"))
    count = getrefcount(probe)
    return count if count in (1, 2) else -1


_UNSHARED_REFS: Final = _unshared_refs()
