"""The simulated fabric and the checkers, with a toy leader writing to followers' regions."""

from __future__ import annotations

import pytest

from consensus.fabric.base import WriteRejected
from consensus.sim import fabric as sim_fabric
from consensus.sim.checkers import ExclusiveWriterChecker, HistoryChecker, Violation
from consensus.sim.fabric import CrashTrigger, SimNetwork
from consensus.sim.registry import SimRegistry
from consensus.sim.runtime import SimRuntime
from consensus.sim.scheduler import Scheduler

REGION_BYTES = 64


class Toy:
    """Three replicas; replica 1 writes numbered 8-byte records into the followers' logs."""

    def __init__(self, seed: int) -> None:
        self.scheduler = Scheduler(seed, step_ns=1_000, stickiness=0.2)
        self.violations: list[Violation] = []
        self.checker = ExclusiveWriterChecker(self.violations.append)
        self.crashed: list[tuple[int, str]] = []
        self.network = SimNetwork(self.scheduler, self.checker, self.crash)
        self.runtimes = {r: SimRuntime(self.scheduler, r, f"r{r}", seed) for r in (1, 2, 3)}

    def crash(self, replica: int, why: str) -> None:
        self.crashed.append((replica, why))
        self.network.endpoints[replica].crash()
        self.scheduler.kill_owner(replica)

    def follower(self, replica: int, writer: int) -> None:
        region = self.network.endpoint(replica).register("log", REGION_BYTES)
        region.grant_write(writer)

    def spawn_cluster(self, records: int, posted: bool) -> list[list[int]]:
        result: list[list[int]] = []
        self.runtimes[1].spawn("lead", lambda: result.append(self.leader(records, posted)))
        self.runtimes[2].spawn("boot", lambda: self.follower(2, writer=1))
        self.runtimes[3].spawn("boot", lambda: self.follower(3, writer=1))
        return result

    def torn_writer(self) -> None:
        fabric = self.network.endpoint(1)
        remote = fabric.connect(2, "log", 1.0)
        self.runtimes[1].sleep(0.001)  # let the follower grant permission first
        remote.write(0, b"\xff" * 16)

    def leader(self, records: int, posted: bool) -> list[int]:
        fabric = self.network.endpoint(1)
        remotes = [fabric.connect(r, "log", 1.0) for r in (2, 3)]
        acked: list[int] = []
        for k in range(records):
            data = k.to_bytes(8, "little")
            for wr_id, remote in enumerate(remotes):
                if posted:
                    fabric.post_write(remote, 8 * (k % 8), data, wr_id)
                else:
                    remote.write(8 * (k % 8), data)
            if posted:
                done = 0
                while done < 2:
                    done += len(fabric.poll_completions(4))
            acked.append(k)
        return acked


def test_writes_land_only_with_permission_and_connect_waits() -> None:
    toy = Toy(3)
    result: list[object] = []

    def lead() -> None:
        result.append(toy.leader(5, posted=False))

    toy.runtimes[1].spawn("lead", lead)
    toy.runtimes[2].spawn("boot", lambda: toy.follower(2, writer=1))
    toy.runtimes[3].spawn("boot", lambda: toy.follower(3, writer=9))  # grants someone else
    toy.scheduler.run()
    assert toy.scheduler.failure is not None and "WriteRejected" in toy.scheduler.failure
    region2 = toy.network.memory.region(2, "log")
    assert region2 is not None and region2.memory[0:8] == (0).to_bytes(8, "little")


def test_posted_writes_land_in_order_by_completion() -> None:
    for seed in range(5):
        toy = Toy(seed)
        toy.spawn_cluster(records=12, posted=True)
        toy.scheduler.run()
        assert toy.scheduler.failure is None, f"seed {seed}: {toy.scheduler.failure}"
        for replica in (2, 3):
            region = toy.network.memory.region(replica, "log")
            assert region is not None
            assert region.memory[8 * 3 : 8 * 4] == (11).to_bytes(8, "little"), f"seed {seed}"


def test_crash_trigger_kills_writer_between_two_followers() -> None:
    toy = Toy(7)
    toy.network.triggers[1] = CrashTrigger(writes_left=1, torn=False)
    result = toy.spawn_cluster(records=3, posted=False)
    toy.scheduler.run()
    assert toy.scheduler.failure is None
    assert result == [] and [r for r, _ in toy.crashed] == [1]
    two, three = toy.network.memory.region(2, "log"), toy.network.memory.region(3, "log")
    assert two is not None and three is not None
    assert toy.network.writes_landed == 1
    assert bytes(three.memory[:8]) == bytes(8)


