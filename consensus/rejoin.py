"""Rejoin: a replica that lost its memory (a fresh start) or fell behind the circular log
(``LogOverrun``) fetches a snapshot from a live peer, installs it, catches up the log from the
snapshot's index and only then serves as a follower again.

Rule 1 (amnesia): a replica started on fresh memory may have promised or accepted entries in its
        previous incarnation that it no longer holds, so it must not count as a voter: until it
        is reinstated it never campaigns and grants its log only to a *leading* requester whose
        proposal is at least ``required``, the highest ``min_proposal`` read from enough other
        members that kept their memory to meet every majority (``members - majority + 1`` of
        them), or 0 when every member reads 0 (nobody ever prepared: a cluster's first boot).
        Every prepare that completed wrote its number to a majority, which includes one of the
        members read, so a leader with such a proposal has adopted every chosen entry. The
        replica is reinstated once that leader caught it up: its commit word then carries a
        proposal ``>= required`` (a leader writes the commit word only at the end of a catch-up,
        or to caught-up followers). Two replicas that lose their memory before the first is
        reinstated leave the cluster unavailable rather than risk acknowledged entries.
Rule 2 (snapshot): the snapshot comes from a live peer that kept its memory and is not itself
        recovering, a follower before the leader (a leader's snapshot stalls its proposals),
        the most advanced first. As soon as the snapshot's index ``S`` is known, ``S`` is
        published as ``applied`` (``S + 1`` as first undecided): the leader catches this replica
        up from ``S + 1`` and its recycling waits for it from then on. Before that the ``leading``
        word reads ``LEADING_RECOVERING``, and the leader's recycling skips this replica.
Rule 3: installing happens under the pump's lock, so delivery resumes exactly at ``S + 1``; a
        snapshot older than what this replica already applied or published is refused (another
        peer is asked). The application's state is replaced as a whole, never merged.
Rule 4: with a snapshot port, a ``LogOverrun`` (in the pump, or a candidate's prepare) is not a
        failure: the replica goes back to Rule 2 by itself, as often as it needs to. Without a
        port (a bare log), the replica fails as before.
Rule 5: the recovery ends when the replica is no longer amnesiac and has applied everything up to
        the highest commit index it knows (from the commit word or from entries), once that
        index is at least ``S``.
Rule 6 (local state): a replica whose application restored its state up to ``J`` from its own
        disk (``Replica(..., initial_applied=J)``) is still amnesiac (Rule 1), but skips the
        snapshot: it catches up the log from ``J + 1``, and goes back to Rule 2 only if it finds
        its log overrun (Rule 4: the leader no longer held ``J + 1``).
Rule 7: a catch-up that delivers nothing for ``CATCH_UP_STALL_RETRIES`` retry periods goes back
        to Rule 2 (a newer snapshot): the leader may not hold the entries right after this
        replica's snapshot (it installed a later snapshot itself), and it cannot write them.

The transfer itself is the application's ``SnapshotPort``: the exchange streams it over gRPC
between servers, the simulator copies it with simulated delays. See docs/consensus.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from consensus import ctrl as ctrl_mod
from consensus import log as log_mod
from consensus.errors import ConsensusError, LogOverrun
from consensus.fabric.base import FabricError
from consensus.state import (
    LEADING_RECOVERING,
    LEADING_YES,
    LOGGER,
    PHASE_CATCH_UP,
    PHASE_INSTALL,
    PHASE_SNAPSHOT,
    Recovery,
    ReplicaState,
)

if TYPE_CHECKING:
    from consensus.pump import Pump

NS_PER_MS = 1_000_000
NS_PER_US = 1000
CATCH_UP_STALL_RETRIES = 8  # Rule 7: rejoin_retry_us periods without a delivery
US_PER_S = 1_000_000


class SnapshotUnavailable(ConsensusError):
    """A snapshot could not be fetched or installed (peer gone, stale, corrupt); try another."""


class Transfer(Protocol):
    """What a ``SnapshotPort.fetch`` reports while it receives a snapshot."""

    def begin(self, index: int, total_bytes: int) -> None:
        """The snapshot covers the log up to ``index`` and has ``total_bytes`` bytes. Raises
        ``SnapshotUnavailable`` when it is older than this replica needs (abort the fetch)."""

    def advance(self, done_bytes: int) -> None:
        """``done_bytes`` of ``total_bytes`` have arrived."""


class SnapshotPort(Protocol):
    """The application's side of a rejoin: moving and installing its state."""

    def fetch(self, peer: int, transfer: Transfer) -> tuple[int, bytes]:
        """Fetch ``peer``'s current snapshot: ``(index, bytes)``. Calls ``transfer.begin`` once
        before the bytes arrive. Raises ``SnapshotUnavailable`` (with the reason) on failure."""

    def install(self, index: int, data: bytes) -> None:
        """Replace the application's whole state with the snapshot ``data`` of ``index``. Raises
        ``SnapshotUnavailable`` when ``data`` does not decode (nothing changed then)."""


