"""``python -m consensus bench st|st-lat``: the original main-st / main-st-lat, one replica per
process, meeting through the registry.

Rule 1: every process runs the same command with its own id; whichever replica leads replicates
        ``--count`` commands of ``payload_size`` bytes with ``outstanding`` in flight, prints
        ``Received X in Y ns`` (as the original did) and ops/s, then publishes ``bench/done`` so
        the followers exit (the original needed Ctrl-C).
Rule 2: st-lat also writes one latency per command, in ns, to ``dump-st-<size>-<outstanding>.txt``
        and prints p50/p90/p99. With ``outstanding > 1`` a command's latency is its batch's.
Rule 3: every figure is printed next to a baseline measured in the same process just before:
        a bare ``struct.pack_into`` + slice copy loop of the same payload (the cost floor of one
        local append), and the ratio, because the machine is shared and noisy.
Rule 4: benchmark processes freeze the GC after start-up, shorten the GIL switch interval (so
        background activities get the interpreter while the proposer spins) and raise their
        CPU priority by ``BENCH_NICE`` when allowed (the original pinned its threads to cores
        with numactl; on a shared machine an unprioritised replica waits 10+ ms for a CPU).
"""

from __future__ import annotations

import gc
import os
import struct
import sys
import time
from array import array
from dataclasses import dataclass

from consensus.config import ReplicaConfig
from consensus.errors import ConsensusError, NotLeader
from consensus.replica import Replica

BENCH_SWITCH_INTERVAL_S = 0.0005  # GIL hand-over for background threads while the proposer spins
BENCH_NICE = -10  # priority boost of benchmark processes (MU_BENCH_NICE=0 to disable)
LEADER_WAIT_S = 30.0  # how long to wait for a leader to emerge
BENCH_PROPOSE_TIMEOUT_S = 10.0  # a starved follower may not apply for seconds on a loaded host
DONE_KEY = "bench/done"
DONE_POLL_S = 0.05
WARMUP_COMMANDS = 2000  # proposals before the clock starts (caches, branch predictors, pages)
BASELINE_ROUNDS = 200_000
PROGRESS_STEP = 4096  # commands between progress-bar updates


@dataclass(frozen=True, slots=True)
class StOptions:
    replica_id: int
    payload_size: int
    outstanding: int
    count: int
    members: tuple[int, ...]
    cluster: str
    fabric: str
    log_slots: int
    latency: bool
    dump_dir: str


def raise_priority() -> None:
    """Rule 4; call before the replica starts: on Linux a thread inherits its creator's nice."""
    nice = int(os.environ.get("MU_BENCH_NICE", BENCH_NICE))
    if nice:
        try:
            os.nice(nice)
        except OSError:
            print(f"bench: could not change priority by {nice} (not root?); timings may suffer",
                  file=sys.stderr)


def tune_process() -> None:
    """Rule 4, after start-up."""
    sys.setswitchinterval(BENCH_SWITCH_INTERVAL_S)
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def baseline_ns(payload_size: int, rounds: int = BASELINE_ROUNDS) -> float:
    """Nanoseconds per bare local append: pack a header, copy the payload, pack a trailer."""
    head = struct.Struct("<QQQI4x")
    tail = struct.Struct("<QQ")
    buf = bytearray(64 + payload_size)
    log = bytearray(4096 * len(buf))
    payload = bytes(payload_size)
    size = len(buf)
    view = memoryview(buf)
    end = 32 + payload_size
    start = time.perf_counter_ns()
    for i in range(rounds):
        head.pack_into(buf, 0, i, 1, i, payload_size)
        buf[32:end] = payload
        tail.pack_into(buf, end, i, 1)
        offset = (i & 4095) * size
        log[offset : offset + size] = view
    return (time.perf_counter_ns() - start) / rounds


