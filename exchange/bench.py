"""``python -m exchange bench``: end-to-end order latency and throughput, 3 replicas vs
unreplicated.

Rule 1: both configurations run in the same invocation, alternately (``--rounds`` times each, one
        cluster at a time so an idle cluster never steals CPU from the measured one), and the
        figures printed side by side are the medians over rounds; the ratio replicated/unreplicated
        is the headline, because absolute numbers on a shared 2-core machine are noisy.
Rule 2: latency is measured with one closed-loop trader (one request in flight), throughput with
        ``--traders`` closed-loop traders; the first ``WARMUP_S`` of every phase is discarded.
Rule 3: the target (issue 6) is replicated p50 <= ``TARGET_P50_RATIO`` x unreplicated p50, judged
        on the ratio of the two medians; the per-round ratios (each round measures both
        configurations back to back, so slow drifts of the shared machine cancel) are printed
        beside it, with their spread, to show how much of a difference is noise.
Rule 4: ``--stream`` (issue 18) measures, per round and per cluster (3 replicas, then
        unreplicated), three order-entry modes with ``--traders`` closed-loop traders: unary calls,
        OrderSession with 1 order per message and with ``STREAM_BATCH`` per message (each trader
        keeps ``--window`` messages unanswered); plus one closed-loop trader's latency, unary and
        session (1 order, 1 in flight). It ends with one line per configuration,
        ``<mode> replicas=<n>: <N> orders/s, p50 <X> us`` (medians over rounds; the p50 is the
        per-order latency of the same throughput phase), then the verdicts against issue 18's
        targets, each with the per-round spread.
Rule 5: ``--durable`` adds a third configuration to every round: the 3-replica cluster with
        ``--data-dir`` (a fresh temporary directory per round, removed after) and ``--durability
        sync``; its target (issue 11) is p50 <= ``TARGET_DURABLE_P50_RATIO`` x the memory-only
        3-replica p50 of the same run, printed the same way (medians, per-round ratios).
Rule 6: ``--tls`` adds the 3-replica cluster over mutual TLS (a development CA made for the
        run, ``exchange.certs``; the traders present a trader certificate and use its client ids)
        to every round, compared with the plaintext 3-replica cluster of the same run the same
        way; no target, the ratio is what TLS costs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exchange.cluster import ClusterError, LocalCluster
from exchange.session import SESSION_IN_FLIGHT_MAX
from exchange.tls import ClientTls, certificate_ids, time_seq
from traders.load import ACKED, REJECTED, STREAM_WINDOW_DEFAULT, LoadConfig, LoadRun
from traders.stats import LatencySummary, summarize
from traders.workload import DEFAULT_SYMBOLS

WARMUP_S = 0.5
TARGET_P50_RATIO = 1.10
TARGET_DURABLE_P50_RATIO = 1.15
DURABLE = 4  # the results key of the durable 3-replica configuration (Rule 5)
TLS = 5  # the results key of the mutual-TLS 3-replica configuration (Rule 6)
TLS_TRADERS_MAX = 1000  # client ids in the benchmark's trader certificate
BENCH_SECONDS_DEFAULT = 3.0
# Single rounds on this shared 2-core machine range over +-10% (x0.98-1.24 seen in one run), so
# the default takes the median of 6 alternating rounds (about 2 minutes in all).
BENCH_ROUNDS_DEFAULT = 6
BENCH_TRADERS_DEFAULT = 8
LEADER_TIMEOUT_S = 10.0
BENCH_NICE = -10  # same as consensus's benchmarks
STREAM_BATCH = 20  # orders per session message in the batched mode (issue 18)
STREAM_ROUNDS_DEFAULT = 3
TARGET_STREAM_BATCH_PER_S = 20_000  # issue 18: 3 replicas, 8 traders, 20 orders per message
TARGET_STREAM_BATCH_RATIO = 0.85  # ... and at least this times the unreplicated figure
TARGET_STREAM_SINGLE_PER_S = 4_000  # issue 18: 3 replicas, 8 traders, 1 order per message
STREAM_MODES = (("unary", False, 1), ("stream batch=1", True, 1),
                (f"stream batch={STREAM_BATCH}", True, STREAM_BATCH))


@dataclass(frozen=True, slots=True)
class PhaseResult:
    latency: LatencySummary
    throughput_per_s: float
    # CPU time (user + system) per answered order over the whole phase, in us: the traders'
    # process, the leader (or the unreplicated server) and the followers together. A figure that
    # a busy shared machine disturbs far less than wall-clock rates (Rule 4).
    cpu_us: tuple[float, float, float] = (0.0, 0.0, 0.0)
    latencies_us: tuple[float, ...] = ()  # every measured request, for the CDF picture


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_snapshot(cluster: LocalCluster) -> dict[int, float]:
    """CPU seconds of every server (by replica id) and of this process (key 0)."""
    times = os.times()
    snapshot = {0: times.user + times.system}
    for replica_id, server in cluster.servers.items():
        snapshot[replica_id] = _process_cpu_s(server.process.pid)
    return snapshot


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench",
        help="end-to-end latency/throughput: 3 replicas vs --replicas 1, side by side",
        description="Measure order latency (1 closed-loop trader) and throughput (N closed-loop "
        "traders) through gRPC against a 3-replica cluster and an unreplicated server, "
        "alternately, and print both with their ratio.",
    )
    bench.add_argument("--seconds", type=float, default=BENCH_SECONDS_DEFAULT,
                       help=f"length of each measured phase (default {BENCH_SECONDS_DEFAULT:g})")
    bench.add_argument("--rounds", type=int, default=None,
                       help=f"alternating rounds of each configuration (default "
                       f"{BENCH_ROUNDS_DEFAULT}, {STREAM_ROUNDS_DEFAULT} with --stream); the "
                       f"medians are compared")
    bench.add_argument("--stream", action="store_true",
                       help="unary vs OrderSession with 1 and 20 orders per message, 3 replicas "
                       "and unreplicated, one line per configuration and issue 18's verdicts")
    bench.add_argument("--window", type=int, default=STREAM_WINDOW_DEFAULT,
                       help="with --stream: session messages each trader keeps unanswered "
                       f"(default {STREAM_WINDOW_DEFAULT})")
    bench.add_argument("--traders", type=int, default=BENCH_TRADERS_DEFAULT,
                       help="closed-loop traders in the throughput phase")
    bench.add_argument("--fabric", choices=("shm", "verbs"), default="shm")
    bench.add_argument("--seed", type=int, default=7)
    bench.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                       help="pass ARG to every server of both configurations (repeat it; e.g. "
                       "--server-arg=--heartbeat-interval-us=5000)")
    bench.add_argument("--durable", action="store_true",
                       help="also measure the 3-replica cluster with --data-dir and --durability "
                       "sync in every round (target: p50 <= "
                       f"x{TARGET_DURABLE_P50_RATIO:.2f} of memory-only 3 replicas)")
    bench.add_argument("--tls", action="store_true",
                       help="also measure the 3-replica cluster over mutual TLS in every round "
                       "(fresh development certificates), beside plaintext 3 replicas")
    bench.add_argument("--followers-nice", type=int, default=0, metavar="N",
                       help="run the 3-replica cluster's followers at this nice value (0-19), to "
                       "emulate followers on their own machines: with one-sided writes they are "
                       "not on the commit path, but here they share 2 cores with the leader")
    bench.add_argument("--plot-dir", default=".", metavar="DIR",
                       help="where to write bench-latency-cdf.png (default: the current "
                       "directory)")
    bench.add_argument("--no-plots", action="store_true", help="write no pictures")


def _trader_tls(cluster: LocalCluster, traders: int) -> dict[str, Any]:
    """Rule 6: the trader certificate's TLS settings and client ids (none in plaintext)."""
    if cluster.tls_dir is None:
        return {}
    directory = cluster.tls_dir
    tls = ClientTls.from_files(str(directory / "ca.crt"), str(directory / "trader-bench.crt"),
                               str(directory / "trader-bench.key"))
    return {"tls": tls, "client_ids": certificate_ids(tls, traders, "--traders"),
            "first_seq": time_seq()}


