"""Every reject reason, and that a rejected command leaves the state untouched."""

from __future__ import annotations

from typing import Any

import pytest

from orderbook import AddOrder, CancelOrder, Market, Rejected, ReplaceOrder, Side
from orderbook.book import (
    REASON_BAD_ID,
    REASON_BAD_SIDE,
    REASON_BAD_TYPE,
    REASON_BELOW_FILLED,
    REASON_DELTA_TYPE,
    REASON_DUPLICATE,
    REASON_NOT_FOUND,
    REASON_PRICE,
    REASON_PRICE_MAX,
    REASON_QTY,
    REASON_QTY_MAX,
    REASON_STOP,
    REASON_STOP_MAX,
)
from orderbook.constants import PRICE_TICKS_MAX, QTY_MAX
from orderbook.market import REASON_BAD_COMMAND, REASON_BAD_SYMBOL
from tests.orderbook.helpers import BUY, SELL, Harness

ADD_CASES: list[tuple[dict[str, Any], str | None]] = [
    ({"qty": 0}, REASON_QTY),
    ({"qty": -5}, REASON_QTY),
    ({"qty": QTY_MAX + 1}, REASON_QTY_MAX),
    ({"price": -1}, REASON_PRICE),
    ({"price": PRICE_TICKS_MAX + 1}, REASON_PRICE_MAX),
    ({"stop": -1}, REASON_STOP),
    ({"stop": PRICE_TICKS_MAX + 1}, REASON_STOP_MAX),
    ({"price": 100.5}, REASON_BAD_TYPE),
    ({"qty": True}, REASON_BAD_TYPE),
    ({"stop": "1"}, REASON_BAD_TYPE),
    ({"order_id": ""}, REASON_BAD_ID),
    ({"order_id": "x" * 65}, REASON_BAD_ID),
    ({"order_id": "é" * 33}, REASON_BAD_ID),  # 66 UTF-8 bytes
    ({"order_id": "\ud800"}, REASON_BAD_ID),  # lone surrogate: not encodable
    ({"order_id": 7}, REASON_BAD_ID),
    ({"side": 0}, REASON_BAD_SIDE),
    ({"side": "buy"}, REASON_BAD_SIDE),
    ({"order_id": "live"}, REASON_DUPLICATE),
    ({"symbol": ""}, REASON_BAD_SYMBOL),
    ({"symbol": "S" * 17}, REASON_BAD_SYMBOL),
    ({"symbol": None}, REASON_BAD_SYMBOL),
    ({"symbol": "A\x00"}, REASON_BAD_SYMBOL),
    ({"symbol": "A B"}, None),  # printable, accepted
]


def _base() -> Harness:
    h = Harness()
    h.add("live", BUY, 90, 10)
    h.add("other", SELL, 110, 10, symbol="Y")
    return h


@pytest.mark.parametrize(("change", "reason"), ADD_CASES)
def test_add_rejects(change: dict[str, Any], reason: str | None) -> None:
    h = _base()
    before = h.market.digest()
    fields: dict[str, Any] = {"order_id": "new", "symbol": "X", "side": Side.BUY, "price": 100,
                              "qty": 10, "stop": 0}
    fields.update(change)
    events = h.apply(AddOrder(**fields))
    if reason is None:
        assert events[0].to_dict() == {"event": "accept", "id": "new"}
        return
    assert len(events) == 1 and isinstance(events[0], Rejected)
    assert events[0].reason == reason
    assert h.market.digest() == before


def test_duplicate_id_across_symbols_and_long_valid_ids() -> None:
    h = _base()
    assert h.add("other", BUY, 100, 1)[0]["reason"] == REASON_DUPLICATE
    assert h.add("x" * 64, BUY, 100, 1) == [{"event": "accept", "id": "x" * 64}]
    assert h.add("é" * 32, BUY, 100, 1) == [{"event": "accept", "id": "é" * 32}]
    assert h.add("s", BUY, 100, 1, symbol="S" * 16)[0]["event"] == "accept"


CANCEL_REPLACE_CASES: list[tuple[Any, str, str]] = [
    (CancelOrder("nope"), "cancel_reject", REASON_NOT_FOUND),
    (CancelOrder("live", "Y"), "cancel_reject", REASON_NOT_FOUND),  # wrong symbol
    (CancelOrder(5), "cancel_reject", REASON_NOT_FOUND),  # type: ignore[arg-type]
    (ReplaceOrder("nope", 1), "replace_reject", REASON_NOT_FOUND),
    (ReplaceOrder("live", 1, 0, "Y"), "replace_reject", REASON_NOT_FOUND),
    (ReplaceOrder("live", 0, -1), "replace_reject", REASON_PRICE),
    (ReplaceOrder("live", 0, PRICE_TICKS_MAX + 1), "replace_reject", REASON_PRICE_MAX),
    (ReplaceOrder("live", -11), "replace_reject", REASON_BELOW_FILLED),
    (ReplaceOrder("live", QTY_MAX), "replace_reject", REASON_QTY_MAX),
    (ReplaceOrder("live", 1.5), "replace_reject", REASON_DELTA_TYPE),  # type: ignore[arg-type]
    (ReplaceOrder("live", 0, "9"), "replace_reject", REASON_DELTA_TYPE),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("cmd", "kind", "reason"), CANCEL_REPLACE_CASES)
def test_cancel_and_replace_rejects(cmd: Any, kind: str, reason: str) -> None:
    h = _base()
    before = h.market.digest()
    events = [e.to_dict() for e in h.apply(cmd)]
    assert events == [{"event": kind, "id": str(cmd.order_id), "reason": reason}]
    assert h.market.digest() == before


def test_not_a_command_is_rejected_not_raised() -> None:
    market = Market()
    events = market.apply("add o1")  # type: ignore[arg-type]
    assert [e.to_dict() for e in events] == [{"event": "reject", "id": "",
                                             "reason": REASON_BAD_COMMAND}]


def test_book_level_apis_reject_too() -> None:
    market = Market()
    market.apply(AddOrder("a", "X", Side.BUY, 100, 1))
    book = market.book("X")
    assert book is not None
    assert book.cancel("zz")[0].to_dict()["event"] == "cancel_reject"
    assert book.replace("zz")[0].to_dict()["event"] == "replace_reject"
    assert book.add("a", Side.BUY, 100, 1)[0].to_dict()["reason"] == REASON_DUPLICATE
