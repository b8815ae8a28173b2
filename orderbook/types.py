"""Commands into the order book: frozen slotted values, checked by the book, never by the caller.

Rule 1: constructing a command never raises for bad values (zero quantity, negative price, long id):
        the book answers those with a Rejected/CancelRejected/ReplaceRejected event and a reason.
Rule 2: prices are integer ticks; 0 means "market" for `price` and "none" for `stop`.
Rule 3: `ReplaceOrder.price == 0` keeps the current price; `qty_delta` changes the order quantity.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Side(enum.IntEnum):
    """Order side; the integer values are the codec's wire values."""

    BUY = 0
    SELL = 1


@dataclass(frozen=True, slots=True)
class AddOrder:
    """Submit a new order (limit, market when price == 0, stop when stop > 0)."""

    order_id: str
    symbol: str
    side: Side
    price: int
    qty: int
    stop: int = 0
    aon: bool = False
    ioc: bool = False


@dataclass(frozen=True, slots=True)
class CancelOrder:
    """Cancel a live order (resting or waiting stop); symbol None = look it up by id."""

    order_id: str
    symbol: str | None = None


@dataclass(frozen=True, slots=True)
class ReplaceOrder:
    """Change a resting order's quantity by qty_delta and/or its price (0 = unchanged)."""

    order_id: str
    qty_delta: int = 0
    price: int = 0
    symbol: str | None = None


Command = AddOrder | CancelOrder | ReplaceOrder
