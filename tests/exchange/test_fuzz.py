"""Property-based fuzzing of a live 3-replica cluster over real gRPC (issue 13, part 6).

Every RPC of both services gets random field values and random bytes: order entry (unary and
order sessions), market data (both streams), book snapshots, status, health and the replication
service's snapshot stream, each sent to a random server of the cluster. After every request:

- no server process died, and no answer is INTERNAL or UNKNOWN (a bug's status);
- a refused order-entry request changed nothing: the leader's state digest is the same as
  before it. Refused means a unary call answered INVALID_ARGUMENT, FAILED_PRECONDITION or
  RESOURCE_EXHAUSTED (a resting-order limit refusal is stored for retries, so for that one
  only the book digest is compared), or an order session that ended normally with every order
  answered as invalid (log index 0). A deadline or UNAVAILABLE leaves the outcome open (the
  request may have been committed: retries are exactly-once), and a session that ended with
  an error may have executed the orders of its earlier messages, so those are not compared;
- at the end every server answers and all three state digests are equal.

The example count is ``MU_FUZZ_EXAMPLES`` (default ``CI_EXAMPLES``, a modest CI run); each
example sends one request (a session example sends one stream of up to a few messages), and the
test prints the totals. ``MU_FUZZ_SEED`` fixes hypothesis's seed (printed as well).
Run the large version:
``MU_FUZZ_EXAMPLES=10000 nice -n 19 python -m pytest tests/exchange/test_fuzz.py -s``.
"""

from __future__ import annotations

import collections
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from exchange.cluster import LocalCluster
from exchange.limits import GRPC_CLIENT_OPTIONS
from exchange.proto import exchange_pb2 as pb
from exchange.proto import exchange_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

CI_EXAMPLES = 200
EXAMPLES = int(os.environ.get("MU_FUZZ_EXAMPLES", str(CI_EXAMPLES)))
SEED = int(os.environ.get("MU_FUZZ_SEED", str(random.randrange(2**32))))
SYMBOLS = ("FZA", "FZB")
CALL_TIMEOUT_S = 5.0
STREAM_TIMEOUT_S = 0.05  # market data: read what arrives, then the deadline ends the stream
CONVERGE_TIMEOUT_S = 60.0
ANSWER_TIMEOUT_S = 60.0  # a server that does not answer a status call for this long is stuck
BAD_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
UNARY = "/mu.exchange.Exchange/"
METHODS = {  # path -> (request streaming, response streaming)
    UNARY + "SubmitOrder": (False, False), UNARY + "Cancel": (False, False),
    UNARY + "Replace": (False, False), UNARY + "OrderSession": (True, True),
    UNARY + "StreamMarketData": (False, True), UNARY + "StreamMarketDataBatches": (False, True),
    UNARY + "GetBookSnapshot": (False, False), UNARY + "GetStatus": (False, False),
    "/mu.exchange.Replication/FetchSnapshot": (False, True),
    "/grpc.health.v1.Health/Check": (False, False),
}
# order entry three times as often as each read: it is where state changes
WEIGHTED_METHODS = sorted(METHODS) + 2 * sorted(
    {UNARY + "SubmitOrder", UNARY + "Cancel", UNARY + "Replace", UNARY + "OrderSession"})
ORDER_ENTRY = frozenset({UNARY + "SubmitOrder", UNARY + "Cancel", UNARY + "Replace",
                         UNARY + "OrderSession"})


@dataclass(frozen=True)
class Request:
    """One fuzzed call: the method path, the target server (0..2) and the encoded messages
    (one for a unary or server-streaming call, several for an order session)."""

    method: str
    target: int
    messages: tuple[bytes, ...]


@dataclass
class Tally:
    requests: int = 0
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)


# ---- strategies -------------------------------------------------------------------------------

u64 = st.one_of(st.integers(0, 3), st.integers(0, 2**64 - 1), st.just(2**64 - 1))
i64 = st.one_of(st.integers(-3, 200), st.integers(-(2**63), 2**63 - 1))
text = st.one_of(st.sampled_from([*SYMBOLS, "", " FZA", "ZZZ", "FZA\x00", "é" * 9]),
                 st.text(max_size=24))
order_ids = st.one_of(text, st.builds(lambda c, s: f"{c}.{s}", st.integers(0, 5), u64))
side = st.integers(0, 4)  # SIDE_UNSPECIFIED, BUY, SELL and unknown enum values


# Mostly-valid values too, so that a fair share of requests executes and moves the books (the
# replicas must stay equal through real trading, not only through refusals).
clients = st.integers(1, 4)
seqs = st.integers(1, 400)
listed = st.sampled_from(SYMBOLS)
prices = st.integers(95, 105)