def percentile(sorted_values: list[int], fraction: float) -> int:
    assert sorted_values and 0 <= fraction <= 1
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def wait_for_leader(replica: Replica, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        leader = replica.leader_id
        if leader is not None:
            return leader
        time.sleep(0.001)
    raise SystemExit(f"bench: no leader emerged in {timeout_s:.0f} s (are all replicas running?)")


def run_leader(replica: Replica, opts: StOptions) -> None:
    from tqdm import tqdm

    payload = bytes(opts.payload_size)
    batch = [payload] * opts.outstanding
    for _ in range(WARMUP_COMMANDS // opts.outstanding + 1):
        _propose(replica, batch)
    base = baseline_ns(opts.payload_size)
    rounds = max(1, opts.count // opts.outstanding)
    latencies = array("q", bytes(8 * rounds)) if opts.latency else None
    clock = time.perf_counter_ns
    bar = tqdm(total=rounds * opts.outstanding, unit="cmd", file=sys.stderr, mininterval=0.5,
               leave=False, disable=rounds * opts.outstanding < 10 * PROGRESS_STEP)
    step = max(1, PROGRESS_STEP // opts.outstanding)
    start = clock()
    for i in range(rounds):
        t0 = clock()
        _propose(replica, batch)
        if latencies is not None:
            latencies[i] = clock() - t0
        if i % step == 0:
            bar.update(step * opts.outstanding)
    elapsed = clock() - start
    bar.close()
    total = rounds * opts.outstanding
    per_op = elapsed / total
    print(f"Received {total} in {elapsed} ns")
    print(f"throughput: {total / elapsed * 1e9:,.0f} commits/s ({per_op:,.0f} ns/commit); "
          f"baseline local append {base:,.0f} ns; ratio {per_op / base:.1f}x")
    if latencies is not None:
        report_latency(latencies, opts, base)


def _propose(replica: Replica, batch: list[bytes]) -> None:
    if len(batch) == 1:
        replica.propose(batch[0], BENCH_PROPOSE_TIMEOUT_S)
    else:
        replica.propose_many(batch, BENCH_PROPOSE_TIMEOUT_S)


def report_latency(latencies: array[int], opts: StOptions, base: float) -> None:
    path = os.path.join(opts.dump_dir, f"dump-st-{opts.payload_size}-{opts.outstanding}.txt")
    with open(path, "w") as out:
        for value in latencies:
            for _ in range(opts.outstanding):
                out.write(f"{value}\n")
    ordered = sorted(latencies)
    p50, p90, p99 = (percentile(ordered, f) for f in (0.50, 0.90, 0.99))
    print(f"latency ns: p50 {p50:,} p90 {p90:,} p99 {p99:,} (per {opts.outstanding}-command "
          f"round); p50/baseline {p50 / base:.1f}x; dump: {path}")


class LeaderChanges:
    """Counts changes from one known leader to another (the first leader is not a change), and
    separately the moments this replica saw no live leader (a heartbeat gap that healed)."""

    def __init__(self) -> None:
        self.count = 0
        self.gaps = 0
        self._last: int | None = None

    def observe(self, leader: int | None, mine: bool) -> None:
        if leader is None:
            self.gaps += 1
            return
        if self._last is not None and leader != self._last:
            self.count += 1
        self._last = leader


def run_st(opts: StOptions) -> int:
    """One replica of the st/st-lat benchmark (Rule 1)."""
    from consensus.fabric import open_fabric
    from consensus.registry import open_registry

    raise_priority()
    registry = open_registry(opts.cluster)
    registry.delete(DONE_KEY)  # a previous run's marker would make followers leave at once
    fabric = open_fabric(opts.fabric, opts.replica_id, opts.cluster, registry)
    config = ReplicaConfig(opts.replica_id, opts.members, payload_size_max=opts.payload_size,
                           log_slots=opts.log_slots)
    changes = LeaderChanges()
    replica = Replica(config, fabric, registry, on_leader_change=changes.observe)
    replica.start()
    tune_process()
    try:
        leader = wait_for_leader(replica, LEADER_WAIT_S)
        if leader != opts.replica_id:
            print(f"replica {opts.replica_id}: following leader {leader}")
        while registry.lookup(DONE_KEY) is None:
            if not replica.is_leader:  # whoever leads runs the benchmark, even after a change
                time.sleep(DONE_POLL_S)
                continue
            try:
                run_leader(replica, opts)
            except NotLeader as error:
                print(f"bench: lost leadership during the run ({changes.count} "
                      f"leader changes seen): {error}", file=sys.stderr)
                return 1
            except ConsensusError as error:
                print(f"bench: the run failed: {error}", file=sys.stderr)
                return 1
            finally:
                registry.publish(DONE_KEY, b"1")
        print(f"replica {opts.replica_id}: applied {replica.applied_index}, "
              f"leader changes seen during the run {changes.count}"
              f" (moments with no live leader in view: {changes.gaps})")
        return 0
    finally:
        replica.stop()
        fabric.close()
