"""`python -m orderbook bench-liquibook`: the engine beside the C++ Liquibook, one stream, one run.

Rule 1: both sides run the same seeded stream (issue 18: 70% limit adds at mid +-50 ticks on a
        random side, 20% cancels of live orders, 10% market orders, immediate-or-cancel), built
        before any timing by orderbook.bench.generate in each process; the two processes compare
        a sha256 of the stream and stop if it differs.
Rule 2: comparable work: each side turns every command into its engine's call and hands every
        event to a Python listener that counts accepts, trades (with their quantity) and cancels.
        Liquibook's listener is an `OrderListener` called back from C++ for each event; ours loops
        over the list `Market.apply` returns. The counts must be equal on both sides (the stream
        has no stops, AON or replaces, where the engines differ, docs/orderbook.md); a
        difference is reported as a failure.
Rule 3: Liquibook runs in a child process (`--worker`), because its SWIG wrapper can crash the
        interpreter: a crash is reported as one line with the signal and the round. The crash
        seen while exploring it: `set_order_listener` keeps only a raw C++ pointer, so a listener
        that Python frees (`book.set_order_listener(Listener())`) is called after it is gone
        (SIGSEGV on the first callback). The worker keeps the listener, the book and every
        order object referenced for the whole round, and implements every callback (a missing
        one raises "SWIG director pure virtual method called" inside the book).
Rule 4: rounds alternate which side runs first; each round times a fresh book on each side (wall
        clock and CPU time of that process only). Both medians of the per-round ratios
        engine/Liquibook are printed with their spread (min-max over rounds) and a verdict; the
        exit status follows the CPU-time one: on this shared 2-core machine a process at load
        15-25 runs a fraction of its wall time, so wall-clock ratios measure the scheduler
        (their spread shows it) while CPU time measures each engine's own work.
Rule 5: `liquibook` (PyPI, the SWIG wrapper of the C++ engine) is an optional extra, never a
        runtime dependency: when it is missing the command says how to install it and exits 2.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import json
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from orderbook.bench import generate
from orderbook.build import engine_build
from orderbook.events import Accepted, Cancelled, CancelRejected, Rejected, Trade
from orderbook.market import Market
from orderbook.types import AddOrder, CancelOrder, Command, Side

COMMANDS_DEFAULT = 200_000
"""Commands per round: about 0.3-1 s per side here, long enough to dwarf timer noise."""
ROUNDS_DEFAULT = 5
SEED_DEFAULT = 1
TARGET_RATIO = 0.5
"""Issue 18: the engine must run at least half Liquibook's rate on this stream."""
WORKLOAD = "crossing"
"""Limit prices at mid-50..+50 on a random side (orderbook.bench Rule 1)."""
INSTALL_HINT = ("pip install liquibook  (the C++ Liquibook's PyPI wrapper, x86-64 Linux wheels; "
                "bash scripts/setup.sh installs it with the test extra)")


@dataclass(frozen=True, slots=True)
class Counts:
    """What a side's listener saw over one round (Rule 2)."""

    accepts: int
    trades: int
    traded_qty: int
    cancels: int
    rejects: int


@dataclass(frozen=True, slots=True)
class RoundResult:
    wall_s: float
    cpu_s: float
    counts: Counts


def build_stream(commands: int, seed: int) -> list[Command]:
    """Issue 18's stream (Rule 1)."""
    return generate(commands, seed, False, WORKLOAD, market_ioc=True)


def stream_digest(stream: Sequence[Command]) -> str:
    """sha256 over the commands' reprs: equal streams in both processes (Rule 1)."""
    hasher = hashlib.sha256()
    for cmd in stream:
        hasher.update(repr(cmd).encode())
    return hasher.hexdigest()


def run_engine(stream: Sequence[Command]) -> RoundResult:
    """One timed round of this engine on a fresh Market, events counted by a Python loop."""
    market = Market()
    apply = market.apply
    accepts = trades = traded_qty = cancels = rejects = 0
    began, cpu_began = time.perf_counter(), time.process_time()
    for cmd in stream:
        for event in apply(cmd):
            kind = type(event)
            if kind is Trade:
                trades += 1
                traded_qty += event.qty  # type: ignore[union-attr]
            elif kind is Accepted:
                accepts += 1
            elif kind is Cancelled:
                cancels += 1
            elif kind is Rejected or kind is CancelRejected:
                rejects += 1
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    return RoundResult(wall, cpu, Counts(accepts, trades, traded_qty, cancels, rejects))


# ---- the Liquibook side (child process) ----------------------------------------------------


