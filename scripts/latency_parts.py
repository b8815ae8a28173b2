"""Where a replicated order's extra latency comes from on this machine (issue 18's x1.10).

Usage:
    python scripts/latency_parts.py [--rounds R] [--seconds S]

One closed-loop trader, as ``python -m exchange bench`` measures its latency phase (unary, then a
session with one order in flight), against five configurations started afresh in every round, in
alternation:

* ``unreplicated``: one server (the baseline);
* ``3 replicas``: the default cluster;
* ``3 replicas, no native beat``: ``MU_NATIVE_HEARTBEAT=0 MU_BACKGROUND_RT=0`` (the Python
  heartbeat, no real-time threads: slower fail-over detection, docs/consensus.md);
* ``3 replicas, followers stopped``: both followers ``SIGSTOP``ped once the leader is known
  (the leader's writes are one-sided, so it goes on committing), then continued;
* ``3 replicas, followers stopped, no native beat``: both.

Prints each round's p50s and, per configuration, the median p50 and the median of its per-round
ratios to ``unreplicated``. On machines where every replica has its own cores the followers
(and their beat threads) would not share the leader's; here the two stopped configurations say
what that would be worth. Exit status 1 if a cluster fails to start or a request fails.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exchange.bench import WARMUP_S, measure_phase, raise_priority  # noqa: E402
from exchange.cluster import ClusterError, LocalCluster  # noqa: E402
from traders.workload import DEFAULT_SYMBOLS  # noqa: E402

NO_NATIVE = {"MU_NATIVE_HEARTBEAT": "0", "MU_BACKGROUND_RT": "0"}
CONFIGS: dict[str, tuple[int, dict[str, str], bool]] = {
    # name: (replicas, server environment, followers stopped)
    "unreplicated": (1, {}, False),
    "3 replicas": (3, {}, False),
    "3 replicas, no native beat": (3, NO_NATIVE, False),
    "3 replicas, followers stopped": (3, {}, True),
    "3 replicas, followers stopped, no native beat": (3, NO_NATIVE, True),
}


@contextmanager
def _environment(changes: dict[str, str]) -> Iterator[None]:
    """The servers inherit this process's environment: set ``changes`` while they start."""
    saved = {key: os.environ.get(key) for key in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _measure(name: str, seconds: float, seed: int) -> tuple[float, float]:
    """(unary p50 us, session p50 us) of one closed-loop trader against a fresh cluster."""
    replicas, environment, stop_followers = CONFIGS[name]
    with _environment(environment), LocalCluster(replicas, name=f"parts{replicas}",
                                                 symbols=DEFAULT_SYMBOLS) as cluster:
        measure_phase(cluster, 1, WARMUP_S, seed)
        stopped: list[int] = []
        if stop_followers:
            leader = cluster.wait_for_leader(10.0)
            stopped = [server.process.pid for replica_id, server in cluster.servers.items()
                       if replica_id != leader]
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
        try:
            unary = measure_phase(cluster, 1, seconds, seed).latency.p50_us
            session = measure_phase(cluster, 1, seconds, seed, stream=True, batch=1,
                                    window=1).latency.p50_us
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
    return unary, session


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="length of each measured phase (default 3)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("need --rounds >= 1 and --seconds > 0")
    print(f"latency_parts: traders and servers at {raise_priority()}", flush=True)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in CONFIGS}
    try:
        for round_index in range(args.rounds):
            for name in CONFIGS:
                unary, session = _measure(name, args.seconds, args.seed + round_index)
                results[name].append((unary, session))
                print(f"round {round_index + 1}/{args.rounds} {name}: p50 unary {unary:.0f} us, "
                      f"session {session:.0f} us", flush=True)
    except ClusterError as error:
        print(f"latency_parts: error: {error}", file=sys.stderr)
        return 1
    base = results["unreplicated"]
    print(f"\n1 closed-loop trader, p50 (medians of {args.rounds} rounds of {args.seconds:g} s; "
          "ratio: median of per-round ratios to unreplicated):")
    for name, values in results.items():
        cells = []
        for kind, column in (("unary", 0), ("session", 1)):
            ratios = [value[column] / baseline[column]
                      for value, baseline in zip(values, base, strict=True)]
            cells.append(f"{kind} {statistics.median(v[column] for v in values):.0f} us "
                         f"x{statistics.median(ratios):.2f}")
        print(f"  {name}: {', '.join(cells)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
