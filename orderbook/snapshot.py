"""Snapshots of a Market: a versioned, checksummed, deterministic binary format (no pickle).

Rule 1: equal states give equal bytes: books in sorted symbol order, resting orders in priority
        order per side, waiting stops in trigger order; nothing depends on dict order, object
        identity, a clock or the interpreter. Encoding the same state twice gives equal bytes.
Rule 2: the envelope (`seal`/`unseal`, shared with exchange.snapshot and the on-disk snapshots of
        issue 11) is a fixed header then the body, little-endian:
            <8s magic><I format version><Q body length><32s sha256(header[:20] + body)>
        Each kind of snapshot has its own magic (`MARKET_MAGIC` here).
Rule 3: decode never trusts a length before checking it: first the header size, magic, version and
        body length against the bytes present, then the checksum, then the body through a bounded
        `Reader` that checks every count against the bytes left before it allocates. Every failure
        raises SnapshotError with a one-line message naming the problem; never struct.error,
        IndexError or UnicodeDecodeError, and never a half-built market reaches the caller.
Rule 4: a checksum-valid body is still validated (ranges, priority order, unique ids, stops not
        yet reached) before it is installed through the engine's one restore entry point
        (`Market.restore_book` + `Book.restore` + `BookSide.restore`), so the restored market
        passes `_check()` and its `digest()` equals the original's.
Rule 5: what is stored is exactly `Book.digest()`'s Rule 5 state (what decides future events):
        last trade price, sequence counter, every resting order (id, qty, open qty, stop, AON,
        IOC; side and price from its level), every waiting stop with its sequence number.

Market body: <I books>, then per book:
    <B symbol length> symbol, <q last trade><q seq><I bid levels><I ask levels><I bid orders>
    <I ask orders><I buy stops><I sell stops>,
    per side (bids, then asks): level prices q*, level counts I*, then its resting orders in
    priority order as columns: qty q*, open q*, stop q*, flags B* (1 AON, 2 IOC), id lengths B*,
    ids (UTF-8, concatenated);
    waiting stops (buy stops then sell stops, each in trigger order): seq q*, price q*, then the
    same order columns.
Cost: encode and decode O(n) in the number of orders plus O(L log L) in levels; about 35 bytes
plus the id per resting order.
"""

from __future__ import annotations

import gc
import hashlib
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import accumulate
from operator import ge, gt

from orderbook.book import Book, valid_text
from orderbook.constants import (
    BID_MARKET_KEY,
    ORDER_ID_BYTES_MAX,
    PRICE_TICKS_MAX,
    QTY_MAX,
    SYMBOL_BYTES_MAX,
)
from orderbook.market import Market
from orderbook.side import (
    ORDER_FLAG_IOC,
    ORDER_FLAGS_MAX,
    BookSide,
    Order,
    OrderColumns,
)

MARKET_MAGIC = b"MUMARKET"
"""Magic of a market snapshot (an exchange snapshot has its own)."""

FORMAT_VERSION = 1
"""Version of the envelope and bodies this build writes and reads."""

BODY_BYTES_MAX = 1 << 40
"""Largest body a header may announce (1 TiB): bounds what a receiver allocates."""

HEADER = struct.Struct("<8sIQ32s")
"""magic, format version, body length, sha256 over the first _PREFIX.size bytes + body."""

_PREFIX = struct.Struct("<8sIQ")
_BOOK_HEAD = struct.Struct("<qqIIIIII")
_COUNT = struct.Struct("<I")
_TEXT_LEN = struct.Struct("<B")

assert HEADER.size == _PREFIX.size + 32
assert len(MARKET_MAGIC) == 8


class SnapshotError(ValueError):
    """A snapshot that cannot be decoded: corrupt, truncated, foreign or of another version."""


# ---- envelope (Rule 2) -----------------------------------------------------------------------