def measure_phase(cluster: LocalCluster, traders: int, seconds: float, seed: int,
                  stream: bool = False, batch: int = 1, window: int = 1) -> PhaseResult:
    """``traders`` closed-loop traders against ``cluster`` for ``seconds`` after a warm-up:
    latency of the answered requests, rate, CPU per order (also scripts/latency_parts.py)."""
    load = LoadRun(LoadConfig(
        addresses=tuple(cluster.addresses.values()), traders=traders, rate_per_s=0.0,
        test_ms=int((seconds + WARMUP_S) * 1000), seed=seed, symbols=DEFAULT_SYMBOLS,
        stream=stream, batch=batch, window=window, **_trader_tls(cluster, traders),
    ))
    before = _cpu_snapshot(cluster)
    load.start()
    load.wait()
    load.close()
    after = _cpu_snapshot(cluster)
    report = load.report()
    warm_ns = report.started_ns + int(WARMUP_S * 1e9)
    measured = [s for s in report.samples
                if s.start_ns >= warm_ns and s.outcome in (ACKED, REJECTED)]
    failed = report.counts.get("failed", 0)
    if failed:
        raise ClusterError(f"{failed} requests failed during the benchmark: {load.errors[:1]}")
    answered = max(1, len(report.samples))
    leader = (cluster.leader_id() or 1) if cluster.replicas > 1 else 1
    used = {key: (after[key] - before[key]) * 1e6 / answered for key in after}
    followers = sum(v for key, v in used.items() if key not in (0, leader))
    return PhaseResult(summarize(s.latency_ns for s in measured), len(measured) / seconds,
                       (used[0], used[leader], followers),
                       tuple(s.latency_ns / 1e3 for s in measured))


