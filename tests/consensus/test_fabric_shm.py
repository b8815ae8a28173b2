"""The shared-memory fabric, in one process (API, errors) and across real processes (spawned):
permission under stress, paused and killed peers, restarts, stale-object cleanup."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import pytest

from consensus.fabric import (
    FabricError,
    OutOfRange,
    RegionClosed,
    RevokeStalled,
    UnknownPeer,
    WriteRejected,
    open_fabric,
)
from consensus.fabric.shm import (
    SHM_DIR,
    WRITER_ID_MAX,
    ShmFabric,
    ShmRemote,
    cleanup,
    process_state,
    region_path,
)
from consensus.registry import open_registry

SPAWN = multiprocessing.get_context("spawn")
CHILD_TIMEOUT_S = 20.0
REGION_BYTES = 4096


def shm_fabric(replica_id: int, cluster_id: str, reattach: bool = False) -> ShmFabric:
    fabric = open_fabric("shm", replica_id, cluster_id, open_registry(cluster_id), reattach)
    assert isinstance(fabric, ShmFabric)
    return fabric


@contextmanager
def child(target: Callable[..., None], *args: Any) -> Iterator[BaseProcess]:
    """Run ``target(*args)`` in a spawned process; kill it if the test leaves early."""
    process = SPAWN.Process(target=target, args=args, daemon=True)
    process.start()
    try:
        yield process
    finally:
        if process.is_alive():
            os.kill(process.pid or 0, signal.SIGCONT)
            process.kill()
        process.join(CHILD_TIMEOUT_S)


def cluster_objects(cluster_id: str) -> list[str]:
    return sorted(p.name for p in SHM_DIR.iterdir() if f".{cluster_id}." in p.name)


# ---- single process -------------------------------------------------------------------------


def test_error_messages_name_the_region_and_replicas(cluster_id: str) -> None:
    """The shm fabric's own wording (the behaviour common to every fabric, posted writes
    included, is in test_fabric_conformance.py)."""
    owner, writer = shm_fabric(1, cluster_id), shm_fabric(2, cluster_id)
    region = owner.register("log", REGION_BYTES)
    remote = writer.connect(1, "log", timeout_s=1.0)
    with pytest.raises(WriteRejected, match="replica 2 may not write region 'log' of replica 1"):
        remote.write(0, b"x" * 64)
    with pytest.raises(OutOfRange, match="'log'"):
        remote.write(REGION_BYTES - 3, b"1234")
    with pytest.raises(UnknownPeer, match="replica 3 has no region 'log'"):
        writer.connect(3, "log", timeout_s=0.05)
    with pytest.raises(UnknownPeer):
        writer.connect(WRITER_ID_MAX + 1, "log", timeout_s=0.05)
    with pytest.raises(ValueError, match="region name"):
        owner.register("bad name", 64)
    with pytest.raises(FabricError, match="size"):
        owner.register("log", REGION_BYTES * 2)
    region.grant_write(2)
    remote.write(0, b"x")
    writer.close()
    with pytest.raises(RegionClosed):
        remote.write(0, b"x")
    owner.close()


def test_open_fabric_rejects_unknown_kind(cluster_id: str) -> None:
    with pytest.raises(ValueError, match="unknown fabric 'rdma'; choose one of: shm, verbs"):
        open_fabric("rdma", 1, cluster_id, open_registry(cluster_id))
    with pytest.raises(ValueError, match="cluster id"):
        open_fabric("shm", 1, "bad/cluster", open_registry(cluster_id))


def test_stale_objects_are_cleaned_and_replaced(cluster_id: str) -> None:
    crashed = shm_fabric(1, cluster_id)
    old = crashed.register("log", 128)
    old.grant_write(2)
    writer = shm_fabric(2, cluster_id)
    stale_remote = writer.connect(1, "log", timeout_s=1.0)
    stale_remote.write(0, b"old")
    old.revoke_write(2)  # creates the (region, writer) semaphore too
    old_objects = cluster_objects(cluster_id)
    assert len(old_objects) == 2 and old_objects[1].startswith("sem.")
    # a new run without re-attach replaces the region: old handles see it closed
    fresh = shm_fabric(1, cluster_id).register("log", 256)
    assert bytes(fresh.buf[:3]) == bytes(3) and fresh.writers() == frozenset()
    with pytest.raises(RegionClosed, match="was closed"):
        stale_remote.write(0, b"x")
    with pytest.raises(RegionClosed):
        stale_remote.read(0, 1)
    # the old semaphore was unlinked with the old region
    assert old_objects[1] not in cluster_objects(cluster_id)
    assert writer.connect(1, "log", timeout_s=1.0).size == 256
    assert cleanup(cluster_id) >= 2
    assert cluster_objects(cluster_id) == []
    assert cleanup(cluster_id) == 0


def test_reattach_keeps_memory_and_permissions(cluster_id: str) -> None:
    first = shm_fabric(1, cluster_id)
    region = first.register("log", 256)
    region.buf[0:5] = b"kept!"
    region.grant_write(3)
    first.close()  # the process "dies"; its memory survives
    again = shm_fabric(1, cluster_id, reattach=True).register("log", 256)
    assert bytes(again.buf[0:5]) == b"kept!" and again.writers() == frozenset({3})
    with pytest.raises(FabricError, match="re-attaching with size 512"):
        shm_fabric(1, cluster_id, reattach=True).register("log", 512)
    assert path_exists(region_path(cluster_id, 1, "log"))


def path_exists(path: Path) -> bool:
    return path.exists()


# ---- across processes -----------------------------------------------------------------------


def writer_main(cluster_id: str, writer_id: int, results: Queue[Any]) -> None:
    """Connect to replica 1's ``log``, write a greeting, read the owner's, report."""
    fabric = shm_fabric(writer_id, cluster_id)
    remote = fabric.connect(1, "log", timeout_s=CHILD_TIMEOUT_S)
    remote.write(100 * writer_id, f"hello from {writer_id}".encode())
    results.put((writer_id, remote.read(0, 10)))
    fabric.close()


@pytest.mark.slow
def test_processes_write_and_read(cluster_id: str) -> None:
    owner = shm_fabric(1, cluster_id)
    region = owner.register("log", REGION_BYTES)
    region.buf[0:10] = b"owner data"
    region.grant_write(2)
    region.grant_write(3)
    results: Queue[Any] = SPAWN.Queue()
    with child(writer_main, cluster_id, 2, results), child(writer_main, cluster_id, 3, results):
        got = dict(results.get(timeout=CHILD_TIMEOUT_S) for _ in range(2))
    assert got == {2: b"owner data", 3: b"owner data"}
    assert bytes(region.buf[200:212]) == b"hello from 2"
    assert bytes(region.buf[300:312]) == b"hello from 3"
    owner.close()


def hammer_main(cluster_id: str, stop: Any, counts: Queue[Any]) -> None:
    """Write 64-byte blocks of 0xAB all over replica 1's ``log`` until ``stop`` is set."""
    fabric = shm_fabric(2, cluster_id)
    remote = fabric.connect(1, "log", timeout_s=CHILD_TIMEOUT_S)
    block = b"\xab" * 64
    landed = rejected = 0
    offset = 0
    while not stop.is_set():
        for _ in range(256):
            try:
                remote.write(offset, block)
                landed += 1
            except WriteRejected:
                rejected += 1
            offset = (offset + 64) % REGION_BYTES
    counts.put((landed, rejected))
    fabric.close()