def seal(magic: bytes, chunks: list[bytes], version: int = FORMAT_VERSION) -> bytes:
    """Header + body for the body `chunks` (`version`: the body format, a kind of snapshot that
    embeds a market body may version its own layout). O(body size)."""
    assert len(magic) == 8
    body = b"".join(chunks)
    prefix = _PREFIX.pack(magic, version, len(body))
    hasher = hashlib.sha256(prefix)
    hasher.update(body)
    return prefix + hasher.digest() + body


def body_size(header: bytes | memoryview, magic: bytes, name: str,
              expected: int = FORMAT_VERSION) -> int:
    """Body length announced by the first HEADER.size bytes of a `name` snapshot, after checking
    its magic and version (a receiver learns how many bytes to expect). Raises SnapshotError."""
    if len(header) < HEADER.size:
        raise SnapshotError(f"{name} snapshot truncated: {len(header)} bytes, shorter than its "
                            f"{HEADER.size}-byte header")
    found, version, size, _ = HEADER.unpack_from(header, 0)
    if found != magic:
        raise SnapshotError(f"not a snapshot of kind '{name}': magic {bytes(found)!r}, "
                            f"expected {magic!r}")
    if version != expected:
        newer = "newer than" if version > expected else "not"
        raise SnapshotError(f"{name} snapshot format version {version} is {newer} supported by "
                            f"this build (it reads version {expected})")
    if size > BODY_BYTES_MAX:
        raise SnapshotError(f"{name} snapshot header announces {size} body bytes, more than the "
                            f"limit {BODY_BYTES_MAX} (corrupt header)")
    return int(size)


