"""The exchange's replicated state machine: the dedup table plus the order books.

Rule 1: ``apply(index, payload)`` is the only way state changes, it is deterministic (no clock, no
        randomness, no I/O), and it is called with consecutive log indexes starting at 1. Every
        replica that applied the same log prefix therefore holds the same state, which
        ``state_digest()`` proves.
Rule 2: ``apply`` never raises on bad payload bytes: a malformed entry becomes a reply with an
        ``error`` (the same on every replica), never a crash of the pump.
Rule 3: exactly-once order entry: a ``(client_id, seq)`` already executed returns its stored reply
        marked ``duplicate`` and executes nothing (``exchange.dedup``). The stored reply carries
        a digest of the request (``request_digest``: 64 bits of BLAKE2b over the encoded
        command); a stored seq sent again with a different request is answered with an error
        naming the seq and the entry that used it, executes nothing and changes nothing stored.
Rule 4: no gRPC, no consensus, no threads here: callers serialize access (the server holds a lock).
Rule 5: a log entry is either a single request or a batch of requests (the leader proposes what
        arrived while its previous proposal was in flight as one entry); a batch applies its
        requests in order, each with its own dedup decision and reply, exactly as if each had been
        its own entry at the same index. Both formats decode forever (entries are versioned).
Rule 6: ``snapshot()`` / ``restore(data)`` (exchange.snapshot) carry the whole state: a restored
        machine has the same ``state_digest()`` and ``book_digest()`` and applies the entries
        after ``applied_index`` exactly as the original would.
Rule 7: the instrument list is replicated state: the first applied instruments entry fixes it
        (``instruments``, never changed afterwards; a later entry with another list is answered
        with an error naming the entry that fixed it, and changes nothing). Once fixed, an add
        for a symbol outside the list is refused (``REFUSED_INVALID``, the reason names the
        symbol) and creates no book. A machine with no list yet accepts every valid symbol: the
        exchange node proposes the list before its first order (exchange.node Rule 9), so a
        server's log never holds an order before its instruments entry. ``state_digest()``
        covers the list.
Rule 8: resting-order bounds (exchange.limits Rule 2): an add that could rest (not
        immediate-or-cancel) is refused (``REFUSED_EXHAUSTED``, the reason names the limit)
        when the market already holds ``resting_orders_max`` live orders or its owner (the
        client in its order id ``"<client>.<seq>"``) holds ``resting_per_client_max``. The
        per-owner counts follow every command's events and are derived again from the books on
        restore; the limits themselves are in the snapshot.

A single-request entry (format 0) is ``ENTRY_HEADER (client_id u64, seq u64)`` followed by
``orderbook.encode_command``; its client_id is never 0 (client ids start at 1). A batch entry
starts with a zero client_id: ``BATCH_HEADER (0 u64, version u8, count u16)`` then ``count`` times
``BATCH_ITEM (client_id u64, seq u64, length u16)`` + ``length`` bytes of encoded command
(version 1). An instruments entry (Rule 7) is ``BATCH_HEADER (0, INSTRUMENTS_VERSION,
count)`` then per symbol ``<B length>`` + UTF-8 bytes, sorted and distinct. The state chain
folds a single entry's dedup transition on its own and a batch's
transitions in one step (one hash per entry, not per request).
The reply keeps the order-level events of the command (accepted, rejected, fills, cancels,
replaces); the market-data events (trades, BBO and depth changes) are returned separately for
publication and are not stored.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from exchange.dedup import (
    DEDUP_CLIENTS_MAX,
    DEDUP_EVICTED_FLOORS_MAX,
    DEDUP_SEQS_PER_CLIENT_MAX,
    DedupTable,
)
from exchange.limits import (
    RESTING_ORDERS_MAX,
    RESTING_ORDERS_PER_CLIENT_MAX,
    SYMBOLS_MAX,
    limit_message,
)
from orderbook import (
    AddOrder,
    BboChanged,
    Cancelled,
    Command,
    DepthChanged,
    Event,
    Filled,
    Market,
    Trade,
    decode_command,
    encode_command,
)
from orderbook.book import valid_text
from orderbook.constants import SYMBOL_BYTES_MAX

ENTRY_HEADER = struct.Struct("<QQ")  # client_id, seq
BATCH_HEADER = struct.Struct("<QBH")  # 0 (no client), format version, request count
BATCH_ITEM = struct.Struct("<QQH")  # client_id, seq, length of the encoded command
BATCH_VERSION = 1
INSTRUMENTS_VERSION = 2  # the version byte of an instruments entry (Rule 7)
_SYMBOL_LENGTH = struct.Struct("<B")
REFUSED_NONE, REFUSED_INVALID, REFUSED_EXHAUSTED = 0, 1, 2  # Reply.refusal (Rules 7-8)
BATCH_REQUESTS_MAX = 0xFFFF  # what the count field can say; the leader's bound is far lower
CLIENT_ID_MAX = 2**64 - 1
SEQ_MAX = 2**64 - 1
MarketDataEvent = Trade | BboChanged | DepthChanged
_MARKET_DATA_TYPES = frozenset({Trade, BboChanged, DepthChanged})  # exact types: a set look-up
_CHAIN_RECORD = struct.Struct("<QQQB")  # index, client_id, seq, outcome
_OUTCOME_EXECUTED, _OUTCOME_DUPLICATE, _OUTCOME_TOO_OLD, _OUTCOME_MALFORMED = range(4)
_OUTCOME_SEQ_REUSED = 4
_OUTCOME_INSTRUMENTS = 5
_OUTCOME_REFUSED = 6
_NO_CLIENT = bytes(8)  # the client id field of a batch or instruments entry


def request_digest(body: bytes | memoryview) -> int:
    """The digest a stored reply keeps of its request's encoded command (Rule 3)."""
    return int.from_bytes(hashlib.blake2b(body, digest_size=8).digest(), "little")


