"""The simulated replicas' application: a hash chain over the delivered payloads, with snapshots,
and the ``SnapshotPort`` that moves them between replicas through simulated time.

Rule 1: ``ChainApp`` is the replicated state machine: after index ``i`` its state is
        ``digest_i = blake2b(digest_{i-1} + payload_i)`` (``digest_0`` all zero). Every state it
        reaches (each delivery, each installed snapshot) is reported with its index, so the
        checkers can compare every replica's digest at every index (``DigestChecker``).
Rule 2: deliveries must extend the state by exactly one index (``index == app.index + 1``);
        anything else is reported, never applied.
Rule 3: a snapshot is ``MAGIC | index | digest | checksum``; ``install`` rejects a snapshot whose
        magic, length, index or checksum is wrong with ``SnapshotUnavailable`` and changes
        nothing then.
Rule 4: the app survives a plain crash (it lives in the same persistent memory as the regions
        the restart re-attaches) and is rolled back to the index the replica had published as
        applied (``rollback``); a crash on fresh memory loses it (the world builds a new one).
Rule 5: ``SimSnapshotPort.fetch`` copies the provider's *current* snapshot when the transfer
        starts, then receives it in ``chunks`` separated by simulated delays (``runtime.sleep``:
        switch points, so faults strike mid-transfer). A provider that crashed (any new
        incarnation counts) fails the transfer; one that is SIGSTOPped stalls it, and a stall
        longer than ``FETCH_STALL_NS_MAX`` fails it. A transfer may deliver corrupt bytes
        (``CORRUPT_P``); ``install`` must refuse them. Every draw comes from the run's seeded RNG.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from consensus.rejoin import SnapshotUnavailable, Transfer
from consensus.runtime import Runtime

if TYPE_CHECKING:
    from consensus.sim.world import Node, World

DIGEST_BYTES = 32
DIGEST_ZERO = bytes(DIGEST_BYTES)
SNAPSHOT_MAGIC = b"SIMCHAIN"
CHECKSUM_BYTES = 8
SNAPSHOT = struct.Struct(f"<8sQ{DIGEST_BYTES}s{CHECKSUM_BYTES}s")
FETCH_CHUNKS_MAX = 4  # a transfer arrives in 1..4 chunks ...
FETCH_CHUNK_NS_MIN = 20_000  # ... each after a delay of 20 us ...
FETCH_CHUNK_NS_MAX = 400_000  # ... to 400 us (simulated): a fetch spans up to 1.6 ms
FETCH_STALL_NS_MAX = 2_000_000  # a SIGSTOPped provider fails the transfer after this (a timeout)
FETCH_STALL_POLL_NS = 100_000  # how often a stalled transfer looks at its provider again
CORRUPT_P = 0.03  # share of transfers whose bytes arrive corrupt (install must refuse them)

Report = Callable[[str, str], None]  # (rule, detail)
OnState = Callable[[int, bytes, str], None]  # (index, digest, how): every state the app reaches


def chain(digest: bytes, payload: bytes) -> bytes:
    return hashlib.blake2b(digest + payload, digest_size=DIGEST_BYTES).digest()


def checksum(index: int, digest: bytes) -> bytes:
    body = SNAPSHOT_MAGIC + index.to_bytes(8, "little") + digest
    return hashlib.blake2b(body, digest_size=CHECKSUM_BYTES).digest()


def encode_snapshot(index: int, digest: bytes) -> bytes:
    assert len(digest) == DIGEST_BYTES
    return SNAPSHOT.pack(SNAPSHOT_MAGIC, index, digest, checksum(index, digest))


def decode_snapshot(index: int, data: bytes) -> bytes:
    """The digest of snapshot ``data`` of ``index`` (Rule 3)."""
    if len(data) != SNAPSHOT.size:
        raise SnapshotUnavailable(f"snapshot of {len(data)} bytes, expected {SNAPSHOT.size}")
    magic, found, digest, check = SNAPSHOT.unpack(data)
    if magic != SNAPSHOT_MAGIC or check != checksum(found, digest):
        raise SnapshotUnavailable("corrupt snapshot (bad magic or checksum)")
    if found != index:
        raise SnapshotUnavailable(f"snapshot says index {found}, announced {index}")
    return bytes(digest)


class ChainApp:
    """One replica's state machine (Rules 1-4); survives plain crashes, not fresh ones."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.index = 0
        self.digest = DIGEST_ZERO
        self.states: dict[int, bytes] = {0: DIGEST_ZERO}  # index -> digest, for ``rollback``
        self.installs = 0
        self.on_state: OnState = lambda index, digest, how: None

    def deliver(self, index: int, payload: bytes) -> None:
        """Rule 2."""
        if index != self.index + 1:
            self.report("app-order", f"delivered index {index} to a state at {self.index}")
            return
        self.index = index
        self.digest = chain(self.digest, payload)
        self.states[index] = self.digest
        self.on_state(index, self.digest, "delivered")

    def snapshot(self) -> tuple[int, bytes]:
        return self.index, encode_snapshot(self.index, self.digest)

    def install(self, index: int, data: bytes) -> None:
        """Rule 3: replace the whole state, or raise ``SnapshotUnavailable`` and change nothing."""
        digest = decode_snapshot(index, data)
        self.index = index
        self.digest = digest
        self.states = {index: digest}
        self.installs += 1
        self.on_state(index, digest, "installed")

    def rollback(self, index: int) -> bool:
        """Rule 4: go back to the state at ``index``; False if this app never had it."""
        digest = self.states.get(index)
        if digest is None:
            return False
        self.index = index
        self.digest = digest
        self.states = {i: d for i, d in self.states.items() if i <= index}
        return True


