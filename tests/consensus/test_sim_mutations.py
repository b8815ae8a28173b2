"""Mutation tests: break the real protocol on purpose (monkeypatching, never editing it) and check
that the simulator's checkers catch the break within a few seeds. A checker that cannot fail
would pass these runs; these tests prove each one can."""

from __future__ import annotations

from dataclasses import replace

import pytest

from consensus import ctrl as ctrl_mod
from consensus.config import ReplicaConfig
from consensus.election import Background
from consensus.replication import Replicator
from consensus.sim.plan import NS_PER_MS, make_plan
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


def recycle_without_waiting(self: Replicator, count: int) -> bool:
    """The broken recycling rule: the leader's limit ignores every follower's applied index."""
    state = self.state
    state.recycle_limit = state.applied + state.layout.slots
    return state.next_index + count - 1 <= state.recycle_limit


def published_applied(world: World, replica_id: int) -> int:
    """``replica_id``'s applied index as its ctrl region says (a direct read: no switch point)."""
    region = world.network.memory.region(replica_id, "ctrl")
    if region is None:
        return 0
    return int(ctrl_mod.U64.unpack_from(region.buf, ctrl_mod.APPLIED_OFFSET)[0])


def leader_loses_memory_when_followers_lag(seed: int) -> tuple[RunResult, bool]:
    """3 replicas on a 16-slot log under load, both followers slowed from 1 ms; the first time
    the leader has applied more than a log's length past every follower (only a leader that
    recycles without waiting for its live followers gets there), it crashes on fresh memory.
    Returns the run and whether that moment came."""
    plan = replace(make_plan(seed, steps_max=60_000, faults=False, replicas=3),
                   log_slots=16, pipeline_p=0.7, think_ns_max=50_000)
    world = World(plan)
    checks = world.on_step
    struck: list[int] = []

    def slow() -> None:
        world.scheduler.slowed.update({2, 3})

    def on_step() -> None:
        checks()
        leaders = [n.replica_id for n in world.nodes.values() if n.is_leader and n.up]
        if struck or not leaders:
            return
        ahead = published_applied(world, leaders[0]) - plan.log_slots
        if all(published_applied(world, r) < ahead for r in world.members if r != leaders[0]):
            struck.append(leaders[0])
            world.scheduler.slowed.clear()
            world.crash(leaders[0], "scenario: every follower is a log behind", fresh=True)

    world.on_step = on_step  # type: ignore[method-assign]
    world.scheduler.at(NS_PER_MS, slow)
    return world.run(), bool(struck)


RECYCLING_SEEDS = (0, 1, 2, 3)
LOSS_RULES = ("liveness", "catch-up", "durability", "agreement", "digest")


def test_recycling_past_live_followers_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A leader that recycles slots its live followers have not applied leaves committed entries
    only in its own memory; losing that memory loses them, and the overrun followers cannot
    rebuild the cluster. The checkers (no exemption for overrun replicas any more) catch it."""
    monkeypatch.setattr(Replicator, "_refresh_limit", recycle_without_waiting)
    for seed in RECYCLING_SEEDS:
        result, _ = leader_loses_memory_when_followers_lag(seed)
        if result.failure is not None and result.failure.split(":")[0] in LOSS_RULES:
            return
    pytest.fail(f"seeds {RECYCLING_SEEDS} missed a leader recycling past its live followers")


def test_the_unbroken_recycling_rule_passes_the_same_scenario() -> None:
    for seed in RECYCLING_SEEDS[:2]:
        result, struck = leader_loses_memory_when_followers_lag(seed)
        assert result.ok, f"seed {seed}: {result.failure}"
        assert not struck, f"seed {seed}: the leader got a log ahead of its live followers"
        assert result.acks > 100, f"seed {seed}: only {result.acks} acknowledged proposals"
