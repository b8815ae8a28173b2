"""The replication plane's leader fast path: one write per follower per entry, done at a majority.

Rule 1: an entry is written to a follower only while that follower is in ``followers`` (it granted
        this leader permission and was caught up, design Rule 3); a write that raises
        ``WriteRejected``/``RegionClosed`` removes the follower for good (until it grants again).
Rule 2: ``propose`` returns index ``k`` only after ``k`` is in this replica's own log and in the
        logs of enough followers to make a majority; otherwise it steps down and raises
        ``NotLeader`` (design Rule 1). Nothing is reported committed that a majority lacks.
Rule 3: the log is circular: entry ``k`` is written only when ``k <= recycle_limit`` =
        ``slots + min(applied)`` over this replica and its live followers (design Rule 6).
        ``recycle_limit`` is refreshed (remote reads) only when the next entry would pass it.
        A dead follower, or one that announced it recovers through a snapshot
        (``LEADING_RECOVERING``), is not waited for: it overruns and rejoins (rejoin Rule 4).
        A follower whose applied word cannot be read (its regions were replaced by a restart on
        fresh memory) is dropped as after a failed write (Rule 1), never raised to the proposer.
Rule 4: no per-entry allocation beyond the caller's payload: entries are encoded with precompiled
        ``struct``s into one preallocated slot buffer, and the write view is cached per length.
Rule 5: the role mutex is held while writing but released before any sleep (runtime Rule 3).
Rule 6: once committed, the proposing thread delivers its entries itself (pump Rule 6), after
        releasing the role mutex: a committed entry stays committed whatever happens to the
        leadership, and the pump's lock is never taken under ``role``.

Commit indexes ride on the next entry (its ``commit`` field) and in the leader's own log header;
an idle leader's background activity publishes the commit word to followers (``flush_commit``).
"""

from __future__ import annotations

from collections.abc import Sequence

from consensus import constants as c
from consensus import ctrl as ctrl_mod
from consensus import log as log_mod
from consensus.errors import NotLeader, ProposalTimeout, ReplicaStopped
from consensus.fabric.base import FabricError
from consensus.pump import Pump
from consensus.state import LEADING_RECOVERING, LOGGER, Peer, ReplicaState

_ENTRY_PACK = log_mod.ENTRY.pack_into
_TRAILER_PACK = log_mod.TRAILER.pack_into
_COMMIT_PACK = log_mod.COMMIT_WORD.pack_into
_ENTRY_BYTES = log_mod.ENTRY.size
_HEARTBEAT_MASK = c.HEARTBEAT_EVERY_ENTRIES - 1
assert c.HEARTBEAT_EVERY_ENTRIES & _HEARTBEAT_MASK == 0


