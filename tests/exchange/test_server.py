"""One unreplicated server process over real gRPC: order entry, reads, errors, health, FIFO."""

import random
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from exchange.proto import exchange_pb2 as pb
from exchange.service import ORDER_ENTRY_SERVICE
from tests.exchange.conftest import new_client

pytestmark = pytest.mark.slow


def test_orders_match_and_snapshot_shows_the_rest(standalone):
    seller, buyer = new_client(standalone), new_client(standalone)
    sell = seller.submit("TSTA", pb.SELL, 10_000, 300).reply
    assert [e.kind for e in sell.events] == ["accept"]
    buy = buyer.submit("TSTA", pb.BUY, 10_000, 100).reply
    fills = [e for e in buy.events if e.kind == "fill"]
    assert {(e.order_id, e.contra_order_id) for e in fills} == {
        (buy.order_id, sell.order_id), (sell.order_id, buy.order_id)}
    snapshot = standalone.stub(1).GetBookSnapshot(pb.BookSnapshotRequest(symbol="TSTA"))
    assert [(lv.price, lv.quantity, lv.order_count) for lv in snapshot.asks] == [(10_000, 200, 1)]
    assert list(snapshot.bids) == [] and snapshot.last_trade_price == 10_000
    cancel = seller.cancel(sell.order_id).reply
    assert [(e.kind, e.quantity) for e in cancel.events] == [("cancel", 200)]


def test_retry_with_the_same_seq_executes_once(standalone):
    client = new_client(standalone)
    first = client.submit("TSTB", pb.BUY, 9_000, 100, seq=5)
    digest = standalone.status(1).state_digest
    again = client.submit("TSTB", pb.BUY, 9_000, 100, seq=5)
    assert again.reply.duplicate and not first.reply.duplicate
    assert again.reply.log_index == first.reply.log_index
    assert list(again.reply.events) == list(first.reply.events)
    assert standalone.status(1).state_digest == digest
    snapshot = standalone.stub(1).GetBookSnapshot(pb.BookSnapshotRequest(symbol="TSTB"))
    assert [(lv.quantity, lv.order_count) for lv in snapshot.bids] == [(100, 1)]


def test_a_seq_reused_for_another_request_is_an_error_naming_the_seq(standalone):
    client = new_client(standalone)
    client.submit("TSTR", pb.BUY, 9_000, 100, seq=3)
    digest = standalone.status(1).state_digest
    other = client.submit("TSTR", pb.SELL, 9_500, 7, seq=3).reply
    assert [e.kind for e in other.events] == ["rejected"] and not other.duplicate
    reason = other.events[0].reason
    assert "seq 3 of client" in reason and "different request" in reason, reason
    snapshot = standalone.stub(1).GetBookSnapshot(pb.BookSnapshotRequest(symbol="TSTR"))
    assert list(snapshot.asks) == [] and [lv.quantity for lv in snapshot.bids] == [100]
    assert standalone.status(1).state_digest == digest


@pytest.mark.parametrize(
    ("method", "request_", "message"),
    [
        ("SubmitOrder", pb.SubmitOrderRequest(client_id=1, seq=1, side=pb.BUY, quantity=1),
         "symbol"),
        ("SubmitOrder", pb.SubmitOrderRequest(client_id=1, seq=1, symbol="A", quantity=1),
         "side"),
        ("SubmitOrder", pb.SubmitOrderRequest(client_id=1, seq=1, symbol="A", side=pb.SELL,
                                              quantity=-3), "quantity"),
        ("SubmitOrder", pb.SubmitOrderRequest(seq=1, symbol="A", side=pb.SELL, quantity=3),
         "client_id"),
        ("Cancel", pb.CancelRequest(client_id=1, seq=2, order_id="2.1"), "not an order"),
        ("Replace", pb.ReplaceRequest(client_id=1, seq=2, order_id="1.1", new_price=-1),
         "new_price"),
        ("GetBookSnapshot", pb.BookSnapshotRequest(symbol="WAYTOOLONGSYMBOLNAME"), "symbol"),
    ],
)
def test_bad_requests_are_invalid_argument(standalone, method, request_, message):
    stub = standalone.stub(1)
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(request_, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    assert standalone.status(1).role == "standalone"  # still serving


def test_market_data_stream_sees_trade_bbo_and_depth(standalone):
    stub = standalone.stub(1)
    stream = stub.StreamMarketData(pb.MarketDataRequest(symbols=["TSTC"], include_depth=True),
                                   timeout=10)
    updates: list[pb.MarketDataUpdate] = []
    got_trade = threading.Event()

    def read() -> None:
        try:
            for update in stream:
                updates.append(update)
                if update.WhichOneof("update") == "trade":
                    got_trade.set()
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.3)  # the subscription is registered once the stream's handler runs
    client = new_client(standalone)
    client.submit("TSTD", pb.SELL, 50, 5)  # another symbol: filtered out
    client.submit("TSTC", pb.SELL, 101, 7)
    client.submit("TSTC", pb.BUY, 101, 2)
    assert got_trade.wait(5)
    stream.cancel()
    reader.join(5)
    assert {u.symbol for u in updates} == {"TSTC"}
    kinds = [u.WhichOneof("update") for u in updates]
    assert {"trade", "bbo", "depth"} <= set(kinds)
    trade = next(u.trade for u in updates if u.WhichOneof("update") == "trade")
    assert (trade.price, trade.quantity) == (101, 2)
    indexes = [u.log_index for u in updates]
    assert indexes == sorted(indexes)


