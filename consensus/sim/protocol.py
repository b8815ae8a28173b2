"""How the world builds a replica: the protocol under test behind one small adapter.

Rule 1: the default adapter builds the production ``consensus.Replica`` with a ``ReplicaConfig``
        whose timings are scaled for simulated time (``SIM_TIMINGS_US``); nothing else of the
        protocol is replaced or copied.
Rule 2: the replica gets the world's ``SnapshotPort`` (``spec.snapshots``): it rejoins by
        snapshot after a restart on fresh memory and whenever it finds its log overrun.
Rule 3: ``expected_errors`` are the exceptions ``propose`` may raise without that being a bug
        (not the leader, timed out): the client backs off and proposes a new payload; an entry
        whose proposal raised is never counted as acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from consensus.fabric.base import Fabric
from consensus.registry.base import Registry
from consensus.rejoin import SnapshotPort
from consensus.runtime import Runtime

OnCommit = Callable[[int, bytes], None]
OnLeaderChange = Callable[[int | None, bool], None]


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    replica_id: int
    members: tuple[int, ...]
    payload_bytes_max: int
    log_slots: int
    restarted: bool  # a new incarnation of a crashed replica (re-attaching, or fresh_memory)
    fresh_memory: bool = False  # its regions and application state were lost (rejoin by snapshot)
    snapshots: SnapshotPort | None = None  # the application's snapshot port (None: a bare log)


class ReplicaLike(Protocol):
    """The part of ``consensus.Replica``'s public API the simulator drives."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def error(self) -> Exception | None:
        """Why the replica stopped taking part (e.g. ``LogOverrun``), or ``None``."""

    def start(self) -> None: ...

    def propose(self, payload: bytes, timeout_s: float = ...) -> int: ...

    def propose_many(self, payloads: Sequence[bytes], timeout_s: float = ...) -> list[int]: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def stop(self) -> None: ...


class ReplicaFactory(Protocol):
    def __call__(
        self,
        spec: ReplicaSpec,
        fabric: Fabric,
        registry: Registry,
        runtime: Runtime,
        on_commit: OnCommit,
        on_leader_change: OnLeaderChange,
    ) -> ReplicaLike: ...


@dataclass(frozen=True, slots=True)
class ProtocolAdapter:
    name: str
    build: ReplicaFactory
    expected_errors: tuple[type[Exception], ...]


# The simulator runs the protocol's timings scaled down 4x (relations between them kept), so that
# a failure detection, a campaign and a catch-up fit in a few tens of simulated milliseconds.
SIM_TIMINGS_US: dict[str, int] = {
    "heartbeat_interval_us": 50,
    "scan_interval_us": 60,
    "dead_after_us": 2000,
    "scan_gap_cap_us": 250,
    "startup_grace_us": 5000,
    "fate_sharing_stuck_us": 5000,
    "permission_wait_us": 5000,
    "commit_flush_idle_us": 125,
    "reconnect_interval_us": 5000,
    "rejoin_retry_us": 1250,
}


def mu_protocol(simulated: bool = True) -> ProtocolAdapter:
    """The production Mu replica (``consensus.Replica``); with ``simulated``, the timings of
    ``SIM_TIMINGS_US``, else the production defaults."""
    from consensus import (
        LogOverrun,
        NotLeader,
        ProposalTimeout,
        Replica,
        ReplicaConfig,
        ReplicaStopped,
    )

    def build(
        spec: ReplicaSpec,
        fabric: Fabric,
        registry: Registry,
        runtime: Runtime,
        on_commit: OnCommit,
        on_leader_change: OnLeaderChange,
    ) -> ReplicaLike:
        config = ReplicaConfig(
            replica_id=spec.replica_id,
            members=spec.members,
            payload_size_max=spec.payload_bytes_max,
            log_slots=spec.log_slots,
            **(SIM_TIMINGS_US if simulated else {}),
        )
        return Replica(
            config,
            fabric,
            registry,
            runtime=runtime,
            on_commit=on_commit,
            on_leader_change=on_leader_change,
            snapshots=spec.snapshots,
        )

    return ProtocolAdapter("mu", build, (NotLeader, ProposalTimeout, ReplicaStopped, LogOverrun))
