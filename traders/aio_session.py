"""A trader's OrderSession on an event loop: ``traders.session``'s rules over ``grpc.aio``.

Rule 1: the same contract as ``traders.session.SessionClient`` (its Rules 1-5): every order gets
        the client's next seq once, stays in ``unanswered`` until answered, and every reconnect
        resends all of them in order with the same seqs; FAILED_PRECONDITION with
        ``leader-address`` reconnects there, the retryable ends (and a stall: no report within
        the adaptive stall limit while orders are unanswered) try the next server after a
        growing back-off, the final codes raise ``RequestRejected``, and ``give_up_s`` without
        progress raises ``ExchangeUnreachable``. The orders are built by the same
        ``OrderBuilder``.
Rule 2: one coroutine uses a session; many sessions share one loop and its channels
        (``LoopChannels``, made on the loop that uses them). The stall limit is a timeout on the
        read itself, so no watchdog thread is needed.
Rule 3: a write to a stream that has already ended is dropped: the read that follows reports
        the stream's end, and the reconnect resends the dropped orders with the rest. A write
        that races the server's end of the stream makes ``grpc.aio`` replace the server's status
        with its own INTERNAL "Internal error from Core" (grpc/aio/_call.py ``_write``): that
        end is retried at once on the same server, whose answer to the reconnect (everything
        unanswered in one message, then a read: no race) is the real status.

Why: a thread per trader and the synchronous gRPC API spent most of the load generator's time
handing messages between threads; one loop carries every session of the process
(measurements in docs/exchange.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import grpc

from exchange.proto import exchange_pb2 as pb
from exchange.proto import exchange_pb2_grpc as pb_grpc
from exchange.tls import ClientTls, open_aio_channel
from traders.client import (
    ATTEMPT_TIMEOUT_S,
    BACKOFF_INITIAL_S,
    BACKOFF_MAX_S,
    CHANNEL_OPTIONS,
    GIVE_UP_S,
    next_address,
)
from traders.session import SessionBook, classify_stream_end

MASKED_STATUS = "Internal error from Core"  # Rule 3: what grpc.aio says after a failed send


class LoopChannels:
    """Channels of one event loop to a cluster's servers, and the loop's leader guess."""

    def __init__(self, addresses: Sequence[str], tls: ClientTls | None = None,
                 leader_guess: str | None = None) -> None:
        assert addresses, "at least one server address"
        self.addresses = tuple(dict.fromkeys(addresses))
        self.tls = tls
        self.leader_guess = leader_guess or self.addresses[0]
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, pb_grpc.ExchangeStub] = {}

    def stub(self, address: str) -> pb_grpc.ExchangeStub:
        """The stub of ``address``, its channel opened on first use (on the running loop)."""
        stub = self._stubs.get(address)
        if stub is None:
            channel = self._channels[address] = open_aio_channel(address, self.tls,
                                                                 CHANNEL_OPTIONS)
            stub = self._stubs[address] = pb_grpc.ExchangeStub(channel)  # type: ignore[no-untyped-call]
        return stub

    def next_address(self, address: str) -> str:
        return next_address(self.addresses, address)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
        self._stubs.clear()


class AsyncSessionClient(SessionBook):
    """One trader's session on an event loop (see module rules)."""

    def __init__(self, channels: LoopChannels, client_id: int, first_seq: int = 1,
                 give_up_s: float = GIVE_UP_S, stall_s: float = ATTEMPT_TIMEOUT_S) -> None:
        SessionBook.__init__(self, client_id, first_seq, channels.leader_guess, give_up_s,
                             stall_s)
        self.channels = channels
        self._call: grpc.aio.StreamStreamCall[pb.SessionRequest, pb.SessionResponse] | None = None

    async def send(self, orders: list[pb.SessionOrder] | pb.SessionRequest) -> None:
        """Send one order list (an ``order_list`` built in place, or orders); answers come from
        ``receive``."""
        message = self._note_sent(orders)
        if self._call is None:
            await self._connect()  # sends everything unanswered, these orders included
            return
        await self._write(message)

    async def _write(self, message: pb.SessionRequest) -> None:
        call = self._call
        assert call is not None
        try:
            await call.write(message)
        except (grpc.RpcError, asyncio.InvalidStateError):
            pass  # Rule 3: the next read reports the end; the reconnect resends this

    async def receive(self) -> list[pb.OrderReply]:
        """The next reports (answers in send order, unsolicited fills); reconnects and resends
        as Rule 1 says. Precondition: something is unanswered."""
        give_up_at = 0.0
        backoff_s = BACKOFF_INITIAL_S
        while True:
            if self._call is None:
                await self._connect()
            assert self._call is not None
            started = time.monotonic()
            again_here = False  # Rule 3
            try:
                async with asyncio.timeout(self.stall_limit_s):  # a timer, not a task
                    response = await self._call.read()
            except TimeoutError:
                error_text, hint, final = (f"no report within {self.stall_limit_s * 1000:.0f} "
                                           "ms (stalled)"), None, False
            except grpc.RpcError as error:
                error_text, hint, final = classify_stream_end(error)
                if _masked(error):  # Rule 3: ask the same server again for its real status
                    again_here, final = True, False
            else:
                if isinstance(response, pb.SessionResponse):  # else grpc.aio.EOF
                    self.note_wait(time.monotonic() - started)
                    return self._note_reports(response)
                error_text, hint, final = "stream ended without a status", None, False
            self._disconnect()
            give_up_at = self._note_end(error_text, final, give_up_at, self.channels)
            if again_here or (hint is not None and hint != self.target):
                self.target = hint or self.target
                continue
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
            self.target = self.channels.next_address(self.target)

    async def _connect(self) -> None:
        """Open a stream to ``target`` and resend every unanswered order, in order."""
        self._call = self.channels.stub(self.target).OrderSession()
        for message in self._resent():
            await self._write(message)
        self.channels.leader_guess = self.target

    def _disconnect(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
            self.reconnects += 1

    def close(self) -> None:
        """Drop the stream (unanswered orders stay unanswered)."""
        self._disconnect()


def _masked(error: grpc.RpcError) -> bool:
    return (isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.INTERNAL
            and error.details() == MASKED_STATUS)


__all__ = ["AsyncSessionClient", "LoopChannels"]
