"""``python -m consensus bench st|st-lat``: the original main-st / main-st-lat, one replica per
process, meeting through the registry.

Rule 1: every process runs the same command with its own id; whichever replica leads replicates
        ``--count`` commands of ``payload_size`` bytes with ``outstanding`` in flight, prints
        ``Received X in Y ns`` (as the original did) and ops/s, then publishes ``bench/done`` so
        the followers exit (the original needed Ctrl-C).
Rule 2: st-lat also writes one latency per command, in ns, to ``dump-st-<size>-<outstanding>.txt``
        and prints p50/p90/p99. With ``outstanding > 1`` a command's latency is its batch's.
        ``--plot`` (or ``bench plot DUMP...`` later) draws dumps as latency CDFs through the
        top-level ``plots`` package, which imports nothing of ours.
Rule 3: every figure is printed next to a baseline measured in the same process just before:
        a bare ``struct.pack_into`` + slice copy loop of the same payload (the cost floor of one
        local append), and the ratio, because the machine is shared and noisy.
Rule 4: benchmark processes freeze the GC after start-up and raise their CPU priority by
        ``BENCH_NICE`` when allowed (on a shared machine an unprioritised replica waits 10+ ms
        for a CPU). The GIL switch interval stays at CPython's 5 ms: the leader delivers its
        own entries in the proposing thread, so its background threads only need the
        interpreter now and then, and a longer interval lets their turns coalesce into fewer
        stalls of the proposer.
Rule 5: with ``--pin`` (the default with ``--local``) the leader's process takes one CPU and
        the followers share the others once the leader is known, as the original pinned its
        processes with ``numactl``: on 2 cores a follower's wake-ups (heartbeat, scanner,
        pump) otherwise preempt the proposer thousands of times a second.
Rule 6: the leader reports (sorting and dumping 200,000 latencies holds the GIL for tens of
        milliseconds, longer than the failure detector's threshold) only after it told the
        followers the run is over, so the report cannot cause a leader change.
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
from consensus.registry import Registry
from consensus.replica import Replica

BENCH_NICE = -10  # priority boost of benchmark processes (MU_BENCH_NICE=0 to disable)
LEADER_WAIT_S = 30.0  # how long to wait for a leader to emerge
BENCH_PROPOSE_TIMEOUT_S = 10.0  # a starved follower may not apply for seconds on a loaded host
DONE_KEY = "bench/done"
STARTED_KEY = "bench/started"  # the id of the replica running the benchmark
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
    pin: bool = False
    reset_markers: bool = True  # False with --local: a fresh cluster id has no stale markers,
    # and a replica that starts late must not erase the markers of the run in progress
    plot: bool = False  # st-lat: draw the dump as a CDF beside it


def raise_priority() -> None:
    """Rule 4; call before the replica starts: on Linux a thread inherits its creator's nice."""
    nice = int(os.environ.get("MU_BENCH_NICE", BENCH_NICE))
    if nice:
        try:
            os.nice(nice)
        except OSError:
            print(f"bench: could not change priority by {nice} (not root?); timings may suffer",
                  file=sys.stderr)


