"""Mutation tests: break the real protocol on purpose (monkeypatching, never editing it) and check
that the simulator's checkers catch the break within a few seeds. A checker that cannot fail
would pass these runs; these tests prove each one can."""

from __future__ import annotations

import pytest

from consensus.config import ReplicaConfig
from consensus.election import Background
from consensus.sim.plan import make_plan
from consensus.sim.world import RunResult, World

SEEDS_MAX = 12


def first_failure(rules: tuple[str, ...]) -> RunResult | None:
    """The first run (of at most ``SEEDS_MAX`` seeds) that breaks one of ``rules``."""
    for seed in range(SEEDS_MAX):
        result = World(make_plan(seed, replicas=3)).run()
        if result.failure is not None and result.failure.split(":")[0] in rules:
            return result
    return None


def test_committing_without_a_majority_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ReplicaConfig, "majority", property(lambda self: 1))
    result = first_failure(("durability", "agreement"))
    assert result is not None, f"{SEEDS_MAX} seeds missed a leader that needs no majority"


def test_granting_without_revoking_the_old_leader_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Background, "_revoke_all_but", lambda self, keep: None)
    result = first_failure(("exclusive-writer",))
    assert result is not None, f"{SEEDS_MAX} seeds missed two leaders writing one log"
