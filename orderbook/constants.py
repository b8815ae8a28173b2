"""Every limit the order book keeps, with its unit last and a one-line reason.

Rule 1: a command whose field lies outside these limits is rejected with a reason, never clamped.
Rule 2: the limits fit the binary codec (orderbook/codec.py): ids and symbols in a length-prefixed
        byte field, prices and quantities in signed 64-bit fields.
"""

from typing import Final

ORDER_ID_BYTES_MAX: Final = 64
"""Longest order id in UTF-8 bytes (API contract with exchange/)."""

SYMBOL_BYTES_MAX: Final = 16
"""Longest symbol in UTF-8 bytes (API contract with exchange/)."""

PRICE_TICKS_MAX: Final = (1 << 53) - 1
"""Highest price in ticks: exact in a JSON double and far below the codec's int64."""

QTY_MAX: Final = (1 << 53) - 1
"""Highest order quantity; quantity changes by replace must stay within it too."""

MARKET_PRICE: Final = 0
"""Price that marks a market order (no limit), as in Liquibook's MARKET_ORDER_PRICE."""

BID_MARKET_KEY: Final = -(1 << 62)
"""Sort key of resting market bids: lower than every limit bid's key (-price)."""

DEFAULT_SYMBOL: Final = "AAPL"
"""Symbol used by `python -m orderbook replay` when a command names none."""

assert PRICE_TICKS_MAX < -BID_MARKET_KEY
assert ORDER_ID_BYTES_MAX < 256 and SYMBOL_BYTES_MAX < 256