@pytest.mark.slow
def test_no_write_lands_after_revoke_returns(cluster_id: str, seed: int) -> None:
    """A writer hammers the region while the owner grants and revokes: after each revoke the
    owner zeroes the region, waits, and checks that not one byte of the writer appeared."""
    rng = random.Random(seed)
    owner = shm_fabric(1, cluster_id)
    region = owner.register("log", REGION_BYTES)
    buf = region.buf
    zeros = bytes(REGION_BYTES)
    stop, counts = SPAWN.Event(), SPAWN.Queue()
    rounds = 150
    with child(hammer_main, cluster_id, stop, counts):
        for round_index in range(rounds):
            region.grant_write(2)
            deadline = time.monotonic() + CHILD_TIMEOUT_S
            while bytes(buf) == zeros:  # the writer is writing again
                assert time.monotonic() < deadline, "writer never wrote"
            time.sleep(rng.random() * 0.001)
            revoke_until_done(region)  # a writer preempted mid-copy may stall one attempt
            buf[:] = zeros
            end = time.monotonic() + 0.002 + rng.random() * 0.002
            while time.monotonic() < end:
                assert bytes(buf) == zeros, f"round {round_index}: a write landed after revoke"
        stop.set()
        landed, rejected = counts.get(timeout=CHILD_TIMEOUT_S)
    assert landed >= rounds and rejected > 0
    owner.close()


