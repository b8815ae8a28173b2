"""Real server processes killed with -9 and restarted with the same command rejoin by snapshot.

A killed server loses its memory (fresh shared-memory regions on restart); it must fetch a peer's
snapshot, catch up the log and serve as a follower, with every acknowledged order present exactly
once on every server and equal digests. The last test runs exactly-once traders while a nemesis
kills and restarts followers and leaders, pauses the leader and SIGSTOPs servers, one at a time.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field

import grpc
import pytest

from exchange.cluster import LocalCluster
from exchange.proto import exchange_pb2 as pb
from tests.exchange.conftest import TEST_SYMBOLS, new_client
from traders.client import ExchangeUnreachable, RequestRejected, TraderClient

pytestmark = pytest.mark.slow
CATCH_UP_TIMEOUT_S = 30.0
CONVERGE_TIMEOUT_S = 20.0


def _converged_digests(cluster: LocalCluster) -> dict[int, pb.Status]:
    statuses = cluster.wait_converged(CONVERGE_TIMEOUT_S)
    assert len({s.state_digest for s in statuses.values()}) == 1, statuses
    return statuses


def _place(client: TraderClient, count: int, symbol: str = "RJN") -> None:
    for i in range(count):
        client.submit(symbol, pb.BUY if i % 2 else pb.SELL, 100 + i % 11, 5 + i % 3)


@pytest.fixture
def cluster():
    with LocalCluster(3, name="t-rejoin", symbols=TEST_SYMBOLS) as made:
        yield made


def test_a_follower_killed_and_restarted_catches_up(cluster):
    client = new_client(cluster)
    _place(client, 40)
    leader = cluster.wait_for_leader(10)
    follower = next(i for i in cluster.addresses if i != leader)
    cluster.kill_server(follower)
    _place(client, 40)
    cluster.start_server(follower)  # exactly the same command line
    status = cluster.wait_caught_up(follower, CATCH_UP_TIMEOUT_S)
    assert status.role in ("follower", "leader") and status.applied_index >= 80
    statuses = _converged_digests(cluster)
    assert statuses[follower].book_digest == statuses[leader].book_digest
    deadline = time.monotonic() + 10  # the server logs it within a role-poll period
    while "caught up at index" not in (log := cluster.servers[follower].log_path.read_text()):
        assert time.monotonic() < deadline, log
        time.sleep(0.05)
    assert "recovering: fetching a peer's snapshot" in log


def test_a_server_restarted_with_another_instrument_list_serves_the_clusters(cluster):
    """node Rule 9 across kill -9 + restart + rejoin by snapshot: the list is replicated state,
    so the restarted server keeps the cluster's list, says so, and every digest stays equal."""
    client = new_client(cluster)
    _place(client, 20)
    leader = cluster.wait_for_leader(10)
    follower = next(i for i in cluster.addresses if i != leader)
    cluster.kill_server(follower)
    cluster.symbols = ("RJN", "OTHER")  # Rule 5 of LocalCluster: its next start uses this
    cluster.start_server(follower)
    status = cluster.wait_caught_up(follower, CATCH_UP_TIMEOUT_S)
    assert list(status.instruments) == sorted(TEST_SYMBOLS), status
    assert "was started with the instrument list OTHER,RJN" in status.warning
    with pytest.raises(RequestRejected, match="unknown symbol 'OTHER'"):
        client.submit("OTHER", pb.BUY, 100, 5)
    _place(client, 10)
    _converged_digests(cluster)
    assert "the cluster's list, fixed by log entry 1" in cluster.log_tail(follower, 200)


def test_a_killed_leader_restarted_rejoins_as_a_follower(cluster):
    client = new_client(cluster)
    _place(client, 30)
    old = cluster.wait_for_leader(10)
    cluster.kill_server(old)
    new = cluster.wait_for_leader(15, exclude=old)
    _place(client, 30)
    cluster.start_server(old)
    status = cluster.wait_caught_up(old, CATCH_UP_TIMEOUT_S)
    assert status.role in ("follower", "leader") and status.leader_id in (new, old)
    _converged_digests(cluster)


