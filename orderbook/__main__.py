"""`python -m orderbook`: replay a JSON-lines command file, or run the benchmark."""

from __future__ import annotations

import argparse
import sys

from orderbook import bench, liquibook_bench, replay


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orderbook",
        description="Liquibook-compatible matching engine: replay commands or benchmark.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    replay_parser = commands.add_parser(
        "replay", help="apply JSON-lines commands and print JSON-lines events",
        description=replay.DESCRIPTION, epilog=replay.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    replay.add_arguments(replay_parser)
    bench_parser = commands.add_parser(
        "bench", help="seeded synthetic workload: commands/s, latency, memory",
        description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(bench_parser)
    versus_parser = commands.add_parser(
        "bench-liquibook", help="this engine beside the C++ Liquibook (PyPI liquibook), same "
        "stream, alternating rounds: rates, ratios, verdict",
        description=liquibook_bench.__doc__, epilog=liquibook_bench.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    liquibook_bench.add_arguments(versus_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "replay":
        return replay.main(args)
    if args.command == "bench-liquibook":
        return liquibook_bench.main(args)
    return bench.main(args)


if __name__ == "__main__":
    sys.exit(main())
