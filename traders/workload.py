"""A seeded stream of trader requests that keeps books busy but bounded.

Rule 1: the stream is a pure function of the seed (``random.Random(seed)``), so a run can be
        replayed; what the exchange answers does not change the stream except through the trader's
        own list of open order ids, which only feeds cancels and replaces.
Rule 2: books stay bounded: every trader cancels its oldest open orders and keeps at most
        ``OPEN_ORDERS_MAX`` ids.

Mix (per request): limit orders near the mid price, some marketable; a few market and IOC orders;
cancels and replaces of the trader's own resting orders.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from exchange.proto import exchange_pb2 as pb

DEFAULT_SYMBOLS = ("AAPL", "MSFT", "GOOG", "AMZN")
MID_PRICE_TICKS = 10_000
SPREAD_TICKS_MAX = 20  # limit prices fall within mid +- this
LOT = 100
LOTS_MAX = 10
OPEN_ORDERS_MAX = 32  # own order ids a trader remembers for cancel/replace

# Cumulative probabilities of the request kinds.
_LIMIT, _MARKET, _IOC, _CANCEL = 0.62, 0.67, 0.72, 0.90  # rest: replace


@dataclass(frozen=True, slots=True)
class Submit:
    symbol: str
    side: pb.Side
    price: int
    quantity: int
    immediate_or_cancel: bool = False


@dataclass(frozen=True, slots=True)
class Cancel:
    order_id: str
    symbol: str


@dataclass(frozen=True, slots=True)
class Replace:
    order_id: str
    symbol: str
    quantity_delta: int
    new_price: int


Request = Submit | Cancel | Replace


class Workload:
    """The request stream of one trader."""

    def __init__(self, seed: int, symbols: tuple[str, ...] = DEFAULT_SYMBOLS) -> None:
        assert symbols, "at least one symbol"
        self._rng = random.Random(seed)
        self.symbols = symbols
        self._open: deque[tuple[str, str]] = deque(maxlen=OPEN_ORDERS_MAX)

    def next_request(self) -> Request:
        rng = self._rng
        roll = rng.random()
        if roll >= _IOC and self._open:
            if roll < _CANCEL:
                order_id, symbol = self._open.popleft()
                return Cancel(order_id, symbol)
            order_id, symbol = self._open[rng.randrange(len(self._open))]
            delta = rng.choice((-LOT, LOT))
            return Replace(order_id, symbol, delta, 0)
        symbol = rng.choice(self.symbols)
        side = pb.BUY if rng.random() < 0.5 else pb.SELL
        quantity = LOT * rng.randint(1, LOTS_MAX)
        if roll < _LIMIT or roll >= _IOC:
            offset = rng.randint(-SPREAD_TICKS_MAX, SPREAD_TICKS_MAX)
            price = MID_PRICE_TICKS - offset if side == pb.BUY else MID_PRICE_TICKS + offset
            return Submit(symbol, side, price, quantity)
        if roll < _MARKET:
            return Submit(symbol, side, 0, LOT)
        return Submit(symbol, side, MID_PRICE_TICKS, quantity, immediate_or_cancel=True)

    def remember(self, order_id: str, symbol: str) -> None:
        """Record an accepted, still-resting order of this trader (for cancels and replaces)."""
        self._open.append((order_id, symbol))