def test_health_and_fifo_pause_resume(standalone):
    channel = grpc.insecure_channel(standalone.addresses[1])
    health = health_pb2_grpc.HealthStub(channel)
    serving = health_pb2.HealthCheckResponse.SERVING

    def state(service: str) -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    assert state("") == serving and state(ORDER_ENTRY_SERVICE) == serving
    client = new_client(standalone, give_up_s=0.3)
    standalone.control(1, "p")
    deadline = time.monotonic() + 5
    while standalone.status(1).role != "paused" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert standalone.status(1).role == "paused"
    with pytest.raises(grpc.RpcError) as info:
        standalone.stub(1).SubmitOrder(
            pb.SubmitOrderRequest(client_id=client.client_id, seq=1, symbol="TSTE", side=pb.BUY,
                                  price=1, quantity=1), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "paused" in info.value.details()
    time.sleep(0.1)  # the role watcher refreshes health every 20 ms
    assert state(ORDER_ENTRY_SERVICE) != serving
    standalone.control(1, "r")
    reply = client.submit("TSTE", pb.BUY, 1, 1, seq=1).reply  # the same seq, now executed
    assert [e.kind for e in reply.events] == ["accept"] and not reply.duplicate
    channel.close()


@pytest.mark.parametrize("seed", [11])
def test_garbage_bytes_never_crash_the_server(standalone, seed):
    rng = random.Random(seed)
    channel = grpc.insecure_channel(standalone.addresses[1])
    codes = set()
    for method in ("SubmitOrder", "Cancel", "Replace", "GetBookSnapshot", "GetStatus"):
        call = channel.unary_unary(f"/mu.exchange.Exchange/{method}",
                                   request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        for _ in range(40):
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(60)))
            try:
                call(data, timeout=5)
                codes.add("OK")
            except grpc.RpcError as error:
                codes.add(error.code().name)
    channel.close()
    assert codes <= {"OK", "INVALID_ARGUMENT", "FAILED_PRECONDITION", "NOT_FOUND"}, (seed, codes)
    assert standalone.status(1).role == "standalone", seed  # still up and serving


GARBAGE = b"\xff\xff\xff\xff"  # a field tag with a truncated varint: never a valid message


@pytest.mark.parametrize(("method", "kind"), [
    ("/mu.exchange.Exchange/SubmitOrder", "unary_unary"),
    ("/mu.exchange.Exchange/GetStatus", "unary_unary"),
    ("/mu.exchange.Exchange/StreamMarketData", "unary_stream"),
    ("/mu.exchange.Exchange/OrderSession", "stream_stream"),
    ("/mu.exchange.Replication/FetchSnapshot", "unary_stream"),
    ("/grpc.health.v1.Health/Check", "unary_unary"),  # found by tests/exchange/test_fuzz.py
    ("/grpc.health.v1.Health/Watch", "unary_stream"),
])
def test_an_undecodable_body_is_invalid_argument_on_every_rpc(standalone, method, kind):
    channel = grpc.insecure_channel(standalone.addresses[1])
    call = getattr(channel, kind)(method, request_serializer=lambda b: b,
                                  response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as info:
        if kind == "unary_unary":
            call(GARBAGE, timeout=5)
        elif kind == "unary_stream":
            list(call(GARBAGE, timeout=5))
        else:
            list(call(iter([GARBAGE]), timeout=5))
    channel.close()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert "not a valid protobuf message" in info.value.details()


def test_reflection_lets_a_generic_client_list_and_call_the_api(standalone):
    """serve Rule 5: what grpcurl does, without the .proto file: list the services, build a
    SubmitOrder request from the reflected descriptors, call it, read the reply."""
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    channel = grpc.insecure_channel(standalone.addresses[1])
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"mu.exchange.Exchange", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= services, services
    pool = descriptor_pool.DescriptorPool(database)
    method = pool.FindServiceByName("mu.exchange.Exchange").FindMethodByName("SubmitOrder")
    request_class = message_factory.GetMessageClass(method.input_type)
    reply_class = message_factory.GetMessageClass(method.output_type)
    client_id = new_client(standalone).client_id
    request = request_class(client_id=client_id, seq=1, symbol="TSTR", side=pb.BUY, price=7,
                            quantity=3)
    call = channel.unary_unary("/mu.exchange.Exchange/SubmitOrder",
                               request_serializer=lambda message: message.SerializeToString(),
                               response_deserializer=reply_class.FromString)
    reply = call(request, timeout=10)
    assert reply.client_id == client_id and reply.seq == 1
    assert [event.kind for event in reply.events] == ["accept"]
    channel.close()
