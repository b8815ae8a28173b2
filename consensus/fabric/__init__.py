"""consensus.fabric: one-sided memory fabrics (emulated shared memory, pyverbs RDMA, in-process).

``open_fabric(kind, replica_id, cluster_id, registry, reattach=False)`` returns one replica's
endpoint: ``"shm"`` (POSIX shared memory, every replica its own process on one host) or
``"verbs"`` (RDMA through pyverbs; imported only when chosen). The in-process fabric
(``consensus.fabric.memory``) is not offered here: it cannot cross processes.
"""

from __future__ import annotations

from consensus.fabric.base import (
    FABRIC_NAMES,
    Completion,
    Fabric,
    FabricError,
    FabricUnavailable,
    LocalRegion,
    OutOfRange,
    RegionClosed,
    RemoteRegion,
    RevokeStalled,
    UnknownPeer,
    WriteRejected,
)
from consensus.registry.base import Registry


def open_fabric(
    kind: str, replica_id: int, cluster_id: str, registry: Registry, reattach: bool = False
) -> Fabric:
    """Open ``replica_id``'s endpoint on the fabric ``kind`` for cluster ``cluster_id``.

    ``reattach=True`` re-attaches the replica's surviving regions (a restart after a crash keeps
    its memory, as a host would); ``False`` replaces stale ones. Raises ``ValueError`` for an
    unknown kind and ``FabricUnavailable`` when the fabric cannot run here.
    """
    if kind == "shm":
        from consensus.fabric.shm import ShmFabric

        return ShmFabric(replica_id, cluster_id, registry, reattach)
    if kind == "verbs":
        from consensus.fabric.verbs import VerbsFabric

        return VerbsFabric(replica_id, cluster_id, registry, reattach)
    raise ValueError(f"unknown fabric {kind!r}; choose one of: {', '.join(FABRIC_NAMES)}")


__all__ = [
    "FABRIC_NAMES",
    "Completion",
    "Fabric",
    "FabricError",
    "FabricUnavailable",
    "LocalRegion",
    "OutOfRange",
    "RegionClosed",
    "RemoteRegion",
    "RevokeStalled",
    "UnknownPeer",
    "WriteRejected",
    "open_fabric",
]
