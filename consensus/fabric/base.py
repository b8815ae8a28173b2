"""The one-sided memory fabric: the only way the protocol touches another replica's memory.

Model (the RDMA model Mu is built on):

Rule 1: every replica *registers* local memory regions by name. The owner reads and writes its own
        region directly through ``LocalRegion.buf`` (a ``memoryview``); nobody is notified.
Rule 2: a replica *connects* to a peer's region by (owner id, name) and gets a ``RemoteRegion``.
        ``RemoteRegion.write`` and ``RemoteRegion.read`` are one-sided: they never run code in the
        owner's process, and they work while the owner is paused or busy.
Rule 3: reads are always allowed. A write lands only if the owner has granted the writer permission
        on that region (``LocalRegion.grant_write``). A write without permission raises
        ``WriteRejected`` and changes no byte of the region.
Rule 4: ``LocalRegion.revoke_write(peer)`` returns only once no write from ``peer`` can land any
        more: a write in flight either completed before the revoke returned or fails. This is
        what makes a deposed leader's writes harmless, and the protocol relies on it.
Rule 5: a write of ``n`` bytes is applied in increasing address order, so a reader that sees the
        last bytes of an entry (Mu's canary) written after the rest sees the whole entry. Writes
        from one writer to one region land in the order they were issued. The order is promised
        per byte: a large copy read while it is rewritten may mix the bytes of two writes within
        one word (memcpy here, as RDMA NICs), so readers check whole entries (log Rule 3) and
        small aligned words (log Rule 4), never words of a larger write in flight.
Rule 6: bad arguments (offset or length outside the region, unknown peer, closed region or fabric)
        raise ``FabricError`` subclasses with a message naming the region, never corrupt memory.

Completion model: ``write`` and ``read`` are synchronous. ``post_write`` queues a write and
``poll_completions`` reports finished ones in batches (as an RDMA completion queue does), so a
leader can start writes to every follower and then wait for a majority. The emulated fabrics may
complete a posted write immediately; callers must not assume either way.

Implementations: ``consensus.fabric.shm`` (POSIX shared memory, one OS process per replica, the
default on one host), ``consensus.fabric.verbs`` (pyverbs RDMA; tested on the fake device of
``consensus.fabric.fake_verbs``), ``consensus.sim.fabric`` (deterministic, in-process, used by the
simulator). ``open_fabric`` picks one by name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

ReplicaIdT = int

# Accepted as write payloads: anything exposing the buffer protocol as bytes.
Buffer = bytes | bytearray | memoryview


class FabricError(Exception):
    """Base class of every error the fabric raises on purpose."""


class WriteRejected(FabricError):
    """The owner of the region has not granted (or has revoked) write permission to this writer."""


class RegionClosed(FabricError):
    """The region (or the whole fabric) was closed, locally or by its owner's cluster shutdown."""


class OutOfRange(FabricError, ValueError):
    """An offset/length pair falls outside the region."""


class UnknownPeer(FabricError, LookupError):
    """No replica with that id is known, or it has no region of that name (yet)."""


class FabricUnavailable(FabricError):
    """The selected fabric cannot run on this machine (e.g. no RDMA device); the message says
    why."""


class RevokeStalled(FabricError):
    """``revoke_write`` could not confirm in time that the peer has no write in flight (the
    peer's process is stopped or starved in the middle of a write). The peer's permission is
    already withdrawn, so its next write fails; only the one write in flight may still land.
    Retry the revoke; do not grant anyone else until one succeeds."""


@dataclass(frozen=True, slots=True)
class Completion:
    """One finished posted operation: the caller's ``wr_id`` and the error, or ``None`` on
    success."""

    wr_id: int
    error: FabricError | None


@runtime_checkable
class LocalRegion(Protocol):
    """A region this replica owns. ``buf`` is its memory; the fabric's own bookkeeping is not in
    it."""

    name: str
    size: int
    buf: memoryview

    def grant_write(self, peer: ReplicaIdT) -> None:
        """Let ``peer`` write this region from now on (idempotent)."""

    def revoke_write(self, peer: ReplicaIdT) -> None:
        """Stop ``peer`` writing; on return no write of ``peer`` can land (Rule 4). Idempotent."""

    def writers(self) -> frozenset[ReplicaIdT]:
        """The peers currently allowed to write."""


@runtime_checkable
class RemoteRegion(Protocol):
    """A handle on a peer's region, obtained with ``Fabric.connect``."""

    owner: ReplicaIdT
    name: str
    size: int

    def write(self, offset: int, data: Buffer) -> None:
        """Copy ``data`` to ``offset``; raises ``WriteRejected`` without permission (no byte
        lands)."""

    def read(self, offset: int, length: int) -> bytes:
        """Return ``length`` bytes from ``offset``."""

    def read_into(self, offset: int, out: memoryview) -> None:
        """Fill ``out`` from ``offset`` (no allocation; for hot loops such as heartbeat scans)."""


class Fabric(Protocol):
    """A replica's endpoint on the fabric."""

    replica_id: ReplicaIdT

    def register(self, name: str, size: int) -> LocalRegion:
        """Create (or, for a restarted replica, re-attach) the local region ``name`` of ``size``
        bytes."""

    def connect(self, owner: ReplicaIdT, name: str, timeout_s: float) -> RemoteRegion:
        """Attach to ``owner``'s region ``name``, waiting up to ``timeout_s`` for it to appear."""

    def post_write(self, remote: RemoteRegion, offset: int, data: Buffer, wr_id: int) -> None:
        """Start a write; its outcome is reported once by ``poll_completions``."""

    def poll_completions(self, max_entries: int) -> list[Completion]:
        """Return up to ``max_entries`` finished posted operations (possibly none; never blocks)."""

    def close(self) -> None:
        """Release this endpoint's resources; further calls raise ``RegionClosed``."""


class ImmediateCompletions:
    """``post_write``/``poll_completions`` for emulated fabrics, whose writes finish at once: the
    write runs synchronously and its outcome is queued until polled, oldest first."""

    _completions: list[Completion]

    def _check_open(self) -> None:
        raise NotImplementedError

    def post_write(self, remote: RemoteRegion, offset: int, data: Buffer, wr_id: int) -> None:
        self._check_open()
        try:
            remote.write(offset, data)
        except FabricError as error:
            self._completions.append(Completion(wr_id, error))
        else:
            self._completions.append(Completion(wr_id, None))

    def poll_completions(self, max_entries: int) -> list[Completion]:
        done = self._completions[:max_entries]
        del self._completions[:max_entries]
        return done


def check_range(region_name: str, size: int, offset: int, length: int) -> None:
    """Raise ``OutOfRange`` unless ``[offset, offset + length)`` lies inside a region of
    ``size``."""
    if offset < 0 or length < 0 or offset + length > size:
        raise OutOfRange(
            f"region {region_name!r}: range [{offset}, {offset + length}) outside [0, {size})"
        )


FABRIC_NAMES: tuple[str, ...] = ("shm", "verbs")


def validate_members(replica_id: ReplicaIdT, members: Iterable[ReplicaIdT]) -> tuple[int, ...]:
    """Return the sorted member ids, checking that ``replica_id`` is one of them and ids are > 0."""
    ids = tuple(sorted(set(members)))
    if not ids or ids[0] <= 0:
        raise ValueError(f"replica ids must be positive integers, got {ids}")
    if replica_id not in ids:
        raise ValueError(f"replica id {replica_id} is not among the members {ids}")
    return ids