def test_torn_write_lands_a_strict_prefix() -> None:
    for seed in range(8):
        toy = Toy(seed)
        toy.network.triggers[1] = CrashTrigger(writes_left=1, torn=True)
        toy.runtimes[1].spawn("lead", toy.torn_writer)
        toy.runtimes[2].spawn("boot", lambda: toy.follower(2, writer=1))  # noqa: B023
        toy.scheduler.run()
        assert toy.scheduler.failure is None, f"seed {seed}: {toy.scheduler.failure}"
        region = toy.network.memory.region(2, "log")
        assert region is not None
        written = bytes(region.memory[:16])
        cut = written.index(0) if 0 in written else 16
        assert 1 <= cut < 16 and written[cut:] == bytes(16 - cut), f"seed {seed}: {written!r}"


def test_exclusive_writer_checker_flags_two_writers() -> None:
    toy = Toy(1)

    def both() -> None:
        region = toy.network.endpoint(2).register("log", REGION_BYTES)
        region.grant_write(1)
        region.grant_write(3)

    toy.runtimes[2].spawn("boot", both)
    toy.scheduler.run()
    assert toy.violations and toy.violations[0].rule == "exclusive-writer"


def test_exclusive_writer_checker_flags_landings_of_two_writers_in_one_epoch() -> None:
    violations: list[Violation] = []
    checker = ExclusiveWriterChecker(violations.append)
    checker.permission_changed(2, "log", frozenset({1}), "owner")
    checker.write_landed(2, "log", 1)
    checker.permission_changed(2, "log", frozenset({3}), "owner")
    checker.write_landed(2, "log", 3)
    assert not violations
    checker.write_landed(2, "log", 1)
    assert violations and "landed" in violations[0].detail
    checker.write_landed(2, "ctrl", 1)  # ctrl regions are shared by design
    assert len(violations) == 1


def test_revoke_stops_writes() -> None:
    toy = Toy(2)
    outcome: list[str] = []

    def lead() -> None:
        fabric = toy.network.endpoint(1)
        remote = fabric.connect(2, "log", 1.0)
        remote.write(0, b"a")
        toy.network.withdraw_permission(2, "log", 1, "nemesis")
        try:
            remote.write(0, b"b")
        except WriteRejected:
            outcome.append("rejected")

    toy.runtimes[2].spawn("boot", lambda: toy.follower(2, writer=1))
    toy.runtimes[1].spawn("lead", lead)
    toy.scheduler.run()
    assert outcome == ["rejected"]


def test_registry_wait_for_uses_simulated_time() -> None:
    scheduler = Scheduler(1, step_ns=1_000, stickiness=0.0)
    rt = SimRuntime(scheduler, 1, "r1", 1)
    store: dict[str, bytes] = {}
    a, b = SimRegistry(scheduler, "c", store), SimRegistry(scheduler, "c", store)
    got: list[tuple[bytes, int]] = []
    rt.spawn("reader", lambda: got.append((a.wait_for("k", 5.0), scheduler.now_ns)))

    def writer() -> None:
        rt.sleep(0.005)
        b.publish("k", b"v")

    rt.spawn("writer", writer)
    scheduler.run()
    assert got and got[0][0] == b"v" and 5_000_000 <= got[0][1] < 6_000_000


def history() -> tuple[HistoryChecker, list[Violation]]:
    violations: list[Violation] = []
    checker = HistoryChecker(violations.append)
    for p in (b"a", b"b", b"c"):
        checker.proposed(p)
    return checker, violations


def test_history_accepts_a_clean_run() -> None:
    checker, violations = history()
    for replica in (1, 2):
        for index, p in enumerate((b"a", b"b"), start=1):
            checker.delivered(replica, 1, index, p)
    checker.acknowledged(2, b"b")
    checker.delivered(3, 2, 1, b"a")  # a restarted incarnation may replay from the start
    checker.check_caught_up([(1, 1), (2, 1)], 2)
    assert not violations