def _submit() -> st.SearchStrategy[pb.SubmitOrderRequest]:
    random_fields = st.builds(
        pb.SubmitOrderRequest, client_id=u64, seq=u64, symbol=text, side=side, price=i64,
        quantity=i64, stop_price=i64, all_or_none=st.booleans(),
        immediate_or_cancel=st.booleans())
    plausible = st.builds(
        pb.SubmitOrderRequest, client_id=clients, seq=seqs, symbol=listed,
        side=st.sampled_from([pb.BUY, pb.SELL]), price=st.one_of(st.just(0), prices),
        quantity=st.integers(1, 30), stop_price=st.one_of(st.just(0), prices),
        all_or_none=st.booleans(), immediate_or_cancel=st.booleans())
    return st.one_of(random_fields, plausible, plausible)


def _cancel() -> st.SearchStrategy[pb.CancelRequest]:
    return st.one_of(
        st.builds(pb.CancelRequest, client_id=u64, seq=u64, order_id=order_ids, symbol=text),
        st.builds(lambda c, s, o, y: pb.CancelRequest(client_id=c, seq=s, order_id=f"{c}.{o}",
                                                      symbol=y),
                  clients, seqs, seqs, st.sampled_from(["", *SYMBOLS])))


def _replace() -> st.SearchStrategy[pb.ReplaceRequest]:
    return st.one_of(
        st.builds(pb.ReplaceRequest, client_id=u64, seq=u64, order_id=order_ids,
                  quantity_delta=i64, new_price=i64, symbol=text),
        st.builds(lambda c, s, o, d, p: pb.ReplaceRequest(
            client_id=c, seq=s, order_id=f"{c}.{o}", quantity_delta=d, new_price=p),
            clients, seqs, seqs, st.integers(-10, 10), st.one_of(st.just(0), prices)))


def _session_order() -> st.SearchStrategy[pb.SessionOrder]:
    return st.one_of(st.builds(pb.SessionOrder, submit=_submit()),
                     st.builds(pb.SessionOrder, cancel=_cancel()),
                     st.builds(pb.SessionOrder, replace=_replace()),
                     st.just(pb.SessionOrder()))


def _fields(method: str) -> st.SearchStrategy[tuple[bytes, ...]]:
    """Well-formed messages with random field values for ``method``."""
    name = method.rsplit("/", 1)[1]
    one: st.SearchStrategy[object]
    if name == "OrderSession":
        message = st.builds(pb.SessionRequest, orders=st.lists(_session_order(), max_size=55))
        return st.lists(message.map(lambda m: m.SerializeToString()), min_size=0,
                        max_size=3).map(tuple)
    if name in ("SubmitOrder", "Cancel", "Replace"):
        one = {"SubmitOrder": _submit, "Cancel": _cancel, "Replace": _replace}[name]()
    elif name.startswith("StreamMarketData"):
        one = st.builds(pb.MarketDataRequest, symbols=st.lists(text, max_size=4),
                        include_depth=st.booleans())
    elif name == "GetBookSnapshot":
        one = st.builds(pb.BookSnapshotRequest, symbol=text, levels=st.integers(0, 2**32 - 1))
    elif name == "FetchSnapshot":
        one = st.builds(pb.SnapshotRequest, requester_id=st.integers(0, 2**32 - 1))
    elif name == "Check":
        one = st.builds(health_pb2.HealthCheckRequest,
                        service=st.sampled_from(["", "mu.exchange.Exchange", "nope"]))
    else:
        one = st.just(pb.StatusRequest())
    return one.map(lambda m: (m.SerializeToString(),))  # type: ignore[attr-defined]


def _raw(method: str) -> st.SearchStrategy[tuple[bytes, ...]]:
    """Random bytes where the method's messages go."""
    count = st.integers(1, 3) if METHODS[method][0] else st.just(1)
    return count.flatmap(lambda n: st.lists(st.binary(max_size=160), min_size=n, max_size=n)
                         .map(tuple))


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(st.sampled_from(WEIGHTED_METHODS))
    messages = draw(st.one_of(_fields(method), _fields(method), _raw(method)))
    # server 1 (index 0) leads unless it failed over: most requests go there, the rest test the
    # followers' answers
    return Request(method, draw(st.sampled_from([0, 0, 0, 1, 2])), messages)


# ---- the cluster and one call ------------------------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_cluster() -> Iterator[tuple[LocalCluster, list[grpc.Channel]]]:
    with LocalCluster(3, name="t-fuzz", symbols=SYMBOLS) as cluster:
        channels = [grpc.insecure_channel(cluster.addresses[i], options=GRPC_CLIENT_OPTIONS)
                    for i in sorted(cluster.addresses)]
        # The first order fixes the instrument list (exchange.node Rule 9): a state change
        # that any first order-entry call makes, refused or not; make it before fuzzing.
        stub = pb_grpc.ExchangeStub(channels[cluster.wait_for_leader(CALL_TIMEOUT_S) - 1])
        stub.SubmitOrder(pb.SubmitOrderRequest(client_id=1, seq=1, symbol=SYMBOLS[0],
                                               side=pb.BUY, price=1, quantity=1),
                         timeout=CALL_TIMEOUT_S)
        yield cluster, channels
        for channel in channels:
            channel.close()


