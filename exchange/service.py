"""The gRPC face of one exchange server: status codes, trailing metadata, streams, health.

Rule 1: no request can crash the server: bad input -> INVALID_ARGUMENT with a message; follower ->
        FAILED_PRECONDITION with trailing metadata ``leader-address``/``leader-id``; paused, no
        leader or a timeout -> UNAVAILABLE; anything unexpected is logged and answered INTERNAL.
Rule 3: an OrderSession runs on the server's event loop as two coroutines: the handler writes
        reports (one SessionResponse per wake-up of the session's ``LoopSignal``, as many
        reports as are ready), a reader task reads order lists, validates them and queues them
        for proposal; errors of either end the stream with the status of Rule 1
        (``SessionError.code`` for session errors), after the reports that were ready.
Rule 6: order entry (SubmitOrder, Cancel, Replace, OrderSession) and the market-data streams
        run on the event loop (``exchange.grpc_loop``; node Rule 12; a stream's reader is woken
        by its session's or subscription's ``on_ready``); book snapshots and status run on the
        server's worker threads.
Rule 2: standard health checking (grpc.health.v1): service ``""`` is SERVING while the server is
        neither paused, recovering (fetching a snapshot or catching up the log) nor starting
        (loading its data directory, waiting for its peers); service
        ``ORDER_ENTRY_SERVICE`` is SERVING only while this server accepts order entry (leader or
        unreplicated, not paused), so a load balancer can find the leader.
Rule 4: with mutual TLS (``authorizer`` set; ``exchange.tls`` Rules 2-3) every RPC needs a caller
        with a certificate (UNAUTHENTICATED otherwise), and an order-entry request for a client
        id the certificate does not allow is refused with PERMISSION_DENIED naming the id, before
        it is proposed: a unary request alone, a session message as a whole (none of its orders
        runs) and the session with it. Without an authorizer nothing is checked (plaintext, or
        TLS without client certificates).
Rule 5: a refused request (node ``RequestRefused``: unknown symbol, a per-server limit) gets the
        status it names (INVALID_ARGUMENT, RESOURCE_EXHAUSTED) with its one-line message; a
        unary request the state machine refused (``Reply.refusal``: unknown symbol, a
        resting-order limit) gets INVALID_ARGUMENT / RESOURCE_EXHAUSTED with the stored reason,
        also when replayed. In an order session, such an order is answered with a ``rejected``
        report giving the reason (the stream goes on), and the per-client in-flight bound ends
        the session with RESOURCE_EXHAUSTED, like flow control.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, NoReturn, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2

from exchange import convert
from exchange.grpc_checked import UndecodableRequest
from exchange.loop_signal import LoopSignal
from exchange.market_data import MARKET_DATA_BATCH_MAX, StreamEnded, Update
from exchange.node import (
    ExchangeNode,
    NodeStatus,
    NotLeaderError,
    RequestRefused,
    ServerUnavailable,
)
from exchange.proto import exchange_pb2 as pb
from exchange.proto import exchange_pb2_grpc as pb_grpc
from exchange.session import (
    SESSION_IN_FLIGHT_MAX,
    SESSION_MESSAGE_ORDERS_MAX,
    BadSessionMessage,
    SessionError,
    SessionFinished,
    Slot,
)
from exchange.session import (
    OrderSession as ServerSession,
)
from exchange.state_machine import REFUSED_EXHAUSTED, REFUSED_INVALID, Reply
from exchange.tls import Authorizer, Identity
from orderbook import Command

ORDER_ENTRY_SERVICE = "mu.exchange.Exchange"
LEADER_ADDRESS_KEY = "leader-address"
LEADER_ID_KEY = "leader-id"
SNAPSHOT_LEVELS_MAX = 10_000

log = logging.getLogger("exchange.service")


class PermissionRefused(SessionError):
    """A session message names a client id its caller's certificate does not allow (Rule 4)."""

    code = "PERMISSION_DENIED"


RequestT = TypeVar("RequestT")


NO_CERTIFICATE = "no client certificate: this exchange requires mutual TLS"


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")


