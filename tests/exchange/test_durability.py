"""Durable servers as real processes: kill -9 of every server mid-load and a restart with the same
command lines loses no acknowledged order and duplicates none; a restarted server catches up from
its own disk; a torn journal tail is cut; a corrupt snapshot is refused with one line; a failing
disk stops acknowledgements with the reason."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import grpc
import pytest

from exchange.cluster import LocalCluster, free_ports
from exchange.durability import FAIL_AFTER_ENV
from exchange.proto import exchange_pb2 as pb
from exchange.proto import exchange_pb2_grpc as pb_grpc
from tests.exchange.conftest import TEST_SYMBOLS, new_client
from traders.client import ExchangeUnreachable, TraderClient

pytestmark = pytest.mark.slow
RESTART_TIMEOUT_S = 60.0
CONVERGE_TIMEOUT_S = 30.0
SNAPSHOT_ENTRIES = "150"  # small, so that snapshots and journal trimming happen in every test


def _seed() -> int:
    seed = int(os.environ.get("MU_TEST_SEED", "0")) or random.randrange(1, 10**6)
    print(f"seed {seed} (MU_TEST_SEED={seed} replays the choices)")
    return seed


def _durable_cluster(tmp_path, name: str) -> LocalCluster:
    return LocalCluster(3, name=name, symbols=TEST_SYMBOLS, data_dir=tmp_path / "data",
                        extra_args=("--snapshot-entries", SNAPSHOT_ENTRIES))


def _place(client: TraderClient, count: int, symbol: str = "DUR") -> None:
    for i in range(count):
        client.submit(symbol, pb.BUY if i % 2 else pb.SELL, 100 + i % 11, 5 + i % 3)


def _top_index(statuses: dict[int, pb.Status]) -> int:
    return max(s.applied_index for s in statuses.values())


def _converged(cluster: LocalCluster) -> dict[int, pb.Status]:
    statuses = cluster.wait_converged(CONVERGE_TIMEOUT_S)
    assert len({s.state_digest for s in statuses.values()}) == 1, statuses
    return statuses


@dataclass
class _Trader:
    client: TraderClient
    acked: dict[int, int] = field(default_factory=dict)  # seq -> log index of its execution
    sent: dict[int, tuple[pb.Side, int, int]] = field(default_factory=dict)  # seq -> request
    errors: list[str] = field(default_factory=list)


def _trade(trader: _Trader, stop: threading.Event, give_up_at: list[float],
           rng: random.Random) -> None:
    """A trader thread; whatever ends it early is recorded as an error (the test fails)."""
    try:
        _trade_until_stopped(trader, stop, give_up_at, rng)
    except Exception as exc:  # reported by the test, not lost in a thread
        trader.errors.append(f"trader stopped by {exc!r}")


def _trade_until_stopped(trader: _Trader, stop: threading.Event, give_up_at: list[float],
                         rng: random.Random) -> None:
    """Exactly-once trader: each seq is retried (same seq) until acknowledged. Buys at or above
    100, sells at or below: every order crosses the other side's resting ones, so the book
    stays small over any number of rounds (the per-client live-order limit is never reached)."""
    seq = 0
    while not stop.is_set():
        seq += 1
        side = pb.BUY if rng.random() < 0.5 else pb.SELL
        price = 100 + (1 if side == pb.BUY else -1) * rng.randrange(0, 6)
        qty = 1 + rng.randrange(5)
        while True:
            try:
                result = trader.client.submit("KIL", side, price, qty, seq=seq)
            except ExchangeUnreachable as exc:
                if stop.is_set() and time.monotonic() > give_up_at[0]:
                    trader.errors.append(f"seq {seq} never acknowledged: {exc}")
                    return
                continue
            trader.acked[seq] = result.reply.log_index
            trader.sent[seq] = (side, price, qty)
            break


def _restart_all(cluster: LocalCluster, rng: random.Random) -> None:
    """kill -9 every server (random order, random small gaps), restart all the same way."""
    order = list(cluster.addresses)
    rng.shuffle(order)
    for replica_id in order:
        cluster.kill_server(replica_id)
        time.sleep(rng.uniform(0.0, 0.3))  # the others may elect and acknowledge meanwhile
    time.sleep(rng.uniform(0.05, 0.3))
    for replica_id in order:
        cluster.start_server(replica_id)
    cluster.wait_for_leader(RESTART_TIMEOUT_S)


def test_killing_every_server_mid_load_loses_no_acknowledged_order(tmp_path):
    seed = _seed()
    rng = random.Random(seed)
    rounds = int(os.environ.get("MU_DURABLE_ROUNDS", "2"))
    with _durable_cluster(tmp_path, "t-dur-all") as cluster:
        traders = [_Trader(new_client(cluster, give_up_s=RESTART_TIMEOUT_S)) for _ in range(3)]
        stop = threading.Event()
        give_up_at = [0.0]
        threads = [threading.Thread(target=_trade,
                                    args=(t, stop, give_up_at, random.Random(seed + i)))
                   for i, t in enumerate(traders)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(rounds):
                time.sleep(rng.uniform(0.5, 1.5))
                _restart_all(cluster, rng)
            time.sleep(0.5)
        finally:
            give_up_at[0] = time.monotonic() + RESTART_TIMEOUT_S
            stop.set()
            for thread in threads:
                thread.join(RESTART_TIMEOUT_S + 10)
        assert not any(t.errors for t in traders), [t.errors for t in traders]
        statuses = _converged(cluster)
        acked = sum(len(t.acked) for t in traders)
        assert acked > 0
        print(f"{rounds} rounds of kill -9 of every server: {acked} requests acknowledged, "
              f"applied index {_top_index(statuses)}")
        # Every acknowledged request is there exactly once (and nothing else executed: each
        # trader's last request was acknowledged too), and retries are answered from the table.
        assert {s.orders_applied for s in statuses.values()} == {acked}, statuses
        for trader in traders:
            recent = sorted(trader.acked)[-100:]
            for seq in random.Random(seed).sample(recent, min(20, len(recent))):
                side, price, qty = trader.sent[seq]  # the same request: a retry
                again = trader.client.submit("KIL", side, price, qty, seq=seq)
                assert again.reply.duplicate and again.reply.log_index == trader.acked[seq]
        logs = "".join(cluster.servers[i].log_path.read_text() for i in cluster.addresses)
        assert "cold start at index" in logs


def test_a_restarted_server_catches_up_from_its_own_disk(tmp_path):
    with _durable_cluster(tmp_path, "t-dur-one") as cluster:
        client = new_client(cluster)
        _place(client, 60)
        leader = cluster.wait_for_leader(10)
        follower = next(i for i in cluster.addresses if i != leader)
        cluster.wait_converged(CONVERGE_TIMEOUT_S)
        cluster.kill_server(follower)
        _place(client, 30)
        cluster.start_server(follower)
        status = cluster.wait_caught_up(follower, RESTART_TIMEOUT_S)
        assert status.applied_index >= 90
        _converged(cluster)
        log = cluster.servers[follower].log_path.read_text().split("READY")[-2]
        assert "state at index" in log and "joining the running cluster" in log
        after = cluster.servers[follower].log_path.read_text()
        assert "from its local state" in after and "installed a snapshot" not in after


def _append_garbage(segment_dir, size: int) -> None:
    segment = max(segment_dir.glob("journal-*.log"))
    with open(segment, "ab") as file:
        file.write(b"\x07" * size)


def test_a_torn_journal_tail_is_cut_and_nothing_acknowledged_is_lost(tmp_path):
    with _durable_cluster(tmp_path, "t-dur-torn") as cluster:
        client = new_client(cluster)
        _place(client, 40)
        before = _converged(cluster)
        for replica_id in cluster.addresses:
            cluster.kill_server(replica_id)
        _append_garbage(cluster.server_data_dir(2), 23)  # a record header cut short
        for replica_id in cluster.addresses:
            cluster.start_server(replica_id)
        cluster.wait_for_leader(RESTART_TIMEOUT_S)
        after = _converged(cluster)
        assert after[2].state_digest == before[2].state_digest
        assert "torn tail cut" in cluster.servers[2].log_path.read_text()
        _place(client, 5)
        assert {s.orders_applied for s in _converged(cluster).values()} == {45}


def _order(seq: int) -> pb.SubmitOrderRequest:
    return pb.SubmitOrderRequest(client_id=5, seq=seq, symbol="ONE", side=pb.BUY, price=100,
                                 quantity=1)


def _serve_alone(data_dir, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    port = free_ports(1)[0]
    command = [sys.executable, "-m", "exchange", "serve", "--id", "1", "--server-uris",
               f"1=127.0.0.1:{port}", "--replicas", "1", "--no-fifo", "--data-dir",
               str(data_dir), "--cluster-id", "t-dur-alone", "--parent-pid", str(os.getpid()),
               "--snapshot-entries", "10", "--symbols", "ONE"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}), port


def _wait_ready(process: subprocess.Popen[str]) -> None:
    line = process.stdout.readline()
    assert line.startswith("READY"), (line, process.stderr.read() if process.poll() else "")


def test_a_corrupt_snapshot_is_refused_with_one_line(tmp_path):
    process, port = _serve_alone(tmp_path, {})
    _wait_ready(process)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ExchangeStub(channel)
        for seq in range(1, 30):
            stub.SubmitOrder(_order(seq), timeout=10)
    process.terminate()
    process.communicate(timeout=10)
    snapshots = sorted(tmp_path.glob("snapshot-*.snap"))
    assert snapshots, sorted(p.name for p in tmp_path.iterdir())
    snapshot = snapshots[-1]
    data = bytearray(snapshot.read_bytes())
    data[-10] ^= 0x40
    snapshot.write_bytes(bytes(data))
    process, _ = _serve_alone(tmp_path, {})
    out, err = process.communicate(timeout=30)
    assert process.returncode == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "corrupt snapshot" in lines[0] and "Traceback" not in err, err


def test_a_failing_disk_stops_acknowledgements_and_says_why(tmp_path):
    process, port = _serve_alone(tmp_path, {FAIL_AFTER_ENV: "3000"})
    _wait_ready(process)
    acked = 0
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ExchangeStub(channel)
            with pytest.raises(grpc.RpcError) as failure:
                for seq in range(1, 500):
                    stub.SubmitOrder(_order(seq),
                                     timeout=10)
                    acked = seq
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "No space left on device" in failure.value.details()
            with pytest.raises(grpc.RpcError) as again:  # and it stays so
                stub.SubmitOrder(_order(acked + 2), timeout=10)
            assert again.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        process.kill()
        process.communicate(timeout=10)
    assert acked > 0
    process, port = _serve_alone(tmp_path, {})  # a working disk: what was acknowledged, and
    _wait_ready(process)  # perhaps the refused order: a snapshot may hold it (applied, not acked)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ExchangeStub(channel)
            stored = stub.GetStatus(pb.StatusRequest(), timeout=10).orders_applied
            assert stored in (acked, acked + 1)
            retry = stub.SubmitOrder(_order(acked + 1), timeout=10)  # the refused order's retry
            assert retry.duplicate == (stored == acked + 1)  # executed once either way
            assert stub.GetStatus(pb.StatusRequest(), timeout=10).orders_applied == acked + 1
    finally:
        process.terminate()
        process.communicate(timeout=10)
