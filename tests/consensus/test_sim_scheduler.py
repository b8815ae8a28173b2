"""The deterministic scheduler and SimRuntime, driven by small toy activities."""

from __future__ import annotations

import functools

import pytest

from consensus.sim.runtime import SimRuntime
from consensus.sim.scheduler import Scheduler, SimKilled


def make(seed: int = 1, stickiness: float = 0.3) -> tuple[Scheduler, SimRuntime]:
    scheduler = Scheduler(seed, step_ns=1_000, stickiness=stickiness)
    return scheduler, SimRuntime(scheduler, owner=1, label="r1", seed=seed)


def interleaving(seed: int) -> tuple[list[str], str]:
    scheduler, rt = make(seed)
    order: list[str] = []

    def worker(name: str) -> None:
        for i in range(20):
            order.append(f"{name}{i}")
            rt.yield_now()

    for name in "abc":
        rt.spawn(name, functools.partial(worker, name))
    scheduler.run()
    assert scheduler.failure is None
    return order, scheduler.trace_hash()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_seed_same_interleaving_and_trace(seed: int) -> None:
    first, second = interleaving(seed), interleaving(seed)
    assert first == second, f"seed {seed}"


def test_different_seeds_interleave_differently() -> None:
    orders = {tuple(interleaving(seed)[0]) for seed in range(6)}
    assert len(orders) > 1
    hashes = {interleaving(seed)[1] for seed in range(6)}
    assert len(hashes) > 1


def test_sleep_jumps_simulated_time_when_idle() -> None:
    scheduler, rt = make()
    woke: list[int] = []

    def sleeper() -> None:
        rt.sleep(2.5)
        woke.append(rt.now_ns())

    rt.spawn("s", sleeper)
    scheduler.run()
    assert woke and 2_500_000_000 <= woke[0] < 2_500_100_000


def test_signal_wakes_waiter_and_times_out() -> None:
    scheduler, rt = make()
    flag = rt.signal()
    results: list[tuple[str, bool, int]] = []

    def waiter() -> None:
        results.append(("first", flag.wait(1.0), rt.now_ns()))
        flag.clear()
        results.append(("second", flag.wait(0.5), rt.now_ns()))

    def setter() -> None:
        rt.sleep(0.25)
        flag.set()

    rt.spawn("w", waiter)
    rt.spawn("s", setter)
    scheduler.run()
    assert results[0][:2] == ("first", True) and results[0][2] < 300_000_000
    assert results[1][:2] == ("second", False) and results[1][2] >= 750_000_000


@pytest.mark.parametrize("timeout_s", [None, 1.0])
def test_a_world_event_of_the_waiting_step_wakes_the_waiter(timeout_s: float | None) -> None:
    """Rule 7: a world event due in the very step in which a task starts to wait (a hook
    command's ``Signal.set``, issue 17's seed 2020385) wakes it; it used to be lost (the task
    was marked blocked only after the step), and the waiter slept for good."""
    scheduler, rt = make()
    flag = rt.signal()
    results: list[tuple[bool, int]] = []

    def waiter() -> None:
        scheduler.at(rt.now_ns() + scheduler.step_ns, flag.set)  # due in the wait's own step
        results.append((flag.wait(timeout_s), rt.now_ns()))

    rt.spawn("w", waiter)
    scheduler.run()
    assert scheduler.failure is None, scheduler.failure
    assert results and results[0][0] is True and results[0][1] < 100_000, results


def test_contended_mutex_is_exclusive_and_hands_over() -> None:
    scheduler, rt = make(stickiness=0.0)
    lock = rt.mutex()
    inside: list[str] = []
    log: list[str] = []

    def worker(name: str) -> None:
        for _ in range(5):
            with lock:
                inside.append(name)
                assert len(inside) == 1
                rt.yield_now()
                log.append(name)
                inside.remove(name)
            rt.yield_now()

    for name in "xyz":
        rt.spawn(name, functools.partial(worker, name))
    scheduler.run()
    assert scheduler.failure is None
    assert sorted(log) == sorted("xyz" * 5)


