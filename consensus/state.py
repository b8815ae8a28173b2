"""The state one replica's activities share, and the few transitions every activity needs.

Rule 1: the leader fields (``leading``, ``campaigning``, ``proposal``, ``next_index``,
        ``commit_index``, ``followers``, ``request``, ``recycle_limit``) change only under
        ``role`` (the role mutex); the fast path reads them under it too.
Rule 2: this replica's own log is written locally only under ``role`` and only while
        ``leading`` (design Rule 5): stepping down happens under ``role``, so a local append and
        a permission change never interleave.
Rule 3: ``step_down_locked`` is the one way to stop leading or campaigning; it clears the ctrl
        ``leading`` word so peers stop following this replica.
Rule 4: activities read ``stopping`` and ``paused`` at every loop turn and exit (or idle) at once.
Rule 5: ``recovery`` is set while the replica rejoins (``rejoin``): a ``LogOverrun`` passed to
        ``fail`` starts a recovery instead of failing when a snapshot port is wired
        (``on_overrun``); meanwhile the ctrl ``leading`` word reads ``LEADING_RECOVERING`` (phase
        ``snapshot``) or ``LEADING_CATCHING_UP`` (``step_down_locked`` writes
        ``idle_leading_word``), so peers neither wait for nor defer to this replica.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from consensus import ctrl as ctrl_layout_mod
from consensus import log as log_mod
from consensus.config import ReplicaConfig
from consensus.errors import ConsensusError, LogOverrun
from consensus.fabric.base import Fabric, LocalRegion, RemoteRegion
from consensus.native_beat import NativeBeat
from consensus.runtime import Runtime

LOGGER = logging.getLogger("consensus")

LEADING_NO = 0
LEADING_CAMPAIGN = 1  # asking for permissions / running prepare
LEADING_YES = 2  # serving proposals
LEADING_RECOVERING = 3  # needs a snapshot (rejoin Rule 2): not a candidate, not waited for
LEADING_CATCHING_UP = 4  # snapshot index published: not a candidate, but waited for by recycling

OnCommit = Callable[[int, bytes], None]
OnLeaderChange = Callable[[int | None, bool], None]
OnError = Callable[[ConsensusError], None]
OnOverrun = Callable[[LogOverrun], bool]
# Election milestones for benchmarks (``Replica(on_phase=...)``): (phase, runtime now_ns), phase
# one of PHASES; called on the background activity, so it must return at once.
OnPhase = Callable[[str, int], None]
PHASE_SUSPECT = "suspect"  # a peer whose leading word says it leads was just judged dead
PHASE_CAMPAIGN = "campaign"  # this replica asks for permissions
PHASE_GRANTED = "granted"  # a majority answered this replica's request
PHASE_LEADING = "leading"  # prepare done: this replica serves proposals
PHASES = (PHASE_SUSPECT, PHASE_CAMPAIGN, PHASE_GRANTED, PHASE_LEADING)

PHASE_SNAPSHOT = "snapshot"  # asking peers for a snapshot (its index not yet known)
PHASE_INSTALL = "install"  # the snapshot's index is published; receiving and installing it
PHASE_CATCH_UP = "catch-up"  # snapshot installed; delivering the log up to the commit index


@dataclass(slots=True)
class Recovery:
    """Progress of one rejoin (Rule 5); written by the pump activity, read by anyone."""

    reason: str
    started_ns: int
    amnesiac: bool  # started on fresh memory (rejoin Rule 1), not only behind the log
    phase: str = PHASE_SNAPSHOT
    snapshot_index: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    attempts: int = 0
    provider: int = 0  # the peer the snapshot came (or comes) from
    local: bool = False  # the application restored its state from disk (rejoin Rule 6)


@dataclass(slots=True)
class Peer:
    """Another member as seen by this replica: its position in ctrl arrays and its regions."""

    replica_id: int
    position: int
    log: RemoteRegion
    ctrl: RemoteRegion


class ReplicaState:
    """Everything the activities of one replica share (see the module rules)."""

    def __init__(
        self, config: ReplicaConfig, fabric: Fabric, runtime: Runtime, log: LocalRegion,
        ctrl: LocalRegion,
    ) -> None:
        self.config = config
        self.replica_id = config.replica_id
        self.position = config.position(config.replica_id)
        self.majority = config.majority
        self.layout = log_mod.LogLayout.create(config.log_slots, config.payload_size_max)
        self.ctrl_layout = ctrl_layout_mod.CtrlLayout(len(config.members))
        self.fabric = fabric
        self.runtime = runtime
        self.log = log
        self.ctrl = ctrl
        self.log_buf = log.buf
        self.ctrl_buf = ctrl.buf
        self.peers: dict[int, Peer] = {}
        self.role = runtime.mutex()
        self.pump_bell = runtime.signal()  # wakes a leader's idle pump (pump Rule 7)
        # lifecycle
        self.stopping = False
        self.paused = False
        self.resumed = False  # set by resume(); the background activity resets its detector
        self.failure: ConsensusError | None = None
        self.on_error: OnError | None = None
        self.failure_pending: ConsensusError | None = None  # found under role; fail() after it
        # rejoin (Rule 5; rejoin.py)
        self.recovery: Recovery | None = None
        self.amnesiac = False  # fresh memory, not yet reinstated as a voter (rejoin Rule 1)
        self.required_proposal: int | None = None  # rejoin Rule 1's bound, once known
        self.on_overrun: OnOverrun | None = None
        # background view (written by the background activity only)
        self.alive: frozenset[int] = frozenset()
        self.peer_leading: dict[int, int] = {}
        self.peer_holder: dict[int, int] = {}  # who holds each peer's log, as last scanned
        self.peer_applied: dict[int, int] = {}  # each peer's applied index, as last scanned
        self.leader_view: int | None = None
        # leader state (under role)
        self.leading = False
        self.campaigning = False
        self.proposal = 0
        self.next_index = 1
        self.commit_index = 0
        self.followers: list[Peer] = []
        self.excluded: set[int] = set()  # peers this leadership lost; asked again by upkeep
        self.requests: dict[int, int] = {}  # the request number last sent to each peer
        self.request = 0
        self.recycle_limit = 0
        # fate sharing: the fast path counts entries into / out of a proposal
        self.propose_entered = 0
        self.propose_left = 0
        self.heartbeat = 0
        self.native_beat: NativeBeat | None = None  # the GIL-free beat (replica Rule 4)
        self.on_phase: OnPhase | None = None  # election milestones, for benchmarks

    def phase(self, name: str) -> None:
        """Report an election milestone (``OnPhase``) to the benchmark hook, if any."""
        assert name in PHASES, name
        hook = self.on_phase
        if hook is not None:
            hook(name, self.runtime.now_ns())

    # --- ctrl words of this replica (local) -------------------------------------------------
    def word(self, offset: int) -> int:
        return int(ctrl_layout_mod.U64.unpack_from(self.ctrl_buf, offset)[0])

    def set_word(self, offset: int, value: int) -> None:
        assert value >= 0
        ctrl_layout_mod.U64.pack_into(self.ctrl_buf, offset, value)

    @property
    def holder(self) -> int:
        """Who holds write permission on this replica's log (0: nobody)."""
        return self.word(ctrl_layout_mod.HOLDER_OFFSET)

    @property
    def applied(self) -> int:
        return self.word(ctrl_layout_mod.APPLIED_OFFSET)

    def bump_heartbeat(self) -> None:
        if self.native_beat is not None:  # the C thread owns the word; Python proves liveness
            self.native_beat.touch()
            return
        self.heartbeat += 1
        ctrl_layout_mod.U64.pack_into(self.ctrl_buf, ctrl_layout_mod.HEARTBEAT_OFFSET,
                                      self.heartbeat)

    @property
    def idle_leading_word(self) -> int:
        """The ctrl ``leading`` word of a replica that neither leads nor campaigns (Rule 5)."""
        recovery = self.recovery
        if recovery is None:
            return LEADING_NO
        return LEADING_RECOVERING if recovery.phase == PHASE_SNAPSHOT else LEADING_CATCHING_UP

    def leader_hint(self) -> int | None:
        """The leader as far as this replica knows (for ``NotLeader``)."""
        if self.leading:
            return self.replica_id
        return self.leader_view if self.leader_view != self.replica_id else None

    # --- transitions -------------------------------------------------------------------------
    def step_down_locked(self, why: str) -> None:
        """Stop leading/campaigning (Rule 3). Caller holds ``role``."""
        if self.leading or self.campaigning:
            LOGGER.info("replica %d steps down: %s", self.replica_id, why)
        self.leading = False
        self.campaigning = False
        self.followers = []
        self.excluded = set()
        self.recycle_limit = 0
        self.set_word(ctrl_layout_mod.LEADING_OFFSET, self.idle_leading_word)
        self.pump_bell.set()  # the pump polls again as a follower's
        assert not self.leading and not self.followers

    def fail(self, error: ConsensusError) -> None:
        """Record an error that stops this replica from taking part (LogOverrun, a bad callback).
        A ``LogOverrun`` starts a recovery instead when a snapshot port is wired (Rule 5)."""
        recover = self.on_overrun
        if isinstance(error, LogOverrun) and recover is not None and recover(error):
            return
        first = self.failure is None
        if first:
            self.failure = error
            LOGGER.error("replica %d stops taking part: %s", self.replica_id, error)
        with self.role:
            self.step_down_locked(str(error))
        if first and self.on_error is not None:
            self.on_error(error)
