"""A leader-following trader client: order entry that survives failovers, exactly once.

Rule 1: every order-entry request gets the client's next sequence number once, and every retry
        of it (after a redirect, an UNAVAILABLE, a timeout) reuses that number, so the exchange
        executes it at most once and the retry returns the original reply.
Rule 2: FAILED_PRECONDITION with trailing metadata ``leader-address`` redirects to that address;
        UNAVAILABLE, DEADLINE_EXCEEDED and a redirect without an address try the other servers
        (Rules 4-5); INVALID_ARGUMENT, RESOURCE_EXHAUSTED (a limit of
        exchange.limits), PERMISSION_DENIED (a client id the certificate does not allow) and
        UNAUTHENTICATED are final (``RequestRejected``). A request gives up after ``give_up_s``
        (``ExchangeUnreachable``), never loops forever.
Rule 3: channels and the leader guess are shared by every client of one ``ClusterConnection``, so a
        redirect learnt by one trader helps all of them.
Rule 4: during a fail-over the followers still name the silent old leader for a few ms: within
        one request, a redirect to a server that already answered UNAVAILABLE (or timed out) is
        not followed; a failure is forgotten after ``FAILED_FORGET_S`` (the leader may have been
        busy only). The client sleeps (back-off) only once every server has failed since its
        last sleep. The back-off grows to ``BACKOFF_MAX_S`` (2 ms: a fail-over takes
        milliseconds and the new leader is found within one back-off of its election) for the
        first ``BACKOFF_FAST_WINDOW_S`` of failures, then to ``BACKOFF_SLOW_MAX_S`` (a cluster
        without a leader for longer is not hammered).
Rule 5: a failure with no redirect worth following sends the request (same seq) to every server
        that has not failed since the last sleep at once, not one after the other: the servers
        hold a request while their leader is silent or an election runs (exchange node Rule 4),
        so the winner of the election executes it as soon as it leads, and the first answer
        wins; the other calls are cancelled (a loser only ever redirects or refuses: at most one
        leader executes a seq, and the replicated dedup table answers any retry). Without a
        fan-out the trader paid a round trip to the follower that lost the election.
Rule 6: with ``ClientTls`` every channel is TLS (``exchange.tls``), redirects included: the
        client verifies the address it dials (a ``SERVER_URIS`` entry or a redirect's
        ``leader-address``) against the server certificate's SANs.
Rule 7: a request the leader has not answered within the hedge wait (its process may be
        stopped or its machine stuck: it answers nothing, and a failed-over cluster leads
        elsewhere within milliseconds) is sent again, same seq, to every server that has not
        failed, the silent one included (Rule 5's fan-out): a merely slow leader answers its
        copy (it joins the first one's wait), the followers redirect to it or, if it is
        silent, hold the request until the election ends and the winner executes it. Without
        this a silent leader cost the trader ``ATTEMPT_TIMEOUT_S`` (1 s). Once per request.
        The wait adapts: ``HEDGE_LATENCY_FACTOR`` times the connection's usual latency (a
        moving average of first-attempt answers), between ``HEDGE_AFTER_S_MIN`` and
        ``hedge_after_s``; a hedge of a slow leader costs two redirects and a duplicate that
        joins the original, so hedging the slowest few percent of requests is cheap. The
        traders of one connection share the average, updated without a lock (a lost update
        only delays it).
Rule 8: ``traders load`` first waits (``wait_for_any_server``, up to ``--wait-for-servers``) for
        any server to answer a health check, saying so after ``WAIT_NOTICE_S``, so that servers
        started a moment earlier are waited for and a wrong address or a stopped cluster is one
        clear error instead of a report of nothing.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc

from exchange.limits import GRPC_CLIENT_OPTIONS
from exchange.proto import exchange_pb2 as pb
from exchange.proto import exchange_pb2_grpc as pb_grpc
from exchange.tls import ClientTls
from exchange.tls import open_channel as tls_channel

ATTEMPT_TIMEOUT_S = 1.0  # one RPC attempt; a healthy commit takes about a millisecond
HEDGE_AFTER_S = 0.05  # Rule 7: the longest a request waits for the leader before a hedge
HEDGE_AFTER_S_MIN = 0.01  # ... and the shortest, whatever the answers' usual latency
HEDGE_LATENCY_FACTOR = 4  # hedge after this many times the usual latency (between the two)
LATENCY_EWMA_WEIGHT = 0.05  # weight of one answer in the connection's usual latency
GIVE_UP_S = 15.0  # a request retries this long before ExchangeUnreachable
BACKOFF_INITIAL_S = 0.001
BACKOFF_MAX_S = 0.002  # a failover takes milliseconds; an attempt on loopback ~0.6 ms (Rule 4)
BACKOFF_FAST_WINDOW_S = 0.1  # failures of one request for this long keep the short back-off
BACKOFF_SLOW_MAX_S = 0.01  # afterwards: a leaderless cluster: a round of the servers per 10 ms
FAILED_FORGET_S = 0.05  # a server's UNAVAILABLE stops redirects to it this long (Rule 4)
WAIT_NOTICE_S = 1.0  # Rule 8: say that no server answers yet after this long
WAIT_RETRY_S = 0.1  # ... and ask them all again this often
FAN_OUT_GRACE_S = 0.1  # Rule 5: beyond the calls' own deadline, before they count as failed
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


class AdaptiveWait:
    """A wait that follows how long answers usually take: ``factor`` times a moving average
    (each observation weighs ``weight``), never below ``shortest_s`` nor above the caller's
    longest. The hedge of Rule 7 and the session's stall limit (traders.session Rule 2) are
    two of them. Updated without a lock: a lost update only delays the average."""

    def __init__(self, longest_s: float, factor: float, shortest_s: float,
                 weight: float) -> None:
        self.factor = factor
        self.shortest_s = shortest_s
        self.weight = weight
        self.usual_s = longest_s / factor  # until answers say otherwise: the longest wait

    def note(self, seconds: float) -> None:
        self.usual_s += (seconds - self.usual_s) * self.weight

    def limit(self, longest_s: float) -> float:
        return min(longest_s, max(self.shortest_s, self.factor * self.usual_s))


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
        self.latency = AdaptiveWait(HEDGE_AFTER_S, HEDGE_LATENCY_FACTOR, HEDGE_AFTER_S_MIN,
                                    LATENCY_EWMA_WEIGHT)  # first-attempt answers (Rule 7)

    def note_latency(self, seconds: float) -> None:
        """Fold one first-attempt answer's latency into the usual latency (Rule 7)."""
        self.latency.note(seconds)

    def hedge_delay_s(self, longest_s: float) -> float:
        """Rule 7: how long a request waits for the leader before it is hedged."""
        return self.latency.limit(longest_s)

    def health_check(self, address: str, timeout_s: float) -> None:
        """One grpc.health.v1 check of ``address`` (whatever its role); raises ``RpcError``."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channels[address])  # type: ignore[no-untyped-call]
        stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)

    def stub(self, address: str) -> pb_grpc.ExchangeStub:
        stub = self._stubs.get(address)
        if stub is None:  # a leader outside the configured list: connect on demand
            channel = open_channel(address, self.tls)
            self._channels[address] = channel
            stub = self._stubs[address] = _stub(channel)
        return stub

    def next_address(self, address: str) -> str:
        return next_address(self.addresses, address)

    def status(self, address: str, timeout_s: float = ATTEMPT_TIMEOUT_S) -> pb.Status:
        status: pb.Status = self.stub(address).GetStatus(pb.StatusRequest(), timeout=timeout_s)
        return status

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


def next_address(addresses: Sequence[str], address: str) -> str:
    """The server after ``address`` in ``addresses``, round the list (the first one for an
    address outside it): where a client tries next."""
    if address not in addresses:
        return addresses[0]
    return addresses[(addresses.index(address) + 1) % len(addresses)]


def _stub(channel: grpc.Channel) -> pb_grpc.ExchangeStub:
    stub: pb_grpc.ExchangeStub = pb_grpc.ExchangeStub(channel)  # type: ignore[no-untyped-call]
    return stub


class _Cancelled(grpc.RpcError):
    """A fanned-out call that ended without a status of its own (Rule 5): retryable."""

    def __init__(self, text: str = "cancelled") -> None:
        super().__init__(text)
        self.text = text


_CALL_ERRORS = (grpc.Call, grpc.aio.AioRpcError)  # errors that carry a status and metadata


def _code(error: grpc.RpcError) -> grpc.StatusCode:
    if isinstance(error, _CALL_ERRORS):
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.CANCELLED if isinstance(error, _Cancelled) else grpc.StatusCode.UNKNOWN


def _details(error: grpc.RpcError) -> str:
    if isinstance(error, _CALL_ERRORS):
        return error.details() or ""
    return error.text if isinstance(error, _Cancelled) else str(error)


def _leader_hint(error: grpc.RpcError) -> str | None:
    metadata: Any = error.trailing_metadata() if isinstance(error, _CALL_ERRORS) else None
    key: str
    value: str | bytes
    for key, value in metadata or ():  # (key, value) pairs, whichever API made the call
        if key == LEADER_ADDRESS_KEY and isinstance(value, str) and value:
            return value
    return None


class _HasTls(Protocol):
    """What ``connection_hint`` reads of a connection (a thread's or an event loop's)."""

    @property
    def tls(self) -> ClientTls | None: ...


def connection_hint(connection: ClusterConnection | _HasTls, last_error: str) -> str:
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


def wait_for_any_server(connection: ClusterConnection, give_up_s: float,
                        on_wait: Callable[[str], None] | None = None) -> str | None:
    """Rule 8: return None as soon as one server of ``connection`` answers a health check
    (whatever its role), or after ``give_up_s`` the last error with a hint. ``on_wait`` is
    called once, with that error, if nothing answered within ``WAIT_NOTICE_S``."""
    deadline = time.monotonic() + give_up_s
    notice_at = time.monotonic() + WAIT_NOTICE_S
    last_error = ""
    while True:
        for address in connection.addresses:
            try:
                connection.health_check(address, ATTEMPT_TIMEOUT_S)
                return None
            except grpc.RpcError as error:
                last_error = f"{address}: {_code(error).name}: {_details(error)}"
        now = time.monotonic()
        if now >= deadline:
            return last_error + connection_hint(connection, last_error)
        if on_wait is not None and now >= notice_at:
            on_wait(last_error)
            on_wait = None
        time.sleep(min(WAIT_RETRY_S, max(0.0, deadline - now)))


def _final_text(code: grpc.StatusCode, details: str | None) -> str:
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return details or "invalid request"
    return f"{code.name}: {details}"


class TraderClient:
    """One trader: a client id, its sequence numbers, and leader-following calls (Rules 1-2)."""

    def __init__(
        self,
        connection: ClusterConnection,
        client_id: int,
        attempt_timeout_s: float = ATTEMPT_TIMEOUT_S,
        give_up_s: float = GIVE_UP_S,
        first_seq: int = 1,
        hedge_after_s: float | None = HEDGE_AFTER_S,
    ) -> None:
        assert client_id > 0, client_id
        assert first_seq >= 1, first_seq
        assert hedge_after_s is None or hedge_after_s > 0, hedge_after_s
        self.connection = connection
        self.client_id = client_id
        self.attempt_timeout_s = attempt_timeout_s
        self.hedge_after_s = hedge_after_s  # Rule 7: the longest wait before a hedge (None: none)
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
        deadline = time.monotonic() + self.give_up_s
        backoff_s = BACKOFF_INITIAL_S
        attempts = redirects = first_failure_ns = 0
        failed: dict[str, int] = {}  # server -> when it answered UNAVAILABLE/timed out (Rule 4)
        asked: set[str] = set()  # servers that failed this request since the last back-off
        targets = [connection.leader_guess]
        hedge_s = (None if self.hedge_after_s is None or len(connection.addresses) == 1 else
                   connection.hedge_delay_s(self.hedge_after_s))
        started = time.monotonic()
        while True:
            attempts += len(targets)
            if len(targets) == 1:
                timeout_s = self.attempt_timeout_s if hedge_s is None else hedge_s
                try:
                    reply = method(connection.stub(targets[0]))(request, timeout=timeout_s)
                except grpc.RpcError as error:
                    if hedge_s is not None and _code(error) == grpc.StatusCode.DEADLINE_EXCEEDED:
                        hedge_s = None  # Rule 7: once; the silent server is asked again too
                        targets = [a for a in connection.addresses if a not in failed]
                        targets = targets if len(targets) > 1 else list(connection.addresses)
                        continue
                    outcomes = [(targets[0], error)]
                else:
                    connection.leader_guess = targets[0]
                    if attempts == 1:
                        connection.note_latency(time.monotonic() - started)
                    return CallResult(reply, attempts, redirects, first_failure_ns, targets[0])
            else:  # Rule 5: a fail-over is under way: ask every candidate at once
                won, outcomes = self._fan_out(method, request, targets)
                if won is not None:
                    connection.leader_guess = won[0]
                    return CallResult(won[1], attempts, redirects, first_failure_ns, won[0])
            first_failure_ns = first_failure_ns or time.monotonic_ns()
            hint = None
            for address, failure in outcomes:
                last_error = f"{address}: {_code(failure).name}: {_details(failure)}"
                self._check_retryable(failure, last_error, deadline, attempts, connection)
                address_hint = self._note_failure(address, failure, failed)
                if hint is None and address_hint not in (None, address):
                    hint = address_hint
                asked.add(address)
            hedge_s = None  # after a failure the fan-out or a redirect follows: no hedge
            if hint is not None:
                redirects += 1
                targets = [hint]
                continue
            targets = [a for a in connection.addresses if a not in failed and a not in asked]
            if not targets:  # Rule 4: every server had its turn since the last sleep
                asked.clear()
                time.sleep(backoff_s)
                fast = time.monotonic_ns() - first_failure_ns < BACKOFF_FAST_WINDOW_S * 1e9
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S if fast else BACKOFF_SLOW_MAX_S)
                targets = [a for a in connection.addresses if a not in failed]
                if not targets:  # all failed lately: forget it and ask them all again
                    failed.clear()
                    targets = list(connection.addresses)

    def _check_retryable(self, error: grpc.RpcError, last_error: str, deadline: float,
                         attempts: int, connection: ClusterConnection) -> None:
        """Rule 2: raise for a final answer, an error no retry can mend, or the give-up time."""
        code = _code(error)
        if code in FINAL_CODES:  # retrying the same seq gets the same answer
            raise RequestRejected(_final_text(code, _details(error))) from None
        if code not in RETRYABLE_CODES and code != grpc.StatusCode.FAILED_PRECONDITION:
            raise ExchangeUnreachable(f"request failed: {last_error}") from None
        if time.monotonic() >= deadline:
            raise ExchangeUnreachable(
                f"no leader accepted the request within {self.give_up_s} s "
                f"({attempts} attempts); last error: {last_error}"
                f"{connection_hint(connection, last_error)}"
            ) from None

    @staticmethod
    def _note_failure(target: str, error: grpc.RpcError, failed: dict[str, int]) -> str | None:
        """Rule 4: remember a server that failed; return the redirect worth following, if any
        (not one to a server that failed in the last ``FAILED_FORGET_S``)."""
        now_ns = time.monotonic_ns()
        code = _code(error)
        if code in RETRYABLE_CODES:
            failed[target] = now_ns
        forget_ns = now_ns - int(FAILED_FORGET_S * 1e9)
        for address in [a for a, at in failed.items() if at < forget_ns]:
            del failed[address]
        hint = _leader_hint(error) if code == grpc.StatusCode.FAILED_PRECONDITION else None
        return hint if hint is not None and hint not in failed else None

    def _fan_out(
        self,
        method: Callable[[pb_grpc.ExchangeStub], Callable[..., pb.OrderReply]],
        request: RequestT,
        targets: Sequence[str],
    ) -> tuple[tuple[str, pb.OrderReply] | None, list[tuple[str, grpc.RpcError]]]:
        """Rule 5: send ``request`` (same seq) to every target at once; return the first
        answer with the server that gave it (the other calls are cancelled), or, when none
        answered, every target's error."""
        finished = threading.Event()
        lock = threading.Lock()
        won: list[tuple[str, pb.OrderReply]] = []
        errors: list[tuple[str, grpc.RpcError]] = []
        calls: list[grpc.Future[Any]] = []

        def landed(address: str, call: grpc.Future[Any]) -> None:
            with lock:
                if call.cancelled():
                    error: grpc.RpcError | None = _Cancelled()
                else:
                    failure = call.exception()
                    error = failure if isinstance(failure, grpc.RpcError) else None
                    if failure is not None and error is None:
                        error = _Cancelled(str(failure))
                if error is None:
                    won.append((address, call.result()))
                    finished.set()
                else:
                    errors.append((address, error))
                    if len(errors) == len(targets):
                        finished.set()

        for address in targets:
            multicallable: Any = method(self.connection.stub(address))
            call: grpc.Future[Any] = multicallable.future(request, timeout=self.attempt_timeout_s)
            calls.append(call)
            call.add_done_callback(functools.partial(landed, address))
        finished.wait(self.attempt_timeout_s + FAN_OUT_GRACE_S)
        for call in calls:
            call.cancel()  # the losers: a held request is released on the server
        with lock:
            if won:
                return won[0], []
            missing = [a for a in targets if a not in {e[0] for e in errors}]
            return None, errors + [(a, _Cancelled("no answer")) for a in missing]
