"""Rejoin (consensus/rejoin.py): restarts on fresh memory, overrun followers and the amnesia rule,
on in-process clusters whose replicas run a hash-chain state machine with snapshots."""

from __future__ import annotations

import sys

import pytest

from consensus import LogOverrun
from consensus.state import PHASE_CATCH_UP
from tests.consensus.cluster_util import ChainApp, SnapshotCluster, wait_until


@pytest.fixture
def make_cluster():
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    made: list[SnapshotCluster] = []

    def make(size: int, **kwargs: object) -> SnapshotCluster:
        made.append(SnapshotCluster(size, **kwargs))
        return made[-1]

    yield make
    for cluster in made:
        cluster.stop()
    sys.setswitchinterval(interval)


def test_a_first_boot_needs_no_snapshot(make_cluster):
    cluster = make_cluster(3)
    cluster.leader()
    for member in cluster.members:
        assert cluster.replicas[member].recovery is None
        assert cluster.apps[member].installed == []


def test_a_follower_restarted_on_fresh_memory_rejoins_by_snapshot(make_cluster):
    cluster = make_cluster(3, log_slots=16)
    leader = cluster.leader()
    cluster.propose_n(100, "before")  # six wraps: the log alone cannot catch a fresh replica up
    follower = next(m for m in cluster.members if m != leader.replica_id)
    cluster.kill(follower)
    cluster.propose_n(20, "while-down", exclude=(follower,))
    fresh = cluster.restart_fresh(follower)
    cluster.wait_caught_up(follower, 120)
    assert not fresh.is_leader and fresh.error is None
    app = cluster.apps[follower]
    assert app.installed and app.installed[0] >= 100  # a snapshot, not a replay from index 1
    cluster.propose_n(20, "after")
    cluster.check_same_state()


def test_a_restarted_former_leader_rejoins_as_a_follower(make_cluster):
    cluster = make_cluster(3, log_slots=16)
    first = cluster.leader()
    cluster.propose_n(50, "before")
    cluster.kill(first.replica_id)
    second = cluster.leader(exclude=(first.replica_id,))
    cluster.propose_n(50, "new-leader", exclude=(first.replica_id,))
    back = cluster.restart_fresh(first.replica_id)
    cluster.wait_caught_up(first.replica_id, 100)
    assert second.is_leader and not back.is_leader
    cluster.propose_n(10, "after")
    cluster.check_same_state()


def test_an_overrun_follower_recovers_by_itself(make_cluster):
    cluster = make_cluster(3, log_slots=16)
    cluster.leader()
    cluster.propose_n(5, "start")
    cluster.wait_applied(5)
    lagging = cluster.replicas[3]
    lagging.pause()
    cluster.propose_n(100, "past")  # the leader recycles once replica 3 is considered dead
    lagging.resume()
    cluster.wait_caught_up(3, 105)
    assert lagging.error is None and cluster.errors[3] == []
    assert cluster.apps[3].installed  # it took a snapshot instead of failing with LogOverrun
    cluster.propose_n(10, "after")
    cluster.check_same_state()


def test_every_member_restarted_one_at_a_time_keeps_the_state(make_cluster):
    cluster = make_cluster(3, log_slots=16)
    total = 0
    for round_ in range(2):
        for member in cluster.members:
            cluster.propose_n(30, f"r{round_}-{member}")
            total += 30
            cluster.kill(member)
            cluster.propose_n(30, f"r{round_}-{member}-down", exclude=(member,))
            total += 30
            cluster.restart_fresh(member)
            cluster.wait_caught_up(member, total)
    cluster.check_same_state()


def test_recovery_reports_progress(make_cluster):
    cluster = make_cluster(3, log_slots=16)
    leader = cluster.leader()
    cluster.propose_n(40, "x")
    follower = next(m for m in cluster.members if m != leader.replica_id)
    cluster.kill(follower)
    fresh = cluster.restart_fresh(follower)
    seen = []
    wait_until(lambda: seen.append(fresh.recovery) or fresh.recovery is None,
               what="the recovery to end")
    statuses = [s for s in seen if s is not None]
    assert statuses, "a restarted replica reports a recovery"
    assert statuses[0].amnesiac and "fresh memory" in statuses[0].reason
    assert any(s.snapshot_index >= 40 for s in statuses) or cluster.apps[follower].installed


def test_without_a_port_an_overrun_still_fails(make_cluster):
    """A bare log (no snapshot port) keeps the old contract: LogOverrun is an error."""
    from tests.consensus.cluster_util import Cluster

    cluster = Cluster(3, log_slots=16)
    try:
        cluster.leader()
        cluster.propose_n(5, "start")
        cluster.wait_applied(5)
        cluster.replicas[3].pause()
        cluster.propose_n(100, "past")
        cluster.replicas[3].resume()
        wait_until(lambda: isinstance(cluster.replicas[3].error, LogOverrun),
                   what="LogOverrun without a port")
    finally:
        cluster.stop()


