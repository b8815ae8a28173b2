"""The event loop's session client (traders.aio_session) against scripted servers: resend after
failed streams with the outage timed from the first failure, redirects, the final codes, and
grpc.aio's masked status (Rule 3) retried on the same server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from exchange.proto import exchange_pb2 as pb
from exchange.proto import exchange_pb2_grpc as pb_grpc
from exchange.service import LEADER_ADDRESS_KEY
from tests.traders.test_session_outage import FAILURES, FlakySessions
from traders.aio_session import MASKED_STATUS, AsyncSessionClient, LoopChannels
from traders.client import RequestRejected


class Scripted(pb_grpc.ExchangeServicer):
    """Ends its first ``len(ends)`` streams at their first message with the given (code,
    details, leader address); answers every order on later streams."""

    def __init__(self, ends: list[tuple[grpc.StatusCode, str, str]]) -> None:
        self.ends = ends
        self.streams = 0
        self.lock = threading.Lock()

    def OrderSession(self, requests: Iterator[pb.SessionRequest],  # noqa: N802
                     context: grpc.ServicerContext) -> Iterator[pb.SessionResponse]:
        with self.lock:
            self.streams += 1
            end = self.ends[self.streams - 1] if self.streams <= len(self.ends) else None
        for message in requests:
            if end is not None:
                code, details, leader = end
                if leader:
                    context.set_trailing_metadata(((LEADER_ADDRESS_KEY, leader),))
                context.abort(code, details)
            yield pb.SessionResponse(reports=[
                pb.OrderReply(client_id=order.submit.client_id, seq=order.submit.seq,
                              log_index=order.submit.seq) for order in message.orders])


class Servers:
    def __init__(self) -> None:
        self.servers: list[grpc.Server] = []

    def start(self, servicer: pb_grpc.ExchangeServicer) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_ExchangeServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.servers.append(server)
        return f"127.0.0.1:{port}"


@pytest.fixture
def servers() -> Iterator[Servers]:
    made = Servers()
    yield made
    for server in made.servers:
        server.stop(None)


async def _one_order(channels: LoopChannels, **session_args: float) -> tuple[
        AsyncSessionClient, list[pb.OrderReply]]:
    """One order's reports; the session is left open (its channels closed)."""
    session = AsyncSessionClient(channels, 7, **session_args)
    try:
        await session.send([session.submit_order("X", pb.BUY, 100, 1)])
        return session, await session.receive()
    finally:
        await channels.close()


def test_unanswered_orders_are_resent_and_the_outage_starts_at_the_first_failure(servers):
    flaky = FlakySessions()
    address = servers.start(flaky)

    async def run() -> tuple[int, AsyncSessionClient, list[pb.OrderReply], int]:
        sent_ns = time.monotonic_ns()
        session, reports = await _one_order(LoopChannels([address]), give_up_s=10.0)
        return sent_ns, session, reports, time.monotonic_ns()

    sent_ns, session, reports, answered_ns = asyncio.run(run())
    assert [report.seq for report in reports] == [1]
    assert session.reconnects == FAILURES
    assert sent_ns < flaky.failed_at[0] <= session.outage_started_ns
    assert session.outage_started_ns < flaky.failed_at[1] < session.last_failure_ns
    assert session.last_failure_ns < answered_ns


def test_a_redirect_reconnects_to_the_leader_it_names(servers):
    leader = servers.start(Scripted([]))
    follower = servers.start(Scripted([(grpc.StatusCode.FAILED_PRECONDITION, "not leader",
                                        leader)] * 10))
    channels = LoopChannels([follower, leader])
    session, reports = asyncio.run(_one_order(channels))
    assert [report.seq for report in reports] == [1]
    assert session.target == leader and session.reconnects == 1


@pytest.mark.parametrize("code", [grpc.StatusCode.PERMISSION_DENIED,
                                  grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL])
def test_a_final_code_raises_request_rejected(servers, code):
    address = servers.start(Scripted([(code, "refused", "")] * 10))
    with pytest.raises(RequestRejected, match=f"{code.name}: refused"):
        asyncio.run(_one_order(LoopChannels([address])))


def test_the_masked_status_is_asked_again_of_the_same_server_at_once(servers):
    address = servers.start(Scripted([(grpc.StatusCode.INTERNAL, MASKED_STATUS, "")]))
    other = servers.start(Scripted([(grpc.StatusCode.UNAVAILABLE, "not this one", "")] * 10))
    session, reports = asyncio.run(_one_order(LoopChannels([address, other])))
    assert [report.seq for report in reports] == [1]
    assert session.target == address and session.reconnects == 1  # not the next server
