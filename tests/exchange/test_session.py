"""OrderSession: per-session report order, invalid orders, unsolicited fills, flow control.

In-process tests drive the coroutine ``ExchangeService.OrderSession`` on an event loop with a
scripted request stream and a context double (deterministic flow control); the ``slow`` ones use
a real server over gRPC.
"""

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from exchange import convert
from exchange.node import ExchangeNode
from exchange.proto import exchange_pb2 as pb
from exchange.service import ExchangeService
from exchange.session import SESSION_IN_FLIGHT_MAX, SESSION_MESSAGE_ORDERS_MAX
from exchange.state_machine import encode_entry
from orderbook import AddOrder, Side, encode_command
from tests.exchange.conftest import _client_ids
from traders.client import ClusterConnection, RequestRejected
from traders.session import SessionClient

WAIT_S = 5.0


class Aborted(Exception):
    pass


class Context:
    """The part of grpc.aio.ServicerContext the service uses."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.metadata: tuple[tuple[str, str], ...] = ()

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted(details)

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata


def _submit(client: int, seq: int, price: int = 100, side: int = pb.BUY, quantity: int = 1,
            symbol: str = "SES") -> pb.SessionOrder:
    return pb.SessionOrder(submit=pb.SubmitOrderRequest(
        client_id=client, seq=seq, symbol=symbol, side=side, price=price, quantity=quantity))


async def _script(*steps: object) -> AsyncIterator[pb.SessionRequest]:
    """A request stream: messages, and events it waits for before going on."""
    for step in steps:
        if isinstance(step, asyncio.Event):
            await asyncio.wait_for(step.wait(), WAIT_S)
        else:
            assert isinstance(step, pb.SessionRequest)
            yield step


def test_reports_come_in_request_order_with_invalid_orders_answered_in_place():
    service = ExchangeService(ExchangeNode(1, {1: "local"}, 1))
    orders = [_submit(7, seq, price=100 + seq) for seq in range(1, 31)]
    orders[4] = _submit(7, 5, price=-1)  # invalid: answered in its place, nothing executed
    orders[9] = _submit(8, 10)  # another client on this session: invalid too
    messages = [pb.SessionRequest(orders=orders[i : i + 7]) for i in range(0, 30, 7)]
    context = Context()

    async def run() -> list[pb.OrderReply]:
        return [r async for response in service.OrderSession(_script(*messages), context)
                for r in response.reports]

    reports = asyncio.run(run())
    assert context.code is None, context.details  # ended after the half-close
    assert [r.seq for r in reports] == list(range(1, 31))
    assert reports[4].log_index == 0 and "price" in reports[4].events[0].reason
    assert reports[9].log_index == 0 and "client 7" in reports[9].events[0].reason
    executed = [r for i, r in enumerate(reports) if i not in (4, 9)]
    assert all(r.log_index > 0 and r.events[0].kind == "accept" for r in executed)


def test_more_than_the_in_flight_limit_ends_the_session_with_resource_exhausted():
    node = ExchangeNode(1, {1: "local"}, 1)
    service = ExchangeService(node)
    size = SESSION_MESSAGE_ORDERS_MAX
    messages = [pb.SessionRequest(orders=[_submit(9, m * size + i + 1) for i in range(size)])
                for m in range(SESSION_IN_FLIGHT_MAX // size + 2)]
    context = Context()

    async def run() -> list[pb.OrderReply]:
        first_read = asyncio.Event()
        session = service.OrderSession(_script(messages[0], first_read, *messages[1:]), context)
        assert len((await anext(session)).reports) == size  # the first list is answered...
        first_read.set()  # ...then the client sends the rest without reading
        for _ in range(int(WAIT_S * 1000)):
            if node._sessions[9].error is not None:  # the reader has run into the limit
                break
            await asyncio.sleep(0.001)
        reports: list[pb.OrderReply] = []
        with pytest.raises(Aborted):
            async for response in session:
                reports.extend(response.reports)
        return reports

    reports = asyncio.run(run())
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"more than {SESSION_IN_FLIGHT_MAX} requests in flight" in context.details
    assert "SESSION_IN_FLIGHT_MAX" in context.details
    assert len(reports) == SESSION_IN_FLIGHT_MAX  # what was admitted is still answered first


def test_an_oversized_order_list_is_invalid_argument():
    service = ExchangeService(ExchangeNode(1, {1: "local"}, 1))
    orders = [_submit(3, i + 1) for i in range(SESSION_MESSAGE_ORDERS_MAX + 1)]
    big = pb.SessionRequest(orders=orders)
    context = Context()

    async def run() -> None:
        with pytest.raises(Aborted):
            async for _ in service.OrderSession(_script(big), context):
                pass

    asyncio.run(run())
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "SESSION_MESSAGE_ORDERS_MAX" in context.details


@pytest.mark.slow
def test_sessions_over_grpc_report_in_order_and_fill_resting_orders_unsolicited(standalone):
    connection = ClusterConnection(tuple(standalone.addresses.values()))
    seller = SessionClient(connection, next(_client_ids))
    buyer = SessionClient(connection, next(_client_ids))
    sells = [seller.submit_order("SGR", pb.SELL, 500 + i, 10) for i in range(10)]
    for start in range(0, 10, 5):
        seller.send(sells[start : start + 5])
    for start in range(10, 20, 5):  # order lists built in place (traders.session Rule 5)
        orders = seller.order_list()
        sells += [seller.submit_order("SGR", pb.SELL, 500 + i, 10, into=orders)
                  for i in range(start, start + 5)]
        seller.send(orders)
    answered = []
    while seller.in_flight:
        answered += [r for r in seller.receive() if not r.unsolicited]
    assert [r.seq for r in answered] == [o.submit.seq for o in sells]
    buy = buyer.submit_order("SGR", pb.BUY, 505, 25)
    buyer.send([buy])
    while buyer.in_flight:
        (reply,) = buyer.receive()
    fills = [e for e in reply.events if e.kind == "fill" and e.order_id == reply.order_id]
    assert sum(e.quantity for e in fills) == 25
    unsolicited = []
    while sum(e.quantity for r in unsolicited for e in r.events) < 25:
        unsolicited += seller.receive()
    assert all(r.unsolicited and r.seq == 0 for r in unsolicited)
    assert {r.order_id for r in unsolicited} == {f"{seller.client_id}.{s}" for s in (1, 2, 3)}
    assert {r.log_index for r in unsolicited} == {reply.log_index}
    assert convert.event_dict(unsolicited[0].events[0])["contra"] == reply.order_id
    seller.close()
    buyer.close()
    connection.close()


def test_orders_built_into_an_order_list_are_the_orders_built_apart():
    """traders.session Rule 5: the same messages, seqs taken in the same order."""
    connection = ClusterConnection(("127.0.0.1:1",))  # never connected: nothing is sent
    apart, in_place = SessionClient(connection, 9), SessionClient(connection, 9)
    orders = in_place.order_list()
    built = [in_place.submit_order("A", pb.SELL, 5, 2, 1, True, True, into=orders),
             in_place.cancel_order("9.1", "A", into=orders),
             in_place.replace_order("9.1", -1, 6, into=orders)]
    expected = [apart.submit_order("A", pb.SELL, 5, 2, 1, True, True),
                apart.cancel_order("9.1", "A"), apart.replace_order("9.1", -1, 6)]
    assert list(orders.orders) == built == expected
    assert orders == pb.SessionRequest(orders=[
        pb.SessionOrder(submit=pb.SubmitOrderRequest(
            client_id=9, seq=1, symbol="A", side=pb.SELL, price=5, quantity=2, stop_price=1,
            all_or_none=True, immediate_or_cancel=True)),
        pb.SessionOrder(cancel=pb.CancelRequest(client_id=9, seq=2, order_id="9.1",
                                                symbol="A")),
        pb.SessionOrder(replace=pb.ReplaceRequest(client_id=9, seq=3, order_id="9.1",
                                                  quantity_delta=-1, new_price=6))])
    connection.close()


@pytest.mark.slow
def test_a_session_client_that_breaks_the_limit_gets_a_final_error(standalone):
    connection = ClusterConnection(tuple(standalone.addresses.values()))
    client = SessionClient(connection, next(_client_ids))
    client.send([pb.SessionOrder()])  # no request in it: answered as invalid, in place
    (report,) = client.receive()
    assert report.log_index == 0 and "no submit" in report.events[0].reason
    client.unanswered.clear()
    client._outbox.put(pb.SessionRequest())  # an empty list breaks the protocol
    with pytest.raises(RequestRejected, match="INVALID_ARGUMENT"):
        client.receive()
    connection.close()


@pytest.mark.slow
def test_batched_market_data_carries_every_trade_of_a_session_burst(standalone):
    stub = standalone.stub(1)
    stream = stub.StreamMarketDataBatches(pb.MarketDataRequest(symbols=["SMD"]), timeout=30)
    trades: list[pb.MarketDataUpdate] = []
    done = threading.Event()
    total = 200
    target = [2**62]

    def read() -> None:
        try:
            for batch in stream:
                trades.extend(u for u in batch.updates if u.WhichOneof("update") == "trade")
                if len(trades) >= target[0]:
                    done.set()
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    connection = ClusterConnection(tuple(standalone.addresses.values()))
    client = SessionClient(connection, next(_client_ids))
    marker = 0
    while not any(t.log_index == marker for t in trades):  # until the stream is surely live
        client.send([client.submit_order("SMD", pb.SELL, 10, 1),
                     client.submit_order("SMD", pb.BUY, 10, 1)])
        while client.in_flight:
            marker = max(r.log_index for r in client.receive())
        time.sleep(0.05)
    start = len(trades)  # trades come in log order: nothing before the marker is still due
    target[0] = start + total
    for _ in range(total // 20):
        client.send([client.submit_order("SMD", side, 10 + n // 2, 1)
                     for n in range(20) for side in (pb.SELL, pb.BUY)][:40])
        while client.in_flight:
            client.receive()
    assert done.wait(10), f"{len(trades) - start} of {total} trades arrived"
    stream.cancel()
    reader.join(5)
    assert len(trades) - start == total
    assert [t.log_index for t in trades] == sorted(t.log_index for t in trades)
    client.close()
    connection.close()


def test_a_replayed_duplicate_sends_no_second_unsolicited_fill():
    node = ExchangeNode(1, {1: "local"}, 1)
    session = node.open_session()
    node.bind_session(session, 7)
    (slot,) = session.admit(1)
    sell = AddOrder("7.1", "SDU", Side.SELL, 100, 10)
    node.submit_session(session, [(slot, 7, 1, encode_command(sell))])
    buy = AddOrder("8.1", "SDU", Side.BUY, 100, 4)
    first = node.execute(8, 1, buy)
    again = node.execute(8, 1, buy)  # a retry: answered from the dedup table
    assert again.duplicate and again.events == first.events
    node.on_commit(3, encode_entry(8, 1, buy))  # the same request committed twice (failover)
    assert node.state.duplicate_count == 1
    answers, unsolicited = session.take()
    assert [r.seq for r in answers] == [1]
    assert [(r.order_id, r.seq, r.log_index) for r in unsolicited] == [("7.1", 0, 2)]
    assert session.take() is None