class Replicator:
    """The leader's fast path over a ``ReplicaState`` (used only while ``state.leading``)."""

    def __init__(self, state: ReplicaState, pump: Pump) -> None:
        self.state = state
        self.pump = pump
        layout = state.layout
        self._slot_mask = layout.slots - 1
        self._slot_bytes = layout.slot_bytes
        self._payload_max = layout.payload_size_max
        self._buf = bytearray(layout.slot_bytes)
        self._view = memoryview(self._buf)
        self._cached_length = -1
        self._cached_view = self._view
        self._batch_max = min(c.PROPOSALS_INFLIGHT_MAX, layout.slots // 2)

    # --- public --------------------------------------------------------------------------------
    def propose(self, payload: bytes, timeout_s: float) -> int:
        """Replicate one entry; return its index once committed (Rule 2)."""
        if len(payload) > self._payload_max:
            raise ValueError(f"payload of {len(payload)} bytes exceeds payload_size_max "
                             f"{self._payload_max}")
        state = self.state
        deadline = 0
        while True:
            with state.role:
                self._check_leading()
                if state.next_index <= state.recycle_limit or self._refresh_limit(1):
                    index = self._append(payload)
                    break
            deadline = self._wait_space(deadline, timeout_s)
        self.pump.deliver_committed(index, (payload,))
        return index

    def propose_many(self, payloads: Sequence[bytes], timeout_s: float) -> list[int]:
        """Replicate ``payloads`` in order, pipelined in batches of at most
        ``PROPOSALS_INFLIGHT_MAX`` (or half the log); return their indexes once all committed."""
        for payload in payloads:
            if len(payload) > self._payload_max:
                raise ValueError(f"payload of {len(payload)} bytes exceeds payload_size_max "
                                 f"{self._payload_max}")
        indexes: list[int] = []
        state = self.state
        position = 0
        deadline = 0
        while position < len(payloads):
            batch = payloads[position : position + self._batch_max]
            with state.role:
                self._check_leading()
                last = state.next_index + len(batch) - 1
                if last <= state.recycle_limit or self._refresh_limit(len(batch)):
                    first = self._append_batch(batch)
                else:
                    first = 0
            if first:
                self.pump.deliver_committed(first, batch)
                indexes.extend(range(first, first + len(batch)))
                position += len(batch)
                deadline = 0
                continue
            deadline = self._wait_space(deadline, timeout_s)
        assert len(indexes) == len(payloads)
        return indexes

    # --- fast path (caller holds role) --------------------------------------------------------
    def _check_leading(self) -> None:
        state = self.state
        if not state.leading:
            if state.stopping:
                raise ReplicaStopped(f"replica {state.replica_id} is stopped")
            if state.failure is not None:
                raise state.failure
            raise NotLeader(state.leader_hint())

    def _encode(self, index: int, proposal: int, commit: int, payload: bytes) -> memoryview:
        buf = self._buf
        length = len(payload)
        _ENTRY_PACK(buf, 0, index, proposal, commit, length)
        end = _ENTRY_BYTES + length
        buf[_ENTRY_BYTES:end] = payload
        _TRAILER_PACK(buf, end, index, proposal)
        if length != self._cached_length:
            self._cached_length = length
            self._cached_view = self._view[: end + 16]
        return self._cached_view

    def _append(self, payload: bytes) -> int:
        state = self.state
        state.propose_entered += 1
        index = state.next_index
        proposal = state.proposal
        view = self._encode(index, proposal, state.commit_index, payload)
        offset = log_mod.HEADER_BYTES + (index & self._slot_mask) * self._slot_bytes
        acks = 1
        lost: list[Peer] | None = None
        for peer in state.followers:
            try:
                peer.log.write(offset, view)
                acks += 1
            except FabricError:
                lost = [peer] if lost is None else [*lost, peer]
        state.log_buf[offset : offset + len(view)] = view
        if lost is not None:
            self._drop(lost)
        if acks < state.majority:
            state.propose_left += 1
            state.step_down_locked(f"entry {index} reached {acks} of {state.majority} replicas")
            raise NotLeader(None, "lost the majority while replicating")
        state.next_index = index + 1
        state.commit_index = index
        _COMMIT_PACK(state.log_buf, log_mod.COMMIT_WORD_OFFSET, proposal, index, proposal)
        if not index & _HEARTBEAT_MASK:
            state.bump_heartbeat()
        state.propose_left += 1
        return index

    def _append_batch(self, batch: Sequence[bytes]) -> int:
        """Replicate ``batch``; return the index of its first entry once all are committed."""
        state = self.state
        state.propose_entered += 1
        proposal = state.proposal
        commit = state.commit_index
        first = state.next_index
        reached: dict[int, int] = {peer.replica_id: first - 1 for peer in state.followers}
        live = list(state.followers)
        lost: list[Peer] = []
        for index in range(first, first + len(batch)):
            view = self._encode(index, proposal, commit, batch[index - first])
            offset = log_mod.HEADER_BYTES + (index & self._slot_mask) * self._slot_bytes
            for peer in live:
                try:
                    peer.log.write(offset, view)
                    reached[peer.replica_id] = index
                except FabricError:
                    lost.append(peer)
            if lost:
                live = [peer for peer in live if peer not in lost]
            state.log_buf[offset : offset + len(view)] = view
        last = first + len(batch) - 1
        if lost:
            self._drop(lost)
        committed = self._majority_index(reached, last)
        state.propose_left += 1
        if committed < last:
            state.step_down_locked(f"batch reached index {committed} of {last} on a majority")
            raise NotLeader(None, "lost the majority while replicating")
        state.next_index = last + 1
        state.commit_index = last
        _COMMIT_PACK(state.log_buf, log_mod.COMMIT_WORD_OFFSET, proposal, last, proposal)
        state.bump_heartbeat()
        return first

    def _majority_index(self, reached: dict[int, int], last: int) -> int:
        """The highest index held by a majority (this replica holds everything up to ``last``)."""
        held = sorted([last, *reached.values()], reverse=True)
        majority = self.state.majority
        return held[majority - 1] if len(held) >= majority else 0

    def _drop(self, lost: list[Peer]) -> None:
        state = self.state
        state.followers = [peer for peer in state.followers if peer not in lost]
        for peer in lost:
            state.excluded.add(peer.replica_id)
            LOGGER.info("leader %d lost write permission on replica %d", state.replica_id,
                        peer.replica_id)

    # --- recycling -----------------------------------------------------------------------------
    def _refresh_limit(self, count: int) -> bool:
        """Recompute ``recycle_limit`` (Rule 3); return whether ``count`` more entries fit."""
        state = self.state
        lowest = state.applied
        lost: list[Peer] = []
        for peer in state.followers:
            if peer.replica_id not in state.alive:
                continue
            if state.peer_leading.get(peer.replica_id) == LEADING_RECOVERING:
                continue  # it fetches a snapshot and catches up from there (rejoin Rule 2)
            try:
                applied = ctrl_mod.U64.unpack(peer.ctrl.read(ctrl_mod.APPLIED_OFFSET, 8))[0]
            except FabricError:  # it restarted on fresh memory (RegionClosed): as a lost write
                lost.append(peer)
                continue
            lowest = min(lowest, applied)
        if lost:
            self._drop(lost)
        state.recycle_limit = lowest + state.layout.slots
        return state.next_index + count - 1 <= state.recycle_limit

    def _wait_space(self, deadline_ns: int, timeout_s: float) -> int:
        """Sleep a little outside the role mutex; raise ProposalTimeout past the deadline."""
        runtime = self.state.runtime
        now = runtime.now_ns()
        if deadline_ns == 0:
            deadline_ns = now + int(timeout_s * 1e9)
        elif now >= deadline_ns:
            raise ProposalTimeout(
                f"replica {self.state.replica_id}: the log stayed full for {timeout_s} s "
                f"(a live replica is not applying entries)")
        runtime.sleep(c.RECYCLE_WAIT_SLEEP_S)
        return deadline_ns


def flush_commit(state: ReplicaState) -> None:
    """Publish the leader's commit word to every follower (caller holds role, leading)."""
    assert state.leading
    word = log_mod.COMMIT_WORD.pack(state.proposal, state.commit_index, state.proposal)
    lost = []
    for peer in state.followers:
        try:
            peer.log.write(log_mod.COMMIT_WORD_OFFSET, word)
        except FabricError:
            lost.append(peer)
    if lost:
        state.followers = [peer for peer in state.followers if peer not in lost]
        state.excluded.update(peer.replica_id for peer in lost)
