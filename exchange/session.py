"""One OrderSession's state on the server: in-order reports, flow control, unsolicited fills.

Rule 1: reports leave in request order: every admitted request gets a slot at the tail of
        ``pending``; a slot is filled by the apply path (or at once for a request answered without
        proposing: invalid, or already in the dedup table), and ``take`` hands out only the filled
        slots at the head. Unsolicited fills (``unsolicited``) are handed out with them, in apply
        order; they answer no request.
Rule 2: flow control: at most ``in_flight_max`` requests are admitted and not yet taken; a message
        that would exceed it fails the session with ``FlowControlExceeded`` (RESOURCE_EXHAUSTED).
Rule 3: a failed session (its proposal failed, leadership moved, flow control, a bad message)
        first hands out the reports already filled at the head, then raises its error from
        ``take``; its requests still queued for a proposal are dropped (batching Rule 3), so a
        client that reconnects and resends everything unanswered gets each request executed once,
        in order.
Rule 4: ``deliver`` and ``add_unsolicited`` are called by the apply path under the node's lock
        and only take this session's own lock briefly (lock order: node, then session).
Rule 5: ``take`` never blocks; whatever may give it something (a filled slot, fills, an error,
        the half-close) calls ``on_ready``: the service's writer coroutine waits on it
        (``exchange.loop_signal``) and then takes.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from exchange.dedup import DEDUP_SEQS_PER_CLIENT_MAX
from exchange.limits import SESSION_IN_FLIGHT_MAX
from exchange.state_machine import Reply

SESSION_MESSAGE_ORDERS_MAX = 50  # orders in one SessionRequest (an order list)
SESSION_REPORTS_PER_MESSAGE_MAX = 200  # reports in one SessionResponse
assert SESSION_MESSAGE_ORDERS_MAX <= SESSION_IN_FLIGHT_MAX < DEDUP_SEQS_PER_CLIENT_MAX
SESSION_UNSOLICITED_MAX = 10_000  # fills queued for a client that does not read its stream


class SessionError(Exception):
    """Ends a session; ``code`` names the gRPC status the service answers with."""

    code = "INTERNAL"


class FlowControlExceeded(SessionError):
    code = "RESOURCE_EXHAUSTED"


class BadSessionMessage(SessionError):
    code = "INVALID_ARGUMENT"


class SessionFinished(Exception):
    """The client half-closed its stream and every request has been answered."""


class Slot:
    """One admitted request's place in its session's report order (a batching ``Sink``)."""

    __slots__ = ("reply", "session")

    def __init__(self, session: OrderSession) -> None:
        self.session = session
        self.reply: Reply | None = None

    @property
    def cancelled(self) -> bool:
        return self.session.error is not None

    def deliver(self, reply: Reply) -> None:
        """Fill this slot and wake the session's writer (the apply path fills slots of a whole
        entry first and wakes each session once: ``OrderSession.wake``)."""
        self.reply = reply
        self.session.wake()

    def fail(self, error: Exception) -> None:
        self.session.fail(error)


class OrderSession:
    """The server side of one OrderSession stream (see module rules)."""

    def __init__(self, in_flight_max: int = SESSION_IN_FLIGHT_MAX,
                 on_ready: Callable[[], None] | None = None) -> None:
        assert in_flight_max >= 1, in_flight_max
        self.in_flight_max = in_flight_max
        self.on_ready = on_ready  # Rule 5
        self.client_id = 0  # bound by the first request (0 = none yet)
        self._lock = threading.Lock()
        self._pending: deque[Slot] = deque()
        self._unsolicited: list[Reply] = []
        self.error: Exception | None = None
        self._input_done = False
        self.requests_admitted = 0

    def admit(self, count: int) -> list[Slot]:
        """Slots for the next ``count`` requests, in order (Rule 2); raises the session's error."""
        assert count >= 1
        with self._lock:
            if self.error is not None:
                raise self.error
            if len(self._pending) + count > self.in_flight_max:
                error = FlowControlExceeded(
                    f"more than {self.in_flight_max} requests in flight on one session "
                    f"(SESSION_IN_FLIGHT_MAX): {len(self._pending)} unanswered + {count} new; "
                    f"wait for reports before sending more"
                )
                self._fail_locked(error)
                raise error
            slots = [Slot(self) for _ in range(count)]
            self._pending.extend(slots)
            self.requests_admitted += count
            return slots

    def add_unsolicited(self, reply: Reply) -> None:
        """Queue a fill of one of the client's resting orders (apply path, Rule 4); the caller
        wakes the session (``wake``) once it has queued the whole entry's fills."""
        with self._lock:
            if len(self._unsolicited) >= SESSION_UNSOLICITED_MAX:
                self._fail_locked(FlowControlExceeded(
                    f"{SESSION_UNSOLICITED_MAX} unsolicited fills queued: the client does not "
                    f"read its session"))
                return
            self._unsolicited.append(reply)

    def wake(self) -> None:
        """Rule 5: something may be ready for ``take``."""
        if self.on_ready is not None:
            self.on_ready()

    def fail(self, error: Exception) -> None:
        with self._lock:
            self._fail_locked(error)

    def _fail_locked(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self.wake()

    def finish_input(self) -> None:
        """The client half-closed: end the stream once every request is answered."""
        with self._lock:
            self._input_done = True
        self.wake()

    def take(self) -> tuple[list[Reply], list[Reply]] | None:
        """(answers in request order, unsolicited fills) ready now, else ``None`` (Rule 5).
        Raises the session's error once nothing ready is left (Rule 3) and ``SessionFinished``
        after a half-close with everything answered."""
        with self._lock:
            pending = self._pending
            answers: list[Reply] = []
            while pending and len(answers) < SESSION_REPORTS_PER_MESSAGE_MAX:
                reply = pending[0].reply
                if reply is None:
                    break
                answers.append(reply)
                pending.popleft()
            unsolicited = self._unsolicited
            if answers or unsolicited:
                self._unsolicited = []
                return answers, unsolicited
            if self.error is not None:
                raise self.error
            if self._input_done and not pending:
                raise SessionFinished()
            return None

    @property
    def in_flight(self) -> int:
        return len(self._pending)


__all__ = [
    "SESSION_IN_FLIGHT_MAX",
    "SESSION_MESSAGE_ORDERS_MAX",
    "BadSessionMessage",
    "FlowControlExceeded",
    "OrderSession",
    "SessionError",
    "SessionFinished",
    "Slot",
]