def pausable_main(cluster_id: str, ready: Any, go: Any, results: Queue[Any]) -> None:
    """Write once, tell the parent, wait (the parent stops and resumes us), write again."""
    fabric = shm_fabric(2, cluster_id)
    remote = fabric.connect(1, "log", timeout_s=CHILD_TIMEOUT_S)
    remote.write(0, b"first")
    ready.set()
    go.wait(CHILD_TIMEOUT_S)
    try:
        remote.write(0, b"second")
        results.put("landed")
    except WriteRejected:
        results.put("rejected")
    fabric.close()


@pytest.mark.slow
def test_revoke_while_writer_is_stopped(cluster_id: str) -> None:
    owner = shm_fabric(1, cluster_id)
    region = owner.register("log", REGION_BYTES)
    region.grant_write(2)
    ready, go, results = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
    with child(pausable_main, cluster_id, ready, go, results) as process:
        assert ready.wait(CHILD_TIMEOUT_S)
        os.kill(process.pid or 0, signal.SIGSTOP)
        wait_state(process.pid or 0, "T")
        region.revoke_write(2)  # returns at once: the stopped writer holds no write
        # resume before ``go.set()``: notifying an Event waits for its (stopped) waiters
        os.kill(process.pid or 0, signal.SIGCONT)
        go.set()
        assert results.get(timeout=CHILD_TIMEOUT_S) == "rejected"
    assert bytes(region.buf[:6]) == b"first\0"
    owner.close()


def wait_state(pid: int, state: str) -> None:
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while process_state(pid) != state:
        assert time.monotonic() < deadline, f"pid {pid} never reached state {state}"
        time.sleep(0.001)


def revoke_until_done(region: Any) -> None:
    """Retry a stalled revoke, as the protocol does (a resumed writer may be slow to run)."""
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while True:
        try:
            region.revoke_write(2)
            return
        except RevokeStalled:
            assert time.monotonic() < deadline, "the resumed writer never finished its write"


def holder_main(cluster_id: str, ready: Any, stop_self: bool) -> None:
    """Connect as writer 2 and take the write semaphore as a write would, then get stopped (or
    killed) right there, in the middle of a write."""
    fabric = shm_fabric(2, cluster_id)
    remote = fabric.connect(1, "log", timeout_s=CHILD_TIMEOUT_S)
    assert remote._lock.acquire(False)
    ready.set()
    if stop_self:
        os.kill(os.getpid(), signal.SIGSTOP)
        remote._lock.release()
    time.sleep(CHILD_TIMEOUT_S)


def stopped_writer_main(cluster_id: str, ready: Any, results: Queue[Any]) -> None:
    """Write, then take the write semaphore and get stopped in the middle of a copy; once
    continued, finish that copy, then try one more write."""
    fabric = shm_fabric(2, cluster_id)
    remote = fabric.connect(1, "log", timeout_s=CHILD_TIMEOUT_S)
    remote.write(0, b"before")
    data = remote._data
    assert data is not None and remote._lock.acquire(False)
    data[100:103] = b"hal"  # the first half of a copy...
    ready.set()
    os.kill(os.getpid(), signal.SIGSTOP)
    data[103:106] = b"ves"  # ...and the second, after the owner moved the region
    remote._lock.release()
    try:
        remote.write(200, b"late")
        results.put("landed")
    except WriteRejected as error:
        results.put(type(error).__name__)
    fabric.close()


