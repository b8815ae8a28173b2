"""Three replicated server processes over real gRPC and real consensus (shm fabric).

Orders across servers, follower redirects, exactly-once across a failover, FIFO pause/resume,
market data from a follower, and equal digests after a run with failovers.
"""

import threading
import time

import grpc
import pytest

from exchange.cluster import LocalCluster
from exchange.proto import exchange_pb2 as pb
from tests.exchange.conftest import _client_ids, new_client
from traders.client import ClusterConnection
from traders.load import LoadConfig, LoadRun
from traders.session import SessionClient

pytestmark = pytest.mark.slow
LEADER_TIMEOUT_S = 10.0
CONVERGE_TIMEOUT_S = 10.0


def _wait_role(cluster: LocalCluster, replica_id: int, role: str) -> None:
    deadline = time.monotonic() + LEADER_TIMEOUT_S
    while cluster.status(replica_id).role != role:
        assert time.monotonic() < deadline, f"server {replica_id} never became {role}"
        time.sleep(0.02)


def _assert_converged(cluster: LocalCluster) -> dict[int, pb.Status]:
    statuses = cluster.wait_converged(CONVERGE_TIMEOUT_S)
    assert len({s.state_digest for s in statuses.values()}) == 1, statuses
    assert len({s.book_digest for s in statuses.values()}) == 1, statuses
    return statuses


def test_orders_reach_every_server(cluster3):
    client = new_client(cluster3)
    for i in range(20):
        client.submit("CLA", pb.BUY if i % 2 else pb.SELL, 100 + i % 3, 10)
    statuses = _assert_converged(cluster3)
    assert all(s.applied_index >= 20 for s in statuses.values())
    for replica_id in cluster3.addresses:  # every server's book answers the same
        snap = cluster3.stub(replica_id).GetBookSnapshot(pb.BookSnapshotRequest(symbol="CLA"))
        assert snap.replica_id == replica_id
        assert snap.applied_index == statuses[replica_id].applied_index


def test_follower_rejects_with_the_leader_address(cluster3):
    leader = cluster3.wait_for_leader(LEADER_TIMEOUT_S)
    follower = next(i for i in cluster3.addresses if i != leader)
    request = pb.SubmitOrderRequest(client_id=424242, seq=1, symbol="CLB", side=pb.BUY,
                                    price=1, quantity=1)
    with pytest.raises(grpc.RpcError) as info:
        cluster3.stub(follower).SubmitOrder(request, timeout=5)
    error = info.value
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    metadata = dict(error.trailing_metadata())
    assert metadata["leader-address"] == cluster3.addresses[leader]
    assert metadata["leader-id"] == str(leader)
    assert cluster3.addresses[leader] in error.details()


def test_exactly_once_across_a_failover_and_resume(cluster3):
    leader = cluster3.wait_for_leader(LEADER_TIMEOUT_S)
    client = new_client(cluster3)
    first = client.submit("CLC", pb.SELL, 500, 40, seq=11)
    assert first.server == cluster3.addresses[leader]
    cluster3.control(leader, "p")
    _wait_role(cluster3, leader, "paused")
    new_leader = cluster3.wait_for_leader(LEADER_TIMEOUT_S, exclude=leader)
    retry = client.submit("CLC", pb.SELL, 500, 40, seq=11)  # the same request, again
    assert retry.server == cluster3.addresses[new_leader]
    assert retry.reply.duplicate and retry.reply.log_index == first.reply.log_index
    assert list(retry.reply.events) == list(first.reply.events)
    fresh = client.submit("CLC", pb.BUY, 500, 10, seq=12)
    assert not fresh.reply.duplicate
    cluster3.control(leader, "r")
    _wait_role(cluster3, leader, "follower")  # rejoins as a follower: no preemption
    statuses = _assert_converged(cluster3)
    snap = cluster3.stub(leader).GetBookSnapshot(pb.BookSnapshotRequest(symbol="CLC"))
    assert [(lv.price, lv.quantity) for lv in snap.asks] == [(500, 30)]  # sold once, not twice
    assert statuses[leader].role == "follower"