def pin_roles(leader: bool) -> str:
    """Rule 5: give the leader a CPU of its own and the followers the others (as the original's
    ``numactl --physcpubind``); every thread of this process moves. Returns what was done."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return "not pinned (one CPU available)"
    cpus = set(available[:1]) if leader else set(available[1:])
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # a thread that just exited
            continue
    return f"pinned to CPU {','.join(str(cpu) for cpu in sorted(cpus))}"


def tune_process() -> None:
    """Rule 4, after start-up."""
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


@dataclass(frozen=True, slots=True)
class StResult:
    total: int
    elapsed_ns: int
    baseline_ns: float
    latencies: array[int] | None


def run_leader(replica: Replica, opts: StOptions) -> StResult:
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
    return StResult(rounds * opts.outstanding, elapsed, base, latencies)


def report(result: StResult, opts: StOptions) -> None:
    """Rule 6: called after the followers were told the run is over."""
    total, elapsed = result.total, result.elapsed_ns
    per_op = elapsed / total
    print(f"Received {total} in {elapsed} ns")
    print(f"throughput: {total / elapsed * 1e9:,.0f} commits/s ({per_op:,.0f} ns/commit); "
          f"baseline local append {result.baseline_ns:,.0f} ns; ratio "
          f"{per_op / result.baseline_ns:.1f}x")
    if result.latencies is not None:
        report_latency(result.latencies, opts, result.baseline_ns)


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
    if opts.plot:
        plot_dumps([path])


def plot_dumps(paths: list[str], out: str = "") -> int:
    """Draw st-lat dumps (ns per line) as one latency CDF, a curve per file, into ``out``
    (default: the first dump's name with ``.png``); print the path. 0, or 1 with one line."""
    from plots import PlotError, latency_cdf, read_latency_column

    assert paths, "at least one dump"
    target = out or os.path.splitext(paths[0])[0] + ".png"
    try:
        series = {os.path.basename(path): [ns / 1e3 for ns in read_latency_column(path)]
                  for path in paths}
        written = latency_cdf(series, target, "consensus bench st-lat: replication latency")
    except PlotError as error:
        print(f"bench plot: error: {error}", file=sys.stderr)
        return 1
    except ImportError as error:
        print(f"bench plot: error: needs matplotlib ({error}); run scripts/setup.sh",
              file=sys.stderr)
        return 1
    print(f"picture: {written}")
    return 0


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


def _claim_run(registry: Registry, replica_id: int) -> bool:
    """Rule 1: whoever leads first runs the benchmark (also after a leader change before the
    run began), and only once: a replica that takes over when the runner stops does not run
    it again."""
    runner = registry.lookup(STARTED_KEY)
    if runner is None:
        registry.publish(STARTED_KEY, str(replica_id).encode())
        return True
    return runner == str(replica_id).encode()


def run_st(opts: StOptions) -> int:
    """One replica of the st/st-lat benchmark (Rule 1)."""
    from consensus.fabric import open_fabric
    from consensus.registry import open_registry

    raise_priority()
    registry = open_registry(opts.cluster)
    if opts.reset_markers:  # a previous run's markers would make followers leave at once
        registry.delete(DONE_KEY)
        registry.delete(STARTED_KEY)
    fabric = open_fabric(opts.fabric, opts.replica_id, opts.cluster, registry)
    config = ReplicaConfig(opts.replica_id, opts.members, payload_size_max=opts.payload_size,
                           log_slots=opts.log_slots)
    changes = LeaderChanges()
    replica = Replica(config, fabric, registry, on_leader_change=changes.observe)
    replica.start()
    tune_process()
    try:
        leader = wait_for_leader(replica, LEADER_WAIT_S)
        pinned = f", {pin_roles(leader == opts.replica_id)}" if opts.pin else ""
        if leader != opts.replica_id:
            print(f"replica {opts.replica_id}: following leader {leader}{pinned}")
        elif pinned:
            print(f"replica {opts.replica_id}: leading{pinned}")
        while registry.lookup(DONE_KEY) is None:
            if not replica.is_leader or not _claim_run(registry, opts.replica_id):
                time.sleep(DONE_POLL_S)
                continue
            result = None
            try:
                result = run_leader(replica, opts)
            except NotLeader as error:
                print(f"bench: lost leadership during the run ({changes.count} "
                      f"leader changes seen): {error}", file=sys.stderr)
                return 1
            except ConsensusError as error:
                print(f"bench: the run failed: {error}", file=sys.stderr)
                return 1
            finally:
                registry.publish(DONE_KEY, b"1")
                # stop after the followers saw the marker: a leader stopping first would be
                # counted as a leader change by a follower that has not looked yet
                time.sleep(3 * DONE_POLL_S)
            report(result, opts)
        print(f"replica {opts.replica_id}: applied {replica.applied_index}, "
              f"leader changes seen during the run {changes.count}"
              f" (moments with no live leader in view: {changes.gaps})")
        return 0
    finally:
        replica.stop()
        fabric.close()
