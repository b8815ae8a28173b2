"""The dashboard's model and picture without servers: polls in, events and figures out."""

import io
import math

from rich.console import Console

from exchange.proto import exchange_pb2 as pb
from exchange.watch_model import (
    BUCKET_S,
    HISTORY_BUCKETS,
    STALL_WATCH_S,
    ClusterModel,
    Trade,
    sparkline,
)
from exchange.watch_view import render

MS = 1_000_000
ADDRESSES = {1: "127.0.0.1:1", 2: "127.0.0.1:2", 3: "127.0.0.1:3"}


def status(replica_id, role, leader, applied, digest="d", **extra):
    return pb.Status(replica_id=replica_id, role=role, leader_id=leader, commit_index=applied,
                     applied_index=applied, orders_applied=applied, state_digest=digest,
                     **extra)


def poll(model, t_ms, *answers):
    model.observe(t_ms * MS, t_ms / 1000, dict(zip(ADDRESSES, answers, strict=True)))


def kinds(model):
    return [event.kind for event in model.events]


def test_leader_change_after_a_pause_is_one_event_bounded_by_the_polls():
    model = ClusterModel(ADDRESSES, ("AAPL",))
    poll(model, 0, status(1, "leader", 1, 10), status(2, "follower", 1, 10),
         status(3, "follower", 1, 10))
    assert model.leader == 1 and kinds(model) == ["leader"]
    poll(model, 50, status(1, "paused", 0, 10), status(2, "follower", 0, 10),
         status(3, "follower", 0, 10))
    assert model.leader is None
    poll(model, 100, status(1, "paused", 0, 10), status(2, "leader", 2, 11),
         status(3, "follower", 2, 11))
    assert model.leader == 2
    assert kinds(model) == ["leader", "pause", "leader"]
    change = model.events[-1]
    assert change.window_ns == (0, 100 * MS)
    assert change.line().startswith("leader 1 -> 2: changed within 100 ms")


def test_a_leader_change_learns_how_long_orders_waited_from_dense_answers():
    model = ClusterModel(ADDRESSES, ("AAPL",))
    poll(model, 0, status(1, "leader", 1, 10), status(2, "follower", 1, 10), "unreachable")
    poll(model, 60, "unreachable", status(2, "leader", 2, 10), "unreachable")
    # answers every ms, except for a 12 ms hole at 40-52 ms; the order answered at 52 waited 20
    ends = [t for t in range(-900, 1100) if not 40 < t < 52]
    model.add_latencies([(t * MS, (20 if t == 52 else 1) * MS) for t in ends])
    poll(model, int(60 + STALL_WATCH_S * 1000 + 1), "unreachable", status(2, "leader", 2, 10),
         "unreachable")
    model.add_latencies([])
    change = [e for e in model.events if e.kind == "leader"][-1]
    assert change.silence_ns == 12 * MS
    assert change.stall_ns == 20 * MS
    assert "no order answered for 12.0 ms" in change.line()


def test_down_restart_recovering_and_failed_are_events():
    model = ClusterModel(ADDRESSES, ("AAPL",))
    poll(model, 0, status(1, "leader", 1, 50), status(2, "follower", 1, 50),
         status(3, "follower", 1, 50))
    poll(model, 50, status(1, "leader", 1, 60), status(2, "follower", 1, 60), "unreachable")
    assert model.servers[3].role == "down" and model.servers[3].down == "unreachable"
    recovering = status(3, "recovering", 1, 0, recovery_snapshot_index=40,
                        recovery_bytes_done=1_000_000, recovery_bytes_total=4_000_000,
                        recovery_entries_left=20)
    poll(model, 100, status(1, "leader", 1, 60), status(2, "follower", 1, 60), recovering)
    poll(model, 150, status(1, "leader", 1, 60), status(2, "follower", 1, 60),
         status(3, "follower", 1, 60))
    poll(model, 200, status(1, "leader", 1, 60), status(2, "failed", 1, 60, error="log overrun"),
         status(3, "follower", 1, 60))
    assert kinds(model) == ["leader", "down", "restart", "recovering", "recovered", "failed"]
    assert "log overrun" in model.events[-1].text


