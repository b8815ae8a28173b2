"""consensus.fabric: one-sided memory fabrics (emulated shared memory, pyverbs RDMA, in-process).

Rule 1: ``open_fabric(kind, replica_id, cluster_id, registry, reattach=False)`` is the one way to
        get a cross-process endpoint: ``"shm"`` (POSIX shared memory, every replica its own
        process on one host) or ``"verbs"`` (RDMA through pyverbs). Any other kind is a
        ``ValueError`` listing the choices; the in-process fabric (``consensus.fabric.memory``) is
        not offered, as it cannot cross processes.
Rule 2: a fabric's module is imported only when chosen, so a host without pyverbs runs ``shm``.
Rule 3: every error a fabric raises on purpose is a ``FabricError`` (see ``base``); the semantics
        all fabrics share are the Rules of ``consensus.fabric.base``. Design: docs/fabric.md.
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
