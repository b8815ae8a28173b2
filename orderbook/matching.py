"""Matching: Liquibook's add_order / match_order / check_deferred_aons, on our side structures.

Rule 1 (price): an inbound order matches resting orders in priority order (market orders first,
        then best price, then time) while their price crosses: a buy at P matches asks <= P, a
        sell at P matches bids >= P, a market order (P = 0) matches everything.
Rule 2 (trade price): the resting order's price; if it is a market order, the inbound's price;
        if that is market too, the last trade price; with none of these there is no trade.
Rule 3 (all-or-none): an AON order fills completely in one pass or not at all, resting or
        inbound. A resting AON too big for the inbound's remaining quantity is skipped (deferred),
        never blocking the orders behind it. An inbound AON collects matching orders (deferred
        matches) until their quantity covers it, then trades them in priority order.
Rule 4 (rest): what is left of a non-IOC order rests at the back of its level; then every resting
        AON the inbound had skipped gets one chance to match against the inbound's side.
Rule 5 (IOC): what is left of an IOC order is cancelled (Cancelled event), never rests.
Rule 6 (stops): each trade sets the last trade price; stop orders it reaches (buy: price >= stop,
        sell: price <= stop) queue as pending and are submitted after the current order, in the
        order they were accepted; their trades may trigger further stops (cascade).

Rule 7 (replace, Liquibook's quirk kept): during the replace command itself, trades of the
        replaced order use its *old* price wherever Rule 2 reads that order's price (Liquibook's
        create_trade reads the application's order object, which learns the new price only in
        the replace callback after matching); crossing decisions use the new price.

Deviation from Liquibook, on purpose (see docs/orderbook.md): resting orders that cannot get a
trade price (market against market before any trade) are skipped by AON matching instead of
leaving an AON order partially filled.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from sortedcontainers import SortedList

from orderbook.events import Cancelled, Event, Filled, Trade
from orderbook.side import EMPTY_KEY, BookSide, Level, Order

RETIRED_ORDERS_MAX: Final = 1024
"""Most retired Order objects a book keeps for reuse by later adds (see Book.add)."""

INF_KEY: Final = 1 << 63
"""Limit key of a market order: every resting key is <= it."""

QTY_UNLIMITED: Final = 1 << 63
"""max_qty argument meaning "no cap" in _cross."""


def limit_key(order: Order) -> int:
    """Key bound on the opposite side: resting keys <= this cross `order` (Rule 1)."""
    price = order.price
    if not price:
        return INF_KEY
    return price if order.is_buy else -price


def iter_crossing(side: BookSide, bound: int) -> Iterator[Order]:
    """Resting orders of `side` with key <= bound, in priority order.

    Safe while the consumer fills or unlinks the order just yielded or earlier ones; the caller
    must not add or remove levels until the iteration ends.
    """
    levels = side.levels
    for key in side.keys:
        if key > bound:
            break
        order = levels[key].head
        while order is not None:
            nxt = order.next
            yield order
            order = nxt


class Matcher:
    """The matching half of Book: state is declared here, commands live in orderbook.book."""

    symbol: str
    bids: BookSide
    asks: BookSide
    last_trade_price: int
    _orders: dict[str, Order]
    _events: list[Event]
    _touched: list[Level]
    _stop_bids: SortedList  # (stop, seq, order): triggered when last >= stop
    _stop_asks: SortedList  # (-stop, seq, order): triggered when last <= stop
    _stop_entries: dict[str, tuple[int, int, Order]]
    _pending: list[tuple[int, Order]]
    _stale_order: Order | None  # the order being replaced, during its replace command
    _stale_price: int  # its price before the replace (Rule 7)
    _retired: list[Order]  # filled or cancelled orders that Book.add may reuse

    def _submit(self, order: Order) -> None:
        """Match `order`, then rest it, cancel its IOC remainder, or retire it (Rules 1-5)."""
        assert order.level is None
        price = order.price
        if order.is_buy:
            opp, own = self.asks, self.bids
            bound = price if price else INF_KEY
        else:
            opp, own = self.bids, self.asks
            bound = -price if price else INF_KEY
        deferred: list[Order] | None = None
        if opp.best <= bound:
            deferred = []
            if order.aon:
                self._match_aon(order, bound, opp, deferred)
                self._prune()
            else:
                self._match_regular(order, bound, opp, deferred)
        if not order.open_qty or order.ioc:
            if order.open_qty:
                self._events.append(Cancelled(order.order_id, order.open_qty))
                del self._orders[order.order_id]
            else:
                self._orders.pop(order.order_id, None)
            if len(self._retired) < RETIRED_ORDERS_MAX:
                self._retired.append(order)
        else:
            self._touched.append(own.rest(order))
            if deferred:
                for aon in deferred:
                    if aon.open_qty and aon.level is not None:
                        self._match_aon(aon, limit_key(aon), own, [])
                self._prune()

    def _prune(self) -> None:
        """Drop levels emptied by fills (Rule 4 of orderbook.side)."""
        bids, asks = self.bids, self.asks
        for level in self._touched:
            if level.count == 0:
                (bids if level.is_buy else asks).drop(level)

    def _match_regular(self, inbound: Order, bound: int, opp: BookSide,
                       deferred: list[Order]) -> None:
        """Liquibook's match_regular_order, level by level (hot path: kept flat).

        Precondition: opp.best <= bound (the best level crosses).
        """
        assert opp.best <= bound
        keys = opp.keys
        levels = opp.levels
        touched = self._touched  # lists, not bound methods: a mypyc build appends natively
        events = self._events
        orders = self._orders
        retired = self._retired
        symbol = self.symbol
        in_id = inbound.order_id
        stale = self._stale_order
        in_price = self._stale_price if inbound is stale else inbound.price
        remaining = inbound.open_qty
        emptied: list[Level] = []
        key = opp.best
        later = None  # iterator over the keys after the best, made only when needed
        while True:  # no level is added or removed during the loop (see _prune)
            level = levels[key]
            price = level.price or in_price or self.last_trade_price
            if price:
                touched.append(level)
                order = level.head
                while order is not None:
                    nxt = order.next
                    qty = order.open_qty
                    if order.aon and qty > remaining:
                        deferred.append(order)
                    elif order is stale:  # replaced this command: old price (Rule 7)
                        inbound.open_qty = remaining
                        self._cross(inbound, order, QTY_UNLIMITED)
                        remaining = inbound.open_qty
                        if not remaining:
                            break
                    else:
                        fill = qty if qty < remaining else remaining
                        remaining -= fill
                        order.open_qty = qty - fill
                        level.qty -= fill
                        contra_id = order.order_id
                        events.append(Filled(in_id, contra_id, price, fill))
                        events.append(Filled(contra_id, in_id, price, fill))
                        events.append(Trade(symbol, price, fill))
                        if fill == qty:
                            if order.prev is None:  # the usual case: unlink the head inline
                                level.head = nxt
                                if nxt is None:
                                    level.tail = None
                                else:
                                    nxt.prev = None
                                level.count -= 1
                                order.level = order.next = None
                            else:
                                opp.unlink(order)
                            del orders[contra_id]
                            if len(retired) < RETIRED_ORDERS_MAX:
                                retired.append(order)
                        if price != self.last_trade_price:
                            self._set_last_trade_price(price)
                        if not remaining:
                            break
                    order = nxt
                if not level.count:
                    emptied.append(level)
                if not remaining:
                    break
            if later is None:
                later = iter(keys)
                next(later)
            key = next(later, EMPTY_KEY)
            if key > bound:
                break
        inbound.open_qty = remaining
        for level in emptied:
            opp.drop(level)

    def _match_aon(self, inbound: Order, bound: int, opp: BookSide,
                   deferred_aons: list[Order]) -> None:
        """Liquibook's match_aon_order: fill `inbound` completely or not at all."""
        remaining = inbound.open_qty
        deferred_qty = 0
        matches: list[Order] = []
        for current in iter_crossing(opp, bound):
            if not inbound.open_qty:
                break
            if not (self._trade_price(current) or self._trade_price(inbound)
                    or self.last_trade_price):
                continue  # no trade price: skip (deviation, see module docstring)
            current_qty = current.open_qty
            if current.aon:
                if current_qty > remaining:
                    deferred_aons.append(current)
                elif remaining <= current_qty + deferred_qty:
                    need = remaining - current_qty
                    if need == self._deferred_trades(inbound, matches, need, need):
                        remaining -= need
                        remaining -= self._cross(inbound, current, QTY_UNLIMITED)
                else:
                    deferred_qty += current_qty
                    matches.append(current)
            elif remaining <= current_qty + deferred_qty:
                least = remaining - current_qty if remaining > current_qty else 0
                traded = self._deferred_trades(inbound, matches, remaining, least)
                if remaining <= current_qty + traded:
                    traded += self._cross(inbound, current, QTY_UNLIMITED)
                    remaining -= traded
            else:
                deferred_qty += current_qty
                matches.append(current)

    def _deferred_trades(self, inbound: Order, matches: list[Order], most: int,
                         least: int) -> int:
        """Liquibook's try_create_deferred_trades: trade between `least` and `most` units
        against the collected matches in priority order (AONs whole or not at all)."""
        plan: list[int] = []
        found = 0
        for current in matches:
            if found >= most:
                break
            qty = current.open_qty
            if found + qty > most:
                qty = 0 if current.aon else most - found
            found += qty
            plan.append(qty)
        traded = 0
        if least <= found <= most:
            for current, qty in zip(matches, plan, strict=False):
                if traded >= found:
                    break
                if qty:
                    traded += self._cross(inbound, current, qty)
        return traded

    def _trade_price(self, order: Order) -> int:
        """The price Liquibook's create_trade reads for `order` (Rule 7)."""
        return self._stale_price if order is self._stale_order else order.price

    def _cross(self, inbound: Order, current: Order, most: int) -> int:
        """Trade inbound against resting `current` for up to `most` units (Rule 2)."""
        price = (self._trade_price(current) or self._trade_price(inbound)
                 or self.last_trade_price)
        qty = min(most, inbound.open_qty, current.open_qty)
        if not price or qty <= 0:
            return 0
        for order in (inbound, current):
            order.open_qty -= qty
            level = order.level
            if level is not None:
                level.qty -= qty
                self._touched.append(level)
                if not order.open_qty:
                    (self.bids if order.is_buy else self.asks).unlink(order)
            if not order.open_qty:
                self._orders.pop(order.order_id, None)
        events = self._events
        events.append(Filled(inbound.order_id, current.order_id, price, qty))
        events.append(Filled(current.order_id, inbound.order_id, price, qty))
        events.append(Trade(self.symbol, price, qty))
        if price != self.last_trade_price:
            self._set_last_trade_price(price)
        return qty

    def _set_last_trade_price(self, price: int) -> None:
        """Record a trade price and move the stop orders it reaches to pending (Rule 6)."""
        self.last_trade_price = price
        if not self._stop_entries:
            return
        entries = self._stop_entries
        pending = self._pending
        stops = self._stop_bids
        while stops and stops[0][0] <= price:
            _, seq, order = stops.pop(0)
            del entries[order.order_id]
            pending.append((seq, order))
        stops = self._stop_asks
        while stops and stops[0][0] <= -price:
            _, seq, order = stops.pop(0)
            del entries[order.order_id]
            pending.append((seq, order))

    def _run_pending(self) -> None:
        """Submit triggered stops in acceptance order, round after round (cascade)."""
        while self._pending:
            batch = sorted(self._pending, key=lambda item: item[0])
            self._pending = []
            for _, order in batch:
                self._submit(order)