def _liquibook_round(liquibook: Any, stream: Sequence[Command]) -> RoundResult:
    """One timed round of Liquibook's DepthOrderBook; orders are built before the clock starts
    and, with the listener and the book, stay referenced until the round ends (Rule 3)."""

    class Listener(liquibook.OrderListener):  # type: ignore[misc, name-defined]
        """Counts every callback (Rule 2); every OrderListener method is implemented."""

        def __init__(self) -> None:
            liquibook.OrderListener.__init__(self)
            self.accepts = self.trades = self.traded_qty = self.cancels = self.rejects = 0

        def on_accept(self, order: Any) -> None:
            self.accepts += 1

        def on_reject(self, order: Any, reason: str) -> None:
            self.rejects += 1

        def on_fill(self, order: Any, matched_order: Any, qty: int, price: int) -> None:
            self.trades += 1  # Liquibook calls on_fill once per trade, with both orders
            self.traded_qty += qty

        def on_cancel(self, order: Any) -> None:
            self.cancels += 1

        def on_cancel_reject(self, order: Any, reason: str) -> None:
            self.rejects += 1

        def on_replace(self, order: Any, size_delta: int, new_price: int) -> None:
            self.rejects += 1  # the stream has no replaces

        def on_replace_reject(self, order: Any, reason: str) -> None:
            self.rejects += 1

    ioc = liquibook.oc_immediate_or_cancel
    orders: dict[str, Any] = {}
    ops: list[tuple[bool, Any, int]] = []
    for cmd in stream:
        if type(cmd) is AddOrder:
            conditions = ioc if cmd.ioc else 0
            order = liquibook.SimpleOrder(cmd.side is Side.BUY, cmd.price, cmd.qty, 0,
                                          conditions)
            orders[cmd.order_id] = order
            ops.append((True, order, conditions))
        else:
            assert type(cmd) is CancelOrder
            ops.append((False, orders[cmd.order_id], 0))
    book = liquibook.DepthOrderBook()
    listener = Listener()
    book.set_order_listener(listener)  # a raw pointer in C++: `listener` must outlive `book`
    book.set_symbol("AAPL")
    add, cancel = book.add, book.cancel
    began, cpu_began = time.perf_counter(), time.process_time()
    for is_add, order, conditions in ops:
        if is_add:
            add(order, conditions)
        else:
            cancel(order)
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    counts = Counts(listener.accepts, listener.trades, listener.traded_qty, listener.cancels,
                    listener.rejects)
    del add, cancel, book  # the book goes first, while the listener still lives
    del ops, orders, listener
    return RoundResult(wall, cpu, counts)


