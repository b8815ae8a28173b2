"""``python -m exchange bench-snapshot``: snapshot encode and restore of a large exchange state.

Rule 1: the state is built through the real engine: seeded order-entry log entries applied by
        ``ExchangeStateMachine.apply`` (``CLIENTS`` clients round robin, each with increasing
        seqs, so the dedup table holds ``CLIENTS`` x its per-client limit replies) until
        ``--orders`` orders are live, spread over ``SYMBOLS`` symbols and about
        2 x PRICE_SPREAD_TICKS levels per symbol, with waiting stop orders and AON orders among
        them. The same seed gives the same state, hence the same snapshot bytes.
Rule 2: each round times, on the same state, ``snapshot()`` (encode) and
        ``ExchangeStateMachine.restore`` (decode + install, a replica's whole restore), then
        the baseline ``pickle.dumps`` / ``pickle.loads`` of the same machine in the same run;
        the figures are printed per round and as medians with their spread (min-max). The time
        it took to build the state by applying its log entries is the second baseline.
Rule 3: every restore is checked (untimed): equal ``state_digest()`` and ``book_digest()``, and
        re-encoding gives the same bytes. Peak extra memory is measured once, outside the timed
        rounds, with tracemalloc (which slows the code it traces, so it is never timed).
"""

from __future__ import annotations

import argparse
import gc
import pickle
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import TypeVar

from exchange.state_machine import ExchangeStateMachine, encode_entry
from orderbook import AddOrder, CancelOrder, Command, Side

ORDERS_DEFAULT = 100_000
ROUNDS_DEFAULT = 5
SEED_DEFAULT = 1
CLIENTS = 100
SYMBOLS = ("AAPL", "AMZN", "GOOG", "MSFT")
MID_PRICE_TICKS = 10_000
PRICE_SPREAD_TICKS = 1_000
"""Passive adds rest within this many ticks of mid: about 2,000 levels per symbol."""
CANCEL_SHARE = 0.08
MARKET_SHARE = 0.01
STOP_SHARE = 0.01
AON_SHARE = 0.05
ENCODE_MS_TARGET = 250.0
RESTORE_MS_TARGET = 400.0
BYTES_PER_ORDER_TARGET = 300.0
PICKLE_RECURSION_MAX = 100_000
"""Recursion limit for the pickle baseline: deep enough for the longest price level."""
COMMANDS_PER_ORDER_MAX = 4
"""Bound on the build loop: at most this many commands per requested live order."""

T = TypeVar("T")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench-snapshot",
        help="time snapshot encode and restore of a large state, beside pickle, same run",
        description="Build an exchange state with N live orders through the real engine "
        "(seeded; 100 clients fill the dedup table), then per round time snapshot() and "
        "ExchangeStateMachine.restore() beside pickle.dumps/loads of the same state, and print "
        "bytes per live order, medians and spread, and peak extra memory of a restore.",
    )
    bench.add_argument("--orders", type=int, default=ORDERS_DEFAULT,
                       help=f"live orders in the state (default {ORDERS_DEFAULT:,})")
    bench.add_argument("--rounds", type=int, default=ROUNDS_DEFAULT,
                       help=f"timed rounds (default {ROUNDS_DEFAULT}); medians are reported")
    bench.add_argument("--seed", type=int, default=SEED_DEFAULT,
                       help=f"workload seed (default {SEED_DEFAULT})")
    bench.add_argument("--no-pickle", action="store_true",
                       help="skip the pickle baseline (faster)")


