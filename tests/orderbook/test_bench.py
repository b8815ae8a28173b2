"""The bench workload generator: seeded, the advertised mix, cancels always hit live orders."""

from __future__ import annotations

import pytest

from orderbook import AddOrder, Cancelled, CancelOrder, Market
from orderbook.bench import WORKLOADS, generate, measure_memory


@pytest.mark.parametrize("workload", WORKLOADS)
def test_generate_is_seeded_and_cancels_live_orders(workload: str) -> None:
    commands = generate(4000, 5, False, workload)
    assert commands == generate(4000, 5, False, workload)
    assert commands != generate(4000, 6, False, workload)
    cancels = [c for c in commands if isinstance(c, CancelOrder)]
    markets = [c for c in commands if isinstance(c, AddOrder) and c.price == 0]
    assert 0.15 < len(cancels) / len(commands) < 0.25
    assert 0.07 < len(markets) / len(commands) < 0.13
    market = Market()
    for cmd in commands:
        events = market.apply(cmd)
        if isinstance(cmd, CancelOrder):
            assert isinstance(events[0], Cancelled), cmd


def test_measure_memory_counts_resting_orders() -> None:
    per_order, peak = measure_memory(2000, 1)
    assert 100 < per_order <= peak
