"""`python -m orderbook bench`: seeded synthetic workload through Market.apply, with figures.

Rule 1: the workload depends only on (seed, commands, workload kind): about 70% limit adds
        within +/-PRICE_SPREAD_TICKS of the mid price, 20% cancels of live orders, 10% market
        orders. Cancels pick a live order, so the generator runs the engine once (untimed).
        Two kinds: "passive" (default): buys at mid-0..50, sells at mid+0..50, so the book builds
        up and market orders sweep it, like a real book; "crossing": either side at mid-50..+50,
        so half the limit orders trade on arrival and the book stays a few orders thin.
Rule 2: the timed runs apply pre-built commands to a fresh Market: --repeat runs for
        throughput (wall and CPU time), one with time.perf_counter_ns around every command for
        p50/p99; all must end with the same digest (determinism check). A baseline loop (a call
        doing one dict insert and delete per command, same process) gives a machine-speed ratio,
        because the machine is shared and absolute numbers are noisy.
        The pre-built command list is hidden from the cyclic collector with gc.freeze(): it is
        harness input that a server would never hold, and with 1,000,000 tracked objects it made
        every full collection (triggered as the book grows) several times slower.
Rule 3: --no-gc disables the cyclic collector during the timed runs. The engine frees every
        order by reference counting (it creates no garbage cycles: tests/orderbook/test_market.py
        checks it), so a server may run it that way; with ~400,000 resting orders the default
        collector's full passes cost about a third of the run on this machine.
Rule 4: memory per resting order = tracemalloc-traced bytes of a fresh Market holding
        MEMORY_ORDERS resting orders built from the same price distribution (order objects, id
        strings, id index, levels, sorted keys: everything the book keeps), divided by their count.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm import tqdm

from orderbook.build import engine_build
from orderbook.market import Market
from orderbook.types import AddOrder, CancelOrder, Command, Side

COMMANDS_DEFAULT = 1_000_000
SEED_DEFAULT = 1
REPEAT_DEFAULT = 3
"""Throughput runs per bench; the best is reported (as timeit does): the machine is shared."""
MID_PRICE_TICKS = 10_000
PRICE_SPREAD_TICKS = 50
QTY_MAX_BENCH = 1_000
ADD_SHARE = 0.70
CANCEL_SHARE = 0.20
MEMORY_ORDERS = 100_000
PROGRESS_CHUNK = 10_000
"""Commands between progress-bar updates (the bar must not cost per command)."""
TARGET_COMMANDS_PER_S = 300_000
TARGET_BYTES_PER_ORDER = 400
SYMBOL = "AAPL"


@dataclass(frozen=True, slots=True)
class Figures:
    commands: int
    repeat: int
    seconds: float
    commands_per_s: float
    commands_per_cpu_s: float
    baseline_per_s: float
    latency_ns_p50: int
    latency_ns_p99: int
    resting_orders: int
    resting_orders_max: int
    bytes_per_order: float
    peak_bytes_per_order: float


WORKLOADS = ("passive", "crossing")


def limit_price(rng: random.Random, side: Side, workload: str) -> int:
    """A limit price for one add of the given workload kind (Rule 1)."""
    if workload == "crossing":
        return MID_PRICE_TICKS + rng.randint(-PRICE_SPREAD_TICKS, PRICE_SPREAD_TICKS)
    offset = rng.randint(0, PRICE_SPREAD_TICKS)
    return MID_PRICE_TICKS - offset if side is Side.BUY else MID_PRICE_TICKS + offset


def generate(count: int, seed: int, show: bool, workload: str = "passive",
             market_ioc: bool = False) -> list[Command]:
    """The seeded workload (Rule 1); `market_ioc` makes the market orders immediate-or-cancel
    (issue 18's stream, `python -m orderbook bench-liquibook`); cancels still pick live
    orders, so the later commands differ from the default stream's."""
    rng = random.Random(seed)
    market = Market()
    apply = market.apply
    live: list[str] = []
    orders = market._orders
    commands: list[Command] = []
    bar = tqdm(total=count, desc="generate", unit="cmd", disable=not show, file=sys.stderr)
    for number in range(count):
        roll = rng.random()
        cmd: Command
        while roll >= ADD_SHARE and roll < ADD_SHARE + CANCEL_SHARE and live:
            index = rng.randrange(len(live))
            live[index], live[-1] = live[-1], live[index]
            if live[-1] in orders:
                break
            live.pop()
        if ADD_SHARE <= roll < ADD_SHARE + CANCEL_SHARE and live:
            cmd = CancelOrder(live.pop())
        else:
            side = Side.BUY if rng.random() < 0.5 else Side.SELL
            price = 0
            if roll < ADD_SHARE + CANCEL_SHARE:
                price = limit_price(rng, side, workload)
            cmd = AddOrder(f"o{number}", SYMBOL, side, price, rng.randint(1, QTY_MAX_BENCH),
                           ioc=market_ioc and not price)
            live.append(cmd.order_id)
        apply(cmd)
        commands.append(cmd)
        if number % PROGRESS_CHUNK == 0:
            bar.update(min(PROGRESS_CHUNK, count - bar.n))
    bar.update(count - bar.n)
    bar.close()
    return commands


def run_throughput(commands: Sequence[Command], show: bool) -> tuple[float, float, Market]:
    """Wall and CPU seconds to apply every command to a fresh Market (progress every
    PROGRESS_CHUNK commands; the CPU figure is less disturbed by other processes)."""
    market = Market()
    apply = market.apply
    bar = tqdm(total=len(commands), desc="throughput", unit="cmd", disable=not show,
               file=sys.stderr)
    clock = time.perf_counter
    cpu_clock = time.process_time
    elapsed = cpu = 0.0
    for start in range(0, len(commands), PROGRESS_CHUNK):
        chunk = commands[start:start + PROGRESS_CHUNK]
        began, cpu_began = clock(), cpu_clock()
        for cmd in chunk:
            apply(cmd)
        elapsed += clock() - began
        cpu += cpu_clock() - cpu_began
        bar.update(len(chunk))
    bar.close()
    return elapsed, cpu, market


def run_latency(commands: Sequence[Command], show: bool) -> tuple[array[int], Market, int]:
    """Per-command latency in ns (perf_counter_ns around each apply), the final market, and the
    most live orders seen at a progress step."""
    market = Market()
    apply = market.apply
    clock = time.perf_counter_ns
    latencies = array("q", bytes(8 * len(commands)))
    bar = tqdm(total=len(commands), desc="latency", unit="cmd", disable=not show,
               file=sys.stderr)
    index = 0
    resting_max = 0
    for start in range(0, len(commands), PROGRESS_CHUNK):
        for cmd in commands[start:start + PROGRESS_CHUNK]:
            began = clock()
            apply(cmd)
            latencies[index] = clock() - began
            index += 1
        bar.update(min(PROGRESS_CHUNK, len(commands) - start))
        resting_max = max(resting_max, market.order_count())
    bar.close()
    return latencies, market, resting_max


def _baseline_step(table: dict[str, Command], cmd: Command) -> None:
    table[cmd.order_id] = cmd
    del table[cmd.order_id]


def run_baseline(commands: Sequence[Command]) -> float:
    """Commands/s of a trivial loop (one call doing a dict insert and delete per command): the
    machine-speed yardstick measured in the same run."""
    table: dict[str, Command] = {}
    step = _baseline_step
    began = time.perf_counter()
    for cmd in commands:
        step(table, cmd)
    return len(commands) / (time.perf_counter() - began)


def measure_memory(count: int, seed: int) -> tuple[float, float]:
    """(bytes, peak bytes) per resting order, traced by tracemalloc (Rule 3)."""
    rng = random.Random(seed)
    tracemalloc.start()
    market = Market()
    base, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    for number in range(count):
        buy = number % 2 == 0
        offset = rng.randint(1, PRICE_SPREAD_TICKS)
        price = MID_PRICE_TICKS - offset if buy else MID_PRICE_TICKS + offset
        market.apply(AddOrder(f"o{number}", SYMBOL, Side.BUY if buy else Side.SELL, price,
                              rng.randint(1, QTY_MAX_BENCH)))
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert market.order_count() == count
    return (current - base) / count, (peak - base) / count


def percentile(sorted_values: Sequence[int], fraction: float) -> int:
    assert sorted_values
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def run(count: int, seed: int, show: bool, workload: str, repeat: int = 1,
        collector: bool = True) -> Figures:
    """All phases; throughput is the best of `repeat` runs (each on a fresh Market)."""
    assert repeat >= 1
    commands = generate(count, seed, show, workload)
    gc.collect()
    gc.freeze()  # harness input only (Rule 2); the engine's own objects stay collectable
    if not collector:
        gc.disable()  # Rule 3
    try:
        baseline = max(run_baseline(commands) for _ in range(repeat))
        seconds = cpu_seconds = float("inf")
        digest = b""
        for _ in range(repeat):
            wall, cpu, market = run_throughput(commands, show)
            seconds, cpu_seconds = min(seconds, wall), min(cpu_seconds, cpu)
            if digest and market.digest() != digest:
                raise RuntimeError("determinism check failed: two runs of one stream differ")
            digest = market.digest()
            resting = market.order_count()
            del market
            gc.collect()
        latencies, market, resting_max = run_latency(commands, show)
        if market.digest() != digest:
            raise RuntimeError("determinism check failed: two runs of one stream differ")
        del market
    finally:
        gc.enable()
        gc.unfreeze()
    ordered = sorted(latencies)
    per_order, peak_per_order = measure_memory(MEMORY_ORDERS, seed)
    return Figures(count, repeat, seconds, count / seconds, count / cpu_seconds, baseline,
                   percentile(ordered, 0.50), percentile(ordered, 0.99), resting, resting_max,
                   per_order, peak_per_order)


def report(figures: Figures, seed: int, workload: str) -> str:
    """Human-readable figures, one per line, with the targets."""
    ok_speed = figures.commands_per_s >= TARGET_COMMANDS_PER_S
    ok_memory = figures.bytes_per_order <= TARGET_BYTES_PER_ORDER
    return "\n".join([
        f"workload: {figures.commands:,} commands, seed {seed}, {workload} (70% limit adds "
        f"within +/-{PRICE_SPREAD_TICKS} ticks, 20% cancels of live orders, 10% market orders)",
        f"throughput (best of {figures.repeat}): {figures.commands_per_s:,.0f} commands/s "
        f"({figures.seconds:.2f} s) "
        f"[target >= {TARGET_COMMANDS_PER_S:,}: {'met' if ok_speed else 'NOT met'}]; "
        f"per CPU second: {figures.commands_per_cpu_s:,.0f}",
        f"baseline (a call doing a dict insert + delete per command): "
        f"{figures.baseline_per_s:,.0f}/s; "
        f"engine/baseline = {figures.commands_per_s / figures.baseline_per_s:.3f}",
        f"latency per command: p50 {figures.latency_ns_p50 / 1000:.2f} us, "
        f"p99 {figures.latency_ns_p99 / 1000:.2f} us (perf_counter_ns around each apply)",
        f"resting orders: {figures.resting_orders:,} at the end, {figures.resting_orders_max:,} "
        f"at most; digests of the two runs equal",
        f"memory per resting order: {figures.bytes_per_order:.0f} bytes (peak "
        f"{figures.peak_bytes_per_order:.0f}) over {MEMORY_ORDERS:,} resting orders, tracemalloc "
        f"[target <= {TARGET_BYTES_PER_ORDER}: {'met' if ok_memory else 'NOT met'}]",
    ])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--commands", type=int, default=COMMANDS_DEFAULT, metavar="N",
                        help=f"workload size (default {COMMANDS_DEFAULT:,})")
    parser.add_argument("--seed", type=int, default=SEED_DEFAULT,
                        help=f"workload seed (default {SEED_DEFAULT})")
    parser.add_argument("--repeat", type=int, default=REPEAT_DEFAULT, metavar="R",
                        help=f"throughput runs; the best is reported (default {REPEAT_DEFAULT})")
    parser.add_argument("--workload", choices=WORKLOADS, default="passive",
                        help="passive (default): limit orders on their own side of the mid, "
                        "market orders sweep; crossing: limit orders on either side of the mid")
    parser.add_argument("--no-gc", action="store_true",
                        help="disable the cyclic garbage collector during the timed runs "
                        "(the engine creates no reference cycles)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def main(args: argparse.Namespace) -> int:
    if args.commands <= 0 or args.repeat <= 0:
        print("error: --commands and --repeat must be positive", file=sys.stderr)
        return 2
    figures = run(args.commands, args.seed, not args.no_progress, args.workload, args.repeat,
                  collector=not args.no_gc)
    print(report(figures, args.seed, args.workload))
    print(f"cyclic garbage collector during timed runs: {'off' if args.no_gc else 'on'}")
    print(f"engine: {engine_build()}")
    return 0
