"""``python -m kvstores bench``: the real server alone, the front end unreplicated, 3 replicas.

Rule 1: one invocation measures, for redis and memcached, puts-only and gets-only with one
        closed-loop client (``kvstores.clients.run_load``): the real server on a TCP port
        (``alone``), the front end with ``--replicas 1`` (``front``) and 3 replicas (``3 repl``,
        client on the leader). All configurations run side by side for the whole benchmark and
        are measured in alternating order, round after round, so each ratio compares figures
        taken under the same machine load.
Rule 2: printed per store and workload: median over rounds of p50 / p99 (us) and ops/s for each
        configuration, the ratio of medians against the unreplicated front end and against the
        server alone, and the spread (min-max) of the per-round p50 ratios.
Rule 3: the goal (the issue's): replicated puts-only p50 at most x1.25 of the unreplicated front
        end; the line says met or not met, never hides a miss.
Rule 4: like the consensus and exchange benchmarks, it runs at nice -10 (inherited by every
        process it starts), so other jobs on this shared machine disturb all configurations less.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from kvstores.backend import _die_with_parent
from kvstores.clients import LoadResult, run_load
from kvstores.cluster import LocalKvCluster, free_ports

GOAL_RATIO = 1.25
CONFIGS = ("alone", "front", "3 repl")
WORKLOADS = ("puts-only", "gets-only")
SERVER_START_S = 10.0
BENCH_NICE = -10  # priority of the benchmark and its servers (MU_BENCH_NICE=0 disables)


@dataclass(frozen=True, slots=True)
class Sample:
    p50_us: float
    p99_us: float
    ops_per_s: float


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "bench", help="real server alone vs unreplicated front end vs 3 replicas",
        description="Measures redis and memcached: the real server alone, the front end "
        "unreplicated (--replicas 1) and 3 replicas, puts-only and gets-only (p50/p99 and "
        "ops/s, one closed-loop client), in alternating rounds, and prints ratios with their "
        "spread. Goal: replicated puts-only p50 <= x1.25 of the unreplicated front end.")
    parser.add_argument("--requests", type=int, default=5000,
                        help="requests per measurement (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--key-size", type=int, default=16)
    parser.add_argument("--value-size", type=int, default=32)
    parser.add_argument("--only", choices=("redis", "memcached"), default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.set_defaults(run=run)


@contextlib.contextmanager
def real_server(kind: str) -> Iterator[str]:
    """The real server alone on a TCP port of 127.0.0.1 (no persistence, like the replicas')."""
    port = free_ports(1)[0]
    if kind == "redis":
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--logfile", ""]
    else:
        argv = ["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "1024",
                "-M", "-t", "1"] + (["-u", "root"] if os.geteuid() == 0 else [])
    if shutil.which(argv[0]) is None:
        raise RuntimeError(f"{argv[0]} is not installed (bash scripts/setup.sh installs it)")
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=_die_with_parent)
    try:
        from kvstores.cluster import memcached_call, redis_call

        deadline = time.monotonic() + SERVER_START_S
        address = f"127.0.0.1:{port}"
        while True:
            try:
                if kind == "redis":
                    redis_call(address, b"PING")
                else:
                    memcached_call(address, b"version\r\n", False)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"{argv[0]} did not start on port {port}") from None
                time.sleep(0.02)
        yield address
    finally:
        process.terminate()
        process.wait(5)


def _measure(kind: str, workload: str, address: str, args: argparse.Namespace) -> Sample:
    host, _, port = address.rpartition(":")
    result: LoadResult = run_load(kind, workload, args.key_size, args.value_size, host,
                                  int(port), args.requests, seed=args.seed)
    return Sample(result.percentile_us(0.5), result.percentile_us(0.99), result.ops_per_s)


def _report(kind: str, results: dict[tuple[str, str], list[Sample]]) -> bool:
    goal_met = True
    for workload in WORKLOADS:
        print(f"  {kind} {workload}:")
        medians = {}
        for config in CONFIGS:
            samples = results[(workload, config)]
            p50 = statistics.median(s.p50_us for s in samples)
            p99 = statistics.median(s.p99_us for s in samples)
            ops = statistics.median(s.ops_per_s for s in samples)
            medians[config] = p50
            print(f"    {config:7}  p50 {p50:8.1f} us   p99 {p99:8.1f} us   {ops:9,.0f} ops/s")
        per_round = [replicated.p50_us / front.p50_us for replicated, front in
                     zip(results[(workload, "3 repl")], results[(workload, "front")], strict=True)]
        ratio = medians["3 repl"] / medians["front"]
        print(f"    p50 ratios: 3 repl / front x{ratio:.3f} (rounds x{min(per_round):.2f}-"
              f"x{max(per_round):.2f}); front / alone x{medians['front'] / medians['alone']:.2f}; "
              f"3 repl / alone x{medians['3 repl'] / medians['alone']:.2f}")
        if workload == "puts-only":
            met = ratio <= GOAL_RATIO
            goal_met = goal_met and met
            print(f"    goal: replicated puts-only p50 <= x{GOAL_RATIO} of the unreplicated "
                  f"front end: {'met' if met else 'NOT met'} (x{ratio:.3f})")
    return goal_met


def bench_store(kind: str, args: argparse.Namespace) -> bool:
    print(f"== {kind}: {args.rounds} rounds x {args.requests} requests, key {args.key_size} B, "
          f"value {args.value_size} B, one closed-loop client", flush=True)
    results: dict[tuple[str, str], list[Sample]] = {
        (workload, config): [] for workload in WORKLOADS for config in CONFIGS}
    with real_server(kind) as alone, LocalKvCluster(kind, 1, name="bench1") as front, \
            LocalKvCluster(kind, 3, name="bench3") as replicated:
        for round_number in range(args.rounds):
            leader = replicated.wait_for_leader(10.0)
            addresses = {"alone": alone, "front": front.addresses[1],
                         "3 repl": replicated.addresses[leader]}
            order = CONFIGS if round_number % 2 == 0 else tuple(reversed(CONFIGS))
            for workload in WORKLOADS:
                for config in order:
                    sample = _measure(kind, workload, addresses[config], args)
                    results[(workload, config)].append(sample)
            print(f"  round {round_number + 1}/{args.rounds} done", flush=True)
    return _report(kind, results)


def raise_priority() -> str:
    """Run at ``BENCH_NICE`` (this process and, inherited, every server and local server it
    starts), as the consensus and exchange benchmarks do; ``MU_BENCH_NICE=0`` disables it."""
    try:
        nice = int(os.environ.get("MU_BENCH_NICE", str(BENCH_NICE)))
    except ValueError:
        return "nice unchanged (MU_BENCH_NICE is not an integer)"
    if nice == 0:
        return "nice 0"
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except PermissionError:
        return "nice unchanged (not allowed)"
    return f"nice {nice} (MU_BENCH_NICE=0 disables)"


def run(args: argparse.Namespace) -> int:
    if args.requests < 100 or args.rounds < 1:
        print("bench: need --requests >= 100 and --rounds >= 1")
        return 2
    print(f"kvstores bench: seed {args.seed}; {raise_priority()}; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    met = True
    for kind in ("redis", "memcached"):
        if args.only in (None, kind):
            met = bench_store(kind, args) and met
    print(f"kvstores bench: load average {os.getloadavg()[0]:.1f} at the end")
    return 0
