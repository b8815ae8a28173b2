"""Measure the dedup table's memory: bytes per stored reply and per evicted floor, and the total
at the default limits (issue 13's goal: <= 256 MB). Run: PYTHONPATH=. python scripts/dedup_memory.py
"""

import gc
import tracemalloc

from exchange.dedup import (
    DEDUP_CLIENTS_MAX,
    DEDUP_EVICTED_FLOORS_MAX,
    DEDUP_SEQS_PER_CLIENT_MAX,
    DedupTable,
)
from exchange.state_machine import ExchangeStateMachine, encode_entry
from orderbook import AddOrder, Market, Side

CLIENTS, PER_CLIENT, FLOORS = 2_000, 128, 100_000


def reply_bytes() -> float:
    """Resting limit orders (one Accepted event each): the table alone, the books dropped."""
    payloads = [encode_entry(c, s, AddOrder(f"{c}.{s}", "AAPL", Side.BUY, 100 + s % 50, 10))
                for c in range(1, CLIENTS + 1) for s in range(1, PER_CLIENT + 1)]
    machine = ExchangeStateMachine(PER_CLIENT, CLIENTS)
    tracemalloc.start()
    for index, payload in enumerate(payloads, 1):
        machine.apply(index, payload)
    machine.market = Market()  # the books dropped (a compiled machine's field takes a Market)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return used / len(machine.dedup)


def floor_bytes() -> float:
    table: DedupTable[None] = DedupTable(1, 1, FLOORS)
    tracemalloc.start()
    for client_id in range(1, FLOORS + 2):
        table.record(client_id, 2**40 + client_id, None)
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return used / FLOORS


def main() -> None:
    per_reply, per_floor = reply_bytes(), floor_bytes()
    total = (DEDUP_CLIENTS_MAX * DEDUP_SEQS_PER_CLIENT_MAX * per_reply
             + DEDUP_EVICTED_FLOORS_MAX * per_floor)
    print(f"{per_reply:.0f} B per stored reply, {per_floor:.0f} B per evicted floor; at the limits "
          f"({DEDUP_CLIENTS_MAX:,} clients x {DEDUP_SEQS_PER_CLIENT_MAX} replies + "
          f"{DEDUP_EVICTED_FLOORS_MAX:,} floors): {total / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
