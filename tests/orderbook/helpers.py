"""Test harness: a Market that checks every invariant after every command.

After each command it asserts: Book._check() (structure, no cross except AON, stops), quantity
conservation per order id (ordered = filled + open + cancelled), depth equal to the sum of the
resting orders, and that the DepthChanged/BboChanged events agree with the book.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from orderbook import (
    AddOrder,
    BboChanged,
    Cancelled,
    CancelOrder,
    Command,
    DepthChanged,
    Event,
    Filled,
    Market,
    Replaced,
    ReplaceOrder,
    Side,
)

SYMBOL = "X"
BUY = Side.BUY
SELL = Side.SELL
MARKET_DATA = {"bbo", "depth_change"}


class Harness:
    """Market + invariant checks + conservation ledger."""

    def __init__(self) -> None:
        self.market = Market()
        self.ordered: dict[str, int] = {}
        self.filled: Counter[str] = Counter()
        self.cancelled: Counter[str] = Counter()
        self.bbo: dict[str, tuple[int, int, int, int]] = defaultdict(lambda: (0, 0, 0, 0))

    def apply(self, cmd: Command) -> list[Event]:
        events = self.market.apply(cmd)
        self.account(cmd, events)
        self.check(events)
        return events

    def account(self, cmd: Command, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Filled):
                self.filled[event.order_id] += event.qty
            elif isinstance(event, Cancelled):
                self.cancelled[event.order_id] += event.qty
            elif isinstance(event, Replaced):
                self.ordered[event.order_id] = event.qty
            elif type(event).__name__ == "Accepted":
                assert isinstance(cmd, AddOrder)
                self.ordered[cmd.order_id] = cmd.qty
                self.filled[cmd.order_id] = 0
                self.cancelled[cmd.order_id] = 0

    def check(self, events: list[Event]) -> None:
        self.market._check()
        for order_id, qty in self.ordered.items():
            live = self.live_open(order_id)
            assert qty == self.filled[order_id] + live + self.cancelled[order_id], order_id
        for symbol in self.market.symbols():
            book = self.market.book(symbol)
            assert book is not None
            expected: dict[tuple[bool, int], list[int]] = defaultdict(lambda: [0, 0])
            for order in book.resting_orders():
                if order.price:
                    entry = expected[(order.is_buy, order.price)]
                    entry[0] += order.open_qty
                    entry[1] += 1
            bids, asks = book.depth()
            assert bids == sorted(((p, q, c) for (b, p), (q, c) in expected.items() if b),
                                  reverse=True)
            assert asks == sorted((p, q, c) for (b, p), (q, c) in expected.items() if not b)
            for event in events:
                if isinstance(event, DepthChanged) and event.symbol == symbol:
                    for price, qty, count in event.bids:
                        assert expected.get((True, price), [0, 0]) == [qty, count]
                    for price, qty, count in event.asks:
                        assert expected.get((False, price), [0, 0]) == [qty, count]
            bbo_events = [e for e in events if isinstance(e, BboChanged) and e.symbol == symbol]
            if bbo_events:
                last = bbo_events[-1]
                assert (last.bid, last.bid_qty, last.ask, last.ask_qty) == book.bbo()
                assert book.bbo() != self.bbo[symbol]
                self.bbo[symbol] = book.bbo()
            else:
                assert book.bbo() == self.bbo[symbol], "BBO moved without a BboChanged event"

    def live_open(self, order_id: str) -> int:
        for symbol in self.market.symbols():
            book = self.market.book(symbol)
            assert book is not None
            order = book.order(order_id)
            if order is not None:
                return order.open_qty
        return 0

    # ---- shorthands returning the order events as dicts (market data left out) ----

    def add(self, order_id: str, side: Side, price: int, qty: int, stop: int = 0,
            aon: bool = False, ioc: bool = False, symbol: str = SYMBOL) -> list[dict[str, Any]]:
        return dicts(self.apply(AddOrder(order_id, symbol, side, price, qty, stop, aon, ioc)))

    def cancel(self, order_id: str, symbol: str | None = None) -> list[dict[str, Any]]:
        return dicts(self.apply(CancelOrder(order_id, symbol)))

    def replace(self, order_id: str, qty_delta: int = 0, price: int = 0,
                symbol: str | None = None) -> list[dict[str, Any]]:
        return dicts(self.apply(ReplaceOrder(order_id, qty_delta, price, symbol)))

    def depth(self, symbol: str = SYMBOL) -> tuple[list[tuple[int, int, int]],
                                                   list[tuple[int, int, int]]]:
        book = self.market.book(symbol)
        assert book is not None
        return book.depth()


def dicts(events: list[Event]) -> list[dict[str, Any]]:
    """Order events as dicts, without the market-data events."""
    return [e.to_dict() for e in events if e.to_dict()["event"] not in MARKET_DATA]


def fill(order_id: str, contra: str, price: int, qty: int, symbol: str = SYMBOL
         ) -> list[dict[str, Any]]:
    """The three dicts of one fill: inbound side, resting side, trade."""
    return [{"event": "fill", "id": order_id, "contra": contra, "price": price, "qty": qty},
            {"event": "fill", "id": contra, "contra": order_id, "price": price, "qty": qty},
            {"event": "trade", "symbol": symbol, "price": price, "qty": qty}]


def accept(order_id: str) -> dict[str, Any]:
    return {"event": "accept", "id": order_id}


def cancel(order_id: str, qty: int) -> dict[str, Any]:
    return {"event": "cancel", "id": order_id, "qty": qty}
