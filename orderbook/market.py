"""Many symbols: one Book per symbol and the market-wide order id index.

Rule 1: `apply(command)` never raises on bad input; it returns the book's events, or one reject
        event when the symbol is invalid or (for cancel/replace) the id is unknown.
Rule 2: order ids are unique among live orders (resting or waiting stops) of the whole market,
        so a cancel or replace may omit the symbol; an id becomes free again once its order is
        filled or cancelled.
Rule 3: books are created on the first valid add for a symbol and never removed; `digest()`
        hashes every book in sorted symbol order, so equal command streams give equal digests.
Rule 4: `restore_book` creates an empty book for a snapshot decoder (orderbook.snapshot), which
        then fills it through `Book.restore`; nothing else creates books outside `apply`.
"""

from __future__ import annotations

import hashlib
from typing import Any

from orderbook.book import REASON_NOT_FOUND, Book, valid_text
from orderbook.constants import SYMBOL_BYTES_MAX
from orderbook.events import CancelRejected, Event, Rejected, ReplaceRejected
from orderbook.side import Order
from orderbook.types import AddOrder, CancelOrder, Command, ReplaceOrder

REASON_BAD_SYMBOL = f"symbol must be 1..{SYMBOL_BYTES_MAX} UTF-8 bytes of printable text"
REASON_BAD_COMMAND = "not a command"


class Market:
    """The replicated state machine of the exchange: commands in, events out."""

    def __init__(self) -> None:
        self._books: dict[str, Book] = {}
        self._orders: dict[str, Order] = {}

    def apply(self, cmd: Command | object) -> list[Event]:
        """Run one command; see Rule 1. Cost: the book operation's.

        The command's fields are read through `fields` (Any): a command may hold any values
        (orderbook.types Rule 1) and the book checks them; a mypyc build would check a typed
        read on the spot and raise (`qty=1.5`) or convert (`qty=True` to 1) instead."""
        fields: Any = cmd
        if isinstance(cmd, AddOrder):
            symbol = fields.symbol
            book = self._books.get(symbol) if type(symbol) is str else None
            if book is None:
                if not (valid_text(symbol, SYMBOL_BYTES_MAX) and symbol.isprintable()):
                    return [Rejected(str(fields.order_id), REASON_BAD_SYMBOL)]
                book = self._books[symbol] = Book(symbol, self._orders)
            return book.add(fields.order_id, fields.side, fields.price, fields.qty, fields.stop,
                            fields.aon, fields.ioc)
        if isinstance(cmd, CancelOrder):
            order_id = fields.order_id
            order = self._orders.get(order_id) if type(order_id) is str else None
            symbol = fields.symbol
            if order is None or symbol is not None and order.book.symbol != symbol:
                return [CancelRejected(str(order_id), REASON_NOT_FOUND)]
            return order.book.cancel_order(order)
        if isinstance(cmd, ReplaceOrder):
            book = self._book_of(fields.order_id, fields.symbol)
            if book is None:
                return [ReplaceRejected(str(fields.order_id), REASON_NOT_FOUND)]
            return book.replace(fields.order_id, fields.qty_delta, fields.price)
        return [Rejected(str(getattr(cmd, "order_id", "")), REASON_BAD_COMMAND)]

    def restore_book(self, symbol: str) -> Book:
        """A new empty book for `symbol`, sharing the id index (Rule 4). Precondition: `symbol`
        is a valid symbol with no book yet (the decoder checks both)."""
        assert symbol not in self._books
        assert valid_text(symbol, SYMBOL_BYTES_MAX) and symbol.isprintable()
        book = self._books[symbol] = Book(symbol, self._orders)
        return book

    def _book_of(self, order_id: object, symbol: object) -> Book | None:
        """The book holding live order `order_id` (and named `symbol`, if given)."""
        order = self._orders.get(order_id) if type(order_id) is str else None
        if order is None:
            return None
        if symbol is not None and order.book.symbol != symbol:
            return None
        return order.book

    def symbols(self) -> list[str]:
        """Symbols with a book, sorted."""
        return sorted(self._books)

    def book(self, symbol: str) -> Book | None:
        return self._books.get(symbol)

    def order_count(self) -> int:
        """Live orders (resting plus waiting stops) over all books."""
        return len(self._orders)

    def is_live(self, order_id: str) -> bool:
        """Whether ``order_id`` is a live order (resting or a waiting stop). O(1)."""
        return order_id in self._orders

    def live_order_ids(self) -> list[str]:
        """The ids of every live order (no particular order). O(orders)."""
        return list(self._orders)

    def digest(self) -> bytes:
        """sha256 over every book's canonical state, symbols sorted (Rule 3)."""
        hasher = hashlib.sha256()
        for symbol in self.symbols():
            self._books[symbol].digest_into(hasher)
        return hasher.digest()

    def _check(self) -> None:
        """Assert every invariant of every book and of the shared id index."""
        live = 0
        for symbol in self.symbols():
            book = self._books[symbol]
            book._check()
            live += len(book.resting_orders()) + len(book.stop_orders())
        assert live == len(self._orders), (live, len(self._orders))
