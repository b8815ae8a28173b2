"""The reading pump: polls this replica's own log and delivers committed entries, in order, once.

Rule 1 (design Rule 4): entry ``k`` is delivered only when its slot holds a complete entry ``k``
        (log Rule 3) with proposal ``p`` and the pump has seen a commit index ``>= k`` published
        under the same proposal ``p``: in a later complete entry (up to a pipelined batch
        ahead), in ``k``'s own commit field, or in the header's commit word. An entry with
        another proposal waits until the leader rewrites it.
Rule 2: the pump keeps the commit knowledge of the highest proposal it has seen; a higher
        proposal replaces it (a new leader's commits say nothing about older proposals' slots).
Rule 3: ``applied`` (ctrl) and ``first_undecided`` (log header) are published after each batch,
        so the leader can recycle slots and a new leader knows where to catch this replica up.
Rule 4 (design Rule 6): a slot holding entry ``k + m * slots`` (m > 0) when ``k`` is needed means
        the log wrapped past this replica: it stops and reports ``LogOverrun``, never applying a
        wrong entry. So does a log floor above ``k`` (log Rule 5: a leader whose own log starts
        after ``k`` cannot write it), checked when a step delivers nothing.
Rule 5: idle polling backs off (yield, then sleeps doubling up to ``PUMP_SLEEP_S_MAX``), because
        followers share the machine's cores with the leader; with ``pump_poll_us`` set, an idle
        pump instead sleeps that long every time it finds nothing (an application whose own
        threads need the interpreter more than its followers need a short apply lag).
Rule 6: on the leader, the proposing thread delivers its own committed entries at once
        (``deliver_committed``) instead of waiting for the pump to read them back: the leader's
        ``applied`` then keeps up with its commits (a pump sharing the proposer's interpreter
        could not, and the leader's own ``applied`` bounded recycling). Delivery, by either
        path, happens under ``lock``, so every index is still delivered once and in order.
Rule 7: so a leader's pump does not poll: while this replica leads and has delivered up to its
        commit index, the pump waits on ``state.pump_bell``, rung by every step-down and by a
        ``deliver_committed`` that left entries behind, with ``PUMP_LEADER_IDLE_S`` as a
        safety net. (An idle pump sleeps at most 0.5 ms: up to 2,000 empty wake-ups a second.)
Rule 8: while the replica recovers (``state.recovery``), the pump runs the rejoin procedure
        (``consensus.rejoin``) instead of delivering until the snapshot is installed
        (``install`` moves ``applied`` to the snapshot's index under ``lock``), then delivers the
        log as usual and checks after each turn whether it has caught up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from consensus import constants as c
from consensus import ctrl as ctrl_mod
from consensus import log as log_mod
from consensus.errors import ConsensusError, LogOverrun
from consensus.state import LOGGER, PHASE_CATCH_UP, OnCommit, ReplicaState

if TYPE_CHECKING:
    from consensus.rejoin import Rejoin

_ENTRY_UNPACK = log_mod.ENTRY.unpack_from
_TRAILER_UNPACK = log_mod.TRAILER.unpack_from
_ENTRY_BYTES = log_mod.ENTRY.size
_HEADER_BYTES = log_mod.HEADER_BYTES
_U64_PACK = log_mod.U64.pack_into
_U64_UNPACK = log_mod.U64.unpack_from
_FLOOR_OFFSET = log_mod.FLOOR_OFFSET
assert log_mod.U64.format == ctrl_mod.U64.format


class Pump:
    """Delivers committed entries of ``state``'s log to ``on_commit`` (one activity)."""

    def __init__(self, state: ReplicaState, on_commit: OnCommit | None) -> None:
        self.state = state
        self.on_commit = on_commit
        self.applied = state.applied
        self.lock = state.runtime.mutex()  # Rule 6: held while delivering (pump or proposer)
        self.commit_proposal = 0
        self.commit_index = 0
        layout = state.layout
        self._mask = layout.slots - 1
        self._slot_bytes = layout.slot_bytes
        self._payload_max = layout.payload_size_max
        self._ctrl_buf = state.ctrl_buf
        self._log_buf = state.log_buf
        self.rejoin: Rejoin | None = None  # set by the replica (Rule 8)
        self._publish()

    def run(self) -> None:
        state = self.state
        runtime = state.runtime
        idle = 0
        sleep_s = c.PUMP_SLEEP_S_MIN
        LOGGER.info("replica %d: reading pump started", state.replica_id)
        bell = state.pump_bell
        poll_s = state.config.pump_poll_us / 1e6
        while not state.stopping:
            if state.paused or state.failure is not None:
                runtime.sleep(c.PUMP_SLEEP_S_MAX)
                continue
            recovery = state.recovery
            if recovery is not None and self.rejoin is not None:  # Rule 8
                if recovery.phase != PHASE_CATCH_UP:
                    self.rejoin.step()
                    continue
                self.rejoin.check_caught_up()
            if state.leading and self.applied >= state.commit_index:
                # Rule 7: the proposers deliver; wake on a step-down (or the safety timeout)
                bell.wait(c.PUMP_LEADER_IDLE_S)
                bell.clear()
                continue
            if self.step():
                idle = 0
                sleep_s = c.PUMP_SLEEP_S_MIN
                runtime.yield_now()  # let the proposer (same interpreter on the leader) run
                continue
            if poll_s:  # Rule 5: fixed polling, set by an application sharing the interpreter
                runtime.sleep(poll_s)
                continue
            idle += 1
            if idle < c.PUMP_SPINS_IDLE:
                runtime.yield_now()
            else:
                runtime.sleep(sleep_s)
                sleep_s = min(sleep_s * 2, c.PUMP_SLEEP_S_MAX)

    def _learn(self, proposal: int, commit: int) -> None:
        """Rule 2."""
        if proposal > self.commit_proposal:
            self.commit_proposal = proposal
            self.commit_index = commit
        elif proposal == self.commit_proposal and commit > self.commit_index:
            self.commit_index = commit

    def _entry(self, index: int) -> tuple[int, int, bytes] | None:
        """(proposal, commit, payload) of complete entry ``index`` (log Rule 3), else None."""
        buf = self.state.log_buf
        offset = log_mod.HEADER_BYTES + (index & self._mask) * self._slot_bytes
        head = _ENTRY_UNPACK(buf, offset)
        found, proposal, commit, length = head
        if found != index or proposal == 0 or length > self._payload_max:
            if found > index and (found - index) & self._mask == 0:
                self._check_overrun(index, found)
            return None
        start = offset + _ENTRY_BYTES
        if _TRAILER_UNPACK(buf, start + length) != (index, proposal):
            return None
        payload = bytes(buf[start : start + length])
        if _ENTRY_UNPACK(buf, offset) != head:
            return None
        return proposal, commit, payload

    def _check_floor(self, index: int) -> None:
        """Rule 4 (log Rule 5): a leader whose log starts after ``index`` said so."""
        floor = _U64_UNPACK(self.state.log_buf, _FLOOR_OFFSET)[0]
        if floor > index:
            raise LogOverrun(self.state.replica_id, index, floor - 1,
                             why=f"the leader's log no longer holds it (log floor {floor})")

    def _check_overrun(self, index: int, found: int) -> None:
        """Rule 4: report only if the later entry is complete (not a torn header)."""
        if self._entry(found) is not None:
            raise LogOverrun(self.state.replica_id, index, found)

    def step(self) -> int:
        """Deliver what is committed (at most PUMP_BATCH_MAX entries); return how many."""
        with self.lock:
            return self._step_locked()

    def deliver_committed(self, first: int, payloads: Sequence[bytes]) -> None:
        """Rule 6: the leader committed ``payloads`` at ``first...``; deliver everything up to
        the last of them. Entries before ``first`` not yet delivered (other proposers', or
        recovered ones) are read from this replica's own log, where the leader wrote them
        before committing; one that cannot be read complete is left to the pump. Called
        without ``role``; a failing callback fails the replica (as in the pump), not the caller.
        """
        last = first + len(payloads) - 1
        with self.lock:
            index = self.applied + 1
            if index > last or self.state.failure is not None:
                return
            try:
                while index < first:  # entries other proposers committed before ours
                    entry = self._entry(index)
                    if entry is None:
                        break
                    self._deliver(index, entry[2])
                    index += 1
                if index >= first:
                    for payload in payloads[index - first :]:
                        self._deliver(index, payload)
                        index += 1
            except ConsensusError as error:
                self.state.fail(error)
            self._publish()
        if index <= last:
            self.state.pump_bell.set()  # Rule 7: the pump delivers what was left

    def _step_locked(self) -> int:
        """``step``'s body: ``_entry``, ``_learn`` and ``_deliver`` inlined (the pump is the
        followers' hot path: they must keep up with the leader on the cores left to them)."""
        state = self.state
        buf = state.log_buf
        mask, slot_bytes, payload_max = self._mask, self._slot_bytes, self._payload_max
        on_commit = self.on_commit
        commit_proposal, commit_index = self.commit_proposal, self.commit_index
        index = self.applied + 1
        count = 0
        try:
            while count < c.PUMP_BATCH_MAX:
                offset = _HEADER_BYTES + (index & mask) * slot_bytes
                head = _ENTRY_UNPACK(buf, offset)
                found, proposal, commit, length = head
                if found != index or proposal == 0 or length > payload_max:
                    if found > index and (found - index) & mask == 0:
                        self._check_overrun(index, found)
                    break
                start = offset + _ENTRY_BYTES
                if _TRAILER_UNPACK(buf, start + length) != (index, proposal):
                    break
                payload = bytes(buf[start : start + length]) if on_commit is not None else b""
                if _ENTRY_UNPACK(buf, offset) != head:
                    break
                if proposal > commit_proposal:  # Rule 2 (``_learn``)
                    commit_proposal, commit_index = proposal, commit
                elif proposal == commit_proposal and commit > commit_index:
                    commit_index = commit
                if proposal != commit_proposal or commit_index < index:
                    self.commit_proposal, self.commit_index = commit_proposal, commit_index
                    self._learn_more(index)
                    commit_proposal, commit_index = self.commit_proposal, self.commit_index
                    if proposal != commit_proposal or commit_index < index:
                        break
                self.applied = index
                if on_commit is not None:
                    try:
                        on_commit(index, payload)
                    except Exception as error:
                        raise self._callback_failed(index, error) from error
                index += 1
                count += 1
            if count == 0:
                self._check_floor(index)
        except ConsensusError as error:
            state.fail(error)
        self.commit_proposal, self.commit_index = commit_proposal, commit_index
        if count:
            self._publish()
        return count

    def _learn_more(self, index: int) -> None:
        """Learn commits from the header's commit word and from the complete entries after
        ``index``: a pipelined batch carries the commit index of before the batch, so the
        commit covering ``index`` may ride up to ``PROPOSALS_INFLIGHT_MAX`` entries later.
        Once ``index`` is covered the scan goes on to cover a whole batch, so the entries
        delivered next need no look-ahead of their own (one header read per entry, not two)."""
        proposal, commit = log_mod.read_commit_word(self.state.log_buf)
        if proposal:
            self._learn(proposal, commit)
        wanted = index + c.PUMP_BATCH_MAX - 1
        buf = self.state.log_buf
        mask, slot_bytes, payload_max = self._mask, self._slot_bytes, self._payload_max
        for ahead in range(index + 1, index + 2 + c.PROPOSALS_INFLIGHT_MAX):
            if self.commit_index >= wanted:
                return
            offset = _HEADER_BYTES + (ahead & mask) * slot_bytes  # ``_meta``, inlined
            head = _ENTRY_UNPACK(buf, offset)
            found, proposal, commit, length = head
            if found != ahead or proposal == 0 or length > payload_max:
                return
            if _TRAILER_UNPACK(buf, offset + _ENTRY_BYTES + length) != (ahead, proposal):
                return
            if _ENTRY_UNPACK(buf, offset) != head:
                return
            self._learn(proposal, commit)

    def _deliver(self, index: int, payload: bytes) -> None:
        assert index == self.applied + 1
        self.applied = index
        if self.on_commit is not None:
            try:
                self.on_commit(index, payload)
            except Exception as error:
                raise self._callback_failed(index, error) from error

    def _callback_failed(self, index: int, error: Exception) -> CallbackFailed:
        """The application's bug must not kill the pump silently: log it, fail the replica."""
        LOGGER.error("replica %d: on_commit(%d) raised", self.state.replica_id, index,
                     exc_info=error)
        return CallbackFailed(f"on_commit({index}) raised {error!r}")

    def install(self, index: int) -> None:
        """Rule 8: the application installed a snapshot of ``index``; deliver from ``index + 1``
        on. Caller holds ``lock``. Commit knowledge is relearnt from the log."""
        self.applied = index
        self.commit_proposal = 0
        self.commit_index = 0
        self._publish()

    def _publish(self) -> None:
        """Rule 3 (on the leader once per ``propose``: two precompiled packs, no checks)."""
        applied = self.applied
        _U64_PACK(self._ctrl_buf, ctrl_mod.APPLIED_OFFSET, applied)
        _U64_PACK(self._log_buf, log_mod.FIRST_UNDECIDED_OFFSET, applied + 1)


class CallbackFailed(ConsensusError):
    """The application's ``on_commit`` raised; this replica stops delivering."""