@pytest.mark.slow
def test_writer_stopped_inside_a_write_makes_the_owner_move_the_region(cluster_id: str) -> None:
    """Rule 7: the revoke returns although the stopped writer holds its semaphore; what was
    written stays, the stopped copy's rest and any later write of it do not land, and a writer
    granted after the move writes through the handle it opened before."""
    owner = shm_fabric(1, cluster_id)
    region = owner.register("log", REGION_BYTES)
    region.grant_write(2)
    third = shm_fabric(3, cluster_id)
    third_remote = third.connect(1, "log", timeout_s=1.0)
    path = region_path(cluster_id, 1, "log")
    inode = path.stat().st_ino
    ready, results = SPAWN.Event(), SPAWN.Queue()
    with child(stopped_writer_main, cluster_id, ready, results) as process:
        assert ready.wait(CHILD_TIMEOUT_S)
        wait_state(process.pid or 0, "T")
        started = time.monotonic()
        region.revoke_write(2)
        assert time.monotonic() - started < 2.0
        assert path.stat().st_ino != inode, "the region was not moved to a new file"
        assert region.writers() == frozenset()
        assert bytes(region.buf[:6]) == b"before" and bytes(region.buf[100:103]) == b"hal"
        region.grant_write(3)
        third_remote.write(10, b"three")  # follows the move
        assert bytes(region.buf[10:15]) == b"three"
        assert third_remote.read(0, 6) == b"before"
        os.kill(process.pid or 0, signal.SIGCONT)
        assert results.get(timeout=CHILD_TIMEOUT_S) == "WriteRejected"
    assert bytes(region.buf[100:106]) == b"hal\0\0\0", "the stopped copy's rest landed"
    assert bytes(region.buf[200:204]) == bytes(4)
    region.revoke_write(3)
    with pytest.raises(WriteRejected):
        third_remote.write(10, b"again")
    third.close()
    owner.close()


def test_a_write_that_meets_a_move_is_reported_failed(cluster_id: str) -> None:
    """Rule 7's writer side: a write whose region was marked moved while it copied fails,
    because the owner's copy may have missed it."""
    owner = shm_fabric(1, cluster_id)
    region = owner.register("log", REGION_BYTES)
    region.grant_write(2)
    writer = shm_fabric(2, cluster_id)
    remote = writer.connect(1, "log", timeout_s=1.0)

    class MoveOnRelease:
        """Stands in for the writer's semaphore; releasing it lets the owner move the region,
        as if the move began just as the copy ended."""

        def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
            return True

        def release(self) -> None:
            region._move("test")

    remote._lock = MoveOnRelease()  # type: ignore[assignment]
    with pytest.raises(WriteRejected, match="moved or closed during a write"):
        remote.write(0, b"racing")
    writer.close()
    owner.close()


@pytest.mark.slow
def test_writer_killed_inside_a_write_does_not_wedge(cluster_id: str) -> None:
    owner = shm_fabric(1, cluster_id)
    region = owner.register("log", REGION_BYTES)
    region.grant_write(2)
    ready = SPAWN.Event()
    with child(holder_main, cluster_id, ready, False) as process:
        assert ready.wait(CHILD_TIMEOUT_S)
        process.kill()
        process.join(CHILD_TIMEOUT_S)
    region.revoke_write(2)  # the holder is dead: its semaphore is released, no RevokeStalled
    region.grant_write(2)
    restarted = shm_fabric(2, cluster_id)
    restarted.connect(1, "log", timeout_s=1.0).write(0, b"after restart")
    assert bytes(region.buf[:13]) == b"after restart"
    owner.close()


def restarted_writer_main(cluster_id: str, results: Queue[Any]) -> None:
    fabric = shm_fabric(2, cluster_id)
    remote = fabric.connect(1, "log", timeout_s=CHILD_TIMEOUT_S)
    remote.write(0, b"new life")
    results.put("ok")
    fabric.close()


@pytest.mark.slow
def test_killed_writer_restarts_without_owner_help(cluster_id: str) -> None:
    """A writer killed holding its semaphore, restarted: its connect frees the semaphore."""
    owner = shm_fabric(1, cluster_id)
    region = owner.register("log", REGION_BYTES)
    region.grant_write(2)
    ready, results = SPAWN.Event(), SPAWN.Queue()
    with child(holder_main, cluster_id, ready, False) as process:
        assert ready.wait(CHILD_TIMEOUT_S)
        process.kill()
        process.join(CHILD_TIMEOUT_S)
    with child(restarted_writer_main, cluster_id, results):
        assert results.get(timeout=CHILD_TIMEOUT_S) == "ok"
    assert bytes(region.buf[:8]) == b"new life"
    owner.close()


def owner_main(cluster_id: str, ready: Any) -> None:
    """Own ``log``, let replica 2 write it, then idle until stopped or killed."""
    fabric = shm_fabric(1, cluster_id)
    region = fabric.register("log", REGION_BYTES)
    region.buf[0:4] = b"mine"
    region.grant_write(2)
    ready.set()
    time.sleep(CHILD_TIMEOUT_S)