def _command(rng: random.Random, number: int, live: list[str]) -> Command:
    """One seeded command: mostly passive limit adds, some cancels, market orders, stops."""
    roll = rng.random()
    if roll < CANCEL_SHARE and live:
        index = rng.randrange(len(live))
        live[index], live[-1] = live[-1], live[index]
        return CancelOrder(live.pop())
    symbol = SYMBOLS[number % len(SYMBOLS)]
    side = Side.BUY if rng.random() < 0.5 else Side.SELL
    sign = -1 if side is Side.BUY else 1
    order_id = f"o{number}"
    qty = rng.randint(1, 1_000)
    if roll < CANCEL_SHARE + MARKET_SHARE:
        return AddOrder(order_id, symbol, side, 0, rng.randint(1, 50), ioc=True)
    if roll < CANCEL_SHARE + MARKET_SHARE + STOP_SHARE:  # waits: beyond the far side of mid
        stop = MID_PRICE_TICKS - sign * rng.randint(PRICE_SPREAD_TICKS, 2 * PRICE_SPREAD_TICKS)
        live.append(order_id)
        return AddOrder(order_id, symbol, side, 0, qty, stop=stop)
    live.append(order_id)
    price = MID_PRICE_TICKS + sign * rng.randint(1, PRICE_SPREAD_TICKS)
    return AddOrder(order_id, symbol, side, price, qty, aon=rng.random() < AON_SHARE)


def build_state(orders: int, seed: int) -> tuple[ExchangeStateMachine, int, float]:
    """The state of Rule 1, the number of entries applied and the seconds that took."""
    assert orders >= 1
    rng = random.Random(seed)
    machine = ExchangeStateMachine()
    live: list[str] = []
    seqs = [0] * CLIENTS
    index = 0
    started = time.perf_counter()
    while machine.market.order_count() < orders:
        assert index < COMMANDS_PER_ORDER_MAX * orders + 1_000, "workload does not build up"
        client = index % CLIENTS
        seqs[client] += 1
        index += 1
        machine.apply(index, encode_entry(client + 1, seqs[client], _command(rng, index, live)))
    return machine, index, time.perf_counter() - started


def _timed(action: Callable[[], T]) -> tuple[T, float]:
    """`action()` and its wall time in ms, the cyclic GC collected before (not during)."""
    gc.collect()
    started = time.perf_counter()
    result = action()
    return result, (time.perf_counter() - started) * 1e3


def _peak_restore_bytes(data: bytes) -> int:
    """Peak memory traced while restoring (Rule 3), including the restored state."""
    gc.collect()
    tracemalloc.start()
    try:
        ExchangeStateMachine.restore(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f})"


def _describe(machine: ExchangeStateMachine, entries: int, build_s: float) -> tuple[int, str]:
    market = machine.market
    resting = levels = stops = 0
    for symbol in market.symbols():
        book = market.book(symbol)
        assert book is not None
        resting += len(book.resting_orders())
        stops += len(book.waiting_stops())
        levels += len(book.bids.levels) + len(book.asks.levels)
    replies = len(machine.dedup)
    events = sum(len(reply.events) for _, _, stored in machine.dedup.records()
                 for reply in stored.values())
    live = market.order_count()
    return live, (f"state: {live:,} live orders ({resting:,} resting on {levels:,} levels, "
                  f"{stops:,} waiting stops) in {len(market.symbols())} symbols; dedup "
                  f"{machine.dedup.client_count} clients, {replies:,} replies, {events:,} events; "
                  f"built by applying {entries:,} log entries in {build_s * 1e3:,.0f} ms")


def _round(machine: ExchangeStateMachine, expected: bytes | None,
           with_pickle: bool) -> tuple[bytes, list[float]]:
    data, encode_ms = _timed(machine.snapshot)
    restored, restore_ms = _timed(lambda: ExchangeStateMachine.restore(data))
    if expected is not None and data != expected:
        raise AssertionError("two snapshots of the same state differ")
    if (restored.state_digest() != machine.state_digest()
            or restored.book_digest() != machine.book_digest() or restored.snapshot() != data):
        raise AssertionError("the restored state differs from the original")
    del restored
    figures = [encode_ms, restore_ms]
    if with_pickle:
        pickled, dumps_ms = _timed(lambda: pickle.dumps(machine, pickle.HIGHEST_PROTOCOL))
        _, loads_ms = _timed(lambda: pickle.loads(pickled))
        figures += [dumps_ms, loads_ms, float(len(pickled))]
    return data, figures


