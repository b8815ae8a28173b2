"""``python -m consensus``: the command line (benchmarks for now).

Rule 1: bad arguments print one clear error and exit with status 2 (argparse), never a traceback.
Rule 2: ``--local N`` runs the whole cluster on this host and cleans it up, whatever happens.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from consensus import constants as c

EXAMPLES = """examples:
  python -m consensus bench st --local 3 1 64 1          # 3-replica cluster here, throughput
  python -m consensus bench st-lat --local 3 1 64 1      # latency, dump-st-64-1.txt
  python -m consensus bench st 2 64 1 --cluster mine     # one replica; run 1 and 3 likewise
  python -m consensus bench st-lat --local 3 1 64 1 --plot   # ... and dump-st-64-1.png
  python -m consensus bench plot dump-st-64-1.txt dump-st-64-8.txt   # CDFs, one PNG
  python -m consensus bench failover                     # 50 silent + 50 step-down pauses
  python -m consensus bench failover --sigstop           # SIGSTOP the leader process instead
  python -m consensus bench failover --pauses 0 --duration 60   # fault-free: leader changes
Replicas meet through the registry: memcached at $DORY_REGISTRY_IP, else an embedded one.
MU_LOG=info shows leader changes and permission switches on stderr."""


def _members(text: str) -> tuple[int, ...]:
    try:
        ids = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"members must be comma-separated ids, got {text!r}") from None
    if len(set(ids)) != len(ids) or any(i <= 0 for i in ids):
        raise argparse.ArgumentTypeError(f"members must be distinct positive ids, got {text!r}")
    return ids


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    if text == "0":
        return 0
    return _positive(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m consensus", epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Mu consensus: benchmarks.")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="benchmarks (st, st-lat, failover)", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = bench.add_subparsers(dest="kind", required=True)
    for name, text in (("st", "throughput: prints 'Received X in Y ns' and ops/s"),
                       ("st-lat", "latency: writes dump-st-<size>-<outstanding>.txt, p50/90/99")):
        st = kinds.add_parser(name, help=text, description=text)
        st.add_argument("process_id", type=_positive, help="this replica's id (1..)")
        st.add_argument("payload_size", type=_positive, help="bytes per command")
        st.add_argument("outstanding", type=_positive,
                        help=f"commands in flight (1..{c.PROPOSALS_INFLIGHT_MAX})")
        st.add_argument("--count", type=_positive, default=200_000, help="commands to replicate")
        st.add_argument("--members", type=_members, default=(1, 2, 3), help="ids, e.g. 1,2,3")
        st.add_argument("--cluster", default=os.environ.get("MU_BENCH_CLUSTER", "mu-bench"),
                        help="cluster id in the registry (default: mu-bench)")
        st.add_argument("--fabric", default="shm", choices=("shm", "verbs"))
        st.add_argument("--log-slots", type=_positive, default=c.LOG_SLOTS_DEFAULT)
        st.add_argument("--dump-dir", default=".", help="where st-lat writes its dump")
        st.add_argument("--local", type=_positive, metavar="N",
                        help="spawn an N-replica cluster on this host (process_id is ignored)")
        st.add_argument("--pin", action=argparse.BooleanOptionalAction, default=None,
                        help="once the leader is known, give it a CPU of its own and the "
                        "followers the others, like the original's numactl (default: on with "
                        "--local, off otherwise)")
        st.add_argument("--plot", action="store_true",
                        help="st-lat: also draw the dump as a latency CDF (dump-st-*.png)")
        st.add_argument("--reset-markers", action=argparse.BooleanOptionalAction, default=True,
                        help=argparse.SUPPRESS)  # --local: a fresh cluster id has none
    plot = kinds.add_parser("plot", help="draw st-lat dumps as latency CDFs (PNG)",
                            description="Draw st-lat dump files (one latency in ns per line) "
                            "as latency CDFs on a log scale, one curve per file, in one PNG.")
    plot.add_argument("dumps", nargs="+", metavar="DUMP", help="dump-st-<size>-<outstanding>.txt")
    plot.add_argument("--out", default="", metavar="PNG",
                      help="picture path (default: the first dump's name with .png)")
    failover = kinds.add_parser(
        "failover", help="pause the leader repeatedly; fail-over times",
        description="Pause the leader repeatedly and time pause -> first commit by the new "
        "leader. Default: --pauses silent pauses (the leader stops beating and serving without "
        "announcing it, as Mu's FIFO p), then --pauses cooperative ones (it steps down first).")
    failover.add_argument("--pauses", type=_non_negative, default=50,
                          help="leader pauses of each kind (0: fault-free run of --duration s)")
    failover.add_argument("--duration", type=_positive, default=60, help="seconds, with --pauses 0")
    failover.add_argument("--sigstop", action="store_true",
                          help="stop the leader's process (SIGSTOP/SIGCONT) instead of the pause "
                          "hook: a leader that cannot step down, detected by silence alone")
    _node_options(failover)
    node = kinds.add_parser("failover-node", help=argparse.SUPPRESS)
    node.add_argument("process_id", type=_positive)
    node.add_argument("--cluster", required=True)
    node.add_argument("--record", help="write delivered entries here at exit (tests)")
    _node_options(node)
    return parser


def _node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--members", type=_members, default=(1, 2, 3))
    parser.add_argument("--payload-size", type=_positive, default=64)
    parser.add_argument("--interval-us", type=_non_negative, default=50,
                        help="pause between the leader's proposals (0: back to back)")
    parser.add_argument("--dead-after-us", type=_positive, default=c.DEAD_AFTER_US,
                        help="failure-detector threshold (the default becomes "
                        f"{c.NATIVE_DEAD_AFTER_US} with the real-time native heartbeat)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = os.environ.get("MU_LOG", "WARNING").upper()
    logging.basicConfig(level=getattr(logging, level, logging.WARNING), stream=sys.stderr,
                        format="%(relativeCreated)8.1f ms %(threadName)s: %(message)s")
    if args.kind in ("st", "st-lat"):
        return _st(args)
    if args.kind == "plot":
        from consensus.bench import plot_dumps

        return plot_dumps(args.dumps, args.out)
    from consensus import bench_cluster as cluster

    if args.kind == "failover":
        return cluster.run_failover(cluster.FailoverOptions(
            args.pauses, float(args.duration), args.members, args.payload_size,
            args.interval_us, args.dead_after_us, args.sigstop))
    return cluster.run_node(cluster.NodeOptions(
        args.process_id, args.members, args.cluster, args.payload_size, args.interval_us,
        args.dead_after_us, args.record))


def _st(args: argparse.Namespace) -> int:
    from consensus import bench

    if args.outstanding > c.PROPOSALS_INFLIGHT_MAX:
        print(f"outstanding must be at most {c.PROPOSALS_INFLIGHT_MAX}", file=sys.stderr)
        return 2
    if args.local:
        from consensus import bench_cluster as cluster

        ident = cluster.new_cluster_id("mu-bench")
        members = ",".join(str(i) for i in range(1, args.local + 1))
        rest = [str(args.payload_size), str(args.outstanding), "--count", str(args.count),
                "--members", members, "--cluster", ident, "--log-slots", str(args.log_slots),
                "--dump-dir", args.dump_dir, "--pin" if args.pin is not False else "--no-pin",
                "--no-reset-markers", *(["--plot"] if args.plot else [])]
        argv = [["bench", args.kind, str(rid), *rest] for rid in range(1, args.local + 1)]
        return cluster.run_local_st(argv, ident)
    opts = bench.StOptions(args.process_id, args.payload_size, args.outstanding, args.count,
                           args.members, args.cluster, args.fabric, args.log_slots,
                           args.kind == "st-lat", args.dump_dir, bool(args.pin),
                           args.reset_markers, args.plot)
    try:
        return bench.run_st(opts)
    except (ValueError, OSError) as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