def _identity(data: bytes) -> bytes:
    return data


def _call(channel: grpc.Channel, request: Request) -> tuple[grpc.StatusCode, bool]:
    """Send ``request``: its final status (OK when it ended normally) and whether an order
    session's reports show an executed order (log index > 0)."""
    streaming_in, streaming_out = METHODS[request.method]
    timeout = STREAM_TIMEOUT_S if streaming_out and not streaming_in else CALL_TIMEOUT_S
    kind: Callable[..., Callable[..., object]]
    if streaming_in:
        kind = channel.stream_stream
    elif streaming_out:
        kind = channel.unary_stream
    else:
        kind = channel.unary_unary
    call = kind(request.method, request_serializer=_identity, response_deserializer=_identity)
    argument = iter(request.messages) if streaming_in else request.messages[0]
    executed = False
    try:
        answer = call(argument, timeout=timeout)
        if streaming_out:
            for data in answer:  # type: ignore[attr-defined]
                if streaming_in:
                    reports = pb.SessionResponse.FromString(data).reports
                    executed = executed or any(report.log_index for report in reports)
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
        return code, executed
    return grpc.StatusCode.OK, executed


class Digests:
    """The leader's (state digest, book digest), finding the leader again when it moved; the
    last reading is reused until a request may have changed the state (``stale``)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.leader = cluster.wait_for_leader(ANSWER_TIMEOUT_S)
        self.last: tuple[str, str] | None = None

    def read(self) -> tuple[str, str]:
        if self.last is None:
            status = self._status()
            if status.role != "leader":
                self.leader = self.cluster.wait_for_leader(ANSWER_TIMEOUT_S)
                status = self._status()
            self.last = (status.state_digest, status.book_digest)
        return self.last

    def stale(self) -> None:
        self.last = None

    def _status(self) -> pb.Status:
        """The leader's status; a busy machine may take seconds, a dead server never answers."""
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while True:
            try:
                return self.cluster.status(self.leader, CALL_TIMEOUT_S)
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


REFUSED_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                           grpc.StatusCode.RESOURCE_EXHAUSTED})


def _refused(request: Request, code: grpc.StatusCode, executed: bool) -> bool:
    """Whether ``request`` was refused as a whole, so that it must have changed nothing."""
    if request.method == UNARY + "OrderSession":
        return code == grpc.StatusCode.OK and not executed
    return code in REFUSED_CODES


def _check_one(cluster: LocalCluster, channels: list[grpc.Channel], digests: Digests,
               request: Request, tally: Tally) -> None:
    before = digests.read() if request.method in ORDER_ENTRY else None
    code, executed = _call(channels[request.target], request)
    if before is not None:
        digests.stale()
    tally.requests += 1
    tally.codes[code.name] += 1
    dead = [i for i, server in cluster.servers.items() if server.process.poll() is not None]
    assert not dead, f"server(s) {dead} died after {request}"
    assert code not in BAD_CODES, f"{code.name} for {request}"
    if before is None or not _refused(request, code, executed):
        return
    after = digests.read()
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # a stored limit refusal: the books stay
        assert after[1] == before[1], f"a refused request moved a book: {request}"
        return
    assert after == before, f"{code.name} changed the state: {request}"


def test_fuzzed_requests_never_crash_and_refusals_change_nothing(fuzz_cluster) -> None:
    cluster, channels = fuzz_cluster
    tally, digests = Tally(), Digests(cluster)
    print(f"\nfuzz: MU_FUZZ_SEED={SEED}, MU_FUZZ_EXAMPLES={EXAMPLES}")

    @seed(SEED)
    @settings(max_examples=EXAMPLES, derandomize=False, database=None,
              suppress_health_check=list(HealthCheck))
    @given(requests())
    def one(request: Request) -> None:
        _check_one(cluster, channels, digests, request, tally)

    try:
        one()
    finally:
        print(f"fuzz: {tally.requests} requests, by status: {dict(tally.codes.most_common())}")
    statuses = cluster.wait_converged(CONVERGE_TIMEOUT_S)
    leader = statuses[digests.leader]
    print(f"fuzz: every server up; log index {leader.applied_index}, "
          f"{leader.orders_applied} orders executed, {len(leader.symbols)} books, state digests "
          f"{sorted({s.state_digest[:12] for s in statuses.values()})}")
    assert len(statuses) == 3
    assert len({status.state_digest for status in statuses.values()}) == 1, statuses
    assert all(server.process.poll() is None for server in cluster.servers.values())
    assert tally.requests >= EXAMPLES