def run(args: argparse.Namespace) -> int:
    if args.orders < 1 or args.rounds < 1:
        print("python -m exchange bench-snapshot: error: need --orders >= 1 and --rounds >= 1",
              file=sys.stderr)
        return 2
    machine, entries, build_s = build_state(args.orders, args.seed)
    live, description = _describe(machine, entries, build_s)
    print(description, flush=True)
    with_pickle = not args.no_pickle
    if with_pickle:  # pickle recurses along the orders' linked lists (one level per order)
        sys.setrecursionlimit(max(sys.getrecursionlimit(), PICKLE_RECURSION_MAX))
    rows: list[list[float]] = []
    data: bytes | None = None
    print(f"{'round':>5}{'encode ms':>11}{'restore ms':>12}"
          + (f"{'pickle.dumps ms':>17}{'pickle.loads ms':>17}" if with_pickle else ""))
    for round_index in range(args.rounds):
        data, figures = _round(machine, data, with_pickle)
        rows.append(figures)
        print(f"{round_index + 1:>5}{figures[0]:11.1f}{figures[1]:12.1f}"
              + (f"{figures[2]:17.1f}{figures[3]:17.1f}" if with_pickle else ""), flush=True)
    assert data is not None
    return _summary(rows, data, live, build_s, with_pickle)


def _summary(rows: list[list[float]], data: bytes, live: int, build_s: float,
             with_pickle: bool) -> int:
    encode = [row[0] for row in rows]
    restore = [row[1] for row in rows]
    per_order = len(data) / live
    print(f"median (min-max) over {len(rows)} rounds: encode {_spread(encode)} ms, "
          f"restore {_spread(restore)} ms")
    print(f"snapshot: {len(data):,} bytes = {per_order:.1f} bytes per live order "
          f"(target <= {BYTES_PER_ORDER_TARGET:.0f})")
    rebuild_ratio = statistics.median(restore) / (build_s * 1e3)
    print(f"restore vs rebuilding by applying the log: x{rebuild_ratio:.3f} "
          f"({build_s * 1e3:,.0f} ms)")
    if with_pickle:
        dumps = [row[2] for row in rows]
        loads = [row[3] for row in rows]
        print(f"pickle baseline: dumps {_spread(dumps)} ms, loads {_spread(loads)} ms, "
              f"{rows[0][4] / live:.1f} bytes per live order")
        ratios_encode = sorted(row[0] / row[2] for row in rows)
        ratios_restore = sorted(row[1] / row[3] for row in rows)
        print(f"per-round ratios snapshot/pickle: encode x{statistics.median(ratios_encode):.2f} "
              f"(x{ratios_encode[0]:.2f}-x{ratios_encode[-1]:.2f}), restore "
              f"x{statistics.median(ratios_restore):.2f} "
              f"(x{ratios_restore[0]:.2f}-x{ratios_restore[-1]:.2f})")
    peak = _peak_restore_bytes(data)
    print(f"peak memory traced during one restore (restored state included): "
          f"{peak / 1e6:,.1f} MB = {peak / live:,.0f} bytes per live order; snapshot bytes "
          f"{len(data) / 1e6:,.1f} MB")
    met = (statistics.median(encode) <= ENCODE_MS_TARGET
           and statistics.median(restore) <= RESTORE_MS_TARGET
           and per_order <= BYTES_PER_ORDER_TARGET)
    print(f"targets encode <= {ENCODE_MS_TARGET:.0f} ms, restore <= {RESTORE_MS_TARGET:.0f} ms, "
          f"<= {BYTES_PER_ORDER_TARGET:.0f} bytes per order: {'met' if met else 'MISSED'}")
    return 0