@pytest.mark.slow
def test_permissions_hold_while_owner_is_stopped_or_killed(cluster_id: str) -> None:
    ready = SPAWN.Event()
    allowed, denied = shm_fabric(2, cluster_id), shm_fabric(3, cluster_id)
    with child(owner_main, cluster_id, ready) as process:
        assert ready.wait(CHILD_TIMEOUT_S)
        remote = allowed.connect(1, "log", timeout_s=CHILD_TIMEOUT_S)
        intruder = denied.connect(1, "log", timeout_s=CHILD_TIMEOUT_S)
        for reattach in (False, True):  # a second replica 1 must not take over the region
            with pytest.raises(FabricError, match="started twice"):
                shm_fabric(1, cluster_id, reattach).register("log", REGION_BYTES)
        os.kill(process.pid or 0, signal.SIGSTOP)
        wait_state(process.pid or 0, "T")
        remote.write(100, b"while stopped")
        with pytest.raises(WriteRejected):
            intruder.write(100, b"intruder")
        process.kill()
        process.join(CHILD_TIMEOUT_S)
        remote.write(200, b"after death")
        with pytest.raises(WriteRejected):
            intruder.write(200, b"intruder")
        assert remote.read(0, 4) == b"mine"
    # the owner restarts and re-attaches: its memory is still there
    region = shm_fabric(1, cluster_id, reattach=True).register("log", REGION_BYTES)
    assert bytes(region.buf[100:113]) == b"while stopped"
    assert bytes(region.buf[200:211]) == b"after death"
    allowed.close()
    denied.close()


def test_remote_is_a_remote_region(cluster_id: str) -> None:
    from consensus.fabric import LocalRegion, RemoteRegion

    owner = shm_fabric(1, cluster_id)
    region = owner.register("ctrl", 64)
    remote = owner.connect(1, "ctrl", timeout_s=1.0)
    assert isinstance(region, LocalRegion) and isinstance(remote, RemoteRegion)
    assert isinstance(remote, ShmRemote)
    owner.close()


def test_clusters_do_not_share_regions(cluster_id: str) -> None:
    other_cluster = f"{cluster_id}-b"
    try:
        mine = shm_fabric(1, cluster_id).register("log", 64)
        theirs = shm_fabric(1, other_cluster).register("log", 64)
        mine.grant_write(2)
        theirs.grant_write(2)
        shm_fabric(2, cluster_id).connect(1, "log", timeout_s=1.0).write(0, b"mine")
        shm_fabric(2, other_cluster).connect(1, "log", timeout_s=1.0).write(0, b"them")
        assert (bytes(mine.buf[:4]), bytes(theirs.buf[:4])) == (b"mine", b"them")
        assert cleanup(other_cluster) >= 2
        assert bytes(mine.buf[:4]) == b"mine" and cluster_objects(cluster_id)
    finally:
        cleanup(other_cluster)


WRITER_LEAD_MAX = 64
"""How many writes the ordered writer may run ahead of the last tail the reader reported."""


def ordered_writer_main(cluster_id: str, stop: Any, reported: Any) -> None:
    """Write 4 KiB blocks whose every byte is the write's number modulo 256, over and over, at
    offset 0, never more than ``WRITER_LEAD_MAX`` writes past the tail the reader reported."""
    fabric = shm_fabric(2, cluster_id)
    remote = fabric.connect(1, "log", timeout_s=CHILD_TIMEOUT_S)
    counter = 0
    while not stop.is_set():
        if counter + 1 > reported.value + WRITER_LEAD_MAX:
            continue
        counter += 1
        remote.write(0, bytes([counter & 0xFF]) * REGION_BYTES)
    fabric.close()


