"""A leader-following trader client: order entry that survives failovers, exactly once.

Rule 1: every order-entry request gets the client's next sequence number once, and every retry
        of it (after a redirect, an UNAVAILABLE, a timeout) reuses that number, so the exchange
        executes it at most once and the retry returns the original reply.
Rule 2: FAILED_PRECONDITION with trailing metadata ``leader-address`` redirects to that address;
        UNAVAILABLE, DEADLINE_EXCEEDED and a redirect without an address try the next server after a
        short, growing back-off; INVALID_ARGUMENT, RESOURCE_EXHAUSTED (a limit of
        exchange.limits), PERMISSION_DENIED (a client id the certificate does not allow) and
        UNAUTHENTICATED are final (``RequestRejected``). A request gives up after ``give_up_s``
        (``ExchangeUnreachable``), never loops forever.
Rule 4: during a fail-over the followers still name the silent old leader for a few ms: within
        one request, a redirect to a server that already answered UNAVAILABLE (or timed out) is
        not followed, and the next server tried is one that has not failed yet when there is one;
        a failure is forgotten after ``FAILED_FORGET_S`` (the leader may have been busy only).
        A failed attempt moves on to the next server at once; the client sleeps (back-off)
        only once every server has failed since its last sleep.
        The back-off grows to ``BACKOFF_MAX_S`` (2 ms: a fail-over takes milliseconds and the new
        leader is found within one back-off of its election) for the first
        ``BACKOFF_FAST_WINDOW_S`` of failures, then to ``BACKOFF_SLOW_MAX_S`` (a cluster without
        a leader for longer is not hammered).
Rule 3: channels and the leader guess are shared by every client of one ``ClusterConnection``, so a
        redirect learnt by one trader helps all of them.
Rule 4: with ``ClientTls`` every channel is TLS (``exchange.tls``), redirects included: the
        client verifies the address it dials (a ``SERVER_URIS`` entry or a redirect's
        ``leader-address``) against the server certificate's SANs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc

from exchange.limits import GRPC_CLIENT_OPTIONS
from exchange.proto import exchange_pb2 as pb
from exchange.proto import exchange_pb2_grpc as pb_grpc
from exchange.tls import ClientTls
from exchange.tls import open_channel as tls_channel

ATTEMPT_TIMEOUT_S = 1.0  # one RPC attempt; a healthy commit takes about a millisecond
GIVE_UP_S = 15.0  # a request retries this long before ExchangeUnreachable
BACKOFF_INITIAL_S = 0.001
BACKOFF_MAX_S = 0.002  # a failover takes milliseconds; an attempt on loopback ~0.6 ms (Rule 4)
BACKOFF_FAST_WINDOW_S = 0.1  # failures of one request for this long keep the short back-off
BACKOFF_SLOW_MAX_S = 0.01  # afterwards: a leaderless cluster: a round of the servers per 10 ms
FAILED_FORGET_S = 0.05  # a server's UNAVAILABLE stops redirects to it this long (Rule 4)
LEADER_ADDRESS_KEY = "leader-address"
RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)

# The exchange refused the request itself: retrying elsewhere cannot help (Rule 2). INVALID_ARGUMENT
# (a bad field, an unknown symbol) and RESOURCE_EXHAUSTED (a limit of exchange.limits) give the
# same answer to a retry of the same seq.
FINAL_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})

RequestT = TypeVar("RequestT")


class ClientError(Exception):
    """Base class of the client's errors."""


class RequestRejected(ClientError):
    """The exchange refused the request itself (INVALID_ARGUMENT); retrying will not help."""


class ExchangeUnreachable(ClientError):
    """No server accepted the request within the give-up time; the message has the last error."""


@dataclass(frozen=True, slots=True)
class CallResult:
    reply: pb.OrderReply
    attempts: int
    redirects: int
    first_failure_ns: int  # monotonic time of the first failed attempt; 0 if none failed
    server: str  # the address that answered


# gRPC backs off reconnecting to an unreachable address up to 2 minutes by default; a server that
# was killed and restarted (or a new leader that was down a moment ago) must be reachable at once.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    *GRPC_CLIENT_OPTIONS,  # the message size bounds of exchange.limits
)


