"""What one order costs the apply path: ``ExchangeStateMachine.apply_entry`` over a seeded stream.

Usage:
    python scripts/apply_cost.py [--entries N] [--repeat R]        microseconds per order
    python scripts/apply_cost.py --instructions [--entries N]      instructions per order

Every replica runs this path for every order (followers in their pump, the leader in its
proposer), so it bounds what a follower costs the machine it shares with the leader. The stream
is issue 18's, as ``python -m orderbook bench-liquibook`` uses it (``orderbook.bench.generate``,
crossing workload, market orders immediate-or-cancel: 70% limit adds at the mid price +-50 ticks
on a random side, 20% cancels of live orders, 10% market orders): adds dealt round-robin to 8
clients under the exchange's ids ``<client>.<seq>``, each cancel sent by its order's client, 20
requests per batch entry. Timed runs apply the pre-built entries to a fresh machine
``--repeat`` times and print the fastest (the machine is shared and noisy). ``--instructions``
runs the stream under valgrind's callgrind twice, without and with the apply, and prints the
difference per order: a count that does not depend on what else the machine is doing, for
before/after comparisons of a change.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exchange.state_machine import (  # noqa: E402
    ExchangeStateMachine,
    encode_batch,
    encode_instruments,
)
from orderbook import AddOrder, encode_command  # noqa: E402
from orderbook.bench import SYMBOL, generate  # noqa: E402

CLIENTS = 8
REQUESTS_PER_ENTRY = 20
SEED = 1


def stream(entries: int, seed: int = SEED) -> list[bytes]:
    """The batch entries (see the module docstring)."""
    seqs = [0] * (CLIENTS + 1)
    owners: dict[str, tuple[int, str]] = {}  # the generator's id -> (client, "<client>.<seq>")
    items: list[tuple[int, int, bytes]] = []
    out: list[bytes] = []
    for number, command in enumerate(generate(entries * REQUESTS_PER_ENTRY, seed, False,
                                              "crossing", market_ioc=True)):
        if isinstance(command, AddOrder):
            client = number % CLIENTS + 1
            seqs[client] += 1
            order_id = f"{client}.{seqs[client]}"
            owners[command.order_id] = client, order_id
        else:
            client, order_id = owners[command.order_id]
            seqs[client] += 1
        command = dataclasses.replace(command, order_id=order_id)
        items.append((client, seqs[client], encode_command(command)))
        if len(items) == REQUESTS_PER_ENTRY:
            out.append(encode_batch(items))
            items = []
    return out


def apply_all(entries: list[bytes]) -> float:
    """Seconds to apply ``entries`` to a fresh machine (after its instruments entry)."""
    machine = ExchangeStateMachine()
    machine.apply_entry(1, encode_instruments((SYMBOL,)))
    started = time.perf_counter()
    for index, payload in enumerate(entries, start=2):
        machine.apply_entry(index, payload)
    return time.perf_counter() - started


def instructions(entries: int) -> int:
    """Instructions per order under callgrind (the stream built alone, then built and applied)."""
    if shutil.which("valgrind") is None:
        raise SystemExit("apply_cost: --instructions needs valgrind (apt-get install valgrind)")
    counts = []
    for apply in ("0", "1"):
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
             os.path.realpath(sys.executable), __file__, "--entries", str(entries),
             "--only-build" if apply == "0" else "--once"],
            capture_output=True, text=True, check=False)
        found = re.search(r"Collected : (\d+)", result.stderr)
        if found is None:
            raise SystemExit(f"apply_cost: callgrind gave no count: {result.stderr[-300:]}")
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) // (entries * REQUESTS_PER_ENTRY)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=2000,
                        help=f"batch entries of {REQUESTS_PER_ENTRY} requests (default 2000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs (default 5)")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per order under callgrind instead of timing")
    parser.add_argument("--only-build", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.entries < 1 or args.repeat < 1:
        parser.error("--entries and --repeat must be at least 1")
    if args.instructions:
        entries = min(args.entries, 300)  # callgrind runs ~50x slower
        print(f"{instructions(entries):,} instructions per order "
              f"({entries * REQUESTS_PER_ENTRY:,} orders under callgrind)")
        return 0
    entries = stream(args.entries)
    if args.only_build:
        return 0
    if args.once:
        apply_all(entries)
        return 0
    orders = args.entries * REQUESTS_PER_ENTRY
    best = min(apply_all(entries) for _ in range(args.repeat))
    print(f"{best / orders * 1e6:.1f} us per order (fastest of {args.repeat} runs of "
          f"{orders:,} orders)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
