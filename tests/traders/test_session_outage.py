"""A session's outage start (traders.session): what ``traders load --stream`` reports as a
fail-over gap must span every failed reconnect, not only the last one (a cold start of the
whole cluster takes seconds of them)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc

from exchange.proto import exchange_pb2 as pb
from exchange.proto import exchange_pb2_grpc as pb_grpc
from traders.client import ClusterConnection
from traders.session import SessionClient

FAILURES = 4


class FlakySessions(pb_grpc.ExchangeServicer):
    """The first ``FAILURES`` streams end UNAVAILABLE at their first message; the next one
    answers every order."""

    def __init__(self) -> None:
        self.streams = 0
        self.failed_at: list[int] = []
        self.lock = threading.Lock()

    def OrderSession(self, requests: Iterator[pb.SessionRequest],  # noqa: N802
                     context: grpc.ServicerContext) -> Iterator[pb.SessionResponse]:
        with self.lock:
            self.streams += 1
            failing = self.streams <= FAILURES
        for message in requests:
            if failing:
                self.failed_at.append(time.monotonic_ns())
                context.abort(grpc.StatusCode.UNAVAILABLE, "starting")
            yield pb.SessionResponse(reports=[
                pb.OrderReply(client_id=order.submit.client_id, seq=order.submit.seq,
                              log_index=order.submit.seq) for order in message.orders])


def test_the_outage_starts_at_the_first_failure_and_lasts_until_the_answer() -> None:
    servicer = FlakySessions()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ExchangeServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    connection = ClusterConnection([f"127.0.0.1:{port}"])
    session = SessionClient(connection, 7, give_up_s=10.0)
    try:
        sent_ns = time.monotonic_ns()
        session.send([session.submit_order("X", pb.BUY, 100, 1)])
        reports = session.receive()
        answered_ns = time.monotonic_ns()
        assert [report.seq for report in reports] == [1]
        assert session.reconnects == FAILURES
        # The client saw each failure a little after the server sent it: the outage began at
        # the first, and spans the back-offs before the last (the last failure is later).
        assert sent_ns < servicer.failed_at[0] <= session.outage_started_ns
        assert session.outage_started_ns < servicer.failed_at[1] < session.last_failure_ns
        assert session.last_failure_ns < answered_ns
        session.send([session.submit_order("X", pb.BUY, 100, 1)])
        assert [report.seq for report in session.receive()] == [2]
        assert session.reconnects == FAILURES  # no new outage: its start stays the same
    finally:
        session.close()
        connection.close()
        server.stop(None)