def seq_reused_error(client_id: int, seq: int, log_index: int) -> str:
    return (f"seq {seq} of client {client_id} was already used by a different request "
            f"(log entry {log_index}); that request's reply stands and this one was not "
            f"executed: use a new seq")


@dataclass(slots=True)
class Reply:
    """What a trader gets back for one order-entry request. Never changed once ``apply`` made it
    (it is stored in the dedup table and shared with handlers); not ``frozen=True`` because a
    frozen dataclass costs about 4x as much to build, and every replica builds one per request
    (orderbook/events.py Rule 2 makes the same choice)."""

    client_id: int
    seq: int
    order_id: str
    events: tuple[Event, ...]
    log_index: int  # the entry that executed the request (for a duplicate: the original one)
    duplicate: bool = False
    error: str = ""  # non-empty when the entry could not be executed at all
    request_digest: int = 0  # request_digest() of the command (Rule 3); 0 when not stored
    refusal: int = REFUSED_NONE  # REFUSED_INVALID / REFUSED_EXHAUSTED: why not executed


@dataclass(slots=True)
class Applied:
    """The outcome of applying one request (never changed once built; not frozen: see Reply)."""

    index: int
    reply: Reply
    market_data: tuple[MarketDataEvent, ...]  # trades, BBO and depth changes, in engine order


def encode_entry(client_id: int, seq: int, command: Command) -> bytes:
    """The log payload of one order-entry request."""
    assert 0 <= client_id <= CLIENT_ID_MAX, client_id
    assert 0 <= seq <= SEQ_MAX, seq
    return ENTRY_HEADER.pack(client_id, seq) + encode_command(command)


def encode_batch(items: list[tuple[int, int, bytes]]) -> bytes:
    """The log payload of a batch of ``(client_id, seq, encoded command)`` requests (Rule 5)."""
    assert 1 <= len(items) <= BATCH_REQUESTS_MAX, len(items)
    parts = [BATCH_HEADER.pack(0, BATCH_VERSION, len(items))]
    pack = BATCH_ITEM.pack
    for client_id, seq, body in items:
        assert 1 <= client_id <= CLIENT_ID_MAX, client_id
        parts.append(pack(client_id, seq, len(body)))
        parts.append(body)
    return b"".join(parts)


def batch_item_bytes(body: bytes) -> int:
    """What one request adds to a batch entry."""
    return BATCH_ITEM.size + len(body)


