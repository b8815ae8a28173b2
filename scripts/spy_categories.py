"""Sum a ``py-spy record -f raw`` profile of an exchange server into cost categories.

Rule 1: each sample goes to the category of its innermost frame that names one (the leaf first),
        else to "other", so the shares add up to 100%.
Rule 2: the categories are the per-order costs issue 18 asks about (decode, match, dedup,
        digest, market-data fan-out, wake-ups, ...); a frame matches when it contains one of the
        category's markers (a module path or a function name as py-spy prints them), the first
        category in ``CATEGORIES`` order winning (so the codec's frames are not "match").

Usage (py-spy is a profiling tool, not a dependency: ``pip install py-spy``)::

    py-spy record --gil --nonblocking -r 200 -d 10 -f raw -o leader.txt -p <server pid>
    python scripts/spy_categories.py leader.txt [follower.txt ...]

``--gil`` samples only the thread holding the GIL: in a Python server that is the CPU that
counts. docs/exchange.md ("Order sessions and batching") shows a run.
"""

from __future__ import annotations

import collections
import sys

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("decode command", ("decode_command", "_texts (orderbook")),
    ("validate + encode requests", ("encode_command", "_text_bytes", "session_order",
                                    "_submit (exchange", "_cancel (exchange",
                                    "_replace (exchange", "check_symbol", "_check_",
                                    "submit_command", "cancel_command", "replace_command")),
    ("match (orderbook engine)", ("orderbook/", "sortedcontainers")),
    ("dedup table", ("dedup.py",)),
    ("state digest (sha256 chain)", ("_chain_step", "sha256")),
    ("market-data fan-out", ("market_data.py",)),
    ("replies -> protobuf", ("reply_message", "event_message")),
    ("state machine (rest)", ("state_machine.py",)),
    ("sessions, batcher, node", ("session.py", "batching.py", "node.py", "service.py")),
    ("consensus (replicate, pump, detector)", ("consensus/",)),
    ("gRPC + protobuf runtime", ("grpc/", "protobuf")),
    ("locks, waits, wake-ups", ("threading.py", "queue.py")),
)


def categorize(lines: list[str]) -> tuple[int, collections.Counter[str]]:
    """(samples, samples per category) of a raw py-spy profile (Rule 1)."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        stack, _, number = line.rstrip().rpartition(" ")
        if not number.isdigit():
            continue
        samples = int(number)
        total += samples
        counts[_category(stack.split(";"))] += samples
    return total, counts


def _category(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, markers in CATEGORIES:
            if any(marker in frame for marker in markers):
                return name
    return "other"


def main(paths: list[str]) -> int:
    if not paths:
        print("usage: python scripts/spy_categories.py PROFILE.txt [...]", file=sys.stderr)
        return 2
    for path in paths:
        try:
            with open(path, encoding="utf-8") as raw:
                total, counts = categorize(raw.readlines())
        except OSError as exc:
            print(f"spy_categories: error: {exc}", file=sys.stderr)
            return 1
        print(f"{path}: {total} samples")
        for name, samples in counts.most_common():
            print(f"  {name:40s} {100 * samples / max(total, 1):5.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
