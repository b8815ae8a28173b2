"""``ReplicaConfig``: the validated, frozen settings of one replica.

Rule 1: a config that could not work (bad ids, a payload too large, timings out of order) raises
        ``ValueError`` naming the field, at construction time, never later in a background thread.
Rule 2: timings are in microseconds (``_us``) and have the defaults of ``consensus.constants``;
        the simulator passes the same defaults, as its time is simulated.
Rule 3: ``candidate_dead_after_us`` is clamped into ``(scan_gap_cap_us, dead_after_us]``, so a
        config that only sets ``dead_after_us`` stays consistent.
Rule 4: ``scan_fast_interval_us`` is 0 (off) or in ``(0, scan_interval_us]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from consensus import constants as c


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    replica_id: int
    members: tuple[int, ...]
    payload_size_max: int = c.PAYLOAD_BYTES_DEFAULT
    log_slots: int = c.LOG_SLOTS_DEFAULT
    heartbeat_interval_us: int = c.HEARTBEAT_INTERVAL_US
    scan_interval_us: int = c.SCAN_INTERVAL_US
    # Rule 4: the scan period while a peer's counter stood still in the last scan or no leader
    # is known (0: scan_interval_us always). Lets a process scan rarely while all is well and
    # still notice a silent leader, and answer a candidate, within a fraction of a millisecond.
    scan_fast_interval_us: int = 0
    dead_after_us: int = c.DEAD_AFTER_US
    candidate_dead_after_us: int = c.CANDIDATE_DEAD_AFTER_US
    scan_gap_cap_us: int = c.SCAN_GAP_CAP_US
    startup_grace_us: int = c.STARTUP_GRACE_US
    fate_sharing_stuck_us: int = c.FATE_SHARING_STUCK_US
    permission_wait_us: int = c.PERMISSION_WAIT_US
    commit_flush_idle_us: int = c.COMMIT_FLUSH_IDLE_US
    reconnect_interval_us: int = c.RECONNECT_INTERVAL_US  # election Rule 7
    rejoin_retry_us: int = c.REJOIN_RETRY_US  # rejoin: a recovery that found no usable peer
    pump_poll_us: int = 0  # 0: the pump spins, then backs off; > 0: it polls at this period
    connect_timeout_s: float = c.CONNECT_TIMEOUT_S_DEFAULT

    def __post_init__(self) -> None:
        members = tuple(self.members)
        if len(set(members)) != len(members):
            raise ValueError(f"members must be distinct, got {members}")
        if not c.MEMBERS_MIN <= len(members) <= c.MEMBERS_MAX:
            raise ValueError(
                f"members: {len(members)} replicas; need {c.MEMBERS_MIN}..{c.MEMBERS_MAX}")
        if any(not 0 < m <= c.REPLICA_ID_MAX for m in members):
            raise ValueError(f"member ids must be in 1..{c.REPLICA_ID_MAX}, got {members}")
        if self.replica_id not in members:
            raise ValueError(f"replica_id {self.replica_id} is not among the members {members}")
        object.__setattr__(self, "members", tuple(sorted(members)))
        if not 0 < self.payload_size_max <= c.PAYLOAD_BYTES_MAX:
            raise ValueError(f"payload_size_max must be in 1..{c.PAYLOAD_BYTES_MAX}")
        if not c.LOG_SLOTS_MIN <= self.log_slots <= c.LOG_SLOTS_MAX:
            raise ValueError(f"log_slots must be in {c.LOG_SLOTS_MIN}..{c.LOG_SLOTS_MAX}")
        if self.log_slots & (self.log_slots - 1):
            raise ValueError(f"log_slots must be a power of two, got {self.log_slots}")
        self._check_timings()

    def _check_timings(self) -> None:
        positive = ("heartbeat_interval_us", "scan_interval_us", "dead_after_us",
                    "scan_gap_cap_us", "fate_sharing_stuck_us", "permission_wait_us",
                    "reconnect_interval_us", "rejoin_retry_us")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not self.scan_interval_us <= self.scan_gap_cap_us < self.dead_after_us:
            raise ValueError("need scan_interval_us <= scan_gap_cap_us < dead_after_us")
        if not self.scan_gap_cap_us < self.candidate_dead_after_us <= self.dead_after_us:
            object.__setattr__(self, "candidate_dead_after_us",
                               max(min(self.candidate_dead_after_us, self.dead_after_us),
                                   self.scan_gap_cap_us + 1))
        if self.heartbeat_interval_us * 2 > self.dead_after_us:
            raise ValueError("dead_after_us must be at least twice heartbeat_interval_us")
        if not (self.scan_fast_interval_us == 0
                or 0 < self.scan_fast_interval_us <= self.scan_interval_us):
            raise ValueError("scan_fast_interval_us must be 0 (off) or in 1..scan_interval_us")
        if self.pump_poll_us < 0:
            raise ValueError("pump_poll_us must be 0 (adaptive) or positive")
        if self.connect_timeout_s <= 0:
            raise ValueError("connect_timeout_s must be positive")

    @property
    def scan_fast_us(self) -> int:
        """The scan period while something may be wrong (Rule 4)."""
        return self.scan_fast_interval_us or self.scan_interval_us

    @property
    def majority(self) -> int:
        """How many replicas (the leader included) must hold an entry for it to commit."""
        return len(self.members) // 2 + 1

    @property
    def peers(self) -> tuple[int, ...]:
        return tuple(m for m in self.members if m != self.replica_id)

    def position(self, replica_id: int) -> int:
        """Index of ``replica_id`` in the sorted member list (its slot in ctrl arrays)."""
        return self.members.index(replica_id)