def test_market_data_from_a_follower(cluster3):
    leader = cluster3.wait_for_leader(LEADER_TIMEOUT_S)
    follower = next(i for i in cluster3.addresses if i != leader)
    stream = cluster3.stub(follower).StreamMarketData(
        pb.MarketDataRequest(symbols=["CLD"]), timeout=10)
    trades: list[pb.MarketDataUpdate] = []
    done = threading.Event()

    def read() -> None:
        try:
            for update in stream:
                if update.WhichOneof("update") == "trade":
                    trades.append(update)
                    done.set()
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.3)
    client = new_client(cluster3)
    client.submit("CLD", pb.SELL, 70, 5)
    client.submit("CLD", pb.BUY, 70, 5)
    assert done.wait(5), "the follower published no trade"
    stream.cancel()
    reader.join(5)
    assert (trades[0].trade.price, trades[0].trade.quantity) == (70, 5)


@pytest.mark.parametrize("seed", [5])
def test_digests_equal_after_load_with_failovers(cluster3, seed):
    run = LoadRun(LoadConfig(addresses=tuple(cluster3.addresses.values()), traders=3,
                             rate_per_s=0.0, test_ms=4000, seed=seed, symbols=("CLE", "CLF")))
    run.start()
    for _ in range(2):  # two failovers, each leader resumed as a follower
        time.sleep(1.0)
        leader = cluster3.wait_for_leader(LEADER_TIMEOUT_S)
        cluster3.control(leader, "p")
        cluster3.wait_for_leader(LEADER_TIMEOUT_S, exclude=leader)
        time.sleep(0.3)
        cluster3.control(leader, "r")
    run.wait()
    run.close()
    report = run.report()
    assert report.counts["failed"] == 0, (seed, run.errors[:3])
    assert report.counts["acked"] > 50, seed
    assert report.retried >= 1, seed  # the traders did live through the failovers
    statuses = _assert_converged(cluster3)
    assert len({s.orders_applied for s in statuses.values()}) == 1, seed


def test_sessions_execute_exactly_once_across_a_failover(cluster3):
    """A trader streams order lists with many unanswered; the leader is paused in the middle;
    the session reconnects to the new leader and resends every unanswered seq: each order rests
    exactly once (one lot per price level) and every seq is answered exactly once."""
    leader = cluster3.wait_for_leader(LEADER_TIMEOUT_S)
    connection = ClusterConnection(tuple(cluster3.addresses.values()))
    session = SessionClient(connection, next(_client_ids))
    total, per_message, window = 400, 5, 60
    answers: dict[int, pb.OrderReply] = {}
    paused_at = 0
    sent = 0
    while len(answers) < total:
        while sent < total and session.in_flight + per_message <= window:
            session.send([session.submit_order("CLS", pb.BUY, 1_000 + sent + i, 1)
                          for i in range(per_message)])
            sent += per_message
        for report in session.receive():
            assert not report.unsolicited
            assert report.seq not in answers, f"seq {report.seq} answered twice"
            answers[report.seq] = report
        if not paused_at and len(answers) >= 100:
            assert session.in_flight > 0
            paused_at = len(answers)
            cluster3.control(leader, "p")  # orders are in flight right now
    new_leader = cluster3.wait_for_leader(LEADER_TIMEOUT_S, exclude=leader)
    assert session.reconnects >= 1 and session.target == cluster3.addresses[new_leader]
    assert sorted(answers) == list(range(1, total + 1))
    assert all(not r.events or r.events[0].kind == "accept" for r in answers.values())
    session.close()
    connection.close()
    cluster3.control(leader, "r")
    _wait_role(cluster3, leader, "follower")
    _assert_converged(cluster3)
    for replica_id in cluster3.addresses:
        snap = cluster3.stub(replica_id).GetBookSnapshot(pb.BookSnapshotRequest(symbol="CLS"))
        assert [(lv.price, lv.quantity, lv.order_count) for lv in snap.bids] == \
            [(1_000 + total - 1 - i, 1, 1) for i in range(total)]
