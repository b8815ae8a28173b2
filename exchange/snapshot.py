"""Snapshots of the exchange state machine: the market, the dedup table and the apply counters.

Rule 1: the format is orderbook.snapshot's envelope (magic, version, length, sha256; decode checks
        all four before reading the body) with its own magic `STATE_MAGIC`, and its body embeds
        the market body unchanged, so both layers share one reader and one set of guarantees:
        equal states give equal bytes, and a corrupt, truncated, foreign or other-version input
        raises `SnapshotError` (the same class as orderbook.snapshot's) with one line.
Rule 2: the body holds everything that decides future applies and digests: ``applied_index``,
        the executed/duplicate counters, the chain hash behind ``state_digest()``, the dedup
        table's limits, its clients in LRU order with their floors and their replies in
        insertion order, and every stored reply with its events, so the restored machine's
        ``state_digest()`` and ``book_digest()`` equal the original's and later applies give
        the same replies and evictions.
Rule 3: the dedup limits are part of the snapshot: every replica must evict alike, so a restore
        that is told the limits it expects refuses a snapshot taken with others.
Rule 4: ``applied_index`` sits at a fixed body offset: `snapshot_index` reads it after checking
        the envelope, without decoding the market (the consensus layer resumes from it).

Body layout (little-endian):
    <Q applied index><Q executed><Q duplicates><32s chain><Q seqs per client max><Q clients max>
    market body (orderbook.snapshot),
    string table: <I count>, lengths I*, UTF-8 blob (surrogates passed through),
    <I clients>, client ids Q*, floors Q*, reply counts I*,
    replies (all clients, LRU order, each client's oldest first): seq Q*, log index Q*,
    flags B* (1 duplicate), order id I*, error I* (string indexes), event counts I*,
    events: tags B*, fixed parts (per-tag layout below, strings as I indexes), depth levels q*.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable
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
    decode_market_body,
    encode_market_body,
    gc_paused,
    seal,
    unseal,
)

if TYPE_CHECKING:
    from exchange.state_machine import ExchangeStateMachine, Reply

__all__ = ["STATE_MAGIC", "SnapshotError", "decode_state", "encode_state", "snapshot_index"]

STATE_MAGIC = b"MUXSTATE"
"""Magic of an exchange state-machine snapshot (a bare market snapshot has MUMARKET)."""

_NAME = "exchange state"
_STATE_HEAD = struct.Struct("<QQQ32sQQ")
_COUNT = struct.Struct("<I")
FLAG_DUPLICATE = 1
# Event layouts after the tag: strings are indexes (I) into the string table.
_EVENT_LAYOUTS: dict[type, tuple[int, struct.Struct]] = {
    Accepted: (1, struct.Struct("<I")),
    Rejected: (2, struct.Struct("<II")),
    Filled: (3, struct.Struct("<IIqq")),
    Cancelled: (4, struct.Struct("<Iq")),
    CancelRejected: (5, struct.Struct("<II")),
    Replaced: (6, struct.Struct("<Iqq")),
    ReplaceRejected: (7, struct.Struct("<II")),
    Trade: (8, struct.Struct("<Iqq")),
    BboChanged: (9, struct.Struct("<Iqqqq")),
    DepthChanged: (10, struct.Struct("<III")),  # symbol, bid levels, ask levels
}
_LAYOUT_OF_TAG = {tag: layout for tag, layout in _EVENT_LAYOUTS.values()}
_SIZE_OF_TAG = bytes(
    [_LAYOUT_OF_TAG.get(tag, struct.Struct("")).size for tag in range(256)])
_TAG_DEPTH = _EVENT_LAYOUTS[DepthChanged][0]
CLIENTS_LIMIT_MAX = 1 << 32
"""Largest dedup limit a snapshot may carry (bounds what a corrupt one makes us allocate)."""

assert len(_LAYOUT_OF_TAG) == len(_EVENT_LAYOUTS)
assert _STATE_HEAD.size == 72


class _Strings:
    """The string table: each distinct string once, numbered in first-use order (Rule 1)."""

    __slots__ = ("index",)

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        index = self.index
        number = index.get(text)
        if number is None:
            number = index[text] = len(index)
        return number

    def pack(self) -> list[bytes]:
        encoded = [text.encode("utf-8", "surrogatepass") for text in self.index]
        return [_COUNT.pack(len(encoded)),
                struct.pack(f"<{len(encoded)}I", *map(len, encoded)), b"".join(encoded)]


# ---- encode ----------------------------------------------------------------------------------

def _pack_event(event: Event, strings: _Strings, depth: list[int]) -> bytes:
    """Tag + fixed part of one event; a DepthChanged's levels go to `depth`."""
    tag, layout = _EVENT_LAYOUTS[type(event)]
    head = bytes((tag,))
    if type(event) is Filled:
        return head + layout.pack(strings(event.order_id), strings(event.contra_id),
                                  event.price, event.qty)
    if type(event) is Accepted:
        return head + layout.pack(strings(event.order_id))
    if type(event) is Cancelled:
        return head + layout.pack(strings(event.order_id), event.qty)
    if type(event) in (Rejected, CancelRejected, ReplaceRejected):
        return head + layout.pack(strings(event.order_id), strings(event.reason))  # type: ignore[union-attr]
    if type(event) is Replaced:
        return head + layout.pack(strings(event.order_id), event.qty, event.price)
    if type(event) is Trade:
        return head + layout.pack(strings(event.symbol), event.price, event.qty)
    if type(event) is BboChanged:
        return head + layout.pack(strings(event.symbol), event.bid, event.bid_qty, event.ask,
                                  event.ask_qty)
    assert type(event) is DepthChanged
    for level in event.bids + event.asks:
        depth.extend(level)
    return head + layout.pack(strings(event.symbol), len(event.bids), len(event.asks))


