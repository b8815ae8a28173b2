"""Events out of the order book, in the order Liquibook's callbacks fire them.

Rule 1: one command gives, in order: Accepted (or Rejected / CancelRejected / ReplaceRejected and
        nothing else), then Replaced/Cancelled when asked for, then for every fill
        `Filled(inbound) , Filled(resting), Trade`, then Cancelled for an unfilled IOC remainder,
        then the same for stop orders the trades triggered, and last DepthChanged, BboChanged.
Rule 2: events are plain values: slotted classes compared by type and fields (`==`, as
        dataclasses compare), with a dataclass-style repr, never mutated after the book returns
        them, unhashable. They are written out rather than made with @dataclass because a mypyc
        build (issue 18) compiles an explicit __init__ into a native constructor but calls a
        dataclass's generated __init__ through the interpreter, with an args tuple and a kwargs
        dict per event; and not frozen because a frozen one costs about 530 ns to build against
        150 ns in pure Python (measured on this machine), and a fill builds three.
Rule 3: `to_dict()` is the JSON-lines form printed by `python -m orderbook replay`.
"""

from __future__ import annotations

from typing import Any, ClassVar

Level = tuple[int, int, int]
"""One aggregated price level: (price ticks, total open quantity, order count)."""


class _Value:
    """Equality by type and FIELDS, and a dataclass-style repr, for every event (Rule 2)."""

    __slots__ = ()
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, _Value) and type(other) is type(self)
                and self.values() == other.values())

    def values(self) -> tuple[object, ...]:
        """The fields' values, in FIELDS order."""
        return tuple(getattr(self, name) for name in self.FIELDS)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.FIELDS)
        return f"{type(self).__name__}({inner})"


class Accepted(_Value):
    """An add passed validation; it now rests, waits as a stop, or has traded."""

    __slots__ = ("order_id",)
    FIELDS: ClassVar[tuple[str, ...]] = ("order_id",)

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id

    def to_dict(self) -> dict[str, Any]:
        return {"event": "accept", "id": self.order_id}


class Rejected(_Value):
    """An add failed validation; the book did not change."""

    __slots__ = ("order_id", "reason")
    FIELDS: ClassVar[tuple[str, ...]] = ("order_id", "reason")

    def __init__(self, order_id: str, reason: str) -> None:
        self.order_id = order_id
        self.reason = reason

    def to_dict(self) -> dict[str, Any]:
        return {"event": "reject", "id": self.order_id, "reason": self.reason}


class Filled(_Value):
    """One side of one fill: `order_id` traded `qty` at `price` against `contra_id`."""

    __slots__ = ("order_id", "contra_id", "price", "qty")
    FIELDS: ClassVar[tuple[str, ...]] = ("order_id", "contra_id", "price", "qty")

    def __init__(self, order_id: str, contra_id: str, price: int, qty: int) -> None:
        self.order_id = order_id
        self.contra_id = contra_id
        self.price = price
        self.qty = qty

    def to_dict(self) -> dict[str, Any]:
        return {"event": "fill", "id": self.order_id, "contra": self.contra_id,
                "price": self.price, "qty": self.qty}


class Cancelled(_Value):
    """An order left the book unfilled; `qty` is the open quantity it still had."""

    __slots__ = ("order_id", "qty")
    FIELDS: ClassVar[tuple[str, ...]] = ("order_id", "qty")

    def __init__(self, order_id: str, qty: int) -> None:
        self.order_id = order_id
        self.qty = qty

    def to_dict(self) -> dict[str, Any]:
        return {"event": "cancel", "id": self.order_id, "qty": self.qty}


class CancelRejected(_Value):
    """A cancel named no live order (or a live order of another symbol)."""

    __slots__ = ("order_id", "reason")
    FIELDS: ClassVar[tuple[str, ...]] = ("order_id", "reason")

    def __init__(self, order_id: str, reason: str) -> None:
        self.order_id = order_id
        self.reason = reason

    def to_dict(self) -> dict[str, Any]:
        return {"event": "cancel_reject", "id": self.order_id, "reason": self.reason}


class Replaced(_Value):
    """A replace was accepted: the order quantity is now `qty`, its price `price`."""

    __slots__ = ("order_id", "qty", "price")
    FIELDS: ClassVar[tuple[str, ...]] = ("order_id", "qty", "price")

    def __init__(self, order_id: str, qty: int, price: int) -> None:
        self.order_id = order_id
        self.qty = qty
        self.price = price

    def to_dict(self) -> dict[str, Any]:
        return {"event": "replace", "id": self.order_id, "qty": self.qty, "price": self.price}


class ReplaceRejected(_Value):
    """A replace failed validation; the order is unchanged."""

    __slots__ = ("order_id", "reason")
    FIELDS: ClassVar[tuple[str, ...]] = ("order_id", "reason")

    def __init__(self, order_id: str, reason: str) -> None:
        self.order_id = order_id
        self.reason = reason

    def to_dict(self) -> dict[str, Any]:
        return {"event": "replace_reject", "id": self.order_id, "reason": self.reason}


class Trade(_Value):
    """One trade of `qty` at `price` in `symbol` (one per fill, after its two Filled events)."""

    __slots__ = ("symbol", "price", "qty")
    FIELDS: ClassVar[tuple[str, ...]] = ("symbol", "price", "qty")

    def __init__(self, symbol: str, price: int, qty: int) -> None:
        self.symbol = symbol
        self.price = price
        self.qty = qty

    def to_dict(self) -> dict[str, Any]:
        return {"event": "trade", "symbol": self.symbol, "price": self.price, "qty": self.qty}


class BboChanged(_Value):
    """Best bid/offer after the command (price and quantity); zeros for an empty side."""

    __slots__ = ("symbol", "bid", "bid_qty", "ask", "ask_qty")
    FIELDS: ClassVar[tuple[str, ...]] = ("symbol", "bid", "bid_qty", "ask", "ask_qty")

    def __init__(self, symbol: str, bid: int, bid_qty: int, ask: int, ask_qty: int) -> None:
        self.symbol = symbol
        self.bid = bid
        self.bid_qty = bid_qty
        self.ask = ask
        self.ask_qty = ask_qty

    def to_dict(self) -> dict[str, Any]:
        return {"event": "bbo", "symbol": self.symbol, "bid": self.bid, "bid_qty": self.bid_qty,
                "ask": self.ask, "ask_qty": self.ask_qty}


class DepthChanged(_Value):
    """Levels the command changed, best first per side; (price, 0, 0) means the level is gone."""

    __slots__ = ("symbol", "bids", "asks")
    FIELDS: ClassVar[tuple[str, ...]] = ("symbol", "bids", "asks")

    def __init__(self, symbol: str, bids: tuple[Level, ...], asks: tuple[Level, ...]) -> None:
        self.symbol = symbol
        self.bids = bids
        self.asks = asks

    def to_dict(self) -> dict[str, Any]:
        return {"event": "depth_change", "symbol": self.symbol,
                "bids": [list(level) for level in self.bids],
                "asks": [list(level) for level in self.asks]}


Event = (Accepted | Rejected | Filled | Cancelled | CancelRejected | Replaced | ReplaceRejected
         | Trade | BboChanged | DepthChanged)