def open_channel(address: str, tls: ClientTls | None = None) -> grpc.Channel:
    """A channel to ``address`` (TLS with ``tls``, else plaintext) that reconnects within a
    second (``CHANNEL_OPTIONS``)."""
    return tls_channel(address, tls, CHANNEL_OPTIONS)


class ClusterConnection:
    """Channels to every server of a cluster plus the shared leader guess (Rule 3); over TLS
    with ``tls`` (Rule 4)."""

    def __init__(self, addresses: Sequence[str], tls: ClientTls | None = None) -> None:
        assert addresses, "at least one server address"
        self.addresses = tuple(dict.fromkeys(addresses))
        self.tls = tls
        self._channels = {address: open_channel(address, tls) for address in self.addresses}
        self._stubs = {a: _stub(c) for a, c in self._channels.items()}
        self.leader_guess = self.addresses[0]

    def stub(self, address: str) -> pb_grpc.ExchangeStub:
        stub = self._stubs.get(address)
        if stub is None:  # a leader outside the configured list: connect on demand
            channel = open_channel(address, self.tls)
            self._channels[address] = channel
            stub = self._stubs[address] = _stub(channel)
        return stub

    def next_address(self, address: str) -> str:
        if address not in self.addresses:
            return self.addresses[0]
        return self.addresses[(self.addresses.index(address) + 1) % len(self.addresses)]

    def status(self, address: str, timeout_s: float = ATTEMPT_TIMEOUT_S) -> pb.Status:
        status: pb.Status = self.stub(address).GetStatus(pb.StatusRequest(), timeout=timeout_s)
        return status

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


def _stub(channel: grpc.Channel) -> pb_grpc.ExchangeStub:
    stub: pb_grpc.ExchangeStub = pb_grpc.ExchangeStub(channel)  # type: ignore[no-untyped-call]
    return stub


def _leader_hint(error: grpc.RpcError) -> str | None:
    metadata = error.trailing_metadata() if isinstance(error, grpc.Call) else None
    key: str
    value: str | bytes
    for key, value in metadata or ():
        if key == LEADER_ADDRESS_KEY and isinstance(value, str) and value:
            return value
    return None


def connection_hint(connection: ClusterConnection, last_error: str) -> str:
    """A hint for a give-up whose last error is a connection the server closed at once: what a
    server that refuses the TLS handshake (or serves only TLS) looks like from here."""
    if "Socket closed" not in last_error and "andshake" not in last_error:
        return ""
    if connection.tls is None:
        return (" (a server that serves TLS closes plaintext connections: pass --tls-ca, and "
                "--tls-cert/--tls-key for mutual TLS)")
    if connection.tls.cert is None:
        return (" (a server that requires client certificates closes connections without one: "
                "pass --tls-cert/--tls-key)")
    return (" (a server that refuses the TLS handshake looks like this: is --tls-cert issued by "
            "the servers' --client-ca, and --tls-ca the CA of their certificates?)")


def _final_text(code: grpc.StatusCode, details: str | None) -> str:
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return details or "invalid request"
    return f"{code.name}: {details}"


def _next_untried(connection: ClusterConnection, target: str, failed: dict[str, int]) -> str:
    """Rule 4: the next server after ``target`` that has not failed in this request (all have:
    forget the failures and take the plain next one)."""
    candidate = connection.next_address(target)
    for _ in range(len(connection.addresses)):
        if candidate not in failed:
            return candidate
        candidate = connection.next_address(candidate)
    failed.clear()
    return connection.next_address(target)


