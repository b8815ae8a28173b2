"""The simulator's snapshot-aware checks: a history that resumes after a snapshot, one digest per
index across replicas (consensus/sim/checkers.py), and the hash-chain application with its
snapshots (consensus/sim/app.py)."""

from __future__ import annotations

import pytest

from consensus.rejoin import SnapshotUnavailable
from consensus.sim.app import ChainApp, chain, encode_snapshot
from consensus.sim.checkers import DigestChecker, HistoryChecker, Violation


def history() -> tuple[HistoryChecker, list[Violation]]:
    violations: list[Violation] = []
    checker = HistoryChecker(violations.append)
    for payload in (b"a", b"b", b"c", b"d"):
        checker.proposed(payload)
    return checker, violations


def test_a_fresh_incarnation_resumes_after_its_snapshot() -> None:
    checker, violations = history()
    for index, payload in enumerate((b"a", b"b", b"c"), start=1):
        checker.delivered(1, 1, index, payload)
    checker.snapshot_installed(2, 2, 2)  # restarted on fresh memory: starts at 3, not 1
    checker.delivered(2, 2, 3, b"c")
    checker.snapshot_installed(3, 1, 3)  # a first incarnation that was overrun at once
    checker.check_caught_up([(1, 1), (2, 2), (3, 1)], 3)
    assert not violations, violations
    assert checker.installs == 2


def test_deliveries_must_continue_right_after_the_snapshot() -> None:
    checker, violations = history()
    checker.snapshot_installed(2, 2, 2)
    checker.delivered(2, 2, 4, b"d")
    assert [v.rule for v in violations] == ["prefix"]


def test_a_snapshot_never_goes_back_before_what_was_delivered() -> None:
    checker, violations = history()
    for index, payload in enumerate((b"a", b"b", b"c"), start=1):
        checker.delivered(1, 1, index, payload)
    checker.snapshot_installed(1, 1, 2)
    assert [v.rule for v in violations] == ["snapshot"]


def test_a_replica_still_at_its_snapshot_has_not_caught_up() -> None:
    checker, violations = history()
    checker.snapshot_installed(2, 2, 1)
    checker.check_caught_up([(2, 2)], 3)
    assert [v.rule for v in violations] == ["catch-up"]


def test_digests_must_agree_at_every_index() -> None:
    violations: list[Violation] = []
    digests = DigestChecker(violations.append)
    digests.state(1, 5, b"x" * 32, "delivered")
    digests.state(2, 5, b"x" * 32, "installed")
    assert not violations
    digests.state(3, 5, b"y" * 32, "installed")
    assert [v.rule for v in violations] == ["digest"]
    assert "replica 3 installed index 5" in violations[0].detail


def app() -> tuple[ChainApp, list[tuple[str, str]], list[tuple[int, str]]]:
    problems: list[tuple[str, str]] = []
    states: list[tuple[int, str]] = []
    made = ChainApp(lambda rule, detail: problems.append((rule, detail)))
    made.on_state = lambda index, digest, how: states.append((index, how))
    return made, problems, states


def test_the_chain_app_extends_by_one_index_and_reports_each_state() -> None:
    made, problems, states = app()
    made.deliver(1, b"a")
    made.deliver(3, b"c")  # a gap: reported, not applied
    assert problems and problems[0][0] == "app-order"
    assert made.index == 1 and states == [(1, "delivered")]
    assert made.digest == chain(bytes(32), b"a")


def test_a_snapshot_round_trips_and_a_corrupt_one_changes_nothing() -> None:
    source, _, _ = app()
    for index, payload in enumerate((b"a", b"b"), start=1):
        source.deliver(index, payload)
    index, data = source.snapshot()
    target, problems, states = app()
    corrupt = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(SnapshotUnavailable, match="corrupt"):
        target.install(index, corrupt)
    with pytest.raises(SnapshotUnavailable, match="announced"):
        target.install(index + 1, data)
    assert target.index == 0 and not states
    target.install(index, data)
    assert (target.index, target.digest) == (2, source.digest)
    assert states == [(2, "installed")] and not problems
    target.deliver(3, b"c")
    assert target.index == 3


def test_rollback_returns_to_a_state_the_app_had() -> None:
    made, _, _ = app()
    for index, payload in enumerate((b"a", b"b", b"c"), start=1):
        made.deliver(index, payload)
    assert made.rollback(1) and made.index == 1 and made.digest == chain(bytes(32), b"a")
    assert not made.rollback(2)  # gone with the rollback
    made.install(7, encode_snapshot(7, b"z" * 32))
    assert not made.rollback(6) and made.rollback(7)
