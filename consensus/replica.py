"""``Replica``: one member of a Mu cluster, wiring the planes and activities together.

Rule 1: ``start`` registers the ``log`` and ``ctrl`` regions, lets every member write ``ctrl``,
        connects to every peer's regions, then spawns three activities through the runtime:
        ``heartbeat``, ``background`` (switcher, scanner, leader rule) and ``pump``.
        ``propose`` runs on the caller's thread (the replication plane's fast path).
Rule 2: a re-attached region (restart with ``reattach=True``) keeps its log, applied index,
        permission holder and request numbers; the replica rejoins as a follower and delivers
        from its persisted applied index + 1 (entries applied by the previous incarnation are
        not delivered again). A replica started on fresh regions after it ran before in this
        cluster (its ``started`` key is in the registry) is amnesiac until reinstated
        (``consensus.rejoin`` Rule 1), and a re-attaching restart of a replica that was amnesiac
        or waiting for a snapshot resumes that recovery (ctrl Rules 5-6); with a ``snapshots``
        port it fetches a peer's snapshot, installs it and catches up the log (``recovery``
        shows the progress), and it recovers the same way, by itself, whenever it finds its log
        overrun.
Rule 3: ``pause`` makes the replica behave as if its process were stopped: it steps down
        (proposals raise ``NotLeader``), stops heartbeating, answering and pumping. ``resume``
        rejoins as a follower; it never preempts a live leader.
Rule 4: the heartbeat activity beats every ``heartbeat_interval_us`` unless paused, failed or
        stuck: a proposal in progress for ``fate_sharing_stuck_us`` stops the heartbeat
        (fate sharing), so a leader whose replication plane hangs is replaced.
        With the real runtime the word is bumped by ``native_beat``'s C thread instead (GIL-free,
        real-time priority); the heartbeat activity and the fast path then only refresh its
        liveness token, and fate sharing disables it, so the activity then runs every
        ``NATIVE_TOKEN_REFRESH_US`` at least (a wake-up that takes the GIL saves nothing
        more). When that thread runs at real-time priority and ``dead_after_us`` is the
        default, the replica judges leaders with
        ``NATIVE_DEAD_AFTER_US`` and its background activity (scanner, election) runs at
        ``SCHED_FIFO`` ``BACKGROUND_RT_PRIORITY`` (see docs/consensus.md, "Failure detection").
Rule 5: every activity checks ``stopping`` each turn; ``stop`` steps down, then joins them.
Rule 6: ``initial_applied = J`` (fresh regions only) says the application already holds the
        state of entries ``1..J`` (restored from its own disk): ``applied`` starts at ``J``, the
        first undecided index at ``J + 1``, and the pump delivers from ``J + 1``. The amnesia
        rule still holds (the log and the promises were lost); a restarted replica skips the
        snapshot fetch and catches up the log from ``J + 1``, and fetches a snapshot only if
        the leader's log no longer holds ``J + 1`` (it finds its log overrun, rejoin Rule 4).
        On re-attached regions the argument is ignored (the regions' applied index wins).
Rule 7: ``_check()`` asserts the invariants that hold whenever the role mutex is free (the
        simulator runs it between steps); it only reads, so a ``python -O`` run is the same run.
Rule 8: ``pause(announce=False)`` is silent, as a stopped process: it does not clear the
        ``leading`` word, so peers must detect the silence; ``pause()`` steps aside first
        (cooperative: peers replace it within ``candidate_dead_after_us``). ``resume`` sets the
        idle word back under the role mutex, and only while neither leading nor campaigning.
Rule 9: ``start_pause_relay(fifo_fd)`` reads the server's control FIFO through a native
        ``PauseRelay`` that this replica's native beat follows (native_beat Rule 8): a pause
        line silences the replica before the interpreter runs ``pause`` itself. None (nothing
        started) without a native beat: the caller reads the FIFO itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from consensus import constants as c
from consensus import ctrl as ctrl_mod
from consensus import log as log_mod
from consensus.config import ReplicaConfig
from consensus.election import NS_PER_US, Background
from consensus.errors import ConsensusError, NotLeader, ReplicaStopped
from consensus.fabric.base import Fabric
from consensus.native_beat import (
    NativeBeat,
    PauseRelay,
    background_priority,
    raise_thread_priority,
)
from consensus.registry.base import Registry
from consensus.rejoin import RecoveryStatus, Rejoin, SnapshotPort
from consensus.replication import Replicator
from consensus.runtime import Activity, RealRuntime, Runtime
from consensus.state import (
    LEADING_CAMPAIGN,
    LEADING_YES,
    LOGGER,
    PHASE_CATCH_UP,
    OnCommit,
    OnError,
    OnLeaderChange,
    OnPhase,
    Peer,
    ReplicaState,
)


class Replica:
    """A Mu replica. See the package docstring and docs/consensus.md for the API contract."""

    def __init__(
        self,
        config: ReplicaConfig,
        fabric: Fabric,
        registry: Registry,
        runtime: Runtime | None = None,
        on_commit: OnCommit | None = None,
        on_leader_change: OnLeaderChange | None = None,
        on_error: OnError | None = None,
        snapshots: SnapshotPort | None = None,
        initial_applied: int = 0,
        on_phase: OnPhase | None = None,
    ) -> None:
        if fabric.replica_id != config.replica_id:
            raise ValueError(f"fabric endpoint is replica {fabric.replica_id}, config says "
                             f"{config.replica_id}")
        self.config = config
        self.fabric = fabric
        self.registry = registry
        self.runtime: Runtime = runtime if runtime is not None else RealRuntime()
        self._on_commit = on_commit
        self._on_leader_change = on_leader_change
        self._on_error = on_error
        self._snapshots = snapshots
        self._on_phase = on_phase  # election milestones (benchmarks' per-phase breakdown)
        if initial_applied < 0:
            raise ValueError(f"initial_applied {initial_applied} is negative")
        self._initial_applied = initial_applied
        self._rejoin: Rejoin | None = None
        self._state: ReplicaState | None = None
        self._replicator: Replicator | None = None
        self._background: Background | None = None
        self._activities: list[Activity] = []
        self._paused_before_start = False
        self.reattached = False

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Rule 1. Raises the fabric's/registry's errors if a peer cannot be reached in time."""
        assert self._state is None, "start() called twice"
        cfg = self.config
        layout = log_mod.LogLayout.create(cfg.log_slots, cfg.payload_size_max)
        ctrl_layout = ctrl_mod.CtrlLayout(len(cfg.members))
        log = self.fabric.register("log", layout.region_bytes)
        ctrl = self.fabric.register("ctrl", ctrl_layout.region_bytes)
        state = ReplicaState(cfg, self.fabric, self.runtime, log, ctrl)
        state.paused = self._paused_before_start
        self.reattached = state.word(ctrl_mod.MAGIC_OFFSET) == ctrl_mod.MAGIC
        if not self.reattached:
            ctrl.buf[:] = bytes(len(ctrl.buf))
            log.buf[: log_mod.HEADER_BYTES] = bytes(log_mod.HEADER_BYTES)
            state.set_word(ctrl_mod.MAGIC_OFFSET, ctrl_mod.MAGIC)
            # Rule 6: the application restored its state up to ``initial_applied`` (from disk).
            state.set_word(ctrl_mod.APPLIED_OFFSET, self._initial_applied)
            log_mod.U64.pack_into(log.buf, log_mod.FIRST_UNDECIDED_OFFSET,
                                  self._initial_applied + 1)
        state.heartbeat = state.word(ctrl_mod.HEARTBEAT_OFFSET)
        was_amnesiac = bool(state.word(ctrl_mod.AMNESIAC_OFFSET))  # ctrl Rules 5-6: a recovery
        was_recovering = bool(state.word(ctrl_mod.RECOVERING_OFFSET))  # the crash interrupted
        state.set_word(ctrl_mod.LEADING_OFFSET, 0)
        if isinstance(self.runtime, RealRuntime):  # Rule 4; the simulator keeps its own beat
            state.native_beat = NativeBeat.start(ctrl.buf, ctrl_mod.HEARTBEAT_OFFSET)
            state.config = self.config = self._native_timings(state.native_beat)
        for peer in cfg.peers:
            ctrl.grant_write(peer)
        for peer in cfg.peers:
            state.peers[peer] = Peer(
                peer, cfg.position(peer),
                self.fabric.connect(peer, "log", cfg.connect_timeout_s),
                self.fabric.connect(peer, "ctrl", cfg.connect_timeout_s))
        ran_before = self._count_incarnation(state) > 0
        self._state = state
        state.on_error = self._on_error
        state.on_phase = self._on_phase
        background = Background(state, self._on_leader_change)
        from consensus.pump import Pump

        pump = Pump(state, self._on_commit)
        rejoin = Rejoin(state, self._snapshots, pump)
        pump.rejoin = background.rejoin = self._rejoin = rejoin
        if not self.reattached and ran_before:
            local = self._initial_applied > 0 and self._snapshots is not None
            reason = (f"restarted on fresh memory with local state at index "
                      f"{self._initial_applied}" if local else "restarted on fresh memory")
            rejoin.start(reason, amnesiac=True, local=local)
        elif was_amnesiac or was_recovering:
            rejoin.start("re-attached during a recovery", amnesiac=was_amnesiac)
        self._replicator = Replicator(state, pump)
        self._pump, self._background = pump, background  # for inspection (tests, debugging)
        spawn = self.runtime.spawn
        rid = cfg.replica_id
        self._activities = [
            spawn(f"heartbeat-{rid}", self._heartbeat),
            spawn(f"background-{rid}", self._background_target(background)),
            spawn(f"pump-{rid}", pump.run),
        ]
        LOGGER.info("replica %d started (%s)", rid, "re-attached" if self.reattached else "fresh")

    def _background_target(self, background: Background) -> Callable[[], None]:
        """Rule 4: with the real-time native beat, the background activity (scanner, election)
        runs at ``BACKGROUND_RT_PRIORITY`` too (``MU_BACKGROUND_RT=0`` keeps it normal)."""
        state = self._require()
        beat = state.native_beat
        priority = background_priority()
        if beat is None or not beat.realtime or not priority:
            return background.run

        def run() -> None:
            raise_thread_priority(priority, f"replica {state.replica_id}'s background thread")
            background.run()

        return run

    def _native_timings(self, beat: NativeBeat | None) -> ReplicaConfig:
        """Rule 4: the shorter dead-after threshold when the beat is GIL-free and real-time."""
        cfg = self.config
        if beat is None or not beat.realtime:
            if beat is not None:
                LOGGER.warning("replica %d: native heartbeat without real-time priority (not "
                               "permitted): keeping dead_after_us=%d", cfg.replica_id,
                               cfg.dead_after_us)
            return cfg
        if cfg.dead_after_us != c.DEAD_AFTER_US:
            return cfg  # the deployment chose its own threshold
        # A slower scan keeps the config's own relation: silence is judged over at least one
        # capped gap and one (fast) scan after it. The Python heartbeat's period does not count:
        # with the native beat it only refreshes the token, the C thread moves the counter.
        dead_after_us = max(c.NATIVE_DEAD_AFTER_US, cfg.scan_gap_cap_us + cfg.scan_fast_us)
        LOGGER.info("replica %d: native real-time heartbeat; leaders are dead after %d us of "
                    "silence", cfg.replica_id, dead_after_us)
        return dataclasses.replace(cfg, dead_after_us=dead_after_us)

    def _count_incarnation(self, state: ReplicaState) -> int:
        """How many times this replica started before in this cluster, counted in the registry
        (which outlives processes): 0 for a first boot. A replica that ran before may have
        promised or accepted entries it no longer holds: on fresh regions it rejoins amnesiac
        (Rule 2) and never reuses a permission request number (ctrl Rule 3)."""
        cfg = self.config
        started_key = f"consensus/{cfg.replica_id}/started"
        started = self.registry.lookup(started_key)
        before = parse_incarnation(started)
        self.registry.publish(started_key, str(before + 1).encode())
        if not self.reattached and before:
            state.set_word(ctrl_mod.MY_REQUEST_OFFSET,
                           ctrl_mod.request_floor(cfg.replica_id, before + 1))
        return before

    def stop(self) -> None:
        """Rule 5: step down, stop every activity and wait for it (bounded)."""
        state = self._state
        if state is None or state.stopping:
            return
        state.stopping = True
        with state.role:
            state.step_down_locked("stopping")
        for activity in self._activities:
            activity.join(c.STOP_JOIN_TIMEOUT_S)
            if activity.is_alive():
                LOGGER.warning("replica %d: activity %s did not stop in %.1f s",
                               state.replica_id, activity.name, c.STOP_JOIN_TIMEOUT_S)
        if state.native_beat is not None:
            state.native_beat.stop()

    def pause(self, announce: bool = True) -> None:
        """Rule 3: behave as if stopped (before ``start``: start paused); Rule 8: ``announce``."""
        state = self._state
        if state is None:
            self._paused_before_start = True
            return
        if state.native_beat is not None:
            state.native_beat.enable(False)
        state.paused = True
        with state.role:
            leading_word = state.word(ctrl_mod.LEADING_OFFSET)
            state.step_down_locked("paused" if announce else "paused silently")
            if not announce:  # Rule 8: peers still see the old word and must notice the silence
                state.set_word(ctrl_mod.LEADING_OFFSET, leading_word)

    def start_pause_relay(self, fifo_fd: int) -> PauseRelay | None:
        """Rule 9: relay ``fifo_fd`` (non-blocking) through a C thread that holds this
        replica's native beat on a pause line; None without a native beat."""
        state = self._state
        if state is None or state.native_beat is None:
            return None
        relay = PauseRelay.start(fifo_fd)
        if relay is not None:
            state.native_beat.follow(relay)
        return relay

    def resume(self) -> None:
        """Rule 3: rejoin as a follower."""
        state = self._state
        if state is None:
            self._paused_before_start = False
            return
        with state.role:  # Rule 8: a silent pause left the old word
            if not state.leading and not state.campaigning:
                state.set_word(ctrl_mod.LEADING_OFFSET, state.idle_leading_word)
        state.resumed = True
        state.paused = False

    # --- proposals ----------------------------------------------------------------------------
    def propose(self, payload: bytes, timeout_s: float = c.PROPOSE_TIMEOUT_S_DEFAULT) -> int:
        """Replicate ``payload``; return its log index once a majority holds it.

        Raises ``NotLeader`` (with the leader id when known), ``ProposalTimeout`` (log full for
        ``timeout_s``), ``ReplicaStopped``; ``ValueError`` for a payload over the size limit.
        """
        replicator = self._replicator
        if replicator is None:
            raise ReplicaStopped(f"replica {self.config.replica_id} is not started")
        return replicator.propose(payload, timeout_s)

    def propose_many(
        self, payloads: Sequence[bytes], timeout_s: float = c.PROPOSE_TIMEOUT_S_DEFAULT
    ) -> list[int]:
        """Replicate ``payloads`` pipelined (batches of ``PROPOSALS_INFLIGHT_MAX``); return their
        indexes once all are committed. Same errors as ``propose``."""
        replicator = self._replicator
        if replicator is None:
            raise ReplicaStopped(f"replica {self.config.replica_id} is not started")
        return replicator.propose_many(payloads, timeout_s)

    # --- views --------------------------------------------------------------------------------
    def _require(self) -> ReplicaState:
        if self._state is None:
            raise ReplicaStopped(f"replica {self.config.replica_id} is not started")
        return self._state

    @property
    def replica_id(self) -> int:
        return self.config.replica_id

    @property
    def is_leader(self) -> bool:
        return self._state is not None and self._state.leading

    @property
    def leader_id(self) -> int | None:
        """This replica's id while it leads, else the leader it follows (None if unknown)."""
        return None if self._state is None else self._state.leader_hint()

    @property
    def leader_suspected(self) -> bool:
        """The leader this replica follows has been silent for a few beats: it may be gone
        (election Rule 10). False while leading, with no leader known, or before ``start``."""
        background = self._background
        return background is not None and background.leader_suspected()

    @property
    def commit_index(self) -> int:
        """The leader's commit index (on a follower: 0 until it leads; see applied_index)."""
        return 0 if self._state is None else self._state.commit_index

    @property
    def applied_index(self) -> int:
        """The highest index delivered to ``on_commit`` on this replica."""
        return 0 if self._state is None else self._state.applied

    @property
    def error(self) -> ConsensusError | None:
        """The error that stopped this replica from taking part (``LogOverrun``...), if any."""
        return None if self._state is None else self._state.failure

    @property
    def recovery(self) -> RecoveryStatus | None:
        """The rejoin in progress (snapshot fetch or log catch-up), or None once caught up."""
        return None if self._rejoin is None else self._rejoin.status()

    @property
    def last_recovery(self) -> RecoveryStatus | None:
        """The latest completed rejoin (phase ``done``, its total time), or None."""
        return None if self._rejoin is None else self._rejoin.last

    @property
    def is_paused(self) -> bool:
        return self._state is not None and self._state.paused

    def check_leader(self) -> None:
        """Raise ``NotLeader`` unless this replica currently leads."""
        state = self._require()
        if not state.leading:
            raise NotLeader(state.leader_hint())

    # --- invariants ---------------------------------------------------------------------------
    def _check(self) -> bool:
        """Rule 7: assert this replica's invariants; False (nothing checked) while the role
        mutex is held or before ``start``. Cost: a few local reads, no fabric operation."""
        state = self._state
        if state is None or state.role.locked():
            return False
        leading_word = state.word(ctrl_mod.LEADING_OFFSET)
        assert not (state.leading and state.campaigning), "leading and campaigning at once"
        if state.leading:
            self._check_leader(state, leading_word)
        elif state.campaigning:
            assert leading_word == LEADING_CAMPAIGN, f"campaigning, leading word {leading_word}"
        else:
            assert leading_word == state.idle_leading_word, (
                f"idle, leading word {leading_word}, expected {state.idle_leading_word}")
            assert not state.followers, "followers while not leading"
        assert state.amnesiac == bool(state.word(ctrl_mod.AMNESIAC_OFFSET)), "amnesiac word"
        needs_snapshot = state.recovery is not None and state.recovery.phase != PHASE_CATCH_UP
        assert needs_snapshot == bool(state.word(ctrl_mod.RECOVERING_OFFSET)), "recovering word"
        if state.amnesiac:
            assert state.recovery is not None, "amnesiac without a recovery in progress"
        if state.recovery is not None:
            assert not state.leading and not state.campaigning, "a recovering replica leads"
        self._check_pump(state)
        return True

    def _check_leader(self, state: ReplicaState, leading_word: int) -> None:
        assert leading_word == LEADING_YES, f"leading, leading word {leading_word}"
        assert state.commit_index == state.next_index - 1, (
            f"commit index {state.commit_index}, next index {state.next_index}")
        assert state.holder == state.replica_id, f"leading, holder {state.holder}"
        assert not state.paused and not state.stopping, "leading while paused or stopping"
        assert state.failure is None, "leading after a failure"
        ids = [peer.replica_id for peer in state.followers]
        assert len(set(ids)) == len(ids), f"followers {ids} repeat"
        for peer in state.followers:
            assert state.peers.get(peer.replica_id) is peer, f"follower {peer} is no peer"
        assert self._pump.applied <= state.commit_index, (
            f"applied {self._pump.applied} beyond commit {state.commit_index}")

    def _check_pump(self, state: ReplicaState) -> None:
        pump = self._pump
        recovery = state.recovery
        if pump.lock.locked():
            return
        published = state.applied
        if recovery is None or recovery.phase == PHASE_CATCH_UP:
            assert published == pump.applied, (
                f"published applied {published}, delivered {pump.applied}")
        else:
            assert published >= pump.applied, (
                f"published applied {published} below delivered {pump.applied}")
        if recovery is not None and recovery.phase == PHASE_CATCH_UP:
            assert pump.applied >= recovery.snapshot_index, (
                f"catching up at {pump.applied} below the snapshot {recovery.snapshot_index}")
        first_undecided = log_mod.U64.unpack_from(state.log_buf,
                                                  log_mod.FIRST_UNDECIDED_OFFSET)[0]
        assert first_undecided == published + 1, (
            f"first undecided {first_undecided}, applied {published}")

    # --- heartbeat activity -------------------------------------------------------------------
    def _heartbeat(self) -> None:
        """Rule 4."""
        state = self._require()
        runtime = self.runtime
        interval_s = self.config.heartbeat_interval_us / 1e6
        if state.native_beat is not None:  # Rule 4: the C thread beats; this refreshes the token
            interval_s = max(interval_s, c.NATIVE_TOKEN_REFRESH_US / 1e6)
        stuck_ns = self.config.fate_sharing_stuck_us * NS_PER_US
        seen_entered = -1
        since_ns = runtime.now_ns()
        was_stuck = False
        stale_seen = 0
        while not state.stopping:
            now = runtime.now_ns()
            entered = state.propose_entered
            busy = entered != state.propose_left
            if entered != seen_entered or not busy:
                seen_entered = entered
                since_ns = now
            stuck = busy and now - since_ns >= stuck_ns
            if stuck != was_stuck:
                was_stuck = stuck
                LOGGER.warning("replica %d: %s", state.replica_id,
                               f"a proposal has been stuck for {(now - since_ns) // 1_000_000} "
                               "ms: heartbeat stopped (fate sharing)" if stuck else
                               "the stuck proposal moved on: heartbeat resumed")
            beating = not state.paused and state.failure is None and not stuck
            if beating:  # refreshes the native token before enabling: no stale beat at start
                state.bump_heartbeat()
            if state.native_beat is not None:
                state.native_beat.enable(beating)
                stale_seen = self._report_stale(state.native_beat, stale_seen)
            runtime.sleep(interval_s)

    def _report_stale(self, beat: NativeBeat, seen: int) -> int:
        """Log native beats withheld because this interpreter ran too late to refresh the token
        (native_beat Rule 1): peers may have judged this replica dead meanwhile."""
        stale = beat.stale
        if stale != seen:
            LOGGER.warning("replica %d: the interpreter did not run for over %d ms: %d native "
                           "heartbeats withheld (fate sharing)", self.config.replica_id,
                           c.NATIVE_TOKEN_TTL_US // 1000, stale - seen)
        return stale


def parse_incarnation(value: bytes | None) -> int:
    """How many times a replica started before, from its registry ``started`` key (an older
    version wrote ``1``; anything unreadable counts as one start)."""
    if value is None:
        return 0
    try:
        return max(1, int(value))
    except ValueError:
        return 1