def unseal(data: bytes | memoryview, magic: bytes, name: str,
           expected: int = FORMAT_VERSION) -> memoryview:
    """The checked body of a `name` snapshot (Rule 3, envelope part). Raises SnapshotError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SnapshotError(f"{name} snapshot must be bytes, not {type(data).__name__}")
    view = memoryview(data).cast("B")
    size = body_size(view, magic, name, expected)
    present = len(view) - HEADER.size
    if present < size:
        raise SnapshotError(f"{name} snapshot truncated: header announces {size} body bytes, "
                            f"{present} present")
    if present > size:
        raise SnapshotError(f"{name} snapshot has {present - size} trailing bytes after its body")
    hasher = hashlib.sha256(view[:_PREFIX.size])
    body = view[HEADER.size:]
    hasher.update(body)
    if hasher.digest() != view[_PREFIX.size:HEADER.size]:
        raise SnapshotError(f"{name} snapshot checksum mismatch: the bytes are corrupt")
    return body


class Reader:
    """Bounded reads from a snapshot body: every size is checked before use (Rule 3)."""

    __slots__ = ("data", "offset", "name")

    def __init__(self, data: memoryview, name: str) -> None:
        self.data = data
        self.offset = 0
        self.name = name

    def take(self, size: int, what: str) -> memoryview:
        """The next `size` bytes, or SnapshotError naming `what` when fewer are left."""
        start = self.offset
        left = len(self.data) - start
        if size > left:
            raise SnapshotError(f"{self.name} snapshot malformed: {what} needs {size} bytes at "
                                f"body offset {start}, {left} left")
        assert size >= 0
        self.offset = start + size
        return self.data[start:start + size]

    def unpack(self, layout: struct.Struct, what: str) -> tuple[int, ...]:
        return layout.unpack(self.take(layout.size, what))  # type: ignore[no-any-return]

    def ints(self, code: str, count: int, what: str) -> tuple[int, ...]:
        """`count` little-endian integers of struct code `code` (q, Q or I)."""
        size = struct.calcsize(code)
        view = self.take(size * count, what)
        return struct.unpack(f"<{count}{code}", view) if count else ()

    def text(self, size: int, what: str) -> str:
        raw = self.take(size, what)
        try:
            return str(raw, "utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise self.error(f"{what} is not valid UTF-8") from None

    def texts(self, count: int, bytes_max: int, what: str) -> list[str]:
        """`count` strings stored as a length column (B*) and one concatenated blob."""
        lengths = bytes(self.take(count, f"{what} lengths"))
        if count and (min(lengths) < 1 or max(lengths) > bytes_max):
            raise self.error(f"{what} length outside 1..{bytes_max} bytes")
        raw = self.take(sum(lengths), what)
        try:
            blob = str(raw, "utf-8")
        except UnicodeDecodeError:
            raise self.error(f"{what} is not valid UTF-8") from None
        ends = list(accumulate(lengths))
        if len(blob) == len(raw):  # ASCII: byte offsets are character offsets
            return [blob[end - size:end] for end, size in zip(ends, lengths, strict=True)]
        ends = list(accumulate(lengths))
        try:
            return [str(raw[end - size:end], "utf-8")
                    for end, size in zip(ends, lengths, strict=True)]
        except UnicodeDecodeError:
            raise self.error(f"{what}: a character straddles two ids") from None

    def error(self, problem: str) -> SnapshotError:
        return SnapshotError(f"{self.name} snapshot malformed: {problem}")

    def finish(self) -> None:
        left = len(self.data) - self.offset
        if left:
            raise self.error(f"{left} unread bytes after the last section")


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while an encode or decode allocates many objects: collections
    triggered by the allocations would walk the whole book again and again (the same cost
    book Rule 6 avoids; measured: an encode of 100,000 orders took 3x longer with the GC on). The
    previous GC state comes back afterwards. Safe: encode and decode create no garbage cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# ---- encode ----------------------------------------------------------------------------------

def _pack_ints(code: str, values: Sequence[int]) -> bytes:
    return struct.pack(f"<{len(values)}{code}", *values)


def _pack_ids(ids: Sequence[str]) -> list[bytes]:
    blob = "".join(ids)
    if blob.isascii():
        return [bytes(map(len, ids)), blob.encode("ascii")]
    encoded = [order_id.encode("utf-8") for order_id in ids]
    return [bytes(map(len, encoded)), b"".join(encoded)]


class _Columns:
    """Order columns being gathered for encoding (the OrderColumns layout)."""

    __slots__ = ("ids", "qtys", "opens", "stops", "flags")

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.qtys: list[int] = []
        self.opens: list[int] = []
        self.stops: list[int] = []
        self.flags: list[int] = []

    def add(self, orders: list[Order]) -> _Columns:
        for order in orders:
            self.ids.append(order.order_id)
            self.qtys.append(order.qty)
            self.opens.append(order.open_qty)
            self.stops.append(order.stop)
            self.flags.append(order.aon + ORDER_FLAG_IOC * order.ioc)
        return self

    def pack(self, out: list[bytes]) -> None:
        """qty q*, open q*, stop q*, flags B*, id lengths B*, ids."""
        out.append(_pack_ints("q", self.qtys))
        out.append(_pack_ints("q", self.opens))
        out.append(_pack_ints("q", self.stops))
        out.append(bytes(self.flags))
        out.extend(_pack_ids(self.ids))


def _walk_side(side: BookSide) -> tuple[list[int], list[int], _Columns]:
    """Level prices, level counts and the resting orders' columns of `side`, in priority
    order: one pass over the linked lists (hot: about a third of an encode)."""
    prices: list[int] = []
    counts: list[int] = []
    columns = _Columns()
    add_id, add_qty, add_open = columns.ids.append, columns.qtys.append, columns.opens.append
    add_stop, add_flags = columns.stops.append, columns.flags.append
    levels = side.levels
    for key in side.keys:
        level = levels[key]
        prices.append(level.price)
        counts.append(level.count)
        order = level.head
        while order is not None:
            add_id(order.order_id)
            add_qty(order.qty)
            add_open(order.open_qty)
            add_stop(order.stop)
            add_flags(order.aon + ORDER_FLAG_IOC * order.ioc)
            order = order.next
    assert len(columns.ids) == sum(counts)
    return prices, counts, columns


def encode_book(book: Book, out: list[bytes]) -> None:
    """Append the body section of one book to `out` (layout in the module docstring)."""
    symbol = book.symbol.encode("utf-8")
    bid_prices, bid_counts, bids = _walk_side(book.bids)
    ask_prices, ask_counts, asks = _walk_side(book.asks)
    stops = book.waiting_stops()
    buy_count = sum(1 for _, order in stops if order.is_buy)
    out.append(_TEXT_LEN.pack(len(symbol)) + symbol)
    out.append(_BOOK_HEAD.pack(book.last_trade_price, book.sequence, len(bid_prices),
                               len(ask_prices), len(bids.ids), len(asks.ids), buy_count,
                               len(stops) - buy_count))
    for prices, counts, columns in ((bid_prices, bid_counts, bids),
                                    (ask_prices, ask_counts, asks)):
        out.append(_pack_ints("q", prices))
        out.append(_pack_ints("I", counts))
        columns.pack(out)
    out.append(_pack_ints("q", [seq for seq, _ in stops]))
    out.append(_pack_ints("q", [order.price for _, order in stops]))
    _Columns().add([order for _, order in stops]).pack(out)


def encode_market_body(market: Market, out: list[bytes]) -> None:
    """Append the market body (every book, sorted by symbol; Rule 1) to `out`."""
    symbols = market.symbols()
    out.append(_COUNT.pack(len(symbols)))
    for symbol in symbols:
        book = market.book(symbol)
        assert book is not None
        encode_book(book, out)


def encode_market(market: Market) -> bytes:
    """The snapshot of `market` (Rules 1-2, 5). O(orders + levels log levels)."""
    out: list[bytes] = []
    with gc_paused():
        encode_market_body(market, out)
    return seal(MARKET_MAGIC, out)


# ---- decode ----------------------------------------------------------------------------------

def _read_orders(reader: Reader, count: int, what: str) -> OrderColumns:
    """`count` orders' columns, their ranges checked (Rule 4)."""
    qtys = reader.ints("q", count, f"{what} quantities")
    opens = reader.ints("q", count, f"{what} open quantities")
    stops = reader.ints("q", count, f"{what} stop prices")
    flags = bytes(reader.take(count, f"{what} flags"))
    ids = reader.texts(count, ORDER_ID_BYTES_MAX, f"{what} ids")
    if count:
        if min(opens) < 1 or max(qtys) > QTY_MAX or any(map(gt, opens, qtys)):
            raise reader.error(f"{what} quantity outside 0 < open <= qty <= {QTY_MAX}")
        if min(stops) < 0 or max(stops) > PRICE_TICKS_MAX:
            raise reader.error(f"{what} stop price outside 0..{PRICE_TICKS_MAX}")
        if max(flags) > ORDER_FLAGS_MAX:
            raise reader.error(f"{what} flags {max(flags)} unknown")
    return OrderColumns(ids, qtys, opens, stops, flags)