def test_catch_up_phase_is_visible_before_the_end(make_cluster):
    cluster = make_cluster(3, log_slots=16)
    leader = cluster.leader()
    cluster.propose_n(40, "x")
    follower = next(m for m in cluster.members if m != leader.replica_id)
    cluster.kill(follower)
    fresh = cluster.restart_fresh(follower)
    phases = set()
    wait_until(lambda: phases.add(getattr(fresh.recovery, "phase", None)) or fresh.recovery is None,
               what="the recovery to end")
    assert None in phases
    assert phases <= {None, "snapshot", "install", PHASE_CATCH_UP}


def _kept_state(cluster: SnapshotCluster, member: int) -> ChainApp:
    """What ``member``'s disk would hold: a copy of its state machine when it is killed."""
    app = cluster.apps[member]
    kept = ChainApp()
    index, data = app.snapshot()
    kept.install(index, data)
    kept.installed.clear()
    return kept


def test_a_replica_restarted_with_local_state_catches_up_from_the_log(make_cluster):
    cluster = make_cluster(3, log_slots=256)
    leader = cluster.leader()
    cluster.propose_n(30, "before")
    follower = next(m for m in cluster.members if m != leader.replica_id)
    cluster.wait_applied(30)
    kept = _kept_state(cluster, follower)
    cluster.kill(follower)
    cluster.propose_n(20, "while-down", exclude=(follower,))
    back = cluster.restart_from_state(follower, kept)
    cluster.wait_caught_up(follower, 50)
    assert back.error is None and not back.is_leader
    assert cluster.apps[follower].installed == []  # no snapshot: the log from index 31
    cluster.propose_n(10, "after")
    cluster.check_same_state()


def test_a_replica_restarted_with_local_state_behind_the_log_fetches_a_snapshot(make_cluster):
    cluster = make_cluster(3, log_slots=16)
    leader = cluster.leader()
    cluster.propose_n(10, "before")
    follower = next(m for m in cluster.members if m != leader.replica_id)
    cluster.wait_applied(10)
    kept = _kept_state(cluster, follower)
    cluster.kill(follower)
    cluster.propose_n(80, "while-down", exclude=(follower,))  # five wraps past index 11
    cluster.restart_from_state(follower, kept)
    cluster.wait_caught_up(follower, 90)
    assert cluster.apps[follower].installed and cluster.apps[follower].installed[0] >= 90


def test_the_leader_recycles_past_a_follower_restarted_on_fresh_memory(make_cluster):
    """Found by simulator seeds 13 and 42: the leader's recycling read the applied word of a
    follower whose regions a fresh restart had just closed, and propose raised the fabric's
    RegionClosed to its caller instead of dropping that follower (replication Rule 3)."""
    cluster = make_cluster(3, log_slots=16)
    leader = cluster.leader()
    cluster.propose_n(20, "before")
    state = leader._state
    while state.next_index <= state.recycle_limit:  # fill the log up to the recycling limit
        leader.propose(f"fill-{state.next_index}".encode())
    follower = next(m for m in cluster.members if m != leader.replica_id)
    cluster.kill(follower)  # its ctrl region is closed; the leader still counts it as a follower
    for i in range(40):  # the next proposal refreshes the recycling limit, reading its ctrl
        leader.propose(f"after-{i}".encode())
    cluster.restart_fresh(follower)
    cluster.wait_caught_up(follower, state.next_index - 1)
    cluster.check_same_state()


def test_a_fresh_restart_never_reuses_a_request_number(make_cluster):
    """Found by simulator seed 338: a replica restarted on fresh memory numbered its permission
    requests from scratch, so a peer that had answered the same number from its previous
    incarnation took the new request as answered and never granted it (the former leader,
    restarted, was never caught up). ctrl Rule 3: a fresh incarnation starts above all of them."""
    from consensus import ctrl as ctrl_mod

    cluster = make_cluster(3, log_slots=16)
    leader = cluster.leader()
    cluster.propose_n(10, "x")
    first = leader.replica_id
    state = leader._state
    used = state.word(ctrl_mod.MY_REQUEST_OFFSET)
    assert used > 0  # it campaigned
    cluster.kill(first)
    cluster.leader(exclude=(first,))
    back = cluster.restart_fresh(first)
    cluster.wait_caught_up(first, 10)
    restarted = back._state.word(ctrl_mod.MY_REQUEST_OFFSET)
    assert restarted >= ctrl_mod.request_floor(first, 2) > used
    assert restarted % ctrl_mod.REQUEST_STRIDE == first % ctrl_mod.REQUEST_STRIDE