@pytest.mark.slow
def test_reader_that_sees_the_tail_sees_the_whole_write(cluster_id: str) -> None:
    """Base Rule 5: the tail lands after the rest, so after reading the tail of write k every
    body byte must be from write k or newer.

    The check is per byte, as RDMA's is: neither memcpy nor an RDMA read promises that a
    word copied while it is rewritten comes out whole (a torn u64 of writes 27135 and 27136
    once read as 26880 here). Each byte carries its write's number modulo 256; the writer
    stays at most ``WRITER_LEAD_MAX`` writes ahead of the reader, so a byte from write k or
    newer is at most that far ahead of k modulo 256, and a byte from before k is not (unless
    it were 192 or more writes stale)."""
    owner = shm_fabric(1, cluster_id)
    region = owner.register("log", REGION_BYTES)
    region.grant_write(2)
    reader = shm_fabric(3, cluster_id).connect(1, "log", timeout_s=1.0)
    tail_offset = REGION_BYTES - 1
    stop = SPAWN.Event()
    reported = SPAWN.RawValue("q", 0)
    checked = 0
    with child(ordered_writer_main, cluster_id, stop, reported):
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline or checked < 1000:
            assert time.monotonic() < deadline + CHILD_TIMEOUT_S, "the writer never wrote"
            last = reported.value
            tail = last + ((reader.read(tail_offset, 1)[0] - last) & 0xFF)
            reported.value = tail
            body = reader.read(0, tail_offset)
            if tail:
                stale = [b for b in set(body) if (b - tail) & 0xFF > WRITER_LEAD_MAX]
                assert not stale, f"tail says write {tail}, body has bytes of {stale}"
                checked += 1
        stop.set()
    owner.close()


def test_a_failed_move_leaves_the_region_as_it_was(
    cluster_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule 7 when the new file cannot be mapped: the revoke stalls as before the move existed
    (the peer stays refused) and everyone else's permission and the bytes are intact."""
    import consensus.fabric.shm as shm

    owner = shm_fabric(1, cluster_id)
    region = owner.register("log", REGION_BYTES)
    region.buf[:5] = b"bytes"
    region.grant_write(3)

    def refuse(address: int, length: int, path: Path) -> None:
        raise FabricError("no memory")

    monkeypatch.setattr(shm, "map_over", refuse)
    with pytest.raises(RevokeStalled, match="moving the region failed"):
        region._move("a test")
    assert region.writers() == frozenset({3}) and not region.mapping.closed
    assert bytes(region.buf[:5]) == b"bytes"
    assert not [p for p in SHM_DIR.iterdir() if ".tmp" in p.name and f".{cluster_id}." in p.name]
    writer = shm_fabric(3, cluster_id)
    writer.connect(1, "log", timeout_s=1.0).write(5, b"!")
    assert bytes(region.buf[:6]) == b"bytes!"
    writer.close()
    owner.close()


def test_a_handle_does_not_follow_a_move_into_a_new_life(cluster_id: str) -> None:
    """A region moved, then its owner restarted on fresh memory before a handle followed: the
    handle reports ``RegionClosed`` (the protocol's restart signal), not the fresh region."""
    owner = shm_fabric(1, cluster_id)
    region = owner.register("log", REGION_BYTES)
    region.grant_write(2)
    writer = shm_fabric(2, cluster_id)
    remote = writer.connect(1, "log", timeout_s=1.0)
    remote.write(0, b"old life")
    region._move("a test")
    path = region_path(cluster_id, 1, "log")
    # a restart on fresh memory: another process's file (pid 1 stands in for it) at the path
    meta = bytearray(path.read_bytes()[:4096])
    meta[28:32] = (1).to_bytes(4, "little")
    with open(path, "r+b") as file:
        file.write(meta)
    with pytest.raises(RegionClosed):
        remote.write(0, b"new life")
    writer.close()
    owner.close()


def test_threads_that_meet_a_move_together_all_follow_it(cluster_id: str) -> None:
    """Rule 7: several threads of one writer find the region moved at once; one maps the new
    file, the others see it done (none waits for a newer file and reports RegionClosed)."""
    import threading

    owner = shm_fabric(1, cluster_id)
    region = owner.register("log", REGION_BYTES)
    region.grant_write(2)
    writer = shm_fabric(2, cluster_id)
    remote = writer.connect(1, "log", timeout_s=1.0)
    region._move("a test")
    errors: list[Exception] = []
    together = threading.Barrier(8)

    def read() -> None:
        together.wait(5)
        try:
            remote.read(0, 8)
        except Exception as error:  # the test inspects it
            errors.append(error)

    threads = [threading.Thread(target=read) for _ in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert not errors and time.monotonic() - started < 0.4, errors
    remote.write(0, b"followed")
    assert bytes(region.buf[:8]) == b"followed"
    writer.close()
    owner.close()
