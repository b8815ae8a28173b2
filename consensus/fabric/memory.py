"""An in-process fabric: every replica of a cluster lives in one Python process and regions are
``bytearray``s. Same semantics as the shared-memory fabric (see ``consensus.fabric.base``), without
processes: for unit tests, and as the substrate of the simulator's fabric.

Rule 1: one ``MemoryNetwork`` holds the regions of a whole cluster; each replica gets its own
        ``MemoryFabric`` endpoint from it.
Rule 2: permission check and copy happen under the region's lock, so a revoke that has taken the
        lock
        and returned is never followed by a write of the revoked peer (base Rule 4).
Rule 3: a region survives its replica's endpoint being closed (as shared memory survives a killed
        process); ``MemoryNetwork.close`` drops them all.
Rule 4: ``MemoryNetwork.wipe(owner)`` models a restart on fresh memory: the owner's regions are
        closed (handles on them raise ``RegionClosed``) and the next ``register`` creates new ones.
"""

from __future__ import annotations

import threading
import time

from consensus.fabric.base import (
    Buffer,
    Completion,
    FabricError,
    ImmediateCompletions,
    RegionClosed,
    ReplicaIdT,
    UnknownPeer,
    WriteRejected,
    check_range,
)

CONNECT_POLL_INTERVAL_S = 0.001


class MemoryRegion:
    """A region and its access state; the owner's view (``LocalRegion``)."""

    def __init__(self, owner: ReplicaIdT, name: str, size: int) -> None:
        if size <= 0:
            raise ValueError(f"region {name!r}: size must be positive, got {size}")
        self.owner = owner
        self.name = name
        self.size = size
        self.memory = bytearray(size)
        self.buf = memoryview(self.memory)
        self.lock = threading.Lock()
        self._writers: set[ReplicaIdT] = set()
        self.closed = False

    def grant_write(self, peer: ReplicaIdT) -> None:
        with self.lock:
            self._writers.add(peer)

    def revoke_write(self, peer: ReplicaIdT) -> None:
        with self.lock:
            self._writers.discard(peer)

    def writers(self) -> frozenset[ReplicaIdT]:
        with self.lock:
            return frozenset(self._writers)

    def may_write(self, peer: ReplicaIdT) -> bool:
        """Caller holds ``lock``."""
        return peer in self._writers


class MemoryRemote:
    """``writer``'s handle on a ``MemoryRegion`` (``RemoteRegion``)."""

    def __init__(self, writer: ReplicaIdT, region: MemoryRegion) -> None:
        self.writer = writer
        self.region = region
        self.owner = region.owner
        self.name = region.name
        self.size = region.size

    def write(self, offset: int, data: Buffer) -> None:
        region = self.region
        length = len(data)
        check_range(region.name, region.size, offset, length)
        with region.lock:
            if region.closed:
                raise RegionClosed(f"region {region.name!r} of replica {region.owner} is closed")
            if not region.may_write(self.writer):
                raise WriteRejected(
                    f"replica {self.writer} may not write region {region.name!r} "
                    f"of replica {region.owner}"
                )
            region.memory[offset : offset + length] = data

    def read(self, offset: int, length: int) -> bytes:
        check_range(self.region.name, self.region.size, offset, length)
        if self.region.closed:
            raise RegionClosed(f"region {self.region.name!r} of replica {self.owner} is closed")
        return bytes(self.region.memory[offset : offset + length])

    def read_into(self, offset: int, out: memoryview) -> None:
        check_range(self.region.name, self.region.size, offset, len(out))
        if self.region.closed:
            raise RegionClosed(f"region {self.region.name!r} of replica {self.owner} is closed")
        out[:] = self.region.buf[offset : offset + len(out)]


class MemoryNetwork:
    """All regions of one in-process cluster."""

    def __init__(self) -> None:
        self._regions: dict[tuple[ReplicaIdT, str], MemoryRegion] = {}
        self._lock = threading.Lock()

    def endpoint(self, replica_id: ReplicaIdT) -> MemoryFabric:
        return MemoryFabric(self, replica_id)

    def region(self, owner: ReplicaIdT, name: str) -> MemoryRegion | None:
        with self._lock:
            return self._regions.get((owner, name))

    def create(self, owner: ReplicaIdT, name: str, size: int) -> MemoryRegion:
        with self._lock:
            existing = self._regions.get((owner, name))
            if existing is not None and not existing.closed:
                if existing.size != size:
                    raise FabricError(
                        f"region {name!r} of replica {owner} exists with size {existing.size}, "
                        f"asked for {size}"
                    )
                return existing
            region = MemoryRegion(owner, name, size)
            self._regions[(owner, name)] = region
            return region

    def wipe(self, owner: ReplicaIdT) -> None:
        """Rule 4."""
        with self._lock:
            for (region_owner, _), region in self._regions.items():
                if region_owner == owner:
                    with region.lock:
                        region.closed = True

    def forget(self, owner: ReplicaIdT) -> None:
        """Drop the owner's closed regions from the lookup (``region`` returns None until the
        next ``register``), as a restarted process's unlinked segments vanish from the
        registry. Handles already open keep raising ``RegionClosed``."""
        with self._lock:
            for key in [k for k, r in self._regions.items() if k[0] == owner and r.closed]:
                del self._regions[key]

    def close(self) -> None:
        with self._lock:
            for region in self._regions.values():
                with region.lock:
                    region.closed = True
            self._regions.clear()


class MemoryFabric(ImmediateCompletions):
    """One replica's endpoint on a ``MemoryNetwork`` (``Fabric``)."""

    def __init__(self, network: MemoryNetwork, replica_id: ReplicaIdT) -> None:
        self.network = network
        self.replica_id = replica_id
        self._completions: list[Completion] = []
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RegionClosed(f"fabric endpoint of replica {self.replica_id} is closed")

    def register(self, name: str, size: int) -> MemoryRegion:
        self._check_open()
        return self.network.create(self.replica_id, name, size)

    def connect(self, owner: ReplicaIdT, name: str, timeout_s: float) -> MemoryRemote:
        self._check_open()
        deadline = time.monotonic() + timeout_s
        while True:
            region = self.network.region(owner, name)
            if region is not None and not region.closed:
                return MemoryRemote(self.replica_id, region)
            if time.monotonic() >= deadline:
                raise UnknownPeer(f"replica {owner} has no region {name!r} after {timeout_s} s")
            time.sleep(CONNECT_POLL_INTERVAL_S)

    def close(self) -> None:
        self._closed = True