@dataclass(frozen=True, slots=True)
class Provider:
    """A snapshot provider as the fetch found it when it started."""

    node: Node
    incarnation: int


class SimSnapshotPort:
    """One replica incarnation's ``SnapshotPort`` (Rule 5)."""

    def __init__(self, world: World, node: Node, runtime: Runtime) -> None:
        self.world = world
        self.node = node
        self.incarnation = node.incarnation
        self.runtime = runtime

    def fetch(self, peer: int, transfer: Transfer) -> tuple[int, bytes]:
        world = self.world
        world.fetches += 1
        source = world.nodes[peer]
        provider = Provider(source, source.incarnation)
        app = source.app
        if not source.up or app is None:
            raise SnapshotUnavailable(f"replica {peer} is down")
        self._wait_running(provider)
        index, data = app.snapshot()
        world.note(f"r{self.node.replica_id} fetches a snapshot of index {index} from r{peer}")
        transfer.begin(index, len(data))
        rng = world.rng
        chunks = rng.randint(1, FETCH_CHUNKS_MAX)
        for chunk in range(1, chunks + 1):
            self.runtime.sleep(rng.randint(FETCH_CHUNK_NS_MIN, FETCH_CHUNK_NS_MAX) / 1e9)
            self._wait_running(provider)
            transfer.advance(len(data) * chunk // chunks)
        if rng.random() < CORRUPT_P:
            cut = rng.randrange(len(data))
            data = data[:cut] + bytes([data[cut] ^ 0xFF]) + data[cut + 1 :]
            world.note(f"r{self.node.replica_id}: the snapshot from r{peer} arrives corrupt")
        return index, data

    def _wait_running(self, provider: Provider) -> None:
        """Fail if the provider crashed since the fetch began; wait (bounded) while stopped."""
        waited_ns = 0
        node = provider.node
        while True:
            if not node.up or node.incarnation != provider.incarnation:
                raise SnapshotUnavailable(f"replica {node.replica_id} crashed mid-transfer")
            if not node.stopped:
                return
            if waited_ns >= FETCH_STALL_NS_MAX:
                raise SnapshotUnavailable(f"replica {node.replica_id} stopped answering")
            self.runtime.sleep(FETCH_STALL_POLL_NS / 1e9)
            waited_ns += FETCH_STALL_POLL_NS

    def install(self, index: int, data: bytes) -> None:
        app = self.node.app
        assert app is not None, "a running replica has an application"
        assert self.node.incarnation == self.incarnation, "a dead incarnation installs"
        app.install(index, data)
