"""Micro-benchmark of the shared-memory fabric: per-operation latency of the calls the protocol's
fast path makes (``python -m consensus.fabric bench``).

Rule 1: every figure is a percentile of per-operation samples (``perf_counter_ns`` around each
        single call), minus the median cost of an empty timer pair measured in the same run.
Rule 2: a baseline is measured in the same run (a bare 64-byte slice copy into the same shared
        memory, no lock, no checks) and every write figure is also given as a ratio to it, so
        figures from a loaded, shared machine can still be compared.
Rule 3: the cluster's shared-memory objects are removed before and after, even on Ctrl-C.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consensus.fabric.shm import ShmFabric, cleanup
from consensus.registry.embedded import EmbeddedRegistry

WRITE_OPS_DEFAULT = 200_000
REVOKE_OPS_DEFAULT = 20_000
REGION_BYTES = 1 << 20
SMALL_BYTES = 64
PAGE_BYTES = 4096
WRITE_P50_TARGET_NS = 1_000
REVOKE_GRANT_P50_TARGET_NS = 50_000
HAMMER_START_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    p50_ns: float
    p99_ns: float
    ops: int


def measure(name: str, operation: Callable[[], object], ops: int, overhead_ns: int) -> Figure:
    """Time ``ops`` single calls of ``operation``; percentiles net of the timer overhead."""
    clock = time.perf_counter_ns
    samples = [0] * ops
    for _ in range(min(ops, 1000)):  # warm caches and the specializing interpreter
        operation()
    for index in range(ops):
        started = clock()
        operation()
        samples[index] = clock() - started
    samples.sort()
    p50 = samples[ops // 2] - overhead_ns
    p99 = samples[ops * 99 // 100] - overhead_ns
    return Figure(name, max(p50, 0), max(p99, 0), ops)


def timer_overhead_ns(ops: int) -> int:
    clock = time.perf_counter_ns
    samples = [0] * ops
    for index in range(ops):
        started = clock()
        samples[index] = clock() - started
    samples.sort()
    return samples[ops // 2]


def hammer(cluster_id: str, stop: Any, started: Any) -> None:
    """A writer process (replica 3) writing 64-byte blocks until ``stop`` is set."""
    fabric = ShmFabric(3, cluster_id, EmbeddedRegistry(cluster_id))
    remote = fabric.connect(1, "log", timeout_s=HAMMER_START_TIMEOUT_S)
    block = bytes(SMALL_BYTES)
    started.set()
    while not stop.is_set():
        for _ in range(1000):
            try:
                remote.write(PAGE_BYTES, block)
            except Exception:  # rejected while revoked: that is the point
                pass
    fabric.close()


def run(write_ops: int, revoke_ops: int) -> tuple[list[Figure], int]:
    """Measure every figure (and the timer overhead subtracted from them); the cluster's objects
    are gone afterwards."""
    cluster_id = f"bench-{os.getpid()}"
    cleanup(cluster_id)
    registry = EmbeddedRegistry(cluster_id)
    owner = ShmFabric(1, cluster_id, registry)
    writer = ShmFabric(2, cluster_id, registry)
    gc_was_enabled = gc.isenabled()
    try:
        region = owner.register("log", REGION_BYTES)
        region.grant_write(2)
        remote = writer.connect(1, "log", timeout_s=1.0)
        small, page = bytes(range(SMALL_BYTES)), bytes(PAGE_BYTES)
        out = memoryview(bytearray(SMALL_BYTES))
        buf = region.buf
        gc.disable()
        overhead = timer_overhead_ns(write_ops)

        def baseline() -> None:
            buf[0:SMALL_BYTES] = small

        def revoke_grant() -> None:
            region.revoke_write(2)
            region.grant_write(2)

        figures = [
            measure("baseline: bare 64 B copy", baseline, write_ops, overhead),
            measure("write 64 B", lambda: remote.write(0, small), write_ops, overhead),
            measure("write 4 KiB", lambda: remote.write(0, page), write_ops, overhead),
            measure("read 64 B", lambda: remote.read(0, SMALL_BYTES), write_ops, overhead),
            measure("read_into 64 B", lambda: remote.read_into(0, out), write_ops, overhead),
            measure("revoke+grant", revoke_grant, revoke_ops, overhead),
        ]
        if gc_was_enabled:
            gc.enable()
        figures.append(contended_revoke(cluster_id, region, revoke_ops, overhead))
        return figures, overhead
    finally:
        if gc_was_enabled:
            gc.enable()
        owner.close()
        writer.close()
        cleanup(cluster_id)


def contended_revoke(cluster_id: str, region: Any, ops: int, overhead_ns: int) -> Figure:
    """revoke+grant of replica 3 while replica 3's own process hammers the region."""
    context = multiprocessing.get_context("spawn")
    stop, started = context.Event(), context.Event()
    region.grant_write(3)
    process = context.Process(target=hammer, args=(cluster_id, stop, started), daemon=True)
    process.start()
    try:
        if not started.wait(HAMMER_START_TIMEOUT_S):
            raise RuntimeError("the writer process did not start")

        def revoke_grant() -> None:
            region.revoke_write(3)
            region.grant_write(3)

        return measure("revoke+grant, writer busy", revoke_grant, ops // 4, overhead_ns)
    finally:
        stop.set()
        process.join(HAMMER_START_TIMEOUT_S)
        if process.is_alive():
            process.kill()


def report(figures: list[Figure], overhead_ns: int) -> str:
    """The figures as a table, with ratios to the baseline and the targets' verdicts."""
    baseline = figures[0].p50_ns or 1.0
    targets = {
        "write 64 B": WRITE_P50_TARGET_NS,
        "revoke+grant": REVOKE_GRANT_P50_TARGET_NS,
    }
    lines = [
        f"timer overhead {overhead_ns} ns per sample (median, subtracted below)",
        f"{'operation':<28}{'p50 ns':>9}{'p99 ns':>10}{'x base':>8}  target (p50)",
    ]
    for figure in figures:
        target = targets.get(figure.name)
        verdict = ""
        if target is not None:
            verdict = f"<= {target} ns: {'met' if figure.p50_ns <= target else 'MISSED'}"
        lines.append(
            f"{figure.name:<28}{figure.p50_ns:>9.0f}{figure.p99_ns:>10.0f}"
            f"{figure.p50_ns / baseline:>8.1f}  {verdict}"
        )
    return "\n".join(lines)