def test_recovering_server_reports_progress_and_is_not_serving(cluster):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    client = new_client(cluster)
    _place(client, 20)
    leader = cluster.wait_for_leader(10)
    follower = next(i for i in cluster.addresses if i != leader)
    cluster.kill_server(follower)
    cluster.start_server(follower)
    status = cluster.wait_caught_up(follower, CATCH_UP_TIMEOUT_S)
    assert status.recovery_bytes_total == 0  # progress fields are cleared once caught up
    with grpc.insecure_channel(cluster.addresses[follower]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 10  # health follows the role within a poll period
        while True:
            answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                break
            assert time.monotonic() < deadline, "still NOT_SERVING 10 s after catching up"
            time.sleep(0.05)


@dataclass
class _Trader:
    client: TraderClient
    acked: dict[int, int] = field(default_factory=dict)  # seq -> log index of its execution
    sent: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # seq -> side, price, qty
    errors: list[str] = field(default_factory=list)


def _trade(trader: _Trader, stop: threading.Event, rng: random.Random) -> None:
    """A trader thread; whatever ends it early is recorded as an error (the test fails)."""
    try:
        _trade_until_stopped(trader, stop, rng)
    except Exception as exc:  # reported by the test, not lost in a thread
        trader.errors.append(f"trader stopped by {exc!r}")


def _trade_until_stopped(trader: _Trader, stop: threading.Event, rng: random.Random) -> None:
    """Exactly-once trader: each seq is retried (same seq) until acknowledged. Buys are priced at
    or above 100 and sells at or below, so every order crosses the other side's resting ones and
    the book stays small however long the nemesis runs (a spread that never closes fills the
    per-client live-order limit within minutes: MU_NEMESIS_SECONDS=120 did)."""
    seq = 0
    while not stop.is_set():
        seq += 1
        side = pb.BUY if rng.random() < 0.5 else pb.SELL
        price = 100 + (1 if side == pb.BUY else -1) * rng.randrange(0, 6)
        trader.sent[seq] = (side, price, 1 + rng.randrange(5))  # a retry is the same request
        while True:
            try:
                result = trader.client.submit("NEM", *trader.sent[seq], seq=seq)
            except ExchangeUnreachable as exc:
                if stop.is_set() and time.monotonic() > stop_deadline[0]:
                    trader.errors.append(f"seq {seq} never acknowledged: {exc}")
                    return
                continue
            trader.acked[seq] = result.reply.log_index
            break


stop_deadline = [0.0]


def _nemesis(cluster: LocalCluster, rng: random.Random, seconds: float, log: list[str]) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(rng.uniform(0.5, 1.5))
        leader = cluster.leader_id() or 1
        target = rng.choice(list(cluster.addresses))
        action = rng.choice(["kill", "kill", "kill-leader", "pause-leader", "sigstop"])
        if action == "kill-leader":
            target = leader
        log.append(f"{action} {target}")
        if action.startswith("kill"):
            cluster.kill_server(target)
            time.sleep(rng.uniform(0.1, 0.8))
            cluster.start_server(target)
            cluster.wait_caught_up(target, CATCH_UP_TIMEOUT_S)
        elif action == "pause-leader":
            cluster.control(leader, "p")
            time.sleep(rng.uniform(0.1, 0.5))
            cluster.control(leader, "r")
            cluster.wait_caught_up(leader, CATCH_UP_TIMEOUT_S)
        else:
            pid = cluster.servers[target].process.pid
            os.kill(pid, signal.SIGSTOP)
            time.sleep(rng.uniform(0.05, 0.4))
            os.kill(pid, signal.SIGCONT)
            cluster.wait_caught_up(target, CATCH_UP_TIMEOUT_S)


def test_exactly_once_while_servers_are_killed_restarted_paused_and_stopped(cluster):
    seed = int(os.environ.get("MU_TEST_SEED", "0")) or random.randrange(1, 10**6)
    print(f"seed {seed} (MU_TEST_SEED={seed} replays the nemesis's choices)")
    rng = random.Random(seed)
    traders = [_Trader(new_client(cluster, give_up_s=5.0)) for _ in range(3)]
    stop = threading.Event()
    threads = [threading.Thread(target=_trade, args=(t, stop, random.Random(seed + i)))
               for i, t in enumerate(traders)]
    for thread in threads:
        thread.start()
    faults: list[str] = []
    try:
        _nemesis(cluster, rng, float(os.environ.get("MU_NEMESIS_SECONDS", "20")), faults)
    finally:
        stop_deadline[0] = time.monotonic() + 30
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not any(t.errors for t in traders), [t.errors for t in traders]
    assert faults, "the nemesis struck"
    statuses = _converged_digests(cluster)
    acked = sum(len(t.acked) for t in traders)
    assert acked > 0
    # Every request was executed exactly once: the exchange counted as many executions as there
    # were distinct requests, and a retry of any of them is answered from the dedup table.
    assert {s.orders_applied for s in statuses.values()} == {acked}, (faults, statuses)
    for trader in traders:  # the dedup table keeps each client's last 128 replies
        recent = sorted(trader.acked)[-100:]
        for seq in random.Random(seed).sample(recent, min(20, len(recent))):
            again = trader.client.submit("NEM", *trader.sent[seq], seq=seq)
            assert again.reply.duplicate and again.reply.log_index == trader.acked[seq]
        if len(trader.acked) > 200:  # older ones are refused, never executed again
            again = trader.client.submit("NEM", *trader.sent[1], seq=1)
            assert "older than" in again.reply.events[0].reason
    after = _converged_digests(cluster)
    assert {s.orders_applied for s in after.values()} == {acked}