def _encode_dedup(dedup: DedupTable[Reply], out: list[bytes]) -> None:
    strings = _Strings()
    client_ids: list[int] = []
    floors: list[int] = []
    reply_counts: list[int] = []
    seqs: list[int] = []
    indexes: list[int] = []
    flags: list[int] = []
    order_ids: list[int] = []
    errors: list[int] = []
    event_counts: list[int] = []
    events: list[bytes] = []
    depth: list[int] = []
    for client_id, floor_seq, replies in dedup.records():
        client_ids.append(client_id)
        floors.append(floor_seq)
        reply_counts.append(len(replies))
        for seq, reply in replies.items():
            assert reply.client_id == client_id and reply.seq == seq, (client_id, seq)
            seqs.append(seq)
            indexes.append(reply.log_index)
            flags.append(FLAG_DUPLICATE if reply.duplicate else 0)
            order_ids.append(strings(reply.order_id))
            errors.append(strings(reply.error))
            event_counts.append(len(reply.events))
            events.extend([_pack_event(event, strings, depth) for event in reply.events])
    out.extend(strings.pack())
    out.append(_COUNT.pack(len(client_ids)))
    for code, column in (("Q", client_ids), ("Q", floors), ("I", reply_counts), ("Q", seqs),
                         ("Q", indexes)):
        out.append(struct.pack(f"<{len(column)}{code}", *column))
    out.append(bytes(flags))
    for column in (order_ids, errors, event_counts):
        out.append(struct.pack(f"<{len(column)}I", *column))
    out.append(bytes([event[0] for event in events]))
    out.append(b"".join([event[1:] for event in events]))
    out.append(struct.pack(f"<{len(depth)}q", *depth))


def encode_state(machine: ExchangeStateMachine) -> bytes:
    """The snapshot of `machine` (Rules 1-2). O(orders + stored events)."""
    dedup = machine.dedup
    out = [_STATE_HEAD.pack(machine.applied_index, machine.executed_count,
                            machine.duplicate_count, machine.chain, dedup.seqs_per_client_max,
                            dedup.clients_max)]
    encode_market_body(machine.market, out)
    _encode_dedup(dedup, out)
    return seal(STATE_MAGIC, out)


