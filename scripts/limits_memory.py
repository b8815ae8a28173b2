"""Measure the memory each bound of exchange/limits.py allows (issue 13): bytes per unit with
tracemalloc, then the total at the bound. Figures go to docs/exchange.md ("Limits").
Run: PYTHONPATH=. python scripts/limits_memory.py  (about a minute; --quick: smaller samples)

What is measured (Python objects only; gRPC's C buffers are bounded by
GRPC_REQUEST_BYTES_MAX per received request and are computed, not measured):
- a resting order in the books (RESTING_ORDERS_MAX), with its per-client count, the dedup reply
  of the request that placed it excluded (scripts/dedup_memory.py measures those);
- an instrument's book with one order resting on each side (SYMBOLS_MAX), orders included;
- a request in flight on a server (IN_FLIGHT_PER_CLIENT_MAX, SESSION_IN_FLIGHT_MAX): its sink,
  its queued Pending and encoded command;
- an unsolicited fill queued for a session (SESSION_UNSOLICITED_MAX per session);
- a market-data subscriber's queue at its bound (SUBSCRIBER_QUEUE_MAX trades plus as many
  superseded depth updates, the most a queue holds before it is compacted).
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from collections.abc import Callable

from exchange import limits
from exchange.batching import Pending
from exchange.market_data import Subscription, Update
from exchange.session import SESSION_UNSOLICITED_MAX, OrderSession, Slot
from exchange.state_machine import ExchangeStateMachine, Reply, encode_entry, encode_instruments
from orderbook import AddOrder, DepthChanged, Filled, Side, Trade, encode_command

MB = 1e6


def traced(build: Callable[[], object], count: int) -> float:
    """Bytes per unit of what ``build`` keeps alive (``count`` units)."""
    gc.collect()
    tracemalloc.start()
    kept = build()
    gc.collect()
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return used / count


def resting_order_bytes(count: int) -> float:
    """Books only: a dedup table of one reply keeps the replies out of the figure."""
    payloads = [encode_entry(1 + n % 1000, n + 1,
                             AddOrder(f"{1 + n % 1000}.{n + 1}", f"S{n % 50}",
                                      Side.BUY if n % 2 else Side.SELL,
                                      (900 - n % 400) if n % 2 else (1100 + n % 400), 10))
                for n in range(count)]

    def build() -> object:
        machine = ExchangeStateMachine(1, 1, 0, resting_orders_max=count,
                                       resting_per_client_max=count)
        machine.apply(1, encode_instruments(tuple(f"S{n}" for n in range(50))))
        for index, payload in enumerate(payloads, 2):
            machine.apply(index, payload)
        assert machine.market.order_count() == count
        return machine

    empty = traced(lambda: ExchangeStateMachine(1, 1, 0), 1)
    return (traced(build, 1) - empty) / count


def book_bytes() -> float:
    """A book per listed instrument, with one order resting on each side."""
    symbols = tuple(f"SYM{n}" for n in range(limits.SYMBOLS_MAX))

    def build() -> object:
        machine = ExchangeStateMachine(1, 1, 0)
        machine.apply(1, encode_instruments(symbols))
        for n, symbol in enumerate(symbols):
            for side, price in ((Side.BUY, 90), (Side.SELL, 110)):
                seq = 2 * n + side
                machine.apply(machine.applied_index + 1,
                              encode_entry(1, seq, AddOrder(f"1.{seq}", symbol, side, price, 1)))
        return machine

    empty = traced(lambda: ExchangeStateMachine(1, 1, 0), 1)
    return (traced(build, 1) - empty) / limits.SYMBOLS_MAX


def in_flight_bytes(count: int) -> float:
    body = encode_command(AddOrder("123456.7890123", "AAPL", Side.BUY, 10_000, 100))

    def build() -> object:
        session = OrderSession(count)
        slots = session.admit(count)
        sinks: dict[tuple[int, int], list[Slot]] = {}
        pending = []
        for seq, slot in enumerate(slots, 1):
            sinks[(123456, seq)] = [slot]
            pending.append(Pending(123456, seq, bytes(body), slot))
        return session, sinks, pending

    return traced(build, count)


def unsolicited_bytes(count: int) -> float:
    def build() -> object:
        session = OrderSession()
        for n in range(count):
            fill = Filled(f"77.{n}", f"88.{n}", 10_000 + n, 100)
            session.add_unsolicited(Reply(77, 0, fill.order_id, (fill,), n + 1))
        return session

    return traced(build, count)


def subscriber_bytes() -> float:
    levels = tuple((10_000 + n, 100, 1) for n in range(5))

    def build() -> object:
        subscription = Subscription(frozenset(), include_depth=True)
        for n in range(limits.SUBSCRIBER_QUEUE_MAX):
            assert subscription.offer(Update(n + 1, "AAPL", Trade("AAPL", 10_000 + n % 7, 100)))
            depth = DepthChanged("AAPL", levels, levels)
            assert subscription.offer(Update(n + 1, "AAPL", depth))
        return subscription

    return traced(build, 1)


def main() -> None:
    quick = "--quick" in sys.argv
    orders = 20_000 if quick else 200_000
    per_order = resting_order_bytes(orders)
    per_book = book_bytes()
    per_request = in_flight_bytes(10_000)
    per_fill = unsolicited_bytes(SESSION_UNSOLICITED_MAX)
    per_subscriber = subscriber_bytes()
    unary_workers = 32  # exchange.config.GRPC_WORKERS_DEFAULT: unary calls in flight at once
    rows = [
        ("RESTING_ORDERS_MAX", limits.RESTING_ORDERS_MAX, per_order,
         f"{per_order:.0f} B per resting order (measured over {orders:,})"),
        ("SYMBOLS_MAX", limits.SYMBOLS_MAX, per_book,
         f"{per_book:.0f} B per instrument: its book, 2 orders"),
        ("IN_FLIGHT_PER_CLIENT_MAX", limits.IN_FLIGHT_PER_CLIENT_MAX, per_request,
         f"{per_request:.0f} B per request in flight (one client)"),
        ("SESSIONS_MAX_DEFAULT x SESSION_IN_FLIGHT_MAX",
         limits.SESSIONS_MAX_DEFAULT * limits.SESSION_IN_FLIGHT_MAX, per_request,
         "every session full"),
        ("SESSIONS_MAX_DEFAULT x SESSION_UNSOLICITED_MAX",
         limits.SESSIONS_MAX_DEFAULT * SESSION_UNSOLICITED_MAX, per_fill,
         f"{per_fill:.0f} B per queued unsolicited fill"),
        ("SUBSCRIBERS_MAX_DEFAULT", limits.SUBSCRIBERS_MAX_DEFAULT, per_subscriber,
         f"{per_subscriber / MB:.1f} MB per subscriber queue at SUBSCRIBER_QUEUE_MAX"),
        ("GRPC_REQUEST_BYTES_MAX x (workers + sessions' readers)",
         unary_workers + limits.SESSIONS_MAX_DEFAULT, limits.GRPC_REQUEST_BYTES_MAX,
         "computed: one largest request per handler thread"),
    ]
    total = 0.0
    for name, count, unit, note in rows:
        at_bound = count * unit
        total += at_bound
        print(f"{name:52} {count:>9,} x {unit:>11,.0f} B = {at_bound / MB:8.1f} MB  ({note})")
    print(f"{'total at every bound (with the dedup table, scripts/dedup_memory.py, on top)':90}"
          f"{total / MB:8.1f} MB")


if __name__ == "__main__":
    main()
