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
BUSY_WALL_PER_CPU = 1.5
"""Wall time above this multiple of CPU time means other jobs took the CPU (a note is printed)."""
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


def _command(rng: random.Random, number: int, client: int, live: list[str]) -> Command:
    """One seeded command of ``client``: mostly passive limit adds, some cancels, market orders,
    stops. Order ids are the exchange's ``<client>.<number>``, so the resting-order limit per
    client (state_machine Rule 8) counts each client's own orders."""
    roll = rng.random()
    if roll < CANCEL_SHARE and live:
        index = rng.randrange(len(live))
        live[index], live[-1] = live[-1], live[index]
        return CancelOrder(live.pop())
    symbol = SYMBOLS[number % len(SYMBOLS)]
    side = Side.BUY if rng.random() < 0.5 else Side.SELL
    sign = -1 if side is Side.BUY else 1
    order_id = f"{client}.{number}"
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


def build_state(orders: int, seed: int) -> tuple[ExchangeStateMachine, int]:
    """The state of Rule 1 and the number of entries applied."""
    assert orders >= 1
    rng = random.Random(seed)
    machine = ExchangeStateMachine()
    live: list[str] = []
    seqs = [0] * CLIENTS
    index = 0
    while machine.market.order_count() < orders:
        assert index < COMMANDS_PER_ORDER_MAX * orders + 1_000, "workload does not build up"
        client = index % CLIENTS
        seqs[client] += 1
        index += 1
        command = _command(rng, index, client + 1, live)
        machine.apply(index, encode_entry(client + 1, seqs[client], command))
    return machine, index


Timing = tuple[float, float]
"""(wall ms, CPU ms of this process) of one timed action."""


