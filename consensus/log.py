"""The log region's layout: a header, then a circular array of fixed-size slots.

Rule 1: entry ``k`` (indexes start at 1) lives in slot ``k % slots`` at
        ``HEADER_BYTES + (k % slots) * slot_bytes``; ``slot_bytes`` is a power of two that holds
        the entry header, the largest payload and the trailer.
Rule 2: an entry is ``ENTRY {index u64, proposal u64, commit u64, length u32}`` | payload |
        ``TRAILER {index u64, proposal u64}``, written as ONE fabric write whose last 16 bytes (the
        trailer) land last (fabric base Rule 5).
Rule 3: a reader accepts entry ``k`` only if the header says ``(k, p)``, the trailer after the
        payload says ``(k, p)``, and the header is unchanged after the payload was copied. This
        rejects torn entries, entries of an earlier wrap, and entries half overwritten by a new
        leader: a new write changes the header (lowest addresses) first.
Rule 4: the log header holds ``min_proposal``, ``first_undecided`` (the owner's applied + 1) and
        the leader's commit word ``{proposal, commit, proposal}``. A writer writes it in
        increasing address order; the owner reads the trailing proposal first, then the commit,
        then the leading proposal, and trusts the commit only when both proposals agree
        (a seqlock whose sequence number is the proposal).
Rule 5: the header's ``floor`` word is written by a leader that cannot catch this log up: the
        entry the owner needs next is committed but no longer in that leader's log (the leader
        started from a snapshot after it). It holds the needed index + 1; an owner whose next
        entry is below it stops with ``LogOverrun`` and fetches a snapshot (rejoin Rule 6)
        instead of waiting for an entry no leader will write. A stale floor costs at most one
        snapshot fetch: fetching one is always safe.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

ENTRY = struct.Struct("<QQQI4x")  # index, proposal, commit index, payload length
TRAILER = struct.Struct("<QQ")  # index, proposal: written last
U64 = struct.Struct("<Q")
COMMIT_WORD = struct.Struct("<QQQ")  # proposal, commit index, proposal

HEADER_BYTES = 64
MIN_PROPOSAL_OFFSET = 0
FIRST_UNDECIDED_OFFSET = 8
COMMIT_WORD_OFFSET = 16
FLOOR_OFFSET = 40  # Rule 5
ENTRY_OVERHEAD_BYTES = ENTRY.size + TRAILER.size

assert COMMIT_WORD_OFFSET + COMMIT_WORD.size <= FLOOR_OFFSET
assert FLOOR_OFFSET + U64.size <= HEADER_BYTES
assert ENTRY.size == 32 and TRAILER.size == 16


def slot_bytes_for(payload_size_max: int) -> int:
    """The smallest power of two holding an entry with a ``payload_size_max``-byte payload."""
    assert payload_size_max > 0
    need = ENTRY_OVERHEAD_BYTES + payload_size_max
    size = 1 << (need - 1).bit_length()
    assert size >= need
    return size


@dataclass(frozen=True, slots=True)
class LogLayout:
    slots: int
    slot_bytes: int
    payload_size_max: int

    @classmethod
    def create(cls, slots: int, payload_size_max: int) -> LogLayout:
        assert slots > 0 and slots & (slots - 1) == 0, "slots must be a power of two"
        return cls(slots, slot_bytes_for(payload_size_max), payload_size_max)

    @property
    def region_bytes(self) -> int:
        return HEADER_BYTES + self.slots * self.slot_bytes

    def offset(self, index: int) -> int:
        """Byte offset of the slot holding entry ``index``."""
        assert index >= 1
        return HEADER_BYTES + (index & (self.slots - 1)) * self.slot_bytes


@dataclass(frozen=True, slots=True)
class Entry:
    """A complete entry read from a log (Rule 3)."""

    index: int
    proposal: int
    commit: int
    payload: bytes


def encode_entry(
    buf: bytearray, index: int, proposal: int, commit: int, payload: bytes | memoryview
) -> int:
    """Encode an entry at the start of ``buf``; return how many bytes to write."""
    length = len(payload)
    assert index >= 1 and proposal > 0
    ENTRY.pack_into(buf, 0, index, proposal, commit, length)
    end = ENTRY.size + length
    buf[ENTRY.size : end] = payload
    TRAILER.pack_into(buf, end, index, proposal)
    return end + TRAILER.size


def peek(buf: memoryview | bytes | bytearray, offset: int) -> tuple[int, int, int, int]:
    """The (index, proposal, commit, length) header at ``offset``, not validated."""
    return ENTRY.unpack_from(buf, offset)  # type: ignore[return-value]


def read_entry(
    buf: memoryview | bytes | bytearray, offset: int, index: int, payload_size_max: int
) -> Entry | None:
    """Entry ``index`` from the slot at ``offset`` of a local buffer if complete (Rule 3)."""
    head = ENTRY.unpack_from(buf, offset)
    found, proposal, commit, length = head
    if found != index or proposal == 0 or length > payload_size_max:
        return None
    start = offset + ENTRY.size
    if TRAILER.unpack_from(buf, start + length) != (index, proposal):
        return None
    payload = bytes(buf[start : start + length])
    if ENTRY.unpack_from(buf, offset) != head:
        return None
    return Entry(index, proposal, commit, payload)


def read_commit_word(buf: memoryview) -> tuple[int, int]:
    """The (proposal, commit) the leader published in the header, or (0, 0) if torn (Rule 4)."""
    trailing = U64.unpack_from(buf, COMMIT_WORD_OFFSET + 16)[0]
    commit = U64.unpack_from(buf, COMMIT_WORD_OFFSET + 8)[0]
    leading = U64.unpack_from(buf, COMMIT_WORD_OFFSET)[0]
    if leading != trailing:
        return 0, 0
    return leading, commit
