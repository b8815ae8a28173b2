"""The fabric rules of ``consensus.fabric.base`` on every fabric (shm, memory, verbs on the fake
device): write, read, permission, revoke, posted writes, errors; and a writer thread hammering a
region while its owner grants and revokes."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest

from consensus.fabric import (
    FabricError,
    LocalRegion,
    OutOfRange,
    RegionClosed,
    RemoteRegion,
    RevokeStalled,
    UnknownPeer,
    WriteRejected,
)

from .fabric_kits import FABRIC_KINDS, Kit

REGION_BYTES = 4096
SETTLE_S = 5.0  # how long a transient failure (a verbs link being renewed) may last


@pytest.fixture(params=FABRIC_KINDS)
def kit(request: pytest.FixtureRequest, cluster_id: str) -> Iterator[Kit]:
    made = Kit(request.param, cluster_id)
    yield made
    made.close()


def write_eventually(remote: RemoteRegion, offset: int, data: bytes) -> None:
    """Write, retrying transient failures (a verbs link renewed after a revoke) for a while."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        try:
            remote.write(offset, data)
            return
        except FabricError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


def revoke(region: LocalRegion, peer: int) -> None:
    deadline = time.monotonic() + SETTLE_S
    while True:
        try:
            region.revoke_write(peer)
            return
        except RevokeStalled:
            assert time.monotonic() < deadline, "revoke stalled for good"


def test_write_read_and_permission(kit: Kit) -> None:
    owner, writer = kit.endpoint(1), kit.endpoint(2)
    region = owner.register("log", REGION_BYTES)
    remote = writer.connect(1, "log", timeout_s=5.0)
    assert (remote.owner, remote.name, remote.size) == (1, "log", REGION_BYTES)
    with pytest.raises(WriteRejected):
        remote.write(0, b"x" * 64)
    assert bytes(region.buf[:64]) == bytes(64)
    region.grant_write(2)
    assert region.writers() == frozenset({2})
    payload = bytes(range(100))
    write_eventually(remote, 10, payload)
    assert bytes(region.buf[10:110]) == payload
    assert remote.read(10, 100) == payload
    out = bytearray(5)
    remote.read_into(12, memoryview(out))
    assert bytes(out) == payload[2:7]
    region.buf[0:4] = b"own!"
    assert remote.read(0, 4) == b"own!"
    big = bytes(random.Random(7).randbytes(REGION_BYTES))
    remote.write(0, big)
    assert bytes(region.buf) == big and remote.read(0, REGION_BYTES) == big


def test_revoke_stops_writes_and_reads_go_on(kit: Kit) -> None:
    owner, writer = kit.endpoint(1), kit.endpoint(2)
    region = owner.register("log", REGION_BYTES)
    region.grant_write(2)
    remote = writer.connect(1, "log", timeout_s=5.0)
    write_eventually(remote, 0, b"before")
    revoke(region, 2)
    revoke(region, 2)  # idempotent
    assert region.writers() == frozenset()
    for _ in range(3):
        with pytest.raises(WriteRejected):
            remote.write(0, b"late")
    assert bytes(region.buf[:6]) == b"before"
    assert remote.read(0, 6) == b"before"  # reads never need permission
    region.grant_write(2)
    write_eventually(remote, 0, b"again!")
    assert bytes(region.buf[:6]) == b"again!"


def test_errors(kit: Kit) -> None:
    owner, writer = kit.endpoint(1), kit.endpoint(2)
    region = owner.register("log", REGION_BYTES)
    region.grant_write(2)
    remote = writer.connect(1, "log", timeout_s=5.0)
    with pytest.raises(OutOfRange):
        remote.write(REGION_BYTES - 3, b"1234")
    with pytest.raises(OutOfRange):
        remote.read(-1, 2)
    with pytest.raises(UnknownPeer):
        writer.connect(3, "log", timeout_s=0.05)
    assert isinstance(region, LocalRegion) and isinstance(remote, RemoteRegion)
    if kit.closed_endpoint_refuses:
        writer.close()
        with pytest.raises(RegionClosed):
            remote.write(0, b"x")
        with pytest.raises(RegionClosed):
            writer.connect(1, "log", timeout_s=0.0)


def poll_until(fabric: object, count: int) -> list[object]:
    done: list[object] = []
    deadline = time.monotonic() + SETTLE_S
    while len(done) < count:
        done += fabric.poll_completions(4)  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"only {len(done)} of {count} completions"
        time.sleep(0)
    return done


def test_posted_writes_complete_once(kit: Kit) -> None:
    owner, writer = kit.endpoint(1), kit.endpoint(2)
    region = owner.register("log", REGION_BYTES)
    remote = writer.connect(1, "log", timeout_s=5.0)
    region.grant_write(2)
    write_eventually(remote, 0, bytes(32))
    writer.post_write(remote, 0, b"a" * 32, wr_id=7)
    first = poll_until(writer, 1)
    revoke(region, 2)
    writer.post_write(remote, 32, b"b" * 32, wr_id=8)
    second = poll_until(writer, 1)
    done = first + second
    assert [(c.wr_id, c.error is None) for c in done] == [(7, True), (8, False)]  # type: ignore
    assert isinstance(done[1].error, WriteRejected)  # type: ignore[attr-defined]
    time.sleep(0.01)
    assert writer.poll_completions(10) == []
    assert bytes(region.buf[:64]) == b"a" * 32 + bytes(32)


def hammer(remote: RemoteRegion, stop: threading.Event, counts: list[int]) -> None:
    block = b"\xab" * 64
    offset = 0
    while not stop.is_set():
        try:
            remote.write(offset, block)
            counts[0] += 1
        except FabricError:
            counts[1] += 1
        offset = (offset + 64) % REGION_BYTES


def test_no_write_lands_after_revoke_returns(kit: Kit, seed: int) -> None:
    """A writer thread hammers; after each revoke the owner zeroes the region and checks for a
    while that no byte of the writer appears (base Rule 4)."""
    rng = random.Random(seed)
    owner, writer = kit.endpoint(1), kit.endpoint(2)
    region = owner.register("log", REGION_BYTES)
    remote = writer.connect(1, "log", timeout_s=5.0)
    zeros = bytes(REGION_BYTES)
    stop, counts = threading.Event(), [0, 0]
    thread = threading.Thread(target=hammer, args=(remote, stop, counts), daemon=True)
    thread.start()
    try:
        for round_index in range(30):
            region.grant_write(2)
            deadline = time.monotonic() + SETTLE_S
            while bytes(region.buf) == zeros:
                assert time.monotonic() < deadline, "writer never wrote"
                time.sleep(0.0005)
            time.sleep(rng.random() * 0.002)
            revoke(region, 2)
            region.buf[:] = zeros
            end = time.monotonic() + 0.002 + rng.random() * 0.005
            while time.monotonic() < end:
                assert bytes(region.buf) == zeros, f"round {round_index}: landed after revoke"
                time.sleep(0.0002)
    finally:
        stop.set()
        thread.join(SETTLE_S)
    assert counts[0] >= 30 and counts[1] > 0
