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
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from consensus import ctrl as ctrl_layout_mod
from consensus import log as log_mod
from consensus.config import ReplicaConfig
from consensus.errors import ConsensusError
from consensus.fabric.base import Fabric, LocalRegion, RemoteRegion
from consensus.runtime import Runtime

LOGGER = logging.getLogger("consensus")

LEADING_NO = 0
LEADING_CAMPAIGN = 1  # asking for permissions / running prepare
LEADING_YES = 2  # serving proposals

OnCommit = Callable[[int, bytes], None]
OnLeaderChange = Callable[[int | None, bool], None]
OnError = Callable[[ConsensusError], None]


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
        # background view (written by the background activity only)
        self.alive: frozenset[int] = frozenset()
        self.peer_leading: dict[int, int] = {}
        self.peer_holder: dict[int, int] = {}  # who holds each peer's log, as last scanned
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
        self.heartbeat += 1
        ctrl_layout_mod.U64.pack_into(self.ctrl_buf, ctrl_layout_mod.HEARTBEAT_OFFSET,
                                      self.heartbeat)

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
        self.set_word(ctrl_layout_mod.LEADING_OFFSET, LEADING_NO)
        self.pump_bell.set()  # the pump polls again as a follower's
        assert not self.leading and not self.followers

    def fail(self, error: ConsensusError) -> None:
        """Record an error that stops this replica from taking part (LogOverrun, a bad callback)."""
        first = self.failure is None
        if first:
            self.failure = error
            LOGGER.error("replica %d stops taking part: %s", self.replica_id, error)
        with self.role:
            self.step_down_locked(str(error))
        if first and self.on_error is not None:
            self.on_error(error)