# ---- decode ----------------------------------------------------------------------------------

def _read_strings(reader: Reader) -> list[str]:
    (count,) = reader.unpack(_COUNT, "string count")
    lengths = reader.ints("I", count, "string lengths")
    blob = reader.take(sum(lengths), "strings")
    try:
        text = str(blob, "utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise reader.error("string table is not valid UTF-8") from None
    result: list[str] = []
    start = 0
    if len(text) == len(blob):  # ASCII: byte offsets are character offsets
        for length in lengths:
            result.append(text[start:start + length])
            start += length
        return result
    try:
        for length in lengths:
            result.append(str(blob[start:start + length], "utf-8", "surrogatepass"))
            start += length
    except UnicodeDecodeError:
        raise reader.error("string table: a character straddles two strings") from None
    return result


def _event_builders(strings: list[str]) -> dict[int, Callable[[tuple[int, ...]], Event]]:
    text = strings.__getitem__
    return {
        1: lambda f: Accepted(text(f[0])),
        2: lambda f: Rejected(text(f[0]), text(f[1])),
        3: lambda f: Filled(text(f[0]), text(f[1]), f[2], f[3]),
        4: lambda f: Cancelled(text(f[0]), f[1]),
        5: lambda f: CancelRejected(text(f[0]), text(f[1])),
        6: lambda f: Replaced(text(f[0]), f[1], f[2]),
        7: lambda f: ReplaceRejected(text(f[0]), text(f[1])),
        8: lambda f: Trade(text(f[0]), f[1], f[2]),
        9: lambda f: BboChanged(text(f[0]), f[1], f[2], f[3], f[4]),
    }


def _read_events(reader: Reader, count: int, strings: list[str]) -> list[Event]:
    """`count` events (tags, fixed parts, depth levels); every size checked before reading."""
    tags = bytes(reader.take(count, "event tags"))
    if count and (min(tags) < 1 or max(tags) > _TAG_DEPTH):
        raise reader.error("unknown event tag")
    fixed = reader.take(sum(_SIZE_OF_TAG[tag] for tag in tags), "event fields")
    depth_layout = _LAYOUT_OF_TAG[_TAG_DEPTH]
    depth_total = 0
    builders = _event_builders(strings)
    events: list[Event] = []
    append = events.append
    offset = 0
    try:
        for tag in tags:
            layout = _LAYOUT_OF_TAG[tag]
            fields = layout.unpack_from(fixed, offset)
            offset += layout.size
            if tag == _TAG_DEPTH:
                depth_total += fields[1] + fields[2]
                append(DepthChanged(strings[fields[0]], (), ()))
            else:
                append(builders[tag](fields))
        levels = reader.ints("q", 3 * depth_total, "depth levels")
        _fill_depth(events, tags, fixed, depth_layout, levels)
    except IndexError:
        raise reader.error("an event names a string outside the string table") from None
    return events


def _fill_depth(events: list[Event], tags: bytes, fixed: memoryview, layout: struct.Struct,
                levels: tuple[int, ...]) -> None:
    """Give each DepthChanged its levels, in event order (a second pass: rare events)."""
    if not levels:
        return
    offset = 0
    position = 0
    for event, tag in zip(events, tags, strict=True):
        if tag == _TAG_DEPTH:
            assert isinstance(event, DepthChanged)
            _, bid_count, ask_count = layout.unpack_from(fixed, offset)
            flat = levels[position:position + 3 * (bid_count + ask_count)]
            position += len(flat)
            triples = [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]
            event.bids = tuple(triples[:bid_count])
            event.asks = tuple(triples[bid_count:])
        offset += _SIZE_OF_TAG[tag]


def _read_dedup(reader: Reader, seqs_max: int, clients_max: int,
                reply_type: type[Reply]) -> DedupTable[Reply]:
    strings = _read_strings(reader)
    (client_count,) = reader.unpack(_COUNT, "client count")
    if client_count > clients_max:
        raise reader.error(f"{client_count} clients in the dedup table, limit {clients_max}")
    client_ids = reader.ints("Q", client_count, "client ids")
    floors = reader.ints("Q", client_count, "client floors")
    reply_counts = reader.ints("I", client_count, "reply counts")
    if client_count and max(reply_counts) > seqs_max:
        raise reader.error(f"a client has more than {seqs_max} replies stored")
    if len(set(client_ids)) != client_count:
        raise reader.error("a client appears twice in the dedup table")
    total = sum(reply_counts)
    seqs = reader.ints("Q", total, "reply seqs")
    indexes = reader.ints("Q", total, "reply log indexes")
    flags = bytes(reader.take(total, "reply flags"))
    order_ids = reader.ints("I", total, "reply order ids")
    errors = reader.ints("I", total, "reply errors")
    event_counts = reader.ints("I", total, "reply event counts")
    events = _read_events(reader, sum(event_counts), strings)
    records = []
    position = 0
    event_position = 0
    try:
        for client_id, floor_seq, count in zip(client_ids, floors, reply_counts, strict=True):
            replies: OrderedDict[int, Reply] = OrderedDict()
            for number in range(position, position + count):
                seq = seqs[number]
                end = event_position + event_counts[number]
                replies[seq] = reply_type(client_id, seq, strings[order_ids[number]],
                                          tuple(events[event_position:end]), indexes[number],
                                          flags[number] == FLAG_DUPLICATE, strings[errors[number]])
                event_position = end
            if len(replies) != count:
                raise reader.error(f"client {client_id} stores a seq twice")
            position += count
            records.append((client_id, floor_seq, replies))
    except IndexError:
        raise reader.error("a reply names a string outside the string table") from None
    if max(flags, default=0) > FLAG_DUPLICATE:
        raise reader.error("unknown reply flags")
    return DedupTable.restore(seqs_max, clients_max, records)


def decode_state(data: bytes | memoryview, machine_type: type[ExchangeStateMachine],
                 limits: tuple[int, int] | None = None) -> ExchangeStateMachine:
    """The state machine a snapshot holds (Rules 1-3). `limits` = (seqs_per_client_max,
    clients_max) this replica runs with; a snapshot with other limits is refused. Raises
    SnapshotError. O(size)."""
    from exchange.state_machine import Reply

    reader = Reader(unseal(data, STATE_MAGIC, _NAME), _NAME)
    applied, executed, duplicates, chain, seqs_max, clients_max = reader.unpack(
        _STATE_HEAD, "state header")
    if not (1 <= seqs_max < CLIENTS_LIMIT_MAX and 1 <= clients_max < CLIENTS_LIMIT_MAX):
        raise reader.error(f"dedup limits {seqs_max}, {clients_max} outside 1..{CLIENTS_LIMIT_MAX}")
    if limits is not None and limits != (seqs_max, clients_max):
        raise SnapshotError(f"{_NAME} snapshot was taken with dedup limits (seqs per client "
                            f"{seqs_max}, clients {clients_max}), this replica runs with "
                            f"{limits}: every replica must use the same limits")
    if executed + duplicates > applied:
        raise reader.error(f"{executed} executed + {duplicates} duplicates > {applied} applied")
    with gc_paused():
        market = decode_market_body(reader)
        dedup = _read_dedup(reader, seqs_max, clients_max, Reply)
    reader.finish()
    return machine_type.from_parts(market, dedup, applied, executed, duplicates, bytes(chain))


def snapshot_index(data: bytes | memoryview) -> int:
    """The log index an exchange snapshot covers (Rule 4), after checking its envelope."""
    body = unseal(data, STATE_MAGIC, _NAME)
    reader = Reader(body, _NAME)
    return reader.unpack(_STATE_HEAD, "state header")[0]


assert HEADER.size + _STATE_HEAD.size < 256
