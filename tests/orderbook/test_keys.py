"""SortedKeys against a sorted Python set: random adds, removes and pops, checked after each."""

from __future__ import annotations

import random

import pytest

from orderbook.keys import KEYS_RUN_MAX, SortedKeys


@pytest.mark.parametrize("seed", range(6))
def test_random_operations_match_a_sorted_set(seed: int) -> None:
    print(f"seed {seed}")
    rng = random.Random(seed)
    span = [50, 5 * KEYS_RUN_MAX, 1 << 40][seed % 3]
    model = set(rng.sample(range(-span, span), min(span, 3 * KEYS_RUN_MAX)))
    keys = SortedKeys(model)
    keys._check()
    for _ in range(4000):
        roll = rng.random()
        if roll < 0.45 or not model:
            key = rng.randrange(-span, span)
            if key not in model:
                keys.add(key)
                model.add(key)
        elif roll < 0.85:
            key = rng.choice(sorted(model))
            keys.remove(key)
            model.remove(key)
        else:
            assert keys.pop_first() == min(model)
            model.remove(min(model))
        keys._check()
        ordered = sorted(model)
        assert list(keys) == ordered and len(keys) == len(ordered)
        if ordered:
            assert keys.first() == ordered[0]
        if len(ordered) > 1:
            assert keys.second() == ordered[1]


def test_runs_split_and_vanish() -> None:
    keys = SortedKeys()
    for key in range(3 * KEYS_RUN_MAX):
        keys.add(key)
    assert len(keys._lists) > 2
    keys._check()
    while keys:
        keys.remove(len(keys) - 1)
    keys._check()
    assert not keys._lists and list(keys) == []