def test_kill_unwinds_at_next_switch_point() -> None:
    scheduler, rt = make()
    cleaned: list[str] = []
    victim_rt = SimRuntime(scheduler, owner=2, label="r2", seed=1)
    steps_after_kill: list[int] = []

    def victim() -> None:
        try:
            while True:
                victim_rt.yield_now()
        finally:
            cleaned.append("victim")

    def killer() -> None:
        rt.sleep(0.001)
        scheduler.kill_owner(2)
        steps_after_kill.append(scheduler.steps)

    victim_rt.spawn("v", victim)
    rt.spawn("k", killer)
    scheduler.run()
    assert cleaned == ["victim"]
    assert scheduler.failure is None


def test_killed_task_does_not_swallow_kill_with_except_exception() -> None:
    scheduler, rt = make()
    victim_rt = SimRuntime(scheduler, owner=2, label="r2", seed=1)

    def victim() -> None:
        while True:
            try:
                victim_rt.sleep(0.001)
            except Exception:  # protocol code catching errors must not catch SimKilled
                pass

    victim_rt.spawn("v", victim)
    scheduler.at(10_000_000, lambda: scheduler.kill_owner(2))
    scheduler.run()
    assert scheduler.failure is None
    assert scheduler.now_ns >= 10_000_000


def test_paused_owner_does_not_run_until_resumed() -> None:
    scheduler, rt = make()
    other = SimRuntime(scheduler, owner=2, label="r2", seed=1)
    seen: list[int] = []

    def paused_worker() -> None:
        seen.append(other.now_ns())

    scheduler.paused.add(2)
    other.spawn("p", paused_worker)
    rt.spawn("idle", lambda: rt.sleep(0.010))
    scheduler.at(5_000_000, lambda: scheduler.paused.discard(2))
    scheduler.run()
    assert seen and seen[0] >= 5_000_000


def test_deadlock_is_reported() -> None:
    scheduler, rt = make()
    never = rt.signal()

    def stuck() -> None:
        never.wait(None)

    rt.spawn("stuck", stuck)
    scheduler.run()
    assert scheduler.failure is not None and "deadlock" in scheduler.failure
    assert "r1.stuck" in scheduler.failure


def test_exception_in_task_is_a_failure_with_traceback() -> None:
    scheduler, rt = make()

    def broken() -> None:
        rt.yield_now()
        raise ValueError("boom")

    rt.spawn("broken", broken)
    rt.spawn("busy", lambda: rt.sleep(1.0))
    scheduler.run()
    assert scheduler.failure is not None
    assert "r1.broken" in scheduler.failure and "ValueError: boom" in scheduler.failure


def test_join_waits_in_simulated_time() -> None:
    scheduler, rt = make()
    joined: list[int] = []

    def child() -> None:
        rt.sleep(0.002)

    def parent() -> None:
        activity = rt.spawn("child", child)
        activity.join(1.0)
        joined.append(rt.now_ns())
        assert not activity.is_alive()

    rt.spawn("parent", parent)
    scheduler.run()
    assert scheduler.failure is None
    assert joined and 2_000_000 <= joined[0] < 3_000_000


def test_stop_kills_everything() -> None:
    scheduler, rt = make()

    def forever() -> None:
        while True:
            rt.sleep(0.001)

    for i in range(3):
        rt.spawn(f"f{i}", forever)
    scheduler.at(50_000_000, scheduler.stop)
    scheduler.run()
    assert not scheduler.tasks
    assert scheduler.failure is None


def test_sim_killed_is_not_an_exception() -> None:
    assert not issubclass(SimKilled, Exception)


def test_a_task_spinning_without_switch_points_is_reported_as_a_hang() -> None:
    scheduler, rt = make()
    release: list[bool] = []

    def spinner() -> None:
        rt.yield_now()
        while not release:  # a polling loop that forgot yield_now
            pass

    rt.spawn("spinner", spinner)
    try:
        scheduler.run(hang_timeout_s=1.0)
    finally:
        release.append(True)
    assert scheduler.failure is not None and "hang" in scheduler.failure
    assert "task r1.spinner ran 1 s" in scheduler.failure and "in spinner" in scheduler.failure
