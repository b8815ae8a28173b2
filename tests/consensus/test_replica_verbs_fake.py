"""The consensus protocol over the verbs fabric on the fake RDMA device: three replicas in this
process, repeated leader changes, and revocations during a write storm, checked by the
simulator's history checker (agreement, no lost acknowledged proposal, prefix order)."""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from consensus import ConsensusError, Replica, ReplicaConfig
from consensus.fabric.fake_verbs import FakeRdma
from consensus.registry.base import InProcessRegistry
from consensus.sim.checkers import HistoryChecker, Violation

from .cluster_util import TEST_TIMINGS, Cluster

# Three replicas, a fake device thread and six fabric threads share one GIL on a loaded 2-core
# machine: a healthy operation must never look dead, so the op timeout is generous here.
OP_TIMEOUT_S = 0.2
STORM_S = 1.5


class VerbsCluster(Cluster):
    """``Cluster`` with every replica on its own ``VerbsFabric`` over one fake device, feeding a
    ``HistoryChecker``."""

    def __init__(self, size: int, cluster_id: str, **kwargs: Any) -> None:
        self.cluster_id = cluster_id
        self.fabric_store: dict[str, bytes] = {}
        self.fabrics: dict[int, Any] = {}
        self.violations: list[Violation] = []
        self.checker = HistoryChecker(self.violations.append)
        self.check_lock = threading.Lock()
        super().__init__(size, **kwargs)

    def _build(self, member: int) -> Replica:
        from consensus.fabric.verbs import VerbsFabric

        fabric = VerbsFabric(member, self.cluster_id,
                             InProcessRegistry(self.cluster_id, self.fabric_store),
                             op_timeout_s=OP_TIMEOUT_S)
        self.fabrics[member] = fabric
        config = ReplicaConfig(member, self.members, payload_size_max=self.payload_size_max,
                               log_slots=self.log_slots, **TEST_TIMINGS)  # type: ignore[arg-type]
        delivered, errors = self.delivered[member], self.errors[member]

        def on_commit(index: int, payload: bytes) -> None:
            delivered.append((index, payload))
            with self.check_lock:
                self.checker.delivered(member, 1, index, payload)

        return Replica(config, fabric, InProcessRegistry("t", self.store),
                       on_commit=on_commit, on_error=errors.append)

    def propose_checked(self, payload: bytes, exclude: tuple[int, ...] = ()) -> int:
        """Propose through whoever leads until one attempt is acknowledged; report to the
        checker. A failed attempt may still commit, so every attempt is a new payload (the
        simulator's rule: no payload is proposed twice)."""
        for attempt in range(1_000_000):
            proposal = payload if attempt == 0 else payload + f"/retry{attempt}".encode()
            with self.check_lock:
                self.checker.proposed(proposal)
            leader = self.leader(exclude)
            try:
                index = leader.propose(proposal)
            except ConsensusError:
                time.sleep(0.001)
                continue
            with self.check_lock:
                self.checker.acknowledged(index, proposal)
            return index
        raise AssertionError("never acknowledged")

    def stop(self) -> None:
        super().stop()
        for fabric in self.fabrics.values():
            fabric.close()


@pytest.fixture
def verbs_cluster(cluster_id: str) -> Iterator[VerbsCluster]:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    fake = FakeRdma(latency_s=0.00002)
    with fake.install():
        cluster = VerbsCluster(3, cluster_id)
        try:
            yield cluster
        finally:
            cluster.stop()
    sys.setswitchinterval(interval)


def storm(cluster: VerbsCluster, tag: str, stop: threading.Event, acked: list[int]) -> None:
    count = 0
    while not stop.is_set():
        acked.append(cluster.propose_checked(f"{tag}-{count}".encode()))
        count += 1


def revoke_current_leader_somewhere(cluster: VerbsCluster, rng: random.Random) -> None:
    """A follower revokes the leader's permission on its log behind the protocol's back (as a
    competing candidate's grant would): the leader loses it and must ask again."""
    leader = cluster.leader()
    follower = cluster.replicas[rng.choice([m for m in cluster.members if m != leader.replica_id])]
    state = follower._state
    assert state is not None
    with state.role:
        state.log.revoke_write(leader.replica_id)


@pytest.mark.slow
def test_three_replicas_leader_changes_and_revokes_keep_the_invariants(
        verbs_cluster: VerbsCluster, seed: int) -> None:
    rng = random.Random(seed)
    cluster = verbs_cluster
    first = cluster.leader()
    indexes = [cluster.propose_checked(f"start-{k}".encode()) for k in range(30)]
    assert indexes[:1] == [1]
    for change in range(3):  # repeated leader changes: pause the leader, propose, resume it
        old = cluster.leader()
        old.pause()
        new = cluster.leader(exclude=(old.replica_id,))
        assert new.replica_id != old.replica_id
        for k in range(20):
            cluster.propose_checked(f"change{change}-{k}".encode(), exclude=(old.replica_id,))
        old.resume()
    stop, acked = threading.Event(), []
    thread = threading.Thread(target=storm, args=(cluster, "storm", stop, acked), daemon=True)
    thread.start()
    try:
        end = time.monotonic() + STORM_S
        while time.monotonic() < end:
            time.sleep(0.05 + rng.random() * 0.1)
            revoke_current_leader_somewhere(cluster, rng)
        leader = cluster.leader()
        leader.pause()  # and one more leader change in the middle of the storm
        time.sleep(0.2)
        leader.resume()
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert len(acked) > 20, f"only {len(acked)} proposals acknowledged during the storm"
    last = max(cluster.checker.acked)
    cluster.wait_applied(last)
    cluster.check_identical()
    with cluster.check_lock:
        cluster.checker.check_caught_up([(m, 1) for m in cluster.members], last)
    assert not cluster.violations, [str(v) for v in cluster.violations[:5]]
    for member in cluster.members:  # every acknowledged proposal is delivered at its index
        delivered = dict(cluster.delivered[member])
        lost = [i for i, p in cluster.checker.acked.items() if delivered.get(i) != p]
        assert not lost, f"replica {member} lacks acknowledged indexes {lost[:5]}"
    assert first.replica_id == 1
    renewals = sum(link.renewals for f in cluster.fabrics.values() for link in f._links)
    print(f"{len(cluster.checker.acked)} acknowledged ({len(acked)} in the storm), "
          f"{cluster.checker.deliveries} deliveries, {renewals} link renewals")
    assert renewals > len(cluster.fabrics) * 8, "the revocations never broke a link"
