"""orderbook: a Liquibook-compatible limit order book and matching engine (no I/O, no consensus).

Public API (see docs/orderbook.md for the rules): `Market().apply(command) -> list[Event]`, one
`Book` per symbol, command and event values, and the binary command codec. `BUILD` is "pure" or
"compiled": which build of the hot modules runs (orderbook/build.py; MU_ORDERBOOK_BUILD).
"""

from orderbook.build import activate as _activate

BUILD = _activate(__path__)  # before any hot module is imported (orderbook.build Rule 2)

from orderbook.book import Book
from orderbook.codec import decode_command, encode_command
from orderbook.events import (
    Accepted,
    BboChanged,
    Cancelled,
    CancelRejected,
    DepthChanged,
    Event,
    Filled,
    Rejected,
    Replaced,
    ReplaceRejected,
    Trade,
)
from orderbook.market import Market
from orderbook.types import AddOrder, CancelOrder, Command, ReplaceOrder, Side

__all__ = [
    "Accepted", "AddOrder", "BboChanged", "Book", "CancelOrder", "CancelRejected", "Cancelled",
    "Command", "DepthChanged", "Event", "Filled", "Market", "Rejected", "ReplaceOrder",
    "ReplaceRejected", "Replaced", "Side", "Trade", "decode_command", "encode_command",
]