@dataclass(frozen=True, slots=True)
class RecoveryStatus:
    """A read-only view of a rejoin in progress (``Replica.recovery``)."""

    phase: str  # snapshot | install | catch-up
    reason: str
    amnesiac: bool
    snapshot_index: int
    bytes_done: int
    bytes_total: int
    entries_left: int
    elapsed_ns: int
    provider: int


class _Transfer:
    """``Transfer`` for one attempt: validates the index and publishes it early (Rule 2)."""

    def __init__(self, rejoin: Rejoin, recovery: Recovery) -> None:
        self.rejoin = rejoin
        self.recovery = recovery

    def begin(self, index: int, total_bytes: int) -> None:
        floor = self.rejoin.index_floor()
        if index < floor:
            raise SnapshotUnavailable(f"snapshot at index {index} is older than {floor}, which "
                                      "this replica already has")
        recovery = self.recovery
        recovery.snapshot_index = index
        recovery.bytes_total = total_bytes
        recovery.bytes_done = 0
        self.rejoin.publish_index(index)

    def advance(self, done_bytes: int) -> None:
        self.recovery.bytes_done = done_bytes


class Rejoin:
    """The rejoin procedure of one replica, run by its pump activity (see the module rules)."""

    def __init__(self, state: ReplicaState, port: SnapshotPort | None, pump: Pump) -> None:
        self.state = state
        self.port = port
        self.pump = pump
        self.published = 0  # the highest snapshot index published as applied (Rule 3)
        self.last: RecoveryStatus | None = None  # the latest completed recovery (phase "done")
        self._retry_at_ns = 0
        self._progress = (-1, 0)  # (applied, since_ns) in the catch-up phase (Rule 7)
        if port is not None:
            state.on_overrun = self.on_overrun

    # --- starting -------------------------------------------------------------------------------
    def start(self, reason: str, amnesiac: bool, local: bool = False) -> bool:
        """Begin a recovery (Rule 2 or, ``amnesiac``, Rule 1 first). Idempotent while one runs.
        ``local``: the application restored its state up to ``applied`` by itself (Rule 6), so
        the snapshot phase is skipped."""
        state = self.state
        if state.recovery is not None and state.recovery.phase == PHASE_SNAPSHOT:
            return True
        now = state.runtime.now_ns()
        state.recovery = Recovery(reason=reason, started_ns=now, amnesiac=amnesiac, local=local,
                                  snapshot_index=self.pump.applied if local else 0)
        state.set_word(ctrl_mod.RECOVERING_OFFSET, 1)  # ctrl Rule 6
        if amnesiac:
            state.amnesiac = True
            state.required_proposal = None
            state.set_word(ctrl_mod.AMNESIAC_OFFSET, 1)
        with state.role:
            state.step_down_locked(f"recovering: {reason}")
        LOGGER.info("replica %d recovering: %s", state.replica_id, reason)
        return True

    def on_overrun(self, error: LogOverrun) -> bool:
        """Rule 4 (``ReplicaState.on_overrun``)."""
        return self.start(str(error), amnesiac=self.state.amnesiac)

    # --- the pump's turn while recovering ------------------------------------------------------
    def step(self) -> None:
        """One attempt of the snapshot phase; sleeps a little when it cannot progress."""
        state = self.state
        recovery = state.recovery
        assert recovery is not None and recovery.phase != PHASE_CATCH_UP
        runtime = state.runtime
        if runtime.now_ns() < self._retry_at_ns:
            runtime.sleep(state.config.rejoin_retry_us / US_PER_S)
            return
        if state.amnesiac and state.required_proposal is None:
            required = self.required_bound()
            if required is None:
                self._retry_later()
                return
            state.required_proposal = required
            LOGGER.info("replica %d: amnesiac, grants only leaders with proposal >= %d",
                        state.replica_id, required)
            if required == 0:  # nobody ever prepared: nothing to fetch, nothing forgotten
                self._reinstate()
                self._finish()
                return
        if self.port is None or recovery.local:  # a bare log or a local state: the log (Rule 6)
            self._enter_catch_up()
            return
        for provider in self.providers():
            if self._fetch_from(provider, recovery):
                self._enter_catch_up()
                return
        self._retry_later()

    def _fetch_from(self, provider: int, recovery: Recovery) -> bool:
        state = self.state
        port = self.port
        assert port is not None
        recovery.attempts += 1
        recovery.provider = provider
        try:
            index, data = port.fetch(provider, _Transfer(self, recovery))
            if index < self.index_floor() or index != recovery.snapshot_index:
                raise SnapshotUnavailable(f"replica {provider} sent index {index}, announced "
                                          f"{recovery.snapshot_index}")
            with self.pump.lock:
                port.install(index, data)
                self.pump.install(index)
        except SnapshotUnavailable as error:
            LOGGER.warning("replica %d: snapshot from replica %d failed: %s", state.replica_id,
                           provider, error)
            return False
        LOGGER.info("replica %d installed a snapshot of index %d (%d bytes) from replica %d",
                    state.replica_id, index, len(data), provider)
        return True

    def _retry_later(self) -> None:
        state = self.state
        retry_us = state.config.rejoin_retry_us
        self._retry_at_ns = state.runtime.now_ns() + retry_us * NS_PER_US
        state.runtime.sleep(retry_us / US_PER_S)

    def _enter_catch_up(self) -> None:
        state = self.state
        recovery = state.recovery
        assert recovery is not None
        recovery.phase = PHASE_CATCH_UP
        state.set_word(ctrl_mod.RECOVERING_OFFSET, 0)
        with state.role:
            state.step_down_locked("snapshot installed; catching up the log")

    def check_caught_up(self) -> None:
        """Rules 1 and 5, in the catch-up phase (cheap: two local reads)."""
        state = self.state
        recovery = state.recovery
        assert recovery is not None and recovery.phase == PHASE_CATCH_UP
        if self._stalled():
            self.start(f"catch-up stalled at index {self.pump.applied}", state.amnesiac)
            return
        proposal, commit = log_mod.read_commit_word(state.log_buf)
        if state.amnesiac:
            required = state.required_proposal
            if required is None or proposal < required or proposal == 0:
                return
            self._reinstate()
        commit = self._known_commit(proposal, commit)
        if commit < recovery.snapshot_index or self.pump.applied < commit:
            return
        self._finish()

    def _stalled(self) -> bool:
        """Rule 7 (cheap: a clock read)."""
        state = self.state
        now = state.runtime.now_ns()
        applied = self.pump.applied
        if applied != self._progress[0]:
            self._progress = (applied, now)
            return False
        limit_ns = CATCH_UP_STALL_RETRIES * state.config.rejoin_retry_us * NS_PER_US
        if now - self._progress[1] < limit_ns:
            return False
        self._progress = (-1, now)
        return True

    def _known_commit(self, word_proposal: int, word_commit: int) -> int:
        """The highest commit index this replica knows: the header's commit word (written by an
        idle leader and at the end of a catch-up) or what the pump learnt from entries (under
        load the commit rides on entries and the word is not rewritten)."""
        pump = self.pump
        if pump.commit_proposal > word_proposal:
            return pump.commit_index
        if pump.commit_proposal == word_proposal:
            return max(pump.commit_index, word_commit)
        return word_commit

    def _reinstate(self) -> None:
        state = self.state
        state.amnesiac = False
        state.set_word(ctrl_mod.AMNESIAC_OFFSET, 0)
        LOGGER.info("replica %d reinstated as a voter", state.replica_id)

    def _finish(self) -> None:
        state = self.state
        recovery = state.recovery
        assert recovery is not None
        self.last = RecoveryStatus(
            phase="done", reason=recovery.reason, amnesiac=False,
            snapshot_index=recovery.snapshot_index, bytes_done=recovery.bytes_done,
            bytes_total=recovery.bytes_total, entries_left=0,
            elapsed_ns=state.runtime.now_ns() - recovery.started_ns, provider=recovery.provider)
        state.recovery = None
        state.set_word(ctrl_mod.RECOVERING_OFFSET, 0)
        with state.role:
            state.step_down_locked("caught up")
        if recovery.local:  # the exchange may not see this short recovery: say it here
            LOGGER.warning("replica %d caught up at index %d in %.1f ms (from its local state at "
                        "index %d, no snapshot)", state.replica_id, self.pump.applied,
                        self.last.elapsed_ns / NS_PER_MS, recovery.snapshot_index)
            return
        LOGGER.info("replica %d caught up at index %d in %.1f ms (snapshot index %d, %d bytes "
                    "from replica %d, %d attempt(s))", state.replica_id, self.pump.applied,
                    self.last.elapsed_ns / NS_PER_MS, recovery.snapshot_index,
                    recovery.bytes_total, recovery.provider, recovery.attempts)

    # --- reads of peers -------------------------------------------------------------------------
    def required_bound(self) -> int | None:
        """Rule 1's bound, or None while too few members can be read."""
        state = self.state
        kept: list[int] = []
        readable = 0
        all_zero = True
        for peer in state.peers.values():
            try:
                amnesiac = ctrl_mod.U64.unpack(peer.ctrl.read(ctrl_mod.AMNESIAC_OFFSET, 8))[0]
                proposal = log_mod.U64.unpack(peer.log.read(log_mod.MIN_PROPOSAL_OFFSET, 8))[0]
            except FabricError:
                all_zero = False
                continue
            readable += 1
            all_zero = all_zero and proposal == 0
            if not amnesiac:
                kept.append(int(proposal))
        if all_zero and readable == len(state.peers):
            return 0
        needed = min(len(state.config.members) - state.majority + 1, len(state.peers))
        return max(kept) if len(kept) >= needed else None

    def providers(self) -> list[int]:
        """Rule 2: live peers that kept their memory and are not recovering, best first."""
        state = self.state
        found: list[tuple[bool, int, int]] = []
        for replica_id in sorted(state.alive):
            if state.peer_leading.get(replica_id) == LEADING_RECOVERING:
                continue
            peer = state.peers[replica_id]
            try:
                amnesiac = ctrl_mod.U64.unpack(peer.ctrl.read(ctrl_mod.AMNESIAC_OFFSET, 8))[0]
            except FabricError:
                continue
            if amnesiac:
                continue
            leads = state.peer_leading.get(replica_id) == LEADING_YES
            found.append((leads, -state.peer_applied.get(replica_id, 0), replica_id))
        return [replica_id for _, _, replica_id in sorted(found)]

    def may_grant(self, requester: int) -> bool:
        """Rule 1, for the switcher of an amnesiac replica (background activity)."""
        state = self.state
        required = state.required_proposal
        recovery = state.recovery
        if required is None or recovery is None or recovery.phase == PHASE_SNAPSHOT:
            return False
        if requester not in state.alive or state.peer_leading.get(requester) != LEADING_YES:
            return False
        try:
            proposal = log_mod.U64.unpack(
                state.peers[requester].log.read(log_mod.MIN_PROPOSAL_OFFSET, 8))[0]
        except FabricError:
            return False
        return bool(proposal >= required)

    # --- publishing -----------------------------------------------------------------------------
    def index_floor(self) -> int:
        """The lowest snapshot index this replica may install (Rule 3)."""
        return max(self.pump.applied, self.published)

    def publish_index(self, index: int) -> None:
        """Rule 2: announce ``index`` as applied before the bytes arrive."""
        state = self.state
        self.published = index
        state.set_word(ctrl_mod.APPLIED_OFFSET, index)
        log_mod.U64.pack_into(state.log_buf, log_mod.FIRST_UNDECIDED_OFFSET, index + 1)
        recovery = state.recovery
        assert recovery is not None
        recovery.phase = PHASE_INSTALL
        with state.role:
            state.step_down_locked(f"snapshot of index {index} coming")

    def status(self) -> RecoveryStatus | None:
        state = self.state
        recovery = state.recovery
        if recovery is None:
            return None
        commit = self._known_commit(*log_mod.read_commit_word(state.log_buf))
        applied = self.pump.applied
        base = max(applied, recovery.snapshot_index)
        return RecoveryStatus(
            phase=recovery.phase, reason=recovery.reason, amnesiac=state.amnesiac,
            snapshot_index=recovery.snapshot_index, bytes_done=recovery.bytes_done,
            bytes_total=recovery.bytes_total, entries_left=max(0, commit - base),
            elapsed_ns=state.runtime.now_ns() - recovery.started_ns,
            provider=recovery.provider)