class TraderClient:
    """One trader: a client id, its sequence numbers, and leader-following calls (Rules 1-2)."""

    def __init__(
        self,
        connection: ClusterConnection,
        client_id: int,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
        give_up_s: float = GIVE_UP_S,
        first_seq: int = 1,
    ) -> None:
        assert client_id > 0, client_id
        assert first_seq >= 1, first_seq
        self.connection = connection
        self.client_id = client_id
        self.attempt_timeout_s = attempt_timeout_s
        self.give_up_s = give_up_s
        self._seq = first_seq - 1
        self._seq_lock = threading.Lock()

    def next_seq(self) -> int:
        with self._seq_lock:
            self._seq += 1
            return self._seq

    def submit(
        self,
        symbol: str,
        side: pb.Side,
        price: int,
        quantity: int,
        stop_price: int = 0,
        all_or_none: bool = False,
        immediate_or_cancel: bool = False,
        seq: int | None = None,
    ) -> CallResult:
        request = pb.SubmitOrderRequest(
            client_id=self.client_id, seq=seq or self.next_seq(), symbol=symbol, side=side,
            price=price, quantity=quantity, stop_price=stop_price, all_or_none=all_or_none,
            immediate_or_cancel=immediate_or_cancel,
        )
        return self.call(lambda stub: stub.SubmitOrder, request)

    def cancel(self, order_id: str, symbol: str = "", seq: int | None = None) -> CallResult:
        request = pb.CancelRequest(
            client_id=self.client_id, seq=seq or self.next_seq(), order_id=order_id, symbol=symbol
        )
        return self.call(lambda stub: stub.Cancel, request)

    def replace(
        self,
        order_id: str,
        quantity_delta: int = 0,
        new_price: int = 0,
        symbol: str = "",
        seq: int | None = None,
    ) -> CallResult:
        request = pb.ReplaceRequest(
            client_id=self.client_id, seq=seq or self.next_seq(), order_id=order_id,
            quantity_delta=quantity_delta, new_price=new_price, symbol=symbol,
        )
        return self.call(lambda stub: stub.Replace, request)

    def call(
        self,
        method: Callable[[pb_grpc.ExchangeStub], Callable[..., pb.OrderReply]],
        request: RequestT,
    ) -> CallResult:
        """Send ``request`` to the leader, following redirects and retrying (Rules 1-2)."""
        connection = self.connection
        target = connection.leader_guess
        deadline = time.monotonic() + self.give_up_s
        backoff_s = BACKOFF_INITIAL_S
        attempts = redirects = first_failure_ns = 0
        last_error = "no attempt made"
        failed: dict[str, int] = {}  # server -> when it answered UNAVAILABLE/timed out (Rule 4)
        asked: set[str] = set()  # servers that failed this request since the last back-off
        while True:
            attempts += 1
            try:
                reply = method(connection.stub(target))(request, timeout=self.attempt_timeout_s)
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
                details = error.details() if isinstance(error, grpc.Call) else str(error)
                if code in FINAL_CODES:  # retrying the same seq gets the same answer
                    raise RequestRejected(_final_text(code, details)) from None
                now_ns = time.monotonic_ns()
                first_failure_ns = first_failure_ns or now_ns
                last_error = f"{target}: {code.name}: {details}"
                hint = _leader_hint(error) if code == grpc.StatusCode.FAILED_PRECONDITION else None
                if code not in RETRYABLE_CODES and code != grpc.StatusCode.FAILED_PRECONDITION:
                    raise ExchangeUnreachable(f"request failed: {last_error}") from None
                if time.monotonic() >= deadline:
                    raise ExchangeUnreachable(
                        f"no leader accepted the request within {self.give_up_s} s "
                        f"({attempts} attempts); last error: {last_error}"
                        f"{connection_hint(connection, last_error)}"
                    ) from None
                if code in RETRYABLE_CODES:
                    failed[target] = now_ns
                forget_ns = now_ns - int(FAILED_FORGET_S * 1e9)
                for address in [a for a, at in failed.items() if at < forget_ns]:
                    del failed[address]
                if hint is not None and hint != target and hint not in failed:
                    redirects += 1
                    target = hint
                    continue
                asked.add(target)
                target = _next_untried(connection, target, failed)
                if target in asked:  # Rule 4: every server had its turn since the last sleep
                    asked.clear()
                    time.sleep(backoff_s)
                    fast = now_ns - first_failure_ns < BACKOFF_FAST_WINDOW_S * 1e9
                    backoff_s = min(backoff_s * 2, BACKOFF_MAX_S if fast else BACKOFF_SLOW_MAX_S)
                continue
            connection.leader_guess = target
            return CallResult(reply, attempts, redirects, first_failure_ns, target)
