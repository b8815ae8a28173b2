"""The trader client's fail-over rules (traders.client Rules 2, 4 and 5), against scripted
in-process gRPC servers: each answers SubmitOrder as its script says (hold, redirect, refuse,
execute), so the order in which the client asks and what it returns can be checked exactly."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest

from exchange.proto import exchange_pb2 as pb
from exchange.proto import exchange_pb2_grpc as pb_grpc
from traders import client as tc

Script = Callable[[pb.SubmitOrderRequest, grpc.ServicerContext], pb.OrderReply]


@dataclass
class ScriptedServer(pb_grpc.ExchangeServicer):
    """One server: ``script`` answers every SubmitOrder; ``calls`` records (seq, start, end)."""

    script: Script
    calls: list[tuple[int, float, float | None]] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def SubmitOrder(self, request: pb.SubmitOrderRequest,  # noqa: N802
                    context: grpc.ServicerContext) -> pb.OrderReply:
        started = time.monotonic()
        context.add_callback(self.cancelled.set)  # runs when the RPC ends, cancelled or not
        try:
            reply = self.script(request, context)
        finally:
            self.calls.append((request.seq, started, time.monotonic()))
        self.cancelled.clear()  # it answered: the callback above means nothing
        return reply


def execute(request: pb.SubmitOrderRequest, context: grpc.ServicerContext) -> pb.OrderReply:
    return pb.OrderReply(order_id=f"{request.client_id}.{request.seq}", log_index=request.seq)


def unavailable(request: pb.SubmitOrderRequest, context: grpc.ServicerContext) -> pb.OrderReply:
    context.abort(grpc.StatusCode.UNAVAILABLE, "paused")


def redirect_to(address: str) -> Script:
    def script(request: pb.SubmitOrderRequest, context: grpc.ServicerContext) -> pb.OrderReply:
        context.set_trailing_metadata(((tc.LEADER_ADDRESS_KEY, address),))
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"the leader is {address}")
    return script


def held_then(seconds: float, then: Script) -> Script:
    """Hold the request (as a follower during an election does), then answer with ``then``;
    a cancelled call stops holding at once."""
    def script(request: pb.SubmitOrderRequest, context: grpc.ServicerContext) -> pb.OrderReply:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and context.is_active():
            time.sleep(0.001)
        return then(request, context)
    return script


def refuse(request: pb.SubmitOrderRequest, context: grpc.ServicerContext) -> pb.OrderReply:
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown symbol")


@pytest.fixture
def cluster() -> Iterator[Callable[..., tuple[list[ScriptedServer], tc.TraderClient]]]:
    servers: list[grpc.Server] = []
    connections: list[tc.ClusterConnection] = []

    def start(*scripts: Script) -> tuple[list[ScriptedServer], tc.TraderClient]:
        scripted, addresses = [], []
        for script in scripts:
            servicer = ScriptedServer(script)
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
            pb_grpc.add_ExchangeServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            servers.append(server)
            scripted.append(servicer)
            addresses.append(f"127.0.0.1:{port}")
        connection = tc.ClusterConnection(addresses)
        connections.append(connection)
        return scripted, tc.TraderClient(connection, client_id=7, give_up_s=5.0)

    yield start
    for connection in connections:
        connection.close()
    for server in servers:
        server.stop(None)


def submit(client: tc.TraderClient) -> tc.CallResult:
    return client.submit("X", pb.BUY, 100, 10)


def addresses(client: tc.TraderClient) -> tuple[str, ...]:
    return client.connection.addresses


def test_a_silent_leader_sends_the_request_to_both_followers_at_once(cluster):
    """Rule 5: follower B holds 0.3 s and then redirects (it lost the election); follower C
    holds 0.05 s and executes (it won). Asked one after the other, the answer would take
    0.35 s; fanned out it takes C's 0.05 s, and B's call is cancelled."""
    (leader, loser, winner), client = cluster(
        unavailable, held_then(0.3, redirect_to("nowhere:1")), held_then(0.05, execute))
    begun = time.monotonic()
    result = submit(client)
    took = time.monotonic() - begun
    assert result.server == addresses(client)[2] and result.reply.log_index == 1
    assert took < 0.3, f"the client waited for the loser ({took:.3f} s)"
    assert [c[0] for c in winner.calls] == [1] and [c[0] for c in leader.calls] == [1]
    assert loser.cancelled.wait(2.0), "the loser's call was not cancelled"
    assert client.connection.leader_guess == addresses(client)[2]


def test_every_call_of_one_request_carries_the_same_seq(cluster):
    """Rule 1 across a fan-out: the same seq everywhere; the next request takes the next."""
    (leader, b, c), client = cluster(unavailable, unavailable, held_then(0.02, execute))
    submit(client)
    submit(client)
    seqs = [seq for server in (leader, b, c) for seq, _, _ in server.calls]
    assert set(seqs) == {1, 2}
    assert [seq for seq, _, _ in c.calls] == [1, 2]


def not_yet_then_execute() -> Script:
    """FAILED_PRECONDITION with no leader named on the first call (just elected, not yet
    serving), then execute."""
    calls = []

    def script(request: pb.SubmitOrderRequest, context: grpc.ServicerContext) -> pb.OrderReply:
        calls.append(request.seq)
        if len(calls) == 1:
            time.sleep(0.02)  # after the other follower's redirect has landed
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not the leader yet")
        return execute(request, context)
    return script


def test_a_redirect_from_the_fan_out_is_followed(cluster):
    """Rule 5 then Rule 2: nobody executes in the fan-out, but one follower names a server
    that has not failed: the client asks that one next."""
    servers, client = cluster(unavailable, unavailable, not_yet_then_execute())
    servers[1].script = redirect_to(addresses(client)[2])
    result = submit(client)
    assert result.server == addresses(client)[2] and result.redirects == 1
    assert result.attempts == 4  # the old leader, the fan-out of two, the redirect
    assert len(servers[2].calls) == 2 and len(servers[1].calls) == 1


def unavailable_then_execute() -> Script:
    """UNAVAILABLE on the first call (not leading yet), then execute."""
    calls = []

    def script(request: pb.SubmitOrderRequest, context: grpc.ServicerContext) -> pb.OrderReply:
        calls.append(request.seq)
        if len(calls) == 1:
            unavailable(request, context)
        return execute(request, context)
    return script


def test_a_redirect_to_the_server_that_just_failed_is_not_followed(cluster):
    """Rule 4: a follower that still names the silent old leader does not send the client
    back to it while that failure is fresh (``FAILED_FORGET_S``)."""
    servers, client = cluster(unavailable, unavailable, unavailable_then_execute())
    servers[1].script = redirect_to(addresses(client)[0])  # stale: the old leader
    result = submit(client)
    assert result.server == addresses(client)[2]
    starts = [started for _, started, _ in servers[0].calls]
    assert all(later - starts[0] >= tc.FAILED_FORGET_S * 0.9 for later in starts[1:]), \
        "the client followed a redirect back to the server that had just failed"


def test_a_final_answer_in_the_fan_out_is_final(cluster):
    """Rule 2: INVALID_ARGUMENT from any server ends the request, fan-out or not."""
    _, client = cluster(unavailable, refuse, held_then(0.2, unavailable))
    with pytest.raises(tc.RequestRejected, match="unknown symbol"):
        submit(client)


def test_a_cluster_with_no_leader_is_retried_after_a_back_off_until_one_answers(cluster):
    """Rule 4: every server fails; the client sleeps and asks again, then one leads."""
    servers, client = cluster(unavailable, unavailable, unavailable)
    timer = threading.Timer(0.05, lambda: setattr(servers[1], "script", execute))
    timer.start()
    try:
        result = submit(client)
    finally:
        timer.cancel()
    assert result.server == addresses(client)[1]
    assert result.attempts > 3


def test_a_client_gives_up_after_its_give_up_time(cluster):
    servers, client = cluster(unavailable, unavailable, unavailable)
    client.give_up_s = 0.1
    begun = time.monotonic()
    with pytest.raises(tc.ExchangeUnreachable, match="no leader accepted"):
        submit(client)
    assert time.monotonic() - begun < 2.0


def test_back_off_constants_keep_their_order():
    assert tc.BACKOFF_INITIAL_S <= tc.BACKOFF_MAX_S <= tc.BACKOFF_SLOW_MAX_S
    assert tc.BACKOFF_MAX_S < tc.FAILED_FORGET_S <= tc.BACKOFF_FAST_WINDOW_S


def test_a_leader_that_answers_nothing_is_hedged_after_a_short_wait(cluster):
    """Rule 7: the leader's process is stopped (no answer, no error); after HEDGE_AFTER_S the
    request goes to every server, the new leader executes it, and the trader has its answer
    in a fraction of ATTEMPT_TIMEOUT_S."""
    (stopped, loser, winner), client = cluster(
        held_then(3.0, execute), redirect_to("nowhere:1"), held_then(0.01, execute))
    begun = time.monotonic()
    result = submit(client)
    took = time.monotonic() - begun
    assert result.server == addresses(client)[2] and result.reply.log_index == 1
    assert took < tc.HEDGE_AFTER_S + 0.4, f"hedged too late ({took:.3f} s)"
    assert [c[0] for c in winner.calls] == [1] and [c[0] for c in loser.calls] == [1]


def test_a_slow_leader_is_asked_again_and_its_answer_wins(cluster):
    """Rule 7: a leader slower than HEDGE_AFTER_S but alive gets the same seq again (its
    followers redirect to it) and answers: the hedge moves nothing elsewhere."""
    (slow, follower_b, follower_c), client = cluster(
        held_then(tc.HEDGE_AFTER_S * 2, execute), redirect_to("x"), redirect_to("x"))
    for follower in (follower_b, follower_c):
        follower.script = redirect_to(addresses(client)[0])
    result = submit(client)
    assert result.server == addresses(client)[0] and result.reply.log_index == 1
    assert [c[0] for c in slow.calls][:2] == [1, 1]  # the first copy, then the hedge's


def test_without_hedging_a_slow_leader_is_waited_for(cluster):
    (slow, follower_b, follower_c), client = cluster(
        held_then(tc.HEDGE_AFTER_S * 2, execute), execute, execute)
    client.hedge_after_s = None
    result = submit(client)
    assert result.server == addresses(client)[0]
    assert follower_b.calls == [] and follower_c.calls == []


def test_the_hedge_wait_follows_the_usual_latency_within_its_bounds() -> None:
    """Rule 7: HEDGE_LATENCY_FACTOR x the moving average of answers, clamped."""
    connection = tc.ClusterConnection(["127.0.0.1:1", "127.0.0.1:2"])
    try:
        assert connection.hedge_delay_s(tc.HEDGE_AFTER_S) == pytest.approx(tc.HEDGE_AFTER_S)
        for _ in range(500):
            connection.note_latency(0.001)
        assert connection.hedge_delay_s(tc.HEDGE_AFTER_S) == tc.HEDGE_AFTER_S_MIN
        for _ in range(500):
            connection.note_latency(0.005)
        assert connection.hedge_delay_s(tc.HEDGE_AFTER_S) == pytest.approx(
            tc.HEDGE_LATENCY_FACTOR * 0.005, rel=0.01)
        for _ in range(500):
            connection.note_latency(1.0)
        assert connection.hedge_delay_s(tc.HEDGE_AFTER_S) == tc.HEDGE_AFTER_S
    finally:
        connection.close()


def test_a_sessions_stall_limit_follows_its_usual_wait_within_bounds() -> None:
    """traders.session Rule 2: STALL_LATENCY_FACTOR x the moving average of report waits,
    between STALL_S_MIN and stall_s (a stopped leader costs a session that, not 1 s)."""
    from traders import session as ts

    connection = tc.ClusterConnection(["127.0.0.1:1", "127.0.0.1:2"])
    session = ts.SessionClient(connection, client_id=9)
    try:
        assert session.stall_limit_s == pytest.approx(session.stall_s)
        for _ in range(500):
            session.note_wait(0.001)
        assert session.stall_limit_s == ts.STALL_S_MIN
        for _ in range(500):
            session.note_wait(0.05)
        assert session.stall_limit_s == pytest.approx(ts.STALL_LATENCY_FACTOR * 0.05, rel=0.01)
        for _ in range(500):
            session.note_wait(5.0)
        assert session.stall_limit_s == session.stall_s
    finally:
        session.close()
        connection.close()
