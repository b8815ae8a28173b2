"""exchange/limits.py and every bound over real gRPC: an in-process server (the real servicer,
the real gRPC server options) whose node runs a state machine with small resting-order limits,
so each bound is reached in a few requests; each refusal must be RESOURCE_EXHAUSTED (or
INVALID_ARGUMENT for an unknown symbol) with a message naming the bound, and change no book."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import grpc
import pytest

from exchange import limits
from exchange.cluster import free_ports
from exchange.config import ServerConfig
from exchange.limits import GRPC_REQUEST_BYTES_MAX, limit_message
from exchange.node import ExchangeNode
from exchange.proto import exchange_pb2 as pb
from exchange.proto import exchange_pb2_grpc as pb_grpc
from exchange.server import build_grpc_server
from exchange.service import HealthReporter
from exchange.state_machine import ExchangeStateMachine

SYMBOLS = ("X", "Y")


class Server:
    def __init__(self, node: ExchangeNode, address: str, server: grpc.Server) -> None:
        self.node, self.address, self.server = node, address, server
        self.channel = grpc.insecure_channel(address, options=limits.GRPC_CLIENT_OPTIONS)
        self.stub = pb_grpc.ExchangeStub(self.channel)

    def digest(self) -> str:
        return self.stub.GetStatus(pb.StatusRequest(), timeout=5).state_digest


@pytest.fixture
def server() -> Iterator[Server]:
    address = f"127.0.0.1:{free_ports(1)[0]}"
    node = ExchangeNode(1, {1: address}, 1, subscribers_max=1, sessions_max=1,
                        instruments=SYMBOLS)
    node.state = ExchangeStateMachine(resting_orders_max=5, resting_per_client_max=2)
    config = ServerConfig(replica_id=1, addresses={1: address}, listen=address, replicas=1,
                          fabric="shm", registry_address=None, cluster_id="t-limits",
                          fifo_path=None, grpc_workers=8, log_slots=1024)
    grpc_server = build_grpc_server(config, node, HealthReporter(node))
    grpc_server.start()
    made = Server(node, address, grpc_server)
    yield made
    made.channel.close()
    grpc_server.stop(0).wait(5)
    node.close()


def _submit(client: int, seq: int, symbol: str = "X", price: int = 100,
            side: int = pb.BUY, ioc: bool = False) -> pb.SubmitOrderRequest:
    return pb.SubmitOrderRequest(client_id=client, seq=seq, symbol=symbol, side=side,
                                 price=price, quantity=10, immediate_or_cancel=ioc)


def _refused(call, request) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=5)
    return info.value


def test_bounds_are_related_and_named() -> None:
    assert limits.IN_FLIGHT_PER_CLIENT_MAX < limits.DEDUP_SEQS_PER_CLIENT_MAX
    assert limit_message("X_MAX", 1234, "things") == "limit reached: things (at most 1,234, X_MAX)"


def test_unknown_symbols_are_invalid_argument_and_create_no_book(server: Server) -> None:
    stub = server.stub
    stub.SubmitOrder(_submit(1, 1), timeout=5)
    digest = server.digest()
    error = _refused(stub.SubmitOrder, _submit(1, 2, symbol="ZZZ"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown symbol 'ZZZ'" in error.details() and "X,Y" in error.details()
    replace = pb.ReplaceRequest(client_id=1, seq=3, order_id="1.1", new_price=101, symbol="ZZZ")
    assert _refused(stub.Replace, replace).code() == grpc.StatusCode.INVALID_ARGUMENT
    cancel = pb.CancelRequest(client_id=1, seq=4, order_id="1.1", symbol="ZZZ")
    assert "unknown symbol 'ZZZ'" in _refused(stub.Cancel, cancel).details()
    status = stub.GetStatus(pb.StatusRequest(), timeout=5)
    assert status.state_digest == digest and list(status.symbols) == ["X"]
    assert list(status.instruments) == ["X", "Y"] and status.warning == ""


def test_a_session_order_for_an_unknown_symbol_is_rejected_naming_it(server: Server) -> None:
    orders = [pb.SessionOrder(submit=_submit(3, 1, symbol="ZZZ")),
              pb.SessionOrder(submit=_submit(3, 2))]
    responses = server.stub.OrderSession(iter([pb.SessionRequest(orders=orders)]), timeout=5)
    reports = [report for response in responses for report in response.reports]
    assert [r.seq for r in reports] == [1, 2]
    assert [e.kind for e in reports[0].events] == ["rejected"] and reports[0].log_index == 0
    assert "unknown symbol 'ZZZ'" in reports[0].events[0].reason
    assert [e.kind for e in reports[1].events] == ["accept"]


def test_resting_orders_per_client_and_in_total(server: Server) -> None:
    stub = server.stub
    stub.SubmitOrder(_submit(1, 1, price=90), timeout=5)
    stub.SubmitOrder(_submit(1, 2, price=91), timeout=5)
    digest = server.digest()
    error = _refused(stub.SubmitOrder, _submit(1, 3, price=92))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "RESTING_ORDERS_PER_CLIENT_MAX" in error.details()
    again = _refused(stub.SubmitOrder, _submit(1, 3, price=92))  # the stored answer
    assert again.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    book = stub.GetBookSnapshot(pb.BookSnapshotRequest(symbol="X"), timeout=5)
    assert [level.price for level in book.bids] == [91, 90]
    assert server.digest() != digest  # the refusal is stored for retries (dedup), no book moved
    ioc = stub.SubmitOrder(_submit(1, 4, price=200, side=pb.SELL, ioc=True), timeout=5)
    assert [e.kind for e in ioc.events][0] == "accept"  # never rests: admitted
    stub.SubmitOrder(_submit(2, 1, price=300, side=pb.SELL), timeout=5)
    stub.SubmitOrder(_submit(2, 2, price=301, side=pb.SELL), timeout=5)
    stub.SubmitOrder(_submit(3, 1, price=302, side=pb.SELL), timeout=5)
    total = _refused(stub.SubmitOrder, _submit(4, 1, price=303, side=pb.SELL))
    assert total.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "RESTING_ORDERS_MAX" in total.details()


def test_market_data_subscribers_are_bounded(server: Server) -> None:
    first = server.stub.StreamMarketData(pb.MarketDataRequest(symbols=["X"]), timeout=5)
    for _ in range(200):  # the first stream is registered once its handler runs
        if server.node.hub.subscriber_count == 1:
            break
        threading.Event().wait(0.01)
    second = server.stub.StreamMarketData(pb.MarketDataRequest(symbols=["X"]), timeout=5)
    with pytest.raises(grpc.RpcError) as info:
        next(iter(second))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "SUBSCRIBERS_MAX_DEFAULT" in info.value.details()
    first.cancel()


def test_order_sessions_per_server_are_bounded(server: Server) -> None:
    outbox: queue.SimpleQueue[pb.SessionRequest | None] = queue.SimpleQueue()
    held = server.stub.OrderSession(iter(outbox.get, None), timeout=10)
    outbox.put(pb.SessionRequest(orders=[pb.SessionOrder(submit=_submit(5, 1))]))
    next(iter(held))  # the first session is open and answered
    second = server.stub.OrderSession(iter([pb.SessionRequest(
        orders=[pb.SessionOrder(submit=_submit(6, 1))])]), timeout=5)
    with pytest.raises(grpc.RpcError) as info:
        next(iter(second))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "SESSIONS_MAX_DEFAULT" in info.value.details()
    outbox.put(None)
    held.cancel()


def test_messages_over_the_size_bound_are_refused_by_both_ends(server: Server) -> None:
    huge = _submit(7, 1, symbol="X" * (GRPC_REQUEST_BYTES_MAX + 1))
    client_side = _refused(server.stub.SubmitOrder, huge)  # our channel options refuse to send
    assert client_side.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with grpc.insecure_channel(server.address) as plain:  # a client without our options
        error = _refused(pb_grpc.ExchangeStub(plain).SubmitOrder, huge)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in error.details()
    assert server.stub.GetStatus(pb.StatusRequest(), timeout=5).applied_index == 0


def test_a_session_over_the_clients_in_flight_bound_ends_resource_exhausted(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("exchange.node.IN_FLIGHT_PER_CLIENT_MAX", 2)
    orders = [pb.SessionOrder(submit=_submit(8, seq, price=50 + seq)) for seq in (1, 2, 3)]
    responses = server.stub.OrderSession(iter([pb.SessionRequest(orders=orders)]), timeout=5)
    with pytest.raises(grpc.RpcError) as info:
        list(responses)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "IN_FLIGHT_PER_CLIENT_MAX" in info.value.details()
    assert server.node.in_flight_of(8) == 0
    book = server.stub.GetBookSnapshot(pb.BookSnapshotRequest(symbol="X"), timeout=5)
    assert list(book.bids) == []  # nothing of the refused message was proposed