def test_digests_are_compared_only_at_the_same_applied_index():
    model = ClusterModel(ADDRESSES, ("AAPL",))
    poll(model, 0, status(1, "leader", 1, 7, "a"), status(2, "follower", 1, 6, "b"),
         status(3, "follower", 1, 5, "c"))
    assert model.digest_verdict is None
    poll(model, 50, status(1, "leader", 1, 8, "x"), status(2, "follower", 1, 7, "a"),
         status(3, "follower", 1, 7, "a"))
    verdict = model.digest_verdict
    assert verdict is not None and verdict.index == 7 and verdict.equal
    assert verdict.servers == (1, 2, 3)
    poll(model, 100, status(1, "leader", 1, 9, "y"), status(2, "follower", 1, 9, "z"),
         "unreachable")
    assert model.digest_verdict is not None and not model.digest_verdict.equal


def test_order_rates_and_latency_percentiles():
    model = ClusterModel(ADDRESSES, ("AAPL",))
    for step in range(21):  # 100 orders per 50 ms = 2,000/s
        poll(model, step * 50, status(1, "leader", 1, step * 100), "unreachable", "unreachable")
    assert math.isclose(model.orders_per_s(), 2000, rel_tol=0.01)
    rates = model.order_rates()
    assert len(rates) == HISTORY_BUCKETS and math.isclose(rates[-2], 2000, rel_tol=0.01)
    model.add_latencies([(900 * MS + i, (i + 1) * 1000) for i in range(100)])
    count, p50, p90, p99, top = model.latency_percentiles_us()
    assert (count, p50, p90, p99, top) == (100, 50.0, 90.0, 99.0, 100.0)
    assert not math.isnan(model.p99_history_us()[-1])
    assert BUCKET_S > 0


def test_symbols_keys_and_the_tape():
    model = ClusterModel(ADDRESSES, ("AAPL", "MSFT"), frozenset({"~probe"}))
    model.add_trade("~probe", Trade(0.0, 1, 1, 1))
    model.add_trade("GOOG", Trade(0.0, 100, 5, 2))
    assert model.symbols == ["AAPL", "MSFT", "GOOG"] and "~probe" not in model.tape
    model.select_symbol(step=-1)
    assert model.symbol == "GOOG"
    model.select_symbol(number=2)
    assert model.symbol == "MSFT"
    model.select_symbol(number=9)
    assert model.symbol == "MSFT"


def test_sparkline_scales_to_the_maximum_and_leaves_gaps_blank():
    assert sparkline([0.0, 4.0, 8.0, math.nan], 4) == "▁▄█ "
    assert sparkline([1.0], 3) == "  █"


def _screen(model, height=40):
    console = Console(width=120, height=height, file=io.StringIO(), record=True,
                      force_terminal=True)
    console.print(render(model, height, "  demo 1.0/12 s"))
    return console.export_text()


def test_the_picture_shows_down_servers_recovery_progress_and_the_ladder():
    model = ClusterModel(ADDRESSES, ("AAPL",))
    recovering = status(3, "recovering", 1, 0, recovery_snapshot_index=4000,
                        recovery_bytes_done=1_500_000, recovery_bytes_total=3_000_000,
                        recovery_entries_left=250)
    poll(model, 0, status(1, "leader", 1, 10), "unreachable", recovering)
    model.set_book(pb.BookSnapshot(symbol="AAPL", bids=[pb.PriceLevel(price=99, quantity=7,
                                                                      order_count=2)],
                                   asks=[pb.PriceLevel(price=101, quantity=3, order_count=1)],
                                   applied_index=10, replica_id=1), "127.0.0.1:1")
    model.add_trade("AAPL", Trade(0.0, 100, 4, 9))
    screen = _screen(model)
    assert "leader 1" in screen and "demo 1.0/12 s" in screen
    assert "down" in screen and "unreachable" in screen
    assert "server 3 recovering: snapshot @ index 4,000" in screen
    assert "1.5/3.0 MB, 250 log entries left" in screen
    assert "spread 2" in screen
    assert "no answers in the last 5 s" in screen
    short = _screen(model, height=24)  # a short terminal still draws, with fewer levels
    assert "spread 2" in short