def _measure(config: int, args: argparse.Namespace, round_index: int) -> tuple[PhaseResult,
                                                                               PhaseResult]:
    if config in (DURABLE, TLS):
        directory = Path(tempfile.mkdtemp(prefix="mu-bench-"))
        try:
            if config == DURABLE:
                return _measure_cluster(3, args, round_index, str(directory))
            from exchange.certs import make_certs

            make_certs(directory, 3, f"bench=1-{TLS_TRADERS_MAX}", [], 1, new_ca=True)
            return _measure_cluster(3, args, round_index, None, directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    return _measure_cluster(config, args, round_index, None)


def _measure_cluster(replicas: int, args: argparse.Namespace, round_index: int,
                     data_dir: str | None, tls_dir: Path | None = None
                     ) -> tuple[PhaseResult, PhaseResult]:
    name = "bench3d" if data_dir else "bench3t" if tls_dir else f"bench{min(replicas, 3)}"
    with LocalCluster(replicas, fabric=args.fabric, name=name, extra_args=tuple(args.server_arg),
                      data_dir=data_dir, durability="sync" if data_dir else None,
                      tls_dir=tls_dir,
                      symbols=DEFAULT_SYMBOLS) as cluster:
        if replicas > 1 and args.followers_nice:
            leader = cluster.wait_for_leader(LEADER_TIMEOUT_S)
            for replica_id, server in cluster.servers.items():
                if replica_id != leader:
                    renice_process(server.process.pid, args.followers_nice)
        seed = args.seed + round_index
        measure_phase(cluster, 1, WARMUP_S, seed)  # warm the server's code paths and channels
        latency = measure_phase(cluster, 1, args.seconds, seed)
        throughput = measure_phase(cluster, args.traders, args.seconds, seed)
    return latency, throughput


def renice_process(pid: int, nice: int) -> None:
    """Set the nice value of every thread of ``pid`` (Linux nice is per thread)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(task), nice)
        except (ProcessLookupError, PermissionError):
            pass


def _median(results: list[PhaseResult]) -> tuple[float, float, float, float, float]:
    return (
        statistics.median(r.latency.p50_us for r in results),
        statistics.median(r.latency.p90_us for r in results),
        statistics.median(r.latency.p99_us for r in results),
        statistics.median(r.latency.max_us for r in results),
        statistics.median(r.throughput_per_s for r in results),
    )


def raise_priority() -> str:
    """Run the benchmark (traders and, inherited, every server) at ``BENCH_NICE``, as consensus's
    benchmarks do, so other jobs on this shared machine disturb both configurations less."""
    try:
        nice = int(os.environ.get("MU_BENCH_NICE", str(BENCH_NICE)))
    except ValueError:
        return "nice unchanged (MU_BENCH_NICE is not an integer)"
    if nice == 0:
        return "nice 0"
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)  # this thread; threads and children inherit it
    except PermissionError:
        return "nice unchanged (not allowed)"
    return f"nice {nice} (MU_BENCH_NICE=0 disables)"


def run(args: argparse.Namespace) -> int:
    if args.rounds is None:
        args.rounds = STREAM_ROUNDS_DEFAULT if args.stream else BENCH_ROUNDS_DEFAULT
    if args.stream:
        return run_stream(args)
    if args.seconds <= 0 or args.rounds < 1 or not 1 <= args.traders <= TLS_TRADERS_MAX:
        print("python -m exchange bench: error: need --seconds > 0, --rounds >= 1, "
              f"--traders in 1..{TLS_TRADERS_MAX}", file=sys.stderr)
        return 2
    print(f"bench: traders and servers at {raise_priority()}", flush=True)
    configs = (1, 3, *((DURABLE,) if args.durable else ()), *((TLS,) if args.tls else ()))
    if args.durable:
        print(f"bench: this disk now: {_fdatasync_line()}", flush=True)
    results: dict[int, tuple[list[PhaseResult], list[PhaseResult]]] = {c: ([], []) for c in configs}
    try:
        for round_index in range(args.rounds):
            for config in configs:
                latency, throughput = _measure(config, args, round_index)
                results[config][0].append(latency)
                results[config][1].append(throughput)
                label = {DURABLE: "3+sync", TLS: "3+mTLS"}.get(config, str(config))
                print(f"round {round_index + 1}/{args.rounds} replicas={label}: latency "
                      f"{latency.latency.line()}; {args.traders} traders "
                      f"{throughput.throughput_per_s:,.0f}/s p50 "
                      f"{throughput.latency.p50_us:.0f} us", flush=True)
    except ClusterError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    status = _print_table(results, args)
    if not args.no_plots:
        _picture(results, args)
    return status


def _picture(results: dict[int, tuple[list[PhaseResult], list[PhaseResult]]],
             args: argparse.Namespace) -> None:
    """One CDF per configuration and phase, each pooling every round's requests."""
    from traders.pictures import write_cdf

    series = {}
    for replicas, label in ((1, "unreplicated"), (3, "3 replicas")):
        for phase, traders in ((0, 1), (1, args.traders)):
            pooled = [v for result in results[replicas][phase] for v in result.latencies_us]
            series[f"{label}, {traders} trader{'s' if traders > 1 else ''}"] = pooled
    rounds = f"{args.rounds} round{'s' if args.rounds > 1 else ''}"
    write_cdf(args.plot_dir, "bench", f"exchange bench: order latency through gRPC "
              f"({rounds} of {args.seconds:g} s)", series)


def _fdatasync_line(samples: int = 200, record_bytes: int = 150) -> str:
    """The latency of appending one journal-sized record + ``fdatasync`` here, now (context
    for the durable figures: on a shared machine it moves by orders of magnitude)."""
    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mu-bench-fsync-") as directory:
        fd = os.open(os.path.join(directory, "probe"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for _ in range(samples):
                os.write(fd, b"x" * record_bytes)
                started = time.perf_counter()
                os.fdatasync(fd)
                latencies.append(time.perf_counter() - started)
        finally:
            os.close(fd)
    latencies.sort()
    return (f"append {record_bytes} B + fdatasync p50 {latencies[samples // 2] * 1e6:.0f} us, "
            f"p90 {latencies[samples * 9 // 10] * 1e6:.0f} us, "
            f"p99 {latencies[samples * 99 // 100] * 1e6:.0f} us ({samples} samples)")


def _print_table(results: dict[int, tuple[list[PhaseResult], list[PhaseResult]]],
                 args: argparse.Namespace) -> int:
    nice = f"; followers at nice {args.followers_nice}" if args.followers_nice else ""
    print(f"\nend-to-end through gRPC (medians over {args.rounds} rounds of {args.seconds:g} s; "
          f"latency: 1 closed-loop trader; throughput: {args.traders} traders{nice})")
    print(f"{'':14}{'p50 us':>9}{'p90 us':>9}{'p99 us':>9}{'max us':>10}{'orders/s':>10}"
          f"{'tput p50 us':>13}")
    rows = {}
    labels = ((1, "unreplicated"), (3, "3 replicas"), (DURABLE, "3 + sync disk"),
              (TLS, "3 + mutual TLS"))
    for replicas, label in (item for item in labels if item[0] in results):
        p50, p90, p99, top, _ = _median(results[replicas][0])
        *_, tput = _median(results[replicas][1])
        tput_p50 = statistics.median(r.latency.p50_us for r in results[replicas][1])
        rows[replicas] = (p50, tput)
        print(f"{label:14}{p50:9.0f}{p90:9.0f}{p99:9.0f}{top:10.0f}{tput:10,.0f}{tput_p50:13.0f}")
    ratio = rows[3][0] / rows[1][0] if rows[1][0] else float("inf")
    tput_ratio = rows[3][1] / rows[1][1] if rows[1][1] else 0.0
    verdict = "meets" if ratio <= TARGET_P50_RATIO else "MISSES"
    print(f"replicated/unreplicated: p50 x{ratio:.3f} ({verdict} the x{TARGET_P50_RATIO:.2f} "
          f"target), throughput x{tput_ratio:.3f}")
    paired = sorted(rep.latency.p50_us / unrep.latency.p50_us
                    for unrep, rep in zip(results[1][0], results[3][0], strict=True))
    print(f"per-round p50 ratios (each round runs both back to back): median "
          f"x{statistics.median(paired):.3f}, range x{paired[0]:.3f}-x{paired[-1]:.3f}")
    if DURABLE in results:
        _print_versus(results, rows, DURABLE, "durable (sync)/memory-only",
                      TARGET_DURABLE_P50_RATIO)
        print(f"bench: this disk after the rounds: {_fdatasync_line()}")
    if TLS in results:
        _print_versus(results, rows, TLS, "mutual TLS/plaintext", None)
    return 0


StreamResults = dict[tuple[str, int], list[PhaseResult]]


def _measure_stream(replicas: int, args: argparse.Namespace, round_index: int,
                    results: StreamResults) -> None:
    """One cluster, every mode of Rule 4, appended to ``results``."""
    name = "bench3" if replicas > 1 else "bench1"
    seed = args.seed + round_index
    with LocalCluster(replicas, fabric=args.fabric, name=name,
                      extra_args=tuple(args.server_arg), symbols=DEFAULT_SYMBOLS) as cluster:
        measure_phase(cluster, 1, WARMUP_S, seed)  # warm the server's code paths and channels
        for mode, stream, batch in STREAM_MODES:
            window = args.window if stream else 1
            result = measure_phase(cluster, args.traders, args.seconds, seed, stream, batch,
                                   window)
            results.setdefault((mode, replicas), []).append(result)
            traders_cpu, leader_cpu, followers_cpu = result.cpu_us
            print(f"round {round_index + 1}/{args.rounds} {mode} replicas={replicas}: "
                  f"{result.throughput_per_s:,.0f} orders/s, p50 {result.latency.p50_us:.0f} us; "
                  f"CPU us/order traders {traders_cpu:.0f}, leader {leader_cpu:.0f}, followers "
                  f"{followers_cpu:.0f}", flush=True)
        for mode, stream in (("1 trader unary", False), ("1 trader stream", True)):
            result = measure_phase(cluster, 1, args.seconds, seed, stream, 1, 1)
            results.setdefault((mode, replicas), []).append(result)
            print(f"round {round_index + 1}/{args.rounds} {mode} replicas={replicas}: "
                  f"p50 {result.latency.p50_us:.0f} us", flush=True)


def run_stream(args: argparse.Namespace) -> int:
    """Rule 4."""
    if args.seconds <= 0 or args.rounds < 1 or args.traders < 1 or not \
            1 <= args.window * STREAM_BATCH <= SESSION_IN_FLIGHT_MAX:
        print(f"python -m exchange bench: error: need --seconds > 0, --rounds >= 1, --traders "
              f">= 1, 1 <= --window <= {SESSION_IN_FLIGHT_MAX // STREAM_BATCH}", file=sys.stderr)
        return 2
    print(f"bench: traders and servers at {raise_priority()}; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    results: StreamResults = {}
    try:
        for round_index in range(args.rounds):
            for replicas in (3, 1):
                _measure_stream(replicas, args, round_index, results)
    except ClusterError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    print(f"\nend-to-end through gRPC, {args.traders} closed-loop traders, medians of "
          f"{args.rounds} rounds of {args.seconds:g} s (min-max over rounds); sessions keep "
          f"{args.window} messages unanswered; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for mode, _, _ in STREAM_MODES:
        for replicas in (3, 1):
            phases = results[(mode, replicas)]
            rates = sorted(r.throughput_per_s for r in phases)
            p50 = statistics.median(r.latency.p50_us for r in phases)
            print(f"{mode} replicas={replicas}: {statistics.median(rates):,.0f} orders/s, "
                  f"p50 {p50:.0f} us  ({rates[0]:,.0f}-{rates[-1]:,.0f})")
    print("CPU per order, us (medians; traders / leader or server / both followers):")
    for mode, _, _ in STREAM_MODES:
        for replicas in (3, 1):
            cpu = [statistics.median(r.cpu_us[i] for r in results[(mode, replicas)])
                   for i in range(3)]
            print(f"  {mode} replicas={replicas}: {cpu[0]:.0f} / {cpu[1]:.0f} / {cpu[2]:.0f}")
    _stream_verdicts(results)
    return 0


def _ratios(results: StreamResults, mode: str, key: str) -> list[float]:
    """Per-round ratios 3 replicas / unreplicated of ``key`` (rate or p50), sorted."""
    def value(result: PhaseResult) -> float:
        return result.throughput_per_s if key == "rate" else result.latency.p50_us

    pairs = zip(results[(mode, 3)], results[(mode, 1)], strict=True)
    return sorted(value(a) / value(b) if value(b) else 0.0 for a, b in pairs)


def _stream_verdicts(results: StreamResults) -> None:
    batched = f"stream batch={STREAM_BATCH}"
    rate = statistics.median(r.throughput_per_s for r in results[(batched, 3)])
    ratios = _ratios(results, batched, "rate")
    print(f"verdict: stream batch={STREAM_BATCH} replicas=3 {rate:,.0f} orders/s "
          f"({'meets' if rate >= TARGET_STREAM_BATCH_PER_S else 'MISSES'} >= "
          f"{TARGET_STREAM_BATCH_PER_S:,}); x{statistics.median(ratios):.2f} unreplicated, "
          f"per-round x{ratios[0]:.2f}-x{ratios[-1]:.2f} "
          f"({'meets' if statistics.median(ratios) >= TARGET_STREAM_BATCH_RATIO else 'MISSES'}"
          f" >= x{TARGET_STREAM_BATCH_RATIO})")
    rate = statistics.median(r.throughput_per_s for r in results[("stream batch=1", 3)])
    ratios = _ratios(results, "stream batch=1", "rate")
    print(f"verdict: stream batch=1 replicas=3 {rate:,.0f} orders/s "
          f"({'meets' if rate >= TARGET_STREAM_SINGLE_PER_S else 'MISSES'} >= "
          f"{TARGET_STREAM_SINGLE_PER_S:,}); x{statistics.median(ratios):.2f} unreplicated, "
          f"per-round x{ratios[0]:.2f}-x{ratios[-1]:.2f}")
    for mode in ("1 trader unary", "1 trader stream"):
        ratios = _ratios(results, mode, "p50")
        median = statistics.median(ratios)
        print(f"verdict: {mode} p50 replicas=3 / unreplicated: median of per-round ratios "
              f"x{median:.3f} (x{ratios[0]:.3f}-x{ratios[-1]:.3f}) "
              f"({'meets' if median <= TARGET_P50_RATIO else 'MISSES'} <= x{TARGET_P50_RATIO})")


def _print_versus(results: dict[int, tuple[list[PhaseResult], list[PhaseResult]]],
                  rows: dict[int, tuple[float, float]], config: int, label: str,
                  target: float | None) -> None:
    """Rules 5-6: ``config`` (durable, or mutual TLS) against plaintext memory-only 3 replicas
    of the same run: the ratio of the medians and the per-round ratios."""
    ratio = rows[config][0] / rows[3][0] if rows[3][0] else float("inf")
    tput_ratio = rows[config][1] / rows[3][1] if rows[3][1] else 0.0
    verdict = "" if target is None else (
        f" ({'meets' if ratio <= target else 'MISSES'} the x{target:.2f} target)")
    print(f"{label}, 3 replicas: p50 x{ratio:.3f}{verdict}, throughput x{tput_ratio:.3f}")
    paired = sorted(other.latency.p50_us / base.latency.p50_us
                    for base, other in zip(results[3][0], results[config][0], strict=True))
    print(f"per-round {label} p50 ratios: median x{statistics.median(paired):.3f}, "
          f"range x{paired[0]:.3f}-x{paired[-1]:.3f}")
