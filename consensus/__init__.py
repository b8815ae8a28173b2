"""consensus: Mu-style state machine replication over a one-sided memory fabric.

Public API (see docs/consensus.md)::

    replica = Replica(ReplicaConfig(replica_id=1, members=(1, 2, 3)), fabric, registry,
                      runtime=RealRuntime(), on_commit=..., on_leader_change=...)
    replica.start(); index = replica.propose(b"..."); replica.stop()

Rule 1: only the names below are public; everything else may change.
Rule 2: ``on_commit(index, payload)`` is called on every replica (leader included), from the
        replica's pump activity, in index order, once per index; indexes start at 1.
"""

from consensus.config import ReplicaConfig
from consensus.errors import (
    ConsensusError,
    LogOverrun,
    NotLeader,
    ProposalTimeout,
    ReplicaStopped,
)
from consensus.rejoin import RecoveryStatus, SnapshotPort, SnapshotUnavailable, Transfer
from consensus.replica import Replica
from consensus.runtime import RealRuntime, Runtime

__all__ = [
    "ConsensusError",
    "LogOverrun",
    "NotLeader",
    "ProposalTimeout",
    "RealRuntime",
    "RecoveryStatus",
    "Replica",
    "ReplicaConfig",
    "ReplicaStopped",
    "Runtime",
    "SnapshotPort",
    "SnapshotUnavailable",
    "Transfer",
]