def worker_main(commands: int, seed: int) -> int:
    """The child: build the stream, say its digest, then run a round per `run` line on stdin."""
    if importlib.util.find_spec("liquibook") is None:
        print(json.dumps({"error": f"liquibook is not installed: {INSTALL_HINT}"}), flush=True)
        return 2
    import liquibook

    stream = build_stream(commands, seed)
    gc.collect()
    gc.freeze()  # harness input, as orderbook.bench Rule 2
    version = _liquibook_version()
    print(json.dumps({"digest": stream_digest(stream), "version": version}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        result = _liquibook_round(liquibook, stream)
        gc.collect()
        print(json.dumps({"wall_s": result.wall_s, "cpu_s": result.cpu_s,
                          "counts": list(_counts_fields(result.counts))}), flush=True)
    return 0


def _liquibook_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("liquibook")
    except PackageNotFoundError:
        return "unknown"


def _counts_fields(counts: Counts) -> tuple[int, int, int, int, int]:
    return (counts.accepts, counts.trades, counts.traded_qty, counts.cancels, counts.rejects)


# ---- the parent ------------------------------------------------------------------------------


class WorkerCrashed(Exception):
    """The Liquibook child died or answered nonsense (its one-line description)."""


class LiquibookWorker:
    """The child process running Liquibook (Rule 3), driven over its stdin/stdout."""

    def __init__(self, commands: int, seed: int) -> None:
        self.process = subprocess.Popen(self.argv(commands, seed), stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.round = 0

    @staticmethod
    def argv(commands: int, seed: int) -> list[str]:
        return [sys.executable, "-m", "orderbook.liquibook_bench", "--worker",
                "--commands", str(commands), "--seed", str(seed)]

    def hello(self) -> dict[str, Any]:
        return self._answer("building the stream")

    def run_round(self) -> RoundResult:
        self.round += 1
        assert self.process.stdin is not None
        try:
            self.process.stdin.write("run\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # the answer below reports how it died
        reply = self._answer(f"round {self.round}")
        return RoundResult(float(reply["wall_s"]), float(reply["cpu_s"]),
                           Counts(*(int(value) for value in reply["counts"])))

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _answer(self, during: str) -> dict[str, Any]:
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None
        line = stdout.readline()
        if line:
            try:
                reply = json.loads(line)
                if not isinstance(reply, dict):
                    raise ValueError(line)
            except ValueError:
                raise WorkerCrashed(f"the Liquibook process answered {line.strip()[:80]!r} "
                                    f"during {during}") from None
            if "error" in reply:
                raise WorkerCrashed(str(reply["error"]))
            return reply
        code = self.process.wait()
        stderr = self.process.stderr.read() if self.process.stderr is not None else ""
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
        if code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with status {code}"
        raise WorkerCrashed(f"the Liquibook process {how} during {during} ({last})")


def ratio_line(label: str, ratios: Sequence[float]) -> str:
    median = statistics.median(ratios)
    verdict = "met" if median >= TARGET_RATIO else "NOT met"
    return (f"{label}: median x{median:.2f} (spread x{min(ratios):.2f}-x{max(ratios):.2f} over "
            f"{len(ratios)} rounds) [target >= x{TARGET_RATIO}: {verdict}]")


def compare(args: argparse.Namespace, out: IO[str]) -> int:
    """Run the rounds (Rule 4) and print rates, ratios and the verdict."""
    worker = LiquibookWorker(args.commands, args.seed)
    try:
        stream = build_stream(args.commands, args.seed)
        digest = stream_digest(stream)
        gc.collect()
        gc.freeze()
        hello = worker.hello()
        if hello["digest"] != digest:
            raise WorkerCrashed("the two processes built different streams")
        print(f"stream: {len(stream):,} commands, seed {args.seed}: 70% limit adds at mid +-50 "
              f"ticks on a random side, 20% cancels of live orders, 10% market IOC; sha256 "
              f"{digest[:16]} in both processes", file=out)
        print(f"engine: {engine_build()}; Liquibook: C++ DepthOrderBook through the PyPI "
              f"wrapper liquibook {hello['version']}, in a child process", file=out)
        walls: list[float] = []
        cpus: list[float] = []
        for number in range(1, args.rounds + 1):
            engine_first = number % 2 == 1
            if engine_first:
                ours = run_engine(stream)
                theirs = worker.run_round()
            else:
                theirs = worker.run_round()
                ours = run_engine(stream)
            gc.collect()
            if ours.counts != theirs.counts:
                print(f"error: the engines disagree on round {number}: engine {ours.counts}, "
                      f"Liquibook {theirs.counts}", file=out)
                return 1
            count = len(stream)
            walls.append(theirs.wall_s / ours.wall_s)
            cpus.append(theirs.cpu_s / ours.cpu_s)
            print(f"round {number} ({'engine' if engine_first else 'Liquibook'} first): "
                  f"engine {count / ours.wall_s:,.0f} commands/s (CPU {count / ours.cpu_s:,.0f}),"
                  f" Liquibook {count / theirs.wall_s:,.0f} (CPU {count / theirs.cpu_s:,.0f}): "
                  f"x{walls[-1]:.2f} (CPU x{cpus[-1]:.2f})", file=out)
        counts = ours.counts
        print(f"both listeners counted per round: {counts.accepts:,} accepts, {counts.trades:,} "
              f"trades ({counts.traded_qty:,} shares), {counts.cancels:,} cancels, "
              f"{counts.rejects} rejects", file=out)
        print(ratio_line("engine/Liquibook, wall clock", walls), file=out)
        print(ratio_line("engine/Liquibook, CPU time", cpus), file=out)
        return 0 if statistics.median(cpus) >= TARGET_RATIO else 3
    except WorkerCrashed as error:
        print(f"error: {error}", file=out)
        return 1
    finally:
        gc.unfreeze()
        worker.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--commands", type=int, default=COMMANDS_DEFAULT, metavar="N",
                        help=f"commands per round (default {COMMANDS_DEFAULT:,})")
    parser.add_argument("--rounds", type=int, default=ROUNDS_DEFAULT, metavar="R",
                        help=f"rounds, alternating which side runs first (default "
                        f"{ROUNDS_DEFAULT})")
    parser.add_argument("--seed", type=int, default=SEED_DEFAULT,
                        help=f"stream seed (default {SEED_DEFAULT})")


EPILOG = f"""Needs the optional C++ Liquibook wrapper: {INSTALL_HINT}.
Exit status: 0 when the median CPU-time ratio meets x{TARGET_RATIO} (Rule 4), 3 when it does not,
1 when the Liquibook process crashes or the engines disagree, 2 on bad arguments or a missing
wrapper."""


def main(args: argparse.Namespace) -> int:
    if args.commands <= 0 or args.rounds <= 0:
        print("error: --commands and --rounds must be positive", file=sys.stderr)
        return 2
    if importlib.util.find_spec("liquibook") is None:
        print(f"error: the C++ Liquibook wrapper is not installed: {INSTALL_HINT}",
              file=sys.stderr)
        return 2
    return compare(args, sys.stdout)


def _worker_entry(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m orderbook.liquibook_bench",
                                     description="the Liquibook side of bench-liquibook")
    parser.add_argument("--worker", action="store_true", required=True)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return worker_main(args.commands, args.seed)


if __name__ == "__main__":
    sys.exit(_worker_entry(sys.argv[1:]))