def check_instruments(symbols: tuple[str, ...]) -> str | None:
    """Why ``symbols`` is not a valid instrument list (Rule 7), or None: 1..SYMBOLS_MAX distinct
    symbols, each 1..SYMBOL_BYTES_MAX UTF-8 bytes of printable text without surrounding spaces."""
    if not 1 <= len(symbols) <= SYMBOLS_MAX:
        return (f"an instrument list holds 1..{SYMBOLS_MAX} symbols (SYMBOLS_MAX), "
                f"got {len(symbols)}")
    for symbol in symbols:
        if not (valid_text(symbol, SYMBOL_BYTES_MAX) and symbol.isprintable()
                and symbol.strip() == symbol):
            return (f"symbol {symbol!r} is not 1..{SYMBOL_BYTES_MAX} UTF-8 bytes of printable "
                    "text without surrounding spaces")
    if len(set(symbols)) != len(symbols):
        return "the instrument list names a symbol twice"
    return None


def encode_instruments(symbols: tuple[str, ...]) -> bytes:
    """The log payload of an instruments entry fixing ``symbols`` (Rule 7). Precondition:
    ``check_instruments(symbols)`` is None."""
    assert check_instruments(symbols) is None, symbols
    ordered = sorted(symbols)
    parts = [BATCH_HEADER.pack(0, INSTRUMENTS_VERSION, len(ordered))]
    for symbol in ordered:
        data = symbol.encode()
        parts.append(_SYMBOL_LENGTH.pack(len(data)) + data)
    return b"".join(parts)


def _decode_instruments(payload: memoryview, count: int) -> tuple[str, ...] | None:
    """The sorted, distinct, valid symbols of an instruments entry, or None if malformed."""
    symbols: list[str] = []
    offset = BATCH_HEADER.size
    for _ in range(count):
        if offset >= len(payload):
            return None
        length = payload[offset]
        data = bytes(payload[offset + 1:offset + 1 + length])
        offset += 1 + length
        if len(data) != length:
            return None
        try:
            symbols.append(data.decode())
        except UnicodeDecodeError:
            return None
    result = tuple(symbols)
    if offset != len(payload) or check_instruments(result) is not None:
        return None
    return result if list(result) == sorted(result) else None


def instruments_digest(instruments: frozenset[str] | None) -> bytes:
    """What ``state_digest()`` folds in for the instrument list (Rule 7)."""
    if instruments is None:
        return b"\xff"
    return hashlib.sha256("\x00".join(sorted(instruments)).encode()).digest()


def order_owner(order_id: str) -> int:
    """The client of an exchange order id ``"<client>.<seq>"`` (0 for any other id)."""
    head, dot, _ = order_id.partition(".")
    return int(head) if dot and head.isdigit() and head.isascii() else 0