def _read_side(reader: Reader, is_buy: bool, levels: int, orders: int,
               what: str) -> tuple[tuple[int, ...], tuple[int, ...], OrderColumns]:
    """One side's levels and resting orders, in priority order (checked)."""
    prices = reader.ints("q", levels, f"{what} level prices")
    counts = reader.ints("I", levels, f"{what} level counts")
    if levels and (min(prices) < 0 or max(prices) > PRICE_TICKS_MAX):
        raise reader.error(f"{what} level price outside 0..{PRICE_TICKS_MAX}")
    if levels and min(counts) < 1 or sum(counts) != orders:
        raise reader.error(f"{what} level counts do not add up to {orders} orders")
    keys = [(-price if price else BID_MARKET_KEY) if is_buy else price for price in prices]
    if any(map(ge, keys, keys[1:])):
        raise reader.error(f"{what} levels out of priority order")
    columns = _read_orders(reader, orders, f"{what} order")
    if orders and max(columns.flags) & ORDER_FLAG_IOC:
        raise reader.error(f"{what}: an IOC order rests")
    return prices, counts, columns


def _check_stops(reader: Reader, symbol: str, seqs: tuple[int, ...], columns: OrderColumns,
                 buy_count: int, last: int, seq: int) -> None:
    """Stops must be waiting (not reached by `last`), untouched, and in trigger order with
    distinct sequence numbers (Book Rule 2, orderbook.checks Rule 3)."""
    if not seqs:
        return
    if min(seqs) < 1 or max(seqs) > seq or len(set(seqs)) != len(seqs):
        raise reader.error(f"book {symbol}: stop sequence numbers not distinct in 1..{seq}")
    if columns.opens != columns.qtys:
        raise reader.error(f"book {symbol}: a waiting stop order is partially filled")
    stops = columns.stops
    buys, sells = stops[:buy_count], stops[buy_count:]
    if not last or (buys and min(buys) <= last) or (sells and max(sells) >= last):
        raise reader.error(f"book {symbol}: a waiting stop was already reached by the "
                           f"last trade price {last}")
    buy_keys = list(zip(buys, seqs[:buy_count], strict=True))
    sell_keys = [(-stop, stop_seq)
                 for stop, stop_seq in zip(sells, seqs[buy_count:], strict=True)]
    if any(map(gt, buy_keys, buy_keys[1:])) or any(map(gt, sell_keys, sell_keys[1:])):
        raise reader.error(f"book {symbol}: waiting stops out of trigger order")