async def _abort_async(context: Any, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")


class ExchangeService(pb_grpc.ExchangeServicer):
    """Order entry, market data, snapshots and status over one ``ExchangeNode``."""

    def __init__(self, node: ExchangeNode, authorizer: Authorizer | None = None) -> None:
        self.node = node
        self.authorizer = authorizer

    def _caller(self, context: Any) -> tuple[bool, Identity | None]:
        """(allowed, the caller's identity) under Rule 4: not allowed when mutual TLS is on and
        the caller has no certificate; identity None when nothing is checked."""
        if self.authorizer is None:
            return True, None
        caller = self.authorizer.caller(context)
        return caller is not None, caller

    def _authenticated(self, context: grpc.ServicerContext) -> Identity | None:
        """The caller's identity (Rule 4); aborts UNAUTHENTICATED if it has none."""
        allowed, caller = self._caller(context)
        if not allowed:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, NO_CERTIFICATE)
        return caller

    async def _authenticated_async(self, context: Any) -> Identity | None:
        """``_authenticated`` for a handler on the event loop."""
        allowed, caller = self._caller(context)
        if not allowed:
            await _abort_async(context, grpc.StatusCode.UNAUTHENTICATED, NO_CERTIFICATE)
        return caller

    async def _order_entry(
        self,
        request: RequestT,
        context: Any,
        to_command: Callable[[RequestT], tuple[int, int, Command]],
    ) -> pb.OrderReply:
        try:
            client_id, seq, command = to_command(request)
        except convert.BadRequest as exc:
            await _abort_async(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if self.authorizer is not None:
            refusal = self.authorizer.refusal(self.authorizer.caller(context), client_id)
            if refusal:
                await _abort_async(context, grpc.StatusCode.PERMISSION_DENIED, refusal)
        try:
            reply: Reply = await self.node.execute_async(client_id, seq, command)
        except (NotLeaderError, ServerUnavailable) as exc:
            await _abort_order_entry(context, exc)
        except RequestRefused as exc:
            await _abort_async(context, getattr(grpc.StatusCode, exc.code), str(exc))
        except Exception:
            log.exception("order entry failed unexpectedly (client %d seq %d)", client_id, seq)
            await _abort_async(context, grpc.StatusCode.INTERNAL,
                               "internal error; see the server log")
        if reply.refusal == REFUSED_INVALID:
            await _abort_async(context, grpc.StatusCode.INVALID_ARGUMENT, reply.error)
        if reply.refusal == REFUSED_EXHAUSTED:
            await _abort_async(context, grpc.StatusCode.RESOURCE_EXHAUSTED, reply.error)
        return convert.reply_message(reply, self.node.replica_id)

    async def OrderSession(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.SessionRequest], context: Any
    ) -> AsyncIterator[pb.SessionResponse]:
        """Rule 3: this coroutine writes; ``_read_session`` reads as a task of its own."""
        node = self.node
        caller = await self._authenticated_async(context)
        ready = LoopSignal()
        try:
            if node.order_entry_may_block():  # node Rule 12: wait for an election off the loop
                session = await asyncio.get_running_loop().run_in_executor(
                    None, node.open_session, SESSION_IN_FLIGHT_MAX, ready.set)
            else:
                session = node.open_session(on_ready=ready.set)
        except (NotLeaderError, ServerUnavailable) as exc:
            await _abort_order_entry(context, exc)
        except RequestRefused as exc:
            await _abort_async(context, getattr(grpc.StatusCode, exc.code), str(exc))
        reader = asyncio.ensure_future(self._read_session(request_iterator, session, caller))
        replica_id = node.replica_id
        session_response = convert.session_response
        try:
            while True:
                try:
                    taken = session.take()
                except SessionFinished:
                    return
                except (NotLeaderError, ServerUnavailable) as exc:
                    await _abort_order_entry(context, exc)
                except SessionError as exc:
                    await _abort_async(context, getattr(grpc.StatusCode, exc.code), str(exc))
                if taken is None:
                    await ready.wait()
                    continue
                answers, unsolicited = taken
                if answers:
                    try:  # durable before acknowledged (node Rule 8)
                        node.acknowledge(max(reply.log_index for reply in answers))
                    except ServerUnavailable as exc:
                        await _abort_order_entry(context, exc)
                yield session_response(answers, unsolicited, replica_id)
        finally:
            reader.cancel()
            session.fail(SessionFinished("stream closed"))
            node.close_session(session)

    async def _read_session(self, requests: AsyncIterator[pb.SessionRequest],
                            session: ServerSession, caller: Identity | None) -> None:
        """Read order lists, validate, authorize (Rule 4), queue for proposal, in order (Rule
        3)."""
        node = self.node
        loop = asyncio.get_running_loop()
        try:
            async for message in requests:
                orders = message.orders
                if not 1 <= len(orders) <= SESSION_MESSAGE_ORDERS_MAX:
                    raise BadSessionMessage(
                        f"a session message carries 1..{SESSION_MESSAGE_ORDERS_MAX} orders "
                        f"(SESSION_MESSAGE_ORDERS_MAX), got {len(orders)}")
                if self.authorizer is not None:
                    self._authorize_orders(caller, orders)
                if node.order_entry_may_block():  # node Rule 12
                    await loop.run_in_executor(None, self._queue_orders, session, orders)
                else:  # batching Rule 6: with the loop turn's other requests
                    self._queue_orders(session, orders, loop.call_soon)
            session.finish_input()
        except (NotLeaderError, ServerUnavailable, SessionError) as exc:
            session.fail(exc)
        except RequestRefused as exc:
            refused = SessionError(str(exc))
            refused.code = exc.code
            session.fail(refused)
        except UndecodableRequest as exc:
            session.fail(BadSessionMessage(str(exc)))
        except grpc.RpcError:  # grpc.aio's errors too
            session.fail(SessionFinished("stream cancelled"))
        except Exception as exc:
            log.exception("order session failed unexpectedly")
            session.fail(SessionError(f"internal error; see the server log ({exc!r})"))

    def _authorize_orders(self, caller: Identity | None,
                          orders: Iterable[pb.SessionOrder]) -> None:
        """Rule 4: refuse the whole message if any order names a client id the caller may not
        use (an order without a client id is left to validation: INVALID_ARGUMENT)."""
        assert self.authorizer is not None
        for order in orders:
            client_id = convert.session_ids(order)[0]
            refusal = self.authorizer.refusal(caller, client_id) if client_id else ""
            if refusal:
                raise PermissionRefused(refusal)

    def _queue_orders(self, session: ServerSession, orders: Iterable[pb.SessionOrder],
                      schedule: Callable[[Callable[[], None]], object] | None = None) -> None:
        orders = list(orders)
        slots = session.admit(len(orders))
        requests: list[tuple[Slot, int, int, bytes]] = []
        for slot, order in zip(slots, orders, strict=True):
            try:
                client_id, seq, body, symbol = convert.session_order(order)
                if session.client_id != client_id:
                    if session.client_id:
                        raise convert.BadRequest(
                            f"this session carries client {session.client_id}; "
                            f"got client_id {client_id}")
                    self.node.bind_session(session, client_id)
                why = self.node.symbol_refusal(symbol)
                if why is not None:
                    raise convert.BadRequest(why)
            except convert.BadRequest as exc:
                client_id, seq = convert.session_ids(order)
                slot.deliver(Reply(client_id, seq, "", (), 0, error=f"invalid request: {exc}"))
                continue
            requests.append((slot, client_id, seq, body))
        if requests:
            self.node.submit_session(session, requests, schedule)

    async def SubmitOrder(  # noqa: N802 (gRPC method name)
        self, request: pb.SubmitOrderRequest, context: Any
    ) -> pb.OrderReply:
        return await self._order_entry(request, context, convert.submit_command)

    async def Cancel(  # noqa: N802
        self, request: pb.CancelRequest, context: Any
    ) -> pb.OrderReply:
        return await self._order_entry(request, context, convert.cancel_command)

    async def Replace(  # noqa: N802
        self, request: pb.ReplaceRequest, context: Any
    ) -> pb.OrderReply:
        return await self._order_entry(request, context, convert.replace_command)

    async def StreamMarketData(  # noqa: N802
        self, request: pb.MarketDataRequest, context: Any
    ) -> AsyncIterator[pb.MarketDataUpdate]:
        async for updates in self._market_data(request, context, 1):
            update, conflated = updates[0]
            yield convert.market_data_message(update.index, update.event, conflated)

    async def StreamMarketDataBatches(  # noqa: N802
        self, request: pb.MarketDataRequest, context: Any
    ) -> AsyncIterator[pb.MarketDataBatch]:
        """Every update that is ready, in one message: what keeps up with streaming order entry."""
        message = convert.market_data_message
        async for updates in self._market_data(request, context, MARKET_DATA_BATCH_MAX):
            conflated_count = sum(1 for _, conflated in updates if conflated)
            yield pb.MarketDataBatch(
                updates=[message(u.index, u.event, conflated) for u, conflated in updates],
                conflated_count=conflated_count,
            )

    async def _market_data(
        self, request: pb.MarketDataRequest, context: Any, count_max: int
    ) -> AsyncIterator[list[tuple[Update, bool]]]:
        """Rule 6: a subscription read on the event loop, woken by its ``on_ready``
        (exchange.market_data Rule 5); the stream ends when the client leaves (cancelled)."""
        await self._authenticated_async(context)
        for symbol in request.symbols:
            try:
                convert.check_symbol(symbol, required=True)
            except convert.BadRequest as exc:
                await _abort_async(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        ready = LoopSignal()
        try:
            subscription = self.node.hub.subscribe(request.symbols, request.include_depth,
                                                   ready.set)
        except StreamEnded as exc:
            await _abort_async(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        try:
            while True:
                try:
                    updates = subscription.next_updates(count_max)
                except StreamEnded as exc:
                    await _abort_async(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
                if updates:
                    yield updates
                else:
                    await ready.wait()
        finally:
            self.node.hub.unsubscribe(subscription)

    def GetBookSnapshot(  # noqa: N802
        self, request: pb.BookSnapshotRequest, context: grpc.ServicerContext
    ) -> pb.BookSnapshot:
        self._authenticated(context)
        try:
            convert.check_symbol(request.symbol, required=True)
        except convert.BadRequest as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        levels = min(request.levels, SNAPSHOT_LEVELS_MAX) or None
        snapshot = self.node.book_snapshot(request.symbol, levels)
        if snapshot is None:
            return pb.BookSnapshot(
                symbol=request.symbol,
                applied_index=self.node.state.applied_index,
                replica_id=self.node.replica_id,
            )
        bids, asks, last_trade_price, applied_index = snapshot
        return pb.BookSnapshot(
            symbol=request.symbol,
            bids=convert.price_levels(bids),
            asks=convert.price_levels(asks),
            last_trade_price=last_trade_price,
            applied_index=applied_index,
            replica_id=self.node.replica_id,
        )

    def GetStatus(  # noqa: N802
        self, request: pb.StatusRequest, context: grpc.ServicerContext
    ) -> pb.Status:
        self._authenticated(context)
        status = self.node.status()
        return pb.Status(
            replica_id=status.replica_id,
            role=status.role,
            error=status.error,
            leader_id=status.leader_id or 0,
            leader_address=status.leader_address,
            commit_index=status.commit_index,
            applied_index=status.applied_index,
            book_digest=status.book_digest.hex(),
            state_digest=status.state_digest.hex(),
            symbols=status.symbols,
            orders_applied=status.executed_count,
            duplicates_replayed=status.duplicate_count,
            replicas=status.replicas,
            instruments=status.instruments,
            warning=status.warning,
            **_recovery_fields(status),
        )


def _recovery_fields(status: NodeStatus) -> dict[str, int]:
    recovery = status.recovery
    if recovery is None:
        return {}
    return {"recovery_snapshot_index": recovery.snapshot_index,
            "recovery_bytes_done": recovery.bytes_done,
            "recovery_bytes_total": recovery.bytes_total,
            "recovery_entries_left": recovery.entries_left}


async def _abort_order_entry(context: Any, exc: NotLeaderError | ServerUnavailable) -> NoReturn:
    """FAILED_PRECONDITION + leader metadata for a follower, UNAVAILABLE otherwise (Rule 1)."""
    if isinstance(exc, NotLeaderError):
        metadata: list[tuple[str, str]] = []
        if exc.leader_address:
            metadata.append((LEADER_ADDRESS_KEY, exc.leader_address))
        if exc.leader_id is not None:
            metadata.append((LEADER_ID_KEY, str(exc.leader_id)))
        context.set_trailing_metadata(tuple(metadata))
        await _abort_async(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    await _abort_async(context, grpc.StatusCode.UNAVAILABLE, str(exc))


class HealthReporter:
    """Keeps grpc.health.v1 statuses in line with the node's role (Rule 2)."""

    def __init__(self, node: ExchangeNode) -> None:
        self.node = node
        self.servicer = health.HealthServicer()
        self._last: tuple[bool, bool] | None = None

    def refresh(self) -> None:
        """Re-read the node's role; cheap, called periodically and on pause/resume."""
        role = self.node.role()
        alive = role not in ("paused", "recovering", "starting")
        order_entry = role in ("leader", "standalone")
        if (alive, order_entry) == self._last:
            return
        self._last = (alive, order_entry)
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        self.servicer.set("", serving if alive else not_serving)
        self.servicer.set(ORDER_ENTRY_SERVICE, serving if order_entry else not_serving)

    def shutdown(self) -> None:
        self.servicer.enter_graceful_shutdown()