def test_history_flags_disagreement_gap_duplicate_and_lag() -> None:
    checker, violations = history()
    checker.delivered(1, 1, 1, b"a")
    checker.delivered(2, 1, 1, b"b")
    assert violations[-1].rule == "agreement"
    checker.delivered(1, 1, 3, b"c")
    assert violations[-1].rule == "prefix"
    checker.delivered(3, 1, 1, b"a")
    checker.delivered(3, 1, 2, b"a")
    assert violations[-1].rule == "integrity"
    checker.acknowledged(5, b"c")
    assert violations[-1].rule == "integrity"
    checker.check_caught_up([(3, 1)], 5)
    assert violations[-1].rule == "catch-up"


def test_history_flags_invented_payload() -> None:
    checker, violations = history()
    checker.delivered(1, 1, 1, b"zzz")
    assert violations[0].rule == "integrity"


def test_revoke_waits_for_a_write_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim_fabric, "MID_WRITE_SWITCH_P", 1.0)
    waited = 0
    for seed in range(6):
        toy = Toy(seed)
        order: list[str] = []

        def lead(toy: Toy = toy, order: list[str] = order) -> None:
            remote = toy.network.endpoint(1).connect(2, "log", 1.0)
            toy.runtimes[1].sleep(0.001)
            remote.write(0, b"\x01" * 8)
            order.append("write returned")

        def owner(toy: Toy = toy, order: list[str] = order) -> None:
            region = toy.network.endpoint(2).register("log", REGION_BYTES)
            region.grant_write(1)
            while toy.network.writes_in_flight(2, "log", 1) == 0 and region.buf[0] == 0:
                toy.runtimes[2].yield_now()
            if region.buf[0] == 0:
                order.append("revoke during the write")
            region.revoke_write(1)
            order.append("revoke returned")
            assert bytes(region.buf[:8]) == b"\x01" * 8, "revoke returned before the write landed"

        toy.runtimes[1].spawn("lead", lead)
        toy.runtimes[2].spawn("owner", owner)
        toy.scheduler.run()
        assert toy.scheduler.failure is None, f"seed {seed}: {toy.scheduler.failure}"
        assert "revoke returned" in order
        waited += "revoke during the write" in order
    assert waited > 0


def moved_revoke(seed: int) -> tuple[list[str], list[int]]:
    """The owner revokes a writer SIGSTOPped inside its write: (what happened, the lengths of
    the write's prefix found in the region right after the revoke and 0.1 s later)."""
    toy = Toy(seed)
    outcome: list[str] = []
    kept: list[int] = []

    def lead() -> None:
        remote = toy.network.endpoint(1).connect(2, "log", 1.0)
        toy.runtimes[1].sleep(0.001)
        try:
            remote.write(0, b"\x02" * 8)
            outcome.append("writer: landed")
        except WriteRejected:
            outcome.append("writer: refused")

    def owner() -> None:
        region = toy.network.endpoint(2).register("log", REGION_BYTES)
        region.grant_write(1)
        while toy.network.writes_in_flight(2, "log", 1) == 0 and region.buf[0] == 0:
            toy.runtimes[2].yield_now()
        if region.buf[0] != 0:
            return  # the write finished before the owner looked: nothing to move
        toy.scheduler.paused.add(1)  # SIGSTOP the writer inside its write
        toy.scheduler.at(toy.scheduler.now_ns + 80_000_000, toy.scheduler.paused.clear)
        started = toy.scheduler.now_ns
        region.revoke_write(1)
        outcome.append("revoked at once" if toy.scheduler.now_ns - started < 1_000_000
                       else "revoke waited")
        kept.append(bytes(region.buf[:8]).count(2))
        toy.runtimes[2].sleep(0.1)
        kept.append(bytes(region.buf[:8]).count(2))

    toy.runtimes[1].spawn("lead", lead)
    toy.runtimes[2].spawn("owner", owner)
    toy.scheduler.run()
    assert toy.scheduler.failure is None, f"seed {seed}: {toy.scheduler.failure}"
    return outcome, kept


def test_revoke_of_a_stopped_writer_moves_the_region(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule 9: the revoke returns at once; a prefix of the stopped write (none, part or all)
    is in the region and nothing more lands; the writer, continued, is refused."""
    monkeypatch.setattr(sim_fabric, "MID_WRITE_SWITCH_P", 1.0)
    results = [moved_revoke(seed) for seed in range(12)]
    moved = [(o, k) for o, k in results if o != ["writer: landed"]]
    assert moved, results
    for outcome, kept in moved:
        assert sorted(outcome) == ["revoked at once", "writer: refused"], outcome
        assert kept[0] == kept[1] and 0 <= kept[0] <= 8, kept