def _timed(action: Callable[[], T]) -> tuple[T, Timing]:
    """`action()` with its wall and CPU time in ms, the cyclic GC collected before (not
    during). CPU time is printed beside wall time because on this shared 2-core machine other
    jobs can stretch wall time many times over; the CPU time shows what the code costs."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    result = action()
    return result, ((time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3)


def _peak_bytes(action: Callable[[], object]) -> int:
    """Peak memory traced while `action` runs, what it returns included (Rule 3)."""
    gc.collect()
    tracemalloc.start()
    try:
        result = action()
        _, peak = tracemalloc.get_traced_memory()
        del result
    finally:
        tracemalloc.stop()
    return peak


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} ({min(values):.1f}-{max(values):.1f})"


def _describe(machine: ExchangeStateMachine, entries: int, build: Timing) -> tuple[int, str]:
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
                  f"built by applying {entries:,} log entries in {build[0]:,.0f} ms "
                  f"(CPU {build[1]:,.0f} ms)")


def _round(machine: ExchangeStateMachine, expected: bytes | None,
           with_pickle: bool) -> tuple[bytes, dict[str, Timing], int]:
    data, encode = _timed(machine.snapshot)
    restored, restore = _timed(lambda: ExchangeStateMachine.restore(data))
    if expected is not None and data != expected:
        raise AssertionError("two snapshots of the same state differ")
    if (restored.state_digest() != machine.state_digest()
            or restored.book_digest() != machine.book_digest() or restored.snapshot() != data):
        raise AssertionError("the restored state differs from the original")
    del restored
    figures = {"encode": encode, "restore": restore}
    pickled_size = 0
    if with_pickle:
        pickled, figures["dumps"] = _timed(lambda: pickle.dumps(machine, pickle.HIGHEST_PROTOCOL))
        _, figures["loads"] = _timed(lambda: pickle.loads(pickled))
        pickled_size = len(pickled)
    return data, figures, pickled_size


def _pickle_refusal(seed: int) -> str | None:
    """Why pickle cannot round-trip this build's state (None: it can). A mypyc-compiled class
    (the default build, orderbook.build) is rebuilt by calling its constructor without its
    arguments, which fails."""
    small, _ = build_state(10, seed)
    try:
        pickle.loads(pickle.dumps(small, pickle.HIGHEST_PROTOCOL))
    except Exception as error:  # whatever pickle raises is the answer
        return f"pickle cannot round-trip this build's objects ({type(error).__name__}: {error})"
    return None


def run(args: argparse.Namespace) -> int:
    if args.orders < 1 or args.rounds < 1:
        print("python -m exchange bench-snapshot: error: need --orders >= 1 and --rounds >= 1",
              file=sys.stderr)
        return 2
    (machine, entries), build = _timed(lambda: build_state(args.orders, args.seed))
    live, description = _describe(machine, entries, build)
    print(description, flush=True)
    with_pickle = not args.no_pickle
    if with_pickle:  # pickle recurses along the orders' linked lists (one level per order)
        sys.setrecursionlimit(max(sys.getrecursionlimit(), PICKLE_RECURSION_MAX))
        why = _pickle_refusal(args.seed)
        if why is not None:
            print(f"bench-snapshot: no pickle baseline: {why}; `MU_ORDERBOOK_BUILD=pure python "
                  f"-m exchange bench-snapshot` measures it on the pure-Python build", flush=True)
            with_pickle = False
    rows: list[dict[str, Timing]] = []
    data: bytes | None = None
    names = ["encode", "restore"] + (["dumps", "loads"] if with_pickle else [])
    print("round " + "".join(f"{name + ' wall/CPU ms':>26}" for name in names))
    pickled_size = 0
    for round_index in range(args.rounds):
        data, figures, pickled_size = _round(machine, data, with_pickle)
        rows.append(figures)
        print(f"{round_index + 1:>5} " + "".join(
            f"{figures[name][0]:17.1f} /{figures[name][1]:7.1f}" for name in names), flush=True)
    assert data is not None
    _summary(rows, names, build)
    _sizes(machine, data, live, pickled_size)
    return 0


def _summary(rows: list[dict[str, Timing]], names: list[str], build: Timing) -> None:
    """Medians and spreads, ratios against the baselines, and the verdict (Rule 2)."""
    for clock, label in ((0, "wall"), (1, "CPU")):
        print(f"{label} ms, median (min-max) over {len(rows)} rounds: " + ", ".join(
            f"{name} {_spread([row[name][clock] for row in rows]).strip()}" for name in names))
    for clock, label in ((0, "wall"), (1, "CPU")):
        ratios = [f"restore / rebuilding by applying the log "
                  f"x{statistics.median(row['restore'][clock] for row in rows) / build[clock]:.3f}"
                  f" ({build[clock]:,.0f} ms)"]
        if "dumps" in names:
            for mine, theirs in (("encode", "dumps"), ("restore", "loads")):
                per_round = sorted(row[mine][clock] / row[theirs][clock] for row in rows)
                ratios.append(f"{mine} / pickle.{theirs} x{statistics.median(per_round):.2f} "
                              f"(x{per_round[0]:.2f}-x{per_round[-1]:.2f})")
        print(f"{label} ratios: " + "; ".join(ratios))
    busy = statistics.median(row["encode"][0] / max(row["encode"][1], 1e-3) for row in rows)
    if busy > BUSY_WALL_PER_CPU:
        print(f"note: wall time was x{busy:.1f} the CPU time: the machine was busy with other "
              f"jobs; the CPU figures show what the code costs")
    for clock, label in ((0, "wall"), (1, "CPU")):
        encode = statistics.median(row["encode"][clock] for row in rows)
        restore = statistics.median(row["restore"][clock] for row in rows)
        met = encode <= ENCODE_MS_TARGET and restore <= RESTORE_MS_TARGET
        print(f"targets encode <= {ENCODE_MS_TARGET:.0f} ms, restore <= "
              f"{RESTORE_MS_TARGET:.0f} ms ({label} medians): {'met' if met else 'MISSED'}")


def _sizes(machine: ExchangeStateMachine, data: bytes, live: int, pickled_size: int) -> None:
    per_order = len(data) / live
    verdict = "met" if per_order <= BYTES_PER_ORDER_TARGET else "MISSED"
    pickled = f"; pickle {pickled_size / live:.1f}" if pickled_size else ""
    print(f"snapshot: {len(data):,} bytes = {per_order:.1f} bytes per live order (target <= "
          f"{BYTES_PER_ORDER_TARGET:.0f}: {verdict}){pickled}")
    encode_peak = _peak_bytes(machine.snapshot)
    restore_peak = _peak_bytes(lambda: ExchangeStateMachine.restore(data))
    print(f"peak memory traced: encode {encode_peak / 1e6:,.1f} MB (snapshot bytes "
          f"{len(data) / 1e6:,.1f} MB included); restore {restore_peak / 1e6:,.1f} MB = "
          f"{restore_peak / live:,.0f} bytes per live order (the restored state included)")
