"""``python -m consensus.sim``: run seeded simulations of the Mu protocol and check its invariants.

Rule 1: every failing seed is printed with a one-line command that replays it exactly.
Rule 2: the exit status is 0 only if every seed ran clean; 1 if any failed; 2 for bad usage or a
        protocol that cannot be imported.
Rule 3: progress goes to stderr (tqdm); the summary and the failures go to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence

from tqdm import tqdm

from consensus.sim.plan import (
    FAULT_PHASE_NS_DEFAULT,
    NS_PER_MS,
    QUIET_PHASE_NS_DEFAULT,
    STEPS_MAX_DEFAULT,
    make_plan,
)
from consensus.sim.protocol import ProtocolAdapter, mu_protocol
from consensus.sim.world import CATCHUP_NS, LIVENESS_NS, RunResult, World

FAILURE_LINES_SHOWN = 40
LOG_LINES_SHOWN = 30


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m consensus.sim",
        description="Deterministic simulation of the Mu consensus protocol: N replicas of the "
        "production code on a simulated fabric, a seeded scheduler interleaving their one-sided "
        "operations, and a nemesis (crashes, crashes mid-write, SIGSTOP, the pause hook, slow "
        "replicas, permission loss). Every seed is reproducible.",
        epilog="examples:\n  python -m consensus.sim --seeds 300\n"
        "  python -m consensus.sim --seed 1234 -v\n"
        "  python -m consensus.sim --seeds 20000 --first 100000 --keep-going   (soak)\n"
        "see docs/simulation.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seeds", type=int, default=100, help="how many seeds to run (default 100)")
    group.add_argument("--seed", type=int, help="run just this seed (to replay a failure)")
    parser.add_argument("--first", type=int, default=0, help="first seed of --seeds (default 0)")
    parser.add_argument(
        "--steps", type=int, default=STEPS_MAX_DEFAULT,
        help=f"switch points per seed at most (default {STEPS_MAX_DEFAULT})",
    )
    parser.add_argument(
        "--fault-ms", type=float, default=FAULT_PHASE_NS_DEFAULT / NS_PER_MS,
        help="simulated milliseconds of faults before the heal (default %(default)s)",
    )
    parser.add_argument(
        "--quiet-ms", type=float, default=QUIET_PHASE_NS_DEFAULT / NS_PER_MS,
        help="simulated fault-free milliseconds after the heal (default %(default)s)",
    )
    parser.add_argument("--replicas", type=int, choices=(3, 5), help="force 3 or 5 replicas")
    parser.add_argument("--no-faults", action="store_true", help="run without the nemesis")
    parser.add_argument(
        "--no-batches", action="store_true", help="clients never use propose_many"
    )
    parser.add_argument(
        "--keep-going", action="store_true", help="do not stop at the first failing seed"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print every seed's result")
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds <= 0:
        parser.error("--seeds must be positive")
    if args.steps <= 0 or args.fault_ms < 0:
        parser.error("--steps must be positive and --fault-ms not negative")
    quiet_min_ms = max(LIVENESS_NS, CATCHUP_NS) / NS_PER_MS + 1
    if args.quiet_ms < quiet_min_ms:
        parser.error(f"--quiet-ms must be at least {quiet_min_ms:g} (the liveness and catch-up "
                     "checks need that much fault-free time)")
    return args


def replay_command(seed: int, args: argparse.Namespace) -> str:
    parts = ["python -m consensus.sim", f"--seed {seed}"]
    if args.steps != STEPS_MAX_DEFAULT:
        parts.append(f"--steps {args.steps}")
    if args.fault_ms != FAULT_PHASE_NS_DEFAULT / NS_PER_MS:
        parts.append(f"--fault-ms {args.fault_ms:g}")
    if args.quiet_ms != QUIET_PHASE_NS_DEFAULT / NS_PER_MS:
        parts.append(f"--quiet-ms {args.quiet_ms:g}")
    if args.replicas is not None:
        parts.append(f"--replicas {args.replicas}")
    if args.no_faults:
        parts.append("--no-faults")
    if args.no_batches:
        parts.append("--no-batches")
    return " ".join(parts)


def run_seed(seed: int, args: argparse.Namespace, protocol: ProtocolAdapter) -> RunResult:
    plan = make_plan(
        seed,
        steps_max=args.steps,
        fault_phase_ns=int(args.fault_ms * NS_PER_MS),
        quiet_phase_ns=int(args.quiet_ms * NS_PER_MS),
        faults=not args.no_faults,
        replicas=args.replicas,
        batches=not args.no_batches,
    )
    return World(plan, protocol).run()


def describe(result: RunResult) -> str:
    faults = " ".join(f"{k}={v}" for k, v in result.faults) or "none"
    return (
        f"seed {result.seed}: {'ok' if result.ok else 'FAILED'}"
        f"{' (truncated)' if result.truncated else ''} steps={result.steps} "
        f"sim={result.sim_ns / NS_PER_MS:.1f}ms acks={result.acks} "
        f"deliveries={result.deliveries} snapshots={result.snapshots}/{result.fetches} "
        f"digests={result.digests} faults: {faults} "
        f"wall={result.wall_s:.2f}s "
        f"trace={result.trace_hash}"
    )


def report_failure(result: RunResult, args: argparse.Namespace) -> None:
    print(f"\nFAILED {describe(result)}")
    print(f"  plan: {result.plan}")
    lines = (result.failure or "").splitlines()
    for line in lines[:FAILURE_LINES_SHOWN]:
        print(f"  {line}")
    if len(lines) > FAILURE_LINES_SHOWN:
        print(f"  ... ({len(lines) - FAILURE_LINES_SHOWN} more lines)")
    if result.log_tail:
        print("  protocol log and world events (simulated time; -v shows more):")
        shown = result.log_tail if args.verbose else result.log_tail[-LOG_LINES_SHOWN:]
        for line in shown:
            print(f"    {line}")
    print(f"  replay: {replay_command(result.seed, args)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        protocol = mu_protocol()
    except ImportError as error:
        print(f"consensus.sim: cannot load the protocol under test: {error}", file=sys.stderr)
        return 2
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    started = time.perf_counter()
    results: list[RunResult] = []
    failed: list[RunResult] = []
    faults: Counter[str] = Counter()
    for seed in tqdm(seeds, desc="seeds", unit="seed", file=sys.stderr, disable=len(seeds) == 1):
        result = run_seed(seed, args, protocol)
        results.append(result)
        faults.update(dict(result.faults))
        if args.verbose or args.seed is not None:
            tqdm.write(describe(result), file=sys.stdout)
        if not result.ok:
            failed.append(result)
            report_failure(result, args)
            if not args.keep_going and args.seed is None:
                break
    wall = time.perf_counter() - started
    steps = sum(r.steps for r in results)
    clean = len(results) - len(failed)
    print(
        f"\n{clean}/{len(results)} seeds clean in {wall:.1f} s "
        f"({steps} steps, {steps / max(wall, 1e-9):,.0f} steps/s; "
        f"{sum(r.truncated for r in results)} truncated by --steps, "
        f"{sum(r.snapshots for r in results)} snapshots installed of "
        f"{sum(r.fetches for r in results)} fetches, "
        f"{sum(r.regions_moved for r in results)} regions moved from under a stopped writer); "
        f"acks={sum(r.acks for r in results)} faults: "
        + (" ".join(f"{k}={v}" for k, v in sorted(faults.items())) or "none")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