def _read_symbol(reader: Reader, previous: str) -> str:
    (size,) = reader.unpack(_TEXT_LEN, "symbol length")
    symbol = reader.text(size, "symbol")
    if not (valid_text(symbol, SYMBOL_BYTES_MAX) and symbol.isprintable()):
        raise reader.error(f"invalid symbol {symbol!r}")
    if symbol <= previous:
        raise reader.error(f"books out of symbol order at {symbol!r}")
    return symbol


def decode_book(reader: Reader, market: Market, previous: str) -> str:
    """Read one book section into `market`; returns its symbol (which must sort after
    `previous`, Rule 1)."""
    symbol = _read_symbol(reader, previous)
    last, seq, bid_levels, ask_levels, bid_count, ask_count, buy_stops, sell_stops = (
        reader.unpack(_BOOK_HEAD, f"book {symbol} header"))
    if not 0 <= last <= PRICE_TICKS_MAX or seq < 0:
        raise reader.error(f"book {symbol}: last trade price {last} or sequence {seq} invalid")
    bids = _read_side(reader, True, bid_levels, bid_count, f"{symbol} bid")
    asks = _read_side(reader, False, ask_levels, ask_count, f"{symbol} ask")
    stop_count = buy_stops + sell_stops
    seqs = reader.ints("q", stop_count, f"{symbol} stop sequence numbers")
    prices = reader.ints("q", stop_count, f"{symbol} stop order prices")
    stops = _read_orders(reader, stop_count, f"{symbol} stop order")
    if prices and (min(prices) < 0 or max(prices) > PRICE_TICKS_MAX):
        raise reader.error(f"book {symbol}: stop order price outside 0..{PRICE_TICKS_MAX}")
    _check_stops(reader, symbol, seqs, stops, buy_stops, last, seq)
    live = market.order_count()
    book = market.restore_book(symbol)
    book.restore(last, seq, bids, asks, (seqs, prices, buy_stops, stops))
    if market.order_count() != live + bid_count + ask_count + stop_count:
        raise reader.error(f"book {symbol}: duplicate order id")
    return symbol


def decode_market_body(reader: Reader) -> Market:
    """Read a market body (layout in the module docstring). Raises SnapshotError."""
    (books,) = reader.unpack(_COUNT, "book count")
    market = Market()
    previous = ""
    with gc_paused():
        for _ in range(books):
            previous = decode_book(reader, market, previous)
    return market


def decode_market(data: bytes | memoryview) -> Market:
    """The Market a snapshot holds (Rules 3-4). Raises SnapshotError. O(size)."""
    reader = Reader(unseal(data, MARKET_MAGIC, "market"), "market")
    market = decode_market_body(reader)
    reader.finish()
    return market
