"""Snapshots of the exchange state machine: the market, the dedup table and the apply counters.

Rule 1: the format is orderbook.snapshot's envelope (magic, version, length, sha256; decode checks
        all four before reading the body) with its own magic `STATE_MAGIC` and its own version
        `STATE_FORMAT_VERSION` (bumped whenever this body layout changes), and its body embeds
        the market body unchanged, so both layers share one reader and one set of guarantees:
        equal states give equal bytes, and a corrupt, truncated, foreign or other-version input
        raises `SnapshotError` (the same class as orderbook.snapshot's) with one line.
Rule 2: the body holds everything that decides future applies and digests: ``applied_index``,
        the executed/duplicate counters, the chain hash behind ``state_digest()``, the dedup
        table's limits, its clients in LRU order with their floors and their replies in
        insertion order, every stored reply with its request digest and events, and the
        evicted clients' floors in eviction order, so the restored machine's
        ``state_digest()`` and ``book_digest()`` equal the original's and later applies give
        the same replies and evictions.
Rule 3: the dedup limits are part of the snapshot: every replica must evict alike, so a restore
        that is told the limits it expects refuses a snapshot taken with others.
Rule 4: ``applied_index`` sits at a fixed body offset: `snapshot_index` reads it after checking
        the envelope, without decoding the market (the consensus layer resumes from it);
        `snapshot_size` tells a receiver the total size from the first HEADER_SIZE bytes.
Rule 5: the instrument list (exchange.state_machine Rule 7) and the resting-order limits
        (exchange.state_machine Rule 8) are part of the state: a restored machine keeps the
        list (or its absence) and the entry that fixed it, and refuses and admits orders as
        the original would; the per-client live-order counts are derived from the books, not
        stored.

Body layout (little-endian):
    <Q applied index><Q executed><Q duplicates><32s chain><Q seqs per client max><Q clients max>
    <Q evicted floors max><Q resting orders max><Q resting orders per client max>
    <Q index of the entry that fixed the instrument list (0: none)>
    market body (orderbook.snapshot),
    <I clients>, client ids Q*, floors Q*, reply counts I* (clients least recently used first),
    replies (each client's oldest first): seq Q*, log index Q*, request digest Q*,
    flags B* (bit 0 duplicate, bits 1-2 refusal),
    event counts I*; event tags B* (TAG_*); <I n> integers q*; <I m> string lengths I* + UTF-8
    blob (surrogates passed through). The integer and string streams hold, in order, per reply
    its order id and error, then per event its fields in declaration order (a DepthChanged:
    symbol; bid count, ask count, then price, qty, count per level).
    <I evicted clients>, client ids Q*, floors Q* (oldest eviction first).
    <I symbols> (NO_INSTRUMENTS: no list yet), symbol lengths I* + UTF-8 blob (sorted).

Version history: 1 had no request digests, no evicted floors and no evicted floors limit; 2 adds
them (issue 13); 3 adds the instrument list and the resting-order limits (issue 13). A
snapshot of another version is refused with a one-line error (the receiver fetches a
fresh one from a peer running this build).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable
from itertools import accumulate, islice
from typing import TYPE_CHECKING

from exchange.dedup import DedupTable
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
from orderbook.snapshot import (
    HEADER,
    Reader,
    SnapshotError,
    body_size,
    decode_market_body,
    encode_market_body,
    gc_paused,
    seal,
    unseal,
)

if TYPE_CHECKING:
    from exchange.state_machine import ExchangeStateMachine, Reply

__all__ = ["HEADER_SIZE", "STATE_FORMAT_VERSION", "STATE_MAGIC", "SnapshotError",
           "decode_state", "encode_state", "snapshot_index", "snapshot_size"]

STATE_MAGIC = b"MUXSTATE"
"""Magic of an exchange state-machine snapshot (a bare market snapshot has MUMARKET)."""

_NAME = "exchange state"
HEADER_SIZE = HEADER.size
"""Bytes of the envelope header: what `snapshot_size` needs to see first."""
STATE_FORMAT_VERSION = 3
"""Version of the exchange state body (the envelope's version field; see the history above)."""
_STATE_HEAD = struct.Struct("<QQQ32sQQQQQQ")
_COUNT = struct.Struct("<I")
FLAG_DUPLICATE = 1  # reply flags: bit 0 duplicate, bits 1-2 the refusal code (Reply.refusal)
REFUSAL_MAX = 2
TAG_ACCEPTED, TAG_REJECTED, TAG_FILLED, TAG_CANCELLED, TAG_CANCEL_REJECTED = 1, 2, 3, 4, 5
TAG_REPLACED, TAG_REPLACE_REJECTED, TAG_TRADE, TAG_BBO, TAG_DEPTH = 6, 7, 8, 9, 10
LIMIT_MAX = 1 << 32
"""Largest dedup limit a snapshot may carry (bounds what a corrupt one makes us allocate)."""

NO_INSTRUMENTS = 0xFFFF_FFFF
"""The symbol count of a machine whose instrument list is not fixed yet."""

assert _STATE_HEAD.size == 104


# ---- encode ----------------------------------------------------------------------------------

def _flatten_events(events: tuple[Event, ...], tags: list[int], texts: list[str],
                    ints: list[int]) -> None:
    """Append each event's tag, its strings and its integers (field order) to the columns."""
    for event in events:
        kind = type(event)
        if kind is Accepted:
            tags.append(TAG_ACCEPTED)
            texts.append(event.order_id)  # type: ignore[union-attr]
        elif kind is Filled:
            assert isinstance(event, Filled)
            tags.append(TAG_FILLED)
            texts += (event.order_id, event.contra_id)
            ints += (event.price, event.qty)
        elif kind is Cancelled:
            assert isinstance(event, Cancelled)
            tags.append(TAG_CANCELLED)
            texts.append(event.order_id)
            ints.append(event.qty)
        elif kind is Replaced:
            assert isinstance(event, Replaced)
            tags.append(TAG_REPLACED)
            texts.append(event.order_id)
            ints += (event.qty, event.price)
        elif kind is Rejected or kind is CancelRejected or kind is ReplaceRejected:
            assert isinstance(event, Rejected | CancelRejected | ReplaceRejected)
            tags.append(TAG_REJECTED if kind is Rejected else TAG_CANCEL_REJECTED
                        if kind is CancelRejected else TAG_REPLACE_REJECTED)
            texts += (event.order_id, event.reason)
        else:
            _flatten_market_data(event, tags, texts, ints)


def _flatten_market_data(event: Event, tags: list[int], texts: list[str],
                         ints: list[int]) -> None:
    """The rare (never stored by the exchange today, but representable) market-data events."""
    if isinstance(event, Trade):
        tags.append(TAG_TRADE)
        texts.append(event.symbol)
        ints += (event.price, event.qty)
    elif isinstance(event, BboChanged):
        tags.append(TAG_BBO)
        texts.append(event.symbol)
        ints += (event.bid, event.bid_qty, event.ask, event.ask_qty)
    else:
        assert isinstance(event, DepthChanged), type(event)
        tags.append(TAG_DEPTH)
        texts.append(event.symbol)
        ints += (len(event.bids), len(event.asks))
        for level in event.bids + event.asks:
            ints.extend(level)


def _pack_texts(texts: list[str]) -> list[bytes]:
    """<I count>, lengths I*, UTF-8 blob (surrogates passed through: replies echo input)."""
    blob = "".join(texts)
    if blob.isascii():
        lengths = list(map(len, texts))
        data = blob.encode("ascii")
    else:
        encoded = [text.encode("utf-8", "surrogatepass") for text in texts]
        lengths = list(map(len, encoded))
        data = b"".join(encoded)
    return [_COUNT.pack(len(texts)), struct.pack(f"<{len(texts)}I", *lengths), data]


def _encode_dedup(dedup: DedupTable[Reply], out: list[bytes]) -> None:
    clients: list[int] = []
    floors: list[int] = []
    counts: list[int] = []
    seqs: list[int] = []
    indexes: list[int] = []
    digests: list[int] = []
    flags: list[int] = []
    event_counts: list[int] = []
    tags: list[int] = []
    texts: list[str] = []
    ints: list[int] = []
    for client_id, floor_seq, replies in dedup.records():
        clients.append(client_id)
        floors.append(floor_seq)
        counts.append(len(replies))
        for seq, reply in replies.items():
            assert reply.client_id == client_id and reply.seq == seq, (client_id, seq)
            seqs.append(seq)
            indexes.append(reply.log_index)
            digests.append(reply.request_digest)
            flags.append((FLAG_DUPLICATE if reply.duplicate else 0) | reply.refusal << 1)
            event_counts.append(len(reply.events))
            texts += (reply.order_id, reply.error)
            _flatten_events(reply.events, tags, texts, ints)
    out.append(_COUNT.pack(len(clients)))
    out.append(struct.pack(f"<{len(clients)}Q", *clients))
    out.append(struct.pack(f"<{len(clients)}Q", *floors))
    out.append(struct.pack(f"<{len(clients)}I", *counts))
    out.append(struct.pack(f"<{len(seqs)}Q", *seqs))
    out.append(struct.pack(f"<{len(seqs)}Q", *indexes))
    out.append(struct.pack(f"<{len(seqs)}Q", *digests))
    out.append(bytes(flags))
    out.append(struct.pack(f"<{len(seqs)}I", *event_counts))
    out.append(bytes(tags))
    out.append(_COUNT.pack(len(ints)))
    out.append(struct.pack(f"<{len(ints)}q", *ints))
    out.extend(_pack_texts(texts))
    evicted = list(dedup.evicted_floors())
    out.append(_COUNT.pack(len(evicted)))
    out.append(struct.pack(f"<{len(evicted)}Q", *[client_id for client_id, _ in evicted]))
    out.append(struct.pack(f"<{len(evicted)}Q", *[floor for _, floor in evicted]))


def encode_state(machine: ExchangeStateMachine) -> bytes:
    """The snapshot of `machine` (Rules 1-2). O(orders + stored events)."""
    dedup = machine.dedup
    out = [_STATE_HEAD.pack(machine.applied_index, machine.executed_count,
                            machine.duplicate_count, machine.chain, dedup.seqs_per_client_max,
                            dedup.clients_max, dedup.evicted_floors_max,
                            machine.resting_orders_max, machine.resting_per_client_max,
                            machine.instruments_index)]
    with gc_paused():
        encode_market_body(machine.market, out)
        _encode_dedup(dedup, out)
    if machine.instruments is None:
        out.append(_COUNT.pack(NO_INSTRUMENTS))
    else:
        out.extend(_pack_texts(sorted(machine.instruments)))
    return seal(STATE_MAGIC, out, STATE_FORMAT_VERSION)


# ---- decode ----------------------------------------------------------------------------------

def _read_texts(reader: Reader) -> list[str]:
    (count,) = reader.unpack(_COUNT, "string count")
    return _read_counted_texts(reader, count)


def _read_counted_texts(reader: Reader, count: int) -> list[str]:
    lengths = reader.ints("I", count, "string lengths")
    blob = reader.take(sum(lengths), "strings")
    try:
        text = str(blob, "utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise reader.error("reply strings are not valid UTF-8") from None
    ends = list(accumulate(lengths))
    if len(text) == len(blob):  # ASCII: byte offsets are character offsets
        return [text[end - size:end] for end, size in zip(ends, lengths, strict=True)]
    try:
        return [str(blob[end - size:end], "utf-8", "surrogatepass")
                for end, size in zip(ends, lengths, strict=True)]
    except UnicodeDecodeError:
        raise reader.error("reply strings: a character straddles two strings") from None


def _event_builders(text: Callable[[], str], number: Callable[[], int]
                    ) -> tuple[Callable[[], Event], ...]:
    """Per tag (index), a function building the next event from the string and int streams
    (arguments are evaluated left to right, in field order)."""

    def depth() -> Event:
        symbol = text()
        bid_count, ask_count = number(), number()
        bids = tuple([(number(), number(), number()) for _ in range(bid_count)])
        asks = tuple([(number(), number(), number()) for _ in range(ask_count)])
        return DepthChanged(symbol, bids, asks)

    return (
        lambda: Accepted(""),  # tag 0: never valid (rejected before building)
        lambda: Accepted(text()),
        lambda: Rejected(text(), text()),
        lambda: Filled(text(), text(), number(), number()),
        lambda: Cancelled(text(), number()),
        lambda: CancelRejected(text(), text()),
        lambda: Replaced(text(), number(), number()),
        lambda: ReplaceRejected(text(), text()),
        lambda: Trade(text(), number(), number()),
        lambda: BboChanged(text(), number(), number(), number(), number()),
        depth,
    )


def _read_replies(reader: Reader, client_ids: tuple[int, ...], counts: tuple[int, ...]
                  ) -> list[tuple[int, int, OrderedDict[int, Reply]]]:
    """Every client's replies with their events (each stream exactly consumed)."""
    from exchange.state_machine import Reply

    total = sum(counts)
    seqs = reader.ints("Q", total, "reply seqs")
    indexes = reader.ints("Q", total, "reply log indexes")
    digests = reader.ints("Q", total, "reply request digests")
    flags = bytes(reader.take(total, "reply flags"))
    event_counts = reader.ints("I", total, "reply event counts")
    tags = bytes(reader.take(sum(event_counts), "event tags"))
    if tags and (min(tags) < TAG_ACCEPTED or max(tags) > TAG_DEPTH):
        raise reader.error("unknown event tag")
    if flags and max(flags) >> 1 > REFUSAL_MAX:
        raise reader.error("unknown reply flags")
    (int_count,) = reader.unpack(_COUNT, "event integer count")
    ints = reader.ints("q", int_count, "event integers")
    texts = _read_texts(reader)
    text_stream, int_stream = iter(texts), iter(ints)
    builders = _event_builders(text_stream.__next__, int_stream.__next__)
    tag_stream = iter(tags)
    result = []
    start = 0
    try:
        for client_id, count in zip(client_ids, counts, strict=True):
            replies: OrderedDict[int, Reply] = OrderedDict()
            for number in range(start, start + count):
                seq = seqs[number]
                order_id, error = next(text_stream), next(text_stream)
                events = tuple([builders[tag]()
                                for tag in islice(tag_stream, event_counts[number])])
                flag = flags[number]
                replies[seq] = Reply(client_id, seq, order_id, events, indexes[number],
                                     bool(flag & FLAG_DUPLICATE), error, digests[number],
                                     flag >> 1)
            if len(replies) != count:
                raise reader.error(f"client {client_id} stores a seq twice")
            start += count
            result.append((client_id, 0, replies))
    except StopIteration:
        raise reader.error("reply strings or integers end early") from None
    if next(text_stream, None) is not None or next(int_stream, None) is not None:
        raise reader.error("unused reply strings or integers")
    return result


def _read_evicted(reader: Reader, evicted_max: int, stored: set[int]) -> list[tuple[int, int]]:
    (count,) = reader.unpack(_COUNT, "evicted client count")
    if count > evicted_max:
        raise reader.error(f"{count} evicted clients' floors, limit {evicted_max}")
    client_ids = reader.ints("Q", count, "evicted client ids")
    floors = reader.ints("Q", count, "evicted client floors")
    if len(set(client_ids)) != count or not stored.isdisjoint(client_ids):
        raise reader.error("an evicted client appears twice or is also a stored client")
    return list(zip(client_ids, floors, strict=True))


def _read_dedup(reader: Reader, seqs_max: int, clients_max: int,
                evicted_max: int) -> DedupTable[Reply]:
    (client_count,) = reader.unpack(_COUNT, "client count")
    if client_count > clients_max:
        raise reader.error(f"{client_count} clients in the dedup table, limit {clients_max}")
    client_ids = reader.ints("Q", client_count, "client ids")
    floors = reader.ints("Q", client_count, "client floors")
    counts = reader.ints("I", client_count, "reply counts")
    if client_count and max(counts) > seqs_max:
        raise reader.error(f"a client has more than {seqs_max} replies stored")
    if len(set(client_ids)) != client_count:
        raise reader.error("a client appears twice in the dedup table")
    records = _read_replies(reader, client_ids, counts)
    evicted = _read_evicted(reader, evicted_max, set(client_ids))
    return DedupTable.restore(seqs_max, clients_max, [
        (client_id, floor_seq, replies)
        for (client_id, _, replies), floor_seq in zip(records, floors, strict=True)],
        evicted_max, evicted)


def decode_state(data: bytes | memoryview, machine_type: type[ExchangeStateMachine],
                 limits: tuple[int, int] | None = None) -> ExchangeStateMachine:
    """The state machine a snapshot holds (Rules 1-3). `limits` = (seqs_per_client_max,
    clients_max) this replica runs with; a snapshot with other limits is refused. Raises
    SnapshotError. O(size)."""
    reader = Reader(unseal(data, STATE_MAGIC, _NAME, STATE_FORMAT_VERSION), _NAME)
    (applied, executed, duplicates, chain, seqs_max, clients_max, evicted_max, resting_max,
     per_client_max, instruments_index) = reader.unpack(_STATE_HEAD, "state header")
    if not (1 <= seqs_max < LIMIT_MAX and 1 <= clients_max < LIMIT_MAX
            and 0 <= evicted_max < LIMIT_MAX):
        raise reader.error(f"dedup limits {seqs_max}, {clients_max}, {evicted_max} outside "
                           f"0..{LIMIT_MAX}")
    if limits is not None and limits != (seqs_max, clients_max):
        raise SnapshotError(f"{_NAME} snapshot was taken with dedup limits (seqs per client "
                            f"{seqs_max}, clients {clients_max}), this replica runs with "
                            f"{limits}: every replica must use the same limits")
    if not 1 <= per_client_max <= resting_max < LIMIT_MAX:
        raise reader.error(f"resting-order limits {resting_max}, {per_client_max} are invalid")
    # No bound of executed + duplicates by applied: one batch entry carries many requests.
    with gc_paused():
        market = decode_market_body(reader)
        dedup = _read_dedup(reader, seqs_max, clients_max, evicted_max)
    instruments = _read_instruments(reader, instruments_index, applied)
    reader.finish()
    return machine_type.from_parts(market, dedup, applied, executed, duplicates, bytes(chain),
                                   (resting_max, per_client_max),
                                   (instruments, instruments_index))


def _read_instruments(reader: Reader, fixed_at: int, applied: int) -> frozenset[str] | None:
    """The instrument list (Rule 5), checked as an instruments entry is."""
    from exchange.state_machine import check_instruments

    (count,) = reader.unpack(_COUNT, "symbol count")
    if count == NO_INSTRUMENTS:
        if fixed_at != 0:
            raise reader.error("no instrument list, but an entry that fixed it")
        return None
    texts = _read_counted_texts(reader, count)
    why = check_instruments(tuple(texts))
    if why is not None or texts != sorted(texts) or not 1 <= fixed_at <= applied:
        raise reader.error(f"bad instrument list (fixed at entry {fixed_at}): {why or 'order'}")
    return frozenset(texts)


def snapshot_size(header: bytes | memoryview) -> int:
    """Total size of the exchange snapshot whose first HEADER_SIZE bytes are `header`, after
    checking its magic and version: a receiver knows how much to fetch. Raises SnapshotError."""
    return HEADER.size + body_size(header, STATE_MAGIC, _NAME, STATE_FORMAT_VERSION)


def snapshot_index(data: bytes | memoryview) -> int:
    """The log index an exchange snapshot covers (Rule 4), after checking its envelope."""
    body = unseal(data, STATE_MAGIC, _NAME, STATE_FORMAT_VERSION)
    reader = Reader(body, _NAME)
    return reader.unpack(_STATE_HEAD, "state header")[0]


assert HEADER.size + _STATE_HEAD.size < 256