class ExchangeStateMachine:
    """Dedup table + ``orderbook.Market``, advanced by committed log entries (see module rules)."""

    def __init__(
        self,
        seqs_per_client_max: int = DEDUP_SEQS_PER_CLIENT_MAX,
        clients_max: int = DEDUP_CLIENTS_MAX,
        evicted_floors_max: int = DEDUP_EVICTED_FLOORS_MAX,
        resting_orders_max: int = RESTING_ORDERS_MAX,
        resting_per_client_max: int = RESTING_ORDERS_PER_CLIENT_MAX,
    ) -> None:
        assert 1 <= resting_per_client_max <= resting_orders_max, (resting_per_client_max,
                                                                     resting_orders_max)
        self.market = Market()
        self.resting_orders_max = resting_orders_max
        self.resting_per_client_max = resting_per_client_max
        self.instruments: frozenset[str] | None = None  # Rule 7: None until an entry fixes it
        self.instruments_index = 0  # the entry that fixed the list (0: none yet)
        self._live_by_owner: dict[int, int] = {}  # Rule 8: live orders per order-id owner
        self.dedup: DedupTable[Reply] = DedupTable(seqs_per_client_max, clients_max,
                                                   evicted_floors_max)
        self.applied_index = 0
        self.executed_count = 0
        self.duplicate_count = 0
        self._chain = hashlib.sha256(b"mu-exchange state chain v1").digest()

    @property
    def chain(self) -> bytes:
        """The running chain hash of the dedup table's history (part of ``state_digest()``)."""
        return self._chain

    def snapshot(self) -> bytes:
        """The snapshot of the whole state (Rule 6; format in exchange.snapshot). O(state)."""
        from exchange.snapshot import encode_state

        return encode_state(self)

    @classmethod
    def restore(
        cls,
        data: bytes | memoryview,
        *,
        seqs_per_client_max: int | None = None,
        clients_max: int | None = None,
    ) -> ExchangeStateMachine:
        """The machine a ``snapshot()`` holds (Rule 6). Raises ``exchange.snapshot.SnapshotError``
        with a one-line reason for corrupt, truncated, foreign or other-version bytes, and, when
        the dedup limits are given, for a snapshot taken with other limits. O(size)."""
        from exchange.snapshot import decode_state

        assert (seqs_per_client_max is None) == (clients_max is None)
        limits = None
        if seqs_per_client_max is not None and clients_max is not None:
            limits = (seqs_per_client_max, clients_max)
        return decode_state(data, cls, limits)

    @classmethod
    def from_parts(
        cls,
        market: Market,
        dedup: DedupTable[Reply],
        applied_index: int,
        executed_count: int,
        duplicate_count: int,
        chain: bytes,
        resting_limits: tuple[int, int] = (RESTING_ORDERS_MAX, RESTING_ORDERS_PER_CLIENT_MAX),
        instruments: tuple[frozenset[str] | None, int] = (None, 0),
    ) -> ExchangeStateMachine:
        """A machine holding exactly these parts (for the snapshot decoder); ``instruments`` is
        (the list or None, the entry that fixed it). The per-owner counts are derived (Rule 8)."""
        assert len(chain) == hashlib.sha256().digest_size, len(chain)
        machine = cls(dedup.seqs_per_client_max, dedup.clients_max, dedup.evicted_floors_max,
                      *resting_limits)
        machine.instruments, machine.instruments_index = instruments
        counts = machine._live_by_owner
        for order_id in market.live_order_ids():
            owner = order_owner(order_id)
            counts[owner] = counts.get(owner, 0) + 1
        machine.market = market
        machine.dedup = dedup
        machine.applied_index = applied_index
        machine.executed_count = executed_count
        machine.duplicate_count = duplicate_count
        machine._chain = chain
        return machine

    def lookup(self, client_id: int, seq: int, body: bytes | memoryview) -> Reply | None:
        """The stored reply of an already executed request (``body``: its encoded command),
        marked duplicate; an error reply when the seq was used by another request (Rule 3);
        else ``None``. Read-only."""
        reply = self.dedup.lookup(client_id, seq)
        if reply is None:
            return None
        if reply.request_digest != request_digest(body):
            return Reply(client_id, seq, "", (), reply.log_index,
                         error=seq_reused_error(client_id, seq, reply.log_index))
        return _as_duplicate(reply)

    def apply(self, index: int, payload: bytes | memoryview) -> Applied:
        """Apply the committed entry ``index`` and return its first request's outcome (all of
        them for a single-request entry; ``apply_entry`` gives every request of a batch)."""
        return self.apply_entry(index, payload)[0]

    def apply_entry(self, index: int, payload: bytes | memoryview) -> list[Applied]:
        """Apply the committed entry ``index``: one ``Applied`` per request, in order (at least
        one). O(matching work of the commands)."""
        assert index == self.applied_index + 1, (index, self.applied_index)
        self.applied_index = index
        if len(payload) < ENTRY_HEADER.size:
            if len(payload) >= BATCH_HEADER.size and payload[:8] == _NO_CLIENT:  # short list
                return self._apply_batch(index, memoryview(payload))
            reply = Reply(0, 0, "", (), index, error=f"log entry {index} is too short")
            self._chain_step(index, 0, 0, _OUTCOME_MALFORMED)
            return [Applied(index, reply, ())]
        client_id, seq = ENTRY_HEADER.unpack_from(payload, 0)
        if client_id == 0:
            return self._apply_batch(index, memoryview(payload))
        applied, outcome = self._request(index, client_id, seq,
                                         memoryview(payload)[ENTRY_HEADER.size :])
        self._chain_step(index, client_id, seq, outcome)
        return [applied]

    def _apply_batch(self, index: int, payload: memoryview) -> list[Applied]:
        """Apply a batch entry (Rule 5); a malformed frame is one error reply for the entry."""
        size = len(payload)
        if size < BATCH_HEADER.size:
            return [self._malformed(index, "batch header is truncated")]
        _, version, count = BATCH_HEADER.unpack_from(payload, 0)
        if version == INSTRUMENTS_VERSION:
            return [self._apply_instruments(index, payload, count)]
        if version != BATCH_VERSION or count == 0:
            return [self._malformed(index, f"batch version {version} with {count} requests")]
        out: list[Applied] = []
        records: list[bytes] = []
        offset = BATCH_HEADER.size
        unpack_item, item_size, request = BATCH_ITEM.unpack_from, BATCH_ITEM.size, self._request
        pack_record = _CHAIN_RECORD.pack
        for position in range(count):
            end = offset + item_size
            if end > size:
                out.append(self._malformed(index, f"batch item {position} is truncated"))
                break
            client_id, seq, length = unpack_item(payload, offset)
            offset = end + length
            if offset > size or client_id == 0:
                out.append(self._malformed(index, f"batch item {position} is malformed"))
                break
            applied, outcome = request(index, client_id, seq, payload[end:offset])
            out.append(applied)
            records.append(pack_record(index, client_id, seq, outcome))
        if records:
            self._chain = hashlib.sha256(self._chain + b"".join(records)).digest()
        return out

    def _apply_instruments(self, index: int, payload: memoryview, count: int) -> Applied:
        """Fix the instrument list, once (Rule 7); its reply's error says why not."""
        symbols = _decode_instruments(payload, count)
        if symbols is None:
            return self._malformed(index, "instruments entry is malformed")
        self._chain = hashlib.sha256(
            self._chain + _CHAIN_RECORD.pack(index, 0, 0, _OUTCOME_INSTRUMENTS)
            + instruments_digest(frozenset(symbols))).digest()
        error = ""
        if self.instruments is None:
            self.instruments = frozenset(symbols)
            self.instruments_index = index
        elif self.instruments != frozenset(symbols):
            error = (f"the instrument list was fixed by log entry {self.instruments_index} "
                     f"({','.join(sorted(self.instruments))}); entry {index}'s list "
                     f"({','.join(symbols)}) is ignored")
        return Applied(index, Reply(0, 0, "", (), index, error=error), ())

    def _malformed(self, index: int, why: str) -> Applied:
        self._chain_step(index, 0, 0, _OUTCOME_MALFORMED)
        return Applied(index, Reply(0, 0, "", (), index, error=f"log entry {index}: {why}"), ())

    def _request(
        self, index: int, client_id: int, seq: int, body: memoryview
    ) -> tuple[Applied, int]:
        """Apply one request (dedup, then execute): its outcome and its chain outcome code."""
        stored, too_old = self.dedup.probe(client_id, seq)
        if stored is not None:
            if stored.request_digest != request_digest(body):
                error = seq_reused_error(client_id, seq, stored.log_index)
                return Applied(index, Reply(client_id, seq, "", (), index, error=error), ()), \
                    _OUTCOME_SEQ_REUSED
            self.duplicate_count += 1
            return Applied(index, _as_duplicate(stored), ()), _OUTCOME_DUPLICATE
        if too_old:
            error = f"seq {seq} of client {client_id} is older than the replies the exchange keeps"
            return Applied(index, Reply(client_id, seq, "", (), index, error=error), ()), \
                _OUTCOME_TOO_OLD
        return self._execute(index, client_id, seq, body)

    def _execute(
        self, index: int, client_id: int, seq: int, body: memoryview
    ) -> tuple[Applied, int]:
        digest = request_digest(body)
        try:
            command = decode_command(body)
        except ValueError as exc:
            reply = Reply(client_id, seq, "", (), index, error=f"malformed command: {exc}",
                          request_digest=digest)
            self.dedup.record(client_id, seq, reply)
            return Applied(index, reply, ()), _OUTCOME_MALFORMED
        market = self.market
        if type(command) is AddOrder:
            new_id = command.order_id
            owner = order_owner(new_id)
            refusal = self._refusal(command, owner)
            if refusal is not None:
                reply = Reply(client_id, seq, new_id, (), index, error=refusal[1],
                              request_digest=digest, refusal=refusal[0])
                self.dedup.record(client_id, seq, reply)
                return Applied(index, reply, ()), _OUTCOME_REFUSED
            was_live = market.is_live(new_id)
            events = market.apply(command)
            self._count_live(events, new_id, owner, was_live)
        else:
            events = market.apply(command)
            if events:
                self._count_live(events, None, 0, False)
        order_events: list[Event] = []
        market_data: list[MarketDataEvent] = []
        kinds, to_order, to_market = _MARKET_DATA_TYPES, order_events.append, market_data.append
        for event in events:  # one pass: the apply path's hot loop (followers pay it per order)
            if type(event) in kinds:
                to_market(event)  # type: ignore[arg-type]
            else:
                to_order(event)
        reply = Reply(client_id, seq, command.order_id, tuple(order_events), index,
                      request_digest=digest)
        self.dedup.record(client_id, seq, reply)
        self.executed_count += 1
        return Applied(index, reply, tuple(market_data)), _OUTCOME_EXECUTED

    def _refusal(self, command: AddOrder, owner: int) -> tuple[int, str] | None:
        """Why the add is refused before it reaches the books (Rules 7-8), or None. ``owner``:
        ``order_owner(command.order_id)``."""
        instruments = self.instruments
        if instruments is not None and command.symbol not in instruments:
            return REFUSED_INVALID, (f"unknown symbol {command.symbol!r}: not in the exchange's "
                                     f"instrument list ({len(instruments)} symbols)")
        if command.ioc:
            return None  # never rests
        if self.market.order_count() >= self.resting_orders_max:
            return REFUSED_EXHAUSTED, limit_message(
                "RESTING_ORDERS_MAX", self.resting_orders_max, "live orders in the market")
        if self._live_by_owner.get(owner, 0) >= self.resting_per_client_max:
            return REFUSED_EXHAUSTED, limit_message(
                "RESTING_ORDERS_PER_CLIENT_MAX", self.resting_per_client_max,
                f"live orders of client {owner}")
        return None

    def _count_live(self, events: list[Event], new_id: str | None, new_owner: int,
                    was_live: bool) -> None:
        """Follow the live orders per owner through one command's events (Rule 8): only the
        new order (``new_id``, owned by ``new_owner``, live before it: ``was_live``) and orders
        named by fills and cancels can have started or stopped living. A named order other
        than the new one was live before the command, so it can only have stopped. Owners are
        counted in the order their orders appear, the new one first."""
        touched: dict[str, None] | None = None
        for event in events:
            kind = type(event)
            if kind is Filled:
                if touched is None:
                    touched = {}
                touched[event.order_id] = None  # type: ignore[union-attr]
                touched[event.contra_id] = None  # type: ignore[union-attr]
            elif kind is Cancelled:
                if touched is None:
                    touched = {}
                touched[event.order_id] = None  # type: ignore[union-attr]
        is_live, counts = self.market.is_live, self._live_by_owner
        if new_id is not None:
            change = is_live(new_id) - was_live
            if change:
                _add_count(counts, new_owner, change)
            if touched is not None:
                touched.pop(new_id, None)
        if touched is not None:
            for order_id in touched:
                if not is_live(order_id):
                    _add_count(counts, order_owner(order_id), -1)

    def live_orders_of(self, owner: int) -> int:
        """Live orders whose id names ``owner`` as client (Rule 8). O(1)."""
        return self._live_by_owner.get(owner, 0)

    def _chain_step(self, index: int, client_id: int, seq: int, outcome: int) -> None:
        """Fold one dedup-table transition into the running chain hash (what the table saw)."""
        record = _CHAIN_RECORD.pack(index, client_id, seq, outcome)
        self._chain = hashlib.sha256(self._chain + record).digest()

    def book_digest(self) -> bytes:
        """``Market.digest()``: equal on replicas that applied the same entries."""
        return self.market.digest()

    def state_digest(self) -> bytes:
        """The books, the dedup table's history (the table is a function of it) and the
        instrument list (Rule 7)."""
        return hashlib.sha256(self.market.digest() + self._chain
                              + instruments_digest(self.instruments)).digest()


def _add_count(counts: dict[int, int], owner: int, change: int) -> None:
    """Rule 8: ``owner`` has ``change`` more live orders (an owner at 0 leaves the table)."""
    count = counts.get(owner, 0) + change
    if count:
        counts[owner] = count
    else:
        del counts[owner]


def _as_duplicate(reply: Reply) -> Reply:
    if reply.duplicate:
        return reply
    return Reply(
        reply.client_id,
        reply.seq,
        reply.order_id,
        reply.events,
        reply.log_index,
        duplicate=True,
        error=reply.error,
        request_digest=reply.request_digest,
        refusal=reply.refusal,
    )
