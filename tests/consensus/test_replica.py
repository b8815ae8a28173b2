"""Replica scenarios, in process (memory fabric): replication, every leader-change path, recycling,
LogOverrun. Each ends by checking that all replicas delivered the same entries."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from consensus import LogOverrun, NotLeader, ReplicaConfig
from consensus.errors import ReplicaStopped
from consensus.runtime import RealRuntime

from .cluster_util import Cluster, wait_until


@pytest.fixture
def make_cluster():
    # All replicas share this interpreter: a short GIL switch interval keeps every replica's
    # heartbeat and pump threads running while a proposer spins (as separate processes would).
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    made: list[Cluster] = []

    def make(size: int, **kwargs: object) -> Cluster:
        made.append(Cluster(size, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for cluster in made:
        cluster.stop()
    sys.setswitchinterval(interval)


@pytest.mark.parametrize("size", [3, 5])
def test_replication_and_order(make_cluster, size):
    cluster = make_cluster(size)
    leader = cluster.leader()
    assert leader.replica_id == 1  # lowest id leads a fresh cluster
    first = cluster.propose_n(100, "one")
    batch = leader.propose_many([f"many-{i}".encode() for i in range(300)])
    assert first == list(range(1, 101)) and batch == list(range(101, 401))
    cluster.wait_applied(400)
    cluster.check_identical()
    assert cluster.delivered[size][100] == (101, b"many-0")
    for member, replica in cluster.replicas.items():
        if member != 1:
            with pytest.raises(NotLeader) as raised:
                replica.propose(b"x")
            assert raised.value.leader_id == 1


def test_leader_paused_then_resumed_finds_itself_deposed(make_cluster):
    cluster = make_cluster(3)
    old = cluster.leader()
    cluster.propose_n(50, "before")
    old.pause()
    with pytest.raises(NotLeader):
        old.propose(b"while paused")
    new = cluster.leader(exclude=(old.replica_id,))
    assert new.replica_id != old.replica_id
    cluster.propose_n(50, "during", exclude=(old.replica_id,))
    old.resume()
    wait_until(lambda: old.leader_id == new.replica_id, what="resumed replica to follow")
    assert not old.is_leader and new.is_leader  # a resumed lower id does not preempt
    with pytest.raises(NotLeader) as raised:
        old.propose(b"deposed")
    assert raised.value.leader_id == new.replica_id
    cluster.propose_n(50, "after")
    cluster.wait_applied(150)
    cluster.check_identical()


def test_leader_killed(make_cluster):
    cluster = make_cluster(5)
    old = cluster.leader()
    cluster.propose_n(40, "before")
    old.stop()  # every activity of the leader stops, as in a killed process
    with pytest.raises(ReplicaStopped):
        old.propose(b"dead")
    survivors = tuple(m for m in cluster.members if m != old.replica_id)
    cluster.propose_n(40, "after", exclude=(old.replica_id,))
    cluster.wait_applied(80, survivors)
    cluster.check_identical(survivors)
    cluster.check_identical()


def test_follower_paused_and_resumed(make_cluster):
    cluster = make_cluster(3)
    leader = cluster.leader()
    follower = cluster.replicas[3]
    follower.pause()
    cluster.propose_n(60, "while-paused")
    assert leader.is_leader  # a majority (1, 2) still holds every entry
    assert follower.applied_index < 60
    follower.resume()
    cluster.propose_n(10, "after")
    cluster.wait_applied(70)
    cluster.check_identical()


def test_two_leader_changes_in_a_row(make_cluster):
    cluster = make_cluster(5)
    first = cluster.leader()
    cluster.propose_n(20, "a")
    first.pause()
    second = cluster.leader(exclude=(first.replica_id,))
    cluster.propose_n(20, "b", exclude=(first.replica_id,))
    second.pause()
    third = cluster.leader(exclude=(first.replica_id, second.replica_id))
    cluster.propose_n(20, "c", exclude=(first.replica_id, second.replica_id))
    first.resume()
    second.resume()
    assert third.is_leader
    cluster.propose_n(20, "d")
    cluster.wait_applied(80)
    cluster.check_identical()


def test_recycling_across_many_wraps(make_cluster):
    cluster = make_cluster(3, log_slots=16)
    leader = cluster.leader()
    # Every member must follow before the wraps start: a member that has not granted the leader
    # permission yet does not hold recycling back, and would be overrun (that path is
    # test_log_overrun_is_reported).
    cluster.propose_n(1, "joined")
    cluster.wait_applied(1)
    for round_ in range(40):  # 40 * 20 entries = 50 wraps of a 16-slot log
        leader.propose_many([f"{round_}-{i}".encode() for i in range(8)])
        cluster.propose_n(12, f"r{round_}")
    cluster.wait_applied(801)
    cluster.check_identical()


def test_log_overrun_is_reported(make_cluster):
    cluster = make_cluster(3, log_slots=16)
    cluster.leader()
    cluster.propose_n(5, "start")
    cluster.wait_applied(5)
    lagging = cluster.replicas[3]
    lagging.pause()
    cluster.propose_n(100, "past")  # the leader recycles once replica 3 is considered dead
    lagging.resume()
    wait_until(lambda: bool(cluster.errors[3]), what="on_error(LogOverrun)")
    assert isinstance(lagging.error, LogOverrun) and cluster.errors[3] == [lagging.error]
    assert "state transfer needed" in str(lagging.error)
    assert lagging.applied_index == 5  # nothing wrong was applied
    cluster.check_identical()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="not among"):
        ReplicaConfig(4, (1, 2, 3))
    with pytest.raises(ValueError, match="power of two"):
        ReplicaConfig(1, (1, 2, 3), log_slots=100)
    with pytest.raises(ValueError, match="distinct"):
        ReplicaConfig(1, (1, 1, 2))
    with pytest.raises(ValueError, match="pump_poll_us"):
        ReplicaConfig(1, (1, 2, 3), pump_poll_us=-1)
    with pytest.raises(ValueError, match="scan_fast_interval_us"):
        ReplicaConfig(1, (1, 2, 3), scan_interval_us=500, scan_fast_interval_us=600)
    with pytest.raises(ValueError, match="scan_fast_interval_us"):
        ReplicaConfig(1, (1, 2, 3), scan_fast_interval_us=-1)
    calm = ReplicaConfig(1, (1, 2, 3), scan_interval_us=2000, scan_gap_cap_us=2000,
                         scan_fast_interval_us=250)
    assert calm.scan_fast_us == 250
    assert ReplicaConfig(1, (1, 2, 3), scan_interval_us=400).scan_fast_us == 400  # 0: off


def test_fixed_pump_polling_still_delivers_everywhere(make_cluster):
    cluster = make_cluster(3, pump_poll_us=2000)
    assert cluster.propose_n(30, "polled") == list(range(1, 31))
    cluster.wait_applied(30)
    cluster.check_identical()


def test_oversized_payload_is_refused(make_cluster):
    cluster = make_cluster(3)
    with pytest.raises(ValueError, match="payload_size_max"):
        cluster.leader().propose(bytes(65))


def test_candidate_behind_by_more_than_the_log_does_not_lead(make_cluster):
    """Replica 2 misses a whole log's worth of entries, then is the lowest live id when the leader
    dies: it must fail with LogOverrun instead of leading with an empty log (which would
    overwrite committed entries); replica 3 then leads with replica 2 as a passive acceptor."""
    cluster = make_cluster(3, log_slots=16, paused=(2,))
    two = cluster.replicas[2]
    leader = cluster.leader()
    assert leader.replica_id == 1
    cluster.propose_n(100, "wraps")  # 6 wraps of replica 3's log; replica 2 holds nothing new
    cluster.wait_applied(100, (1, 3))
    leader.stop()
    two.resume()
    wait_until(lambda: isinstance(two.error, LogOverrun), what="replica 2 to report LogOverrun")
    assert not two.is_leader
    three = cluster.leader(exclude=(1, 2))
    assert three.replica_id == 3
    cluster.propose_n(10, "after", exclude=(1, 2))
    cluster.wait_applied(110, (3,))
    cluster.check_identical((1, 3))
    assert [p for _, p in cluster.delivered[3][:100]] == [p for _, p in cluster.delivered[1][:100]]


def test_single_replica_is_its_own_majority(make_cluster):
    cluster = make_cluster(1)
    assert cluster.propose_n(20, "solo") == list(range(1, 21))
    cluster.wait_applied(20)
    cluster.check_identical()


def test_leader_delivers_its_own_entries_in_the_proposing_thread(make_cluster):
    cluster = make_cluster(3)
    leader = cluster.leader()
    threads: list[str] = []
    original = leader._on_commit
    assert original is not None

    def recording(index: int, payload: bytes) -> None:
        threads.append(threading.current_thread().name)
        original(index, payload)

    leader._pump.on_commit = recording
    index = leader.propose(b"inline")
    # delivered before propose returned, by the caller's thread: no pump round trip
    assert leader.applied_index == index
    assert cluster.delivered[leader.replica_id][-1] == (index, b"inline")
    assert threads == [threading.current_thread().name]
    batch = leader.propose_many([b"a", b"b", b"c"])
    assert leader.applied_index == batch[-1]
    cluster.wait_applied(batch[-1])
    cluster.check_identical()


def test_concurrent_proposers_deliver_every_entry_once_in_order(make_cluster):
    cluster = make_cluster(3)
    leader = cluster.leader()
    per_thread = 200

    def propose(tag: int) -> None:
        for i in range(per_thread):
            leader.propose(f"{tag}-{i}".encode())

    workers = [threading.Thread(target=propose, args=(tag,)) for tag in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    total = 4 * per_thread
    assert leader.applied_index == total  # the last proposer delivered everything before it
    cluster.wait_applied(total)
    cluster.check_identical()
    payloads = sorted(payload for _, payload in cluster.delivered[leader.replica_id])
    assert payloads == sorted(f"{t}-{i}".encode() for t in range(4) for i in range(per_thread))


def test_raising_callback_on_the_leader_fails_the_replica_not_the_proposer(make_cluster):
    cluster = make_cluster(3)
    leader = cluster.leader()

    def broken(index: int, payload: bytes) -> None:
        raise RuntimeError("application bug")

    leader._pump.on_commit = broken
    index = leader.propose(b"boom")  # committed: the proposer is told so
    assert index == 1
    wait_until(lambda: leader.error is not None, what="the replica to fail")
    assert "application bug" in str(leader.error)
    assert not leader.is_leader
    assert cluster.errors[leader.replica_id]


class FreezableRuntime(RealRuntime):
    """A RealRuntime whose activities stop at their next sleep or yield while ``frozen`` is
    set, as if the process were SIGSTOPped between two steps."""

    def __init__(self) -> None:
        super().__init__()
        self.running = threading.Event()
        self.running.set()

    def sleep(self, seconds: float) -> None:
        self.running.wait()
        super().sleep(seconds)

    def yield_now(self) -> None:
        self.running.wait()
        super().yield_now()


def test_idle_deposed_leader_steps_down_without_writing(make_cluster):
    frozen = FreezableRuntime()
    cluster = make_cluster(3, runtimes={1: frozen})
    old = cluster.leader()
    assert old.replica_id == 1
    cluster.propose_n(10, "before")
    cluster.wait_applied(10)  # followers saw the commit word: the idle leader has nothing to write
    time.sleep(0.05)
    frozen.running.clear()  # replica 1 stops beating; 2 and 3 take over
    new = cluster.leader(exclude=(1,))
    new.propose(b"by the new leader")
    assert old.is_leader  # frozen, it cannot know yet
    frozen.running.set()
    # nobody proposes on the old leader: it learns from the holder words in its scan
    wait_until(lambda: not old.is_leader, what="the idle deposed leader to step down")
    assert old.leader_id != 1
    cluster.wait_applied(11)
    cluster.check_identical()


def test_a_caught_up_leaders_pump_does_not_poll(make_cluster):
    cluster = make_cluster(3)
    leader = cluster.leader()
    cluster.propose_n(5, "warm")
    cluster.wait_applied(5)
    steps = {member: 0 for member in cluster.replicas}

    def counting(member: int, step):  # type: ignore[no-untyped-def]
        def wrapped() -> int:
            steps[member] += 1
            return step()
        return wrapped

    for member, replica in cluster.replicas.items():
        replica._pump.step = counting(member, replica._pump.step)
    time.sleep(0.3)
    assert steps[leader.replica_id] == 0  # it waits on the bell (pump Rule 7)
    assert all(steps[m] > 0 for m in cluster.replicas if m != leader.replica_id)
    leader.pause()  # a step-down rings the bell; once resumed, as a follower, the pump polls
    # resumed before another replica took over, the former leader may win again (it is the
    # lowest live id; its real-time background thread is quick), and a leader's pump waits
    wait_until(lambda: any(r.is_leader for m, r in cluster.replicas.items()
                           if m != leader.replica_id), what="another leader")
    leader.resume()
    wait_until(lambda: steps[leader.replica_id] > 0, what="the former leader's pump to poll")


def test_check_passes_on_a_healthy_cluster_and_catches_a_broken_leader(make_cluster):
    """Replica._check (Rule 6): true invariants hold on every member; a leader whose commit
    index no longer matches its next index is caught; the check itself changes nothing."""
    cluster = make_cluster(3)
    leader = cluster.leader()
    cluster.propose_n(10, "x")
    for replica in cluster.replicas.values():
        wait_until(replica._check, what=f"replica {replica.replica_id} checked (role free)")
    state = leader._state
    assert state is not None
    with state.role:
        state.commit_index += 5
    caught: list[AssertionError] = []

    def check() -> bool:
        try:
            return leader._check() and False
        except AssertionError as error:
            caught.append(error)
            return True

    try:
        wait_until(check, what="the broken leader to be checked")
    finally:
        with state.role:
            state.commit_index -= 5
    assert "commit index" in str(caught[0])
    wait_until(leader._check, what="the repaired leader to pass")
