"""The pump's inlined hot loop delivers exactly what the plain reading of its rules delivers.

``Pump._step_locked`` and ``Pump._learn_more`` inline the complete-entry check of
``consensus.log.read_entry`` (log Rule 3) and the commit learning of ``Pump._learn`` for speed
(four copies of the torn-entry check in all). This test pins them to a reference written the slow
way: every read through ``read_entry`` / ``read_commit_word``, the rules of consensus/pump.py
(1: deliver ``k`` only when complete and covered by a commit under its own proposal; 2: keep the
highest proposal's commit knowledge; 4: a complete later wrap of ``k``'s slot is an overrun),
in steps of ``PUMP_BATCH_MAX`` entries. Hypothesis fills a small log with complete, torn,
oversized, zero-proposal, stale and wrapped-ahead slots and a commit word that may be torn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import constants as c
from consensus import ctrl as ctrl_mod
from consensus import log as log_mod
from consensus.errors import ConsensusError, LogOverrun
from consensus.pump import Pump

SLOTS = 8
PAYLOAD_MAX = 16
LAYOUT = log_mod.LogLayout.create(SLOTS, PAYLOAD_MAX)
BATCH_MAX = 3  # small, so that the batch boundaries and the look-ahead's early exit both matter
INFLIGHT_MAX = 4


class _Mutex:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class _Runtime:
    @staticmethod
    def mutex() -> _Mutex:
        return _Mutex()


@dataclass
class _State:
    """The part of ``ReplicaState`` that ``Pump.step`` uses."""

    log_buf: memoryview
    applied: int
    layout: log_mod.LogLayout = LAYOUT
    ctrl_buf: memoryview = field(default_factory=lambda: memoryview(bytearray(256)))
    runtime: _Runtime = field(default_factory=_Runtime)
    replica_id: int = 1
    failure: ConsensusError | None = None

    def fail(self, error: ConsensusError) -> None:
        self.failure = self.failure or error


# One slot: what lies in it relative to the entry the pump will want there.
slot_kinds = st.sampled_from(["empty", "complete", "complete", "complete", "torn-trailer",
                              "zero-proposal", "oversized", "stale", "wrapped-ahead"])
# (kind, proposal, commit index relative to the slot's entry: near it, where coverage is decided,
# payload)
slot_plans = st.tuples(slot_kinds, st.integers(1, 3), st.integers(-4, 4),
                       st.binary(max_size=PAYLOAD_MAX))


def _fill(applied: int, plans: list[tuple[str, int, int, bytes]],
          commit_word: tuple[int, int, bool]) -> bytearray:
    buf = bytearray(LAYOUT.region_bytes)
    scratch = bytearray(LAYOUT.slot_bytes)
    for position, (kind, proposal, commit, payload) in enumerate(plans):
        index = applied + 1 + position
        if kind == "empty":
            continue
        written = index
        if kind == "stale":
            written = index - SLOTS
        elif kind == "wrapped-ahead":
            written = index + SLOTS
        if written < 1:
            continue
        commit = max(0, index + commit)
        size = log_mod.encode_entry(scratch, written, proposal, commit, payload)
        if kind == "torn-trailer":
            log_mod.TRAILER.pack_into(scratch, size - log_mod.TRAILER.size, written, proposal + 1)
        elif kind == "zero-proposal":
            log_mod.ENTRY.pack_into(scratch, 0, written, 0, commit, len(payload))
        elif kind == "oversized":
            log_mod.ENTRY.pack_into(scratch, 0, written, proposal, commit, PAYLOAD_MAX + 1)
        offset = LAYOUT.offset(written)
        buf[offset : offset + size] = scratch[:size]
    proposal, commit, torn = commit_word
    commit = max(0, applied + commit)
    log_mod.COMMIT_WORD.pack_into(buf, log_mod.COMMIT_WORD_OFFSET, proposal, commit,
                                  proposal + 1 if torn else proposal)
    return buf


def _reference(buf: bytearray, applied: int) -> tuple[list[tuple[int, bytes]], str]:
    """Pump Rules 1, 2 and 4 read the slow way, in steps of ``BATCH_MAX`` entries."""
    delivered: list[tuple[int, bytes]] = []
    known = [0, 0]  # the commit knowledge: (proposal, commit index)

    def learn(proposal: int, commit: int) -> None:  # Rule 2
        if proposal > known[0]:
            known[:] = [proposal, commit]
        elif proposal == known[0] and commit > known[1]:
            known[1] = commit

    def covered(index: int, proposal: int) -> bool:
        return known[0] == proposal and known[1] >= index

    index = applied + 1
    while True:  # one step
        count = 0
        while count < BATCH_MAX:
            offset = LAYOUT.offset(index)
            entry = log_mod.read_entry(buf, offset, index, PAYLOAD_MAX)
            if entry is None:
                found = log_mod.peek(buf, offset)[0]
                if found > index and (found - index) % SLOTS == 0 and \
                        log_mod.read_entry(buf, offset, found, PAYLOAD_MAX) is not None:
                    return delivered, "overrun"  # Rule 4
                return delivered, "waiting"
            learn(entry.proposal, entry.commit)
            if not covered(index, entry.proposal):  # look further (pump._learn_more)
                word = log_mod.read_commit_word(memoryview(buf))
                if word[0]:
                    learn(*word)
                for ahead in range(index + 1, index + 2 + INFLIGHT_MAX):
                    if known[1] >= index + BATCH_MAX - 1:
                        break
                    later = log_mod.read_entry(buf, LAYOUT.offset(ahead), ahead, PAYLOAD_MAX)
                    if later is None:
                        break
                    learn(later.proposal, later.commit)
                if not covered(index, entry.proposal):
                    return delivered, "waiting"
            delivered.append((index, entry.payload))
            index += 1
            count += 1


def _run_pump(buf: bytearray, applied: int) -> tuple[list[tuple[int, bytes]], str, _State]:
    delivered: list[tuple[int, bytes]] = []
    state = _State(memoryview(buf), applied)
    with mock.patch.object(c, "PUMP_BATCH_MAX", BATCH_MAX), \
            mock.patch.object(c, "PROPOSALS_INFLIGHT_MAX", INFLIGHT_MAX):
        pump = Pump(state, lambda index, payload: delivered.append((index, bytes(payload))))
        while pump.step() and state.failure is None:
            pass
    outcome = "overrun" if isinstance(state.failure, LogOverrun) else "waiting"
    assert state.failure is None or outcome == "overrun", state.failure
    return delivered, outcome, state


@settings(max_examples=400, derandomize=True, deadline=None)
@given(applied=st.integers(0, 40), plans=st.lists(slot_plans, min_size=0, max_size=SLOTS),
       commit_word=st.tuples(st.integers(0, 3), st.integers(-2, 10), st.booleans()))
def test_the_inlined_pump_delivers_what_the_reference_reading_delivers(
        applied: int, plans: list[tuple[str, int, int, bytes]],
        commit_word: tuple[int, int, bool]) -> None:
    buf = _fill(applied, plans, commit_word)
    delivered, outcome, state = _run_pump(buf, applied)
    assert (delivered, outcome) == _reference(buf, applied)
    last = delivered[-1][0] if delivered else applied
    assert ctrl_mod.U64.unpack_from(state.ctrl_buf, ctrl_mod.APPLIED_OFFSET)[0] in (0, last)
    assert log_mod.U64.unpack_from(buf, log_mod.FIRST_UNDECIDED_OFFSET)[0] == last + 1


def test_the_reference_is_not_vacuous() -> None:
    """A plain committed run is delivered, a torn slot stops it, a wrap ahead is an overrun."""
    complete = [("complete", 1, 2, b"a"), ("complete", 1, 1, b"b"), ("complete", 1, 0, b"c"),
                ("complete", 1, -1, b"d")]  # every entry says the log is committed up to 3
    buf = _fill(0, complete, (0, 0, False))
    assert _reference(buf, 0) == ([(1, b"a"), (2, b"b"), (3, b"c")], "waiting")
    assert _run_pump(buf, 0)[:2] == _reference(buf, 0)
    torn = complete[:1] + [("torn-trailer", 1, 1, b"b")] + complete[2:]
    assert _reference(_fill(0, torn, (0, 0, False)), 0) == ([(1, b"a")], "waiting")
    wrapped = [("wrapped-ahead", 1, 0, b"x")]
    assert _reference(_fill(0, wrapped, (0, 0, False)), 0) == ([], "overrun")
    assert _run_pump(_fill(0, wrapped, (0, 0, False)), 0)[1] == "overrun"


def test_a_log_floor_above_the_next_entry_stops_the_pump_with_an_overrun() -> None:
    """log Rule 5 / pump Rule 4: a leader whose own log starts after the entry this replica needs
    writes the floor; the pump delivers what it can, then reports LogOverrun (a snapshot fetch)
    instead of waiting for an entry nobody will write. A floor at or below it changes nothing."""
    applied = 10
    plans = [("complete", 1, 1, b"a"), ("complete", 1, 1, b"b")]  # 11 and 12, committed
    for floor, outcome, delivered_through in ((0, "waiting", 12), (13, "waiting", 12),
                                              (14, "overrun", 12), (12, "waiting", 12)):
        buf = _fill(applied, plans, (1, 2, False))
        log_mod.U64.pack_into(buf, log_mod.FLOOR_OFFSET, floor)
        delivered, seen, state = _run_pump(buf, applied)
        assert (seen, [i for i, _ in delivered][-1:]) == (outcome, [delivered_through]), floor
        if seen == "overrun":
            assert "the leader's log no longer holds it (log floor 14)" in str(state.failure)
