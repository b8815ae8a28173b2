"""One exchange server's core: order entry through consensus, the apply path, reads and pausing.

Rule 1: state changes only in ``on_commit`` (replicated mode: called by the consensus pump, in log
        order, exactly once per index, on every replica) or, unreplicated, in ``execute`` itself;
        both run under ``self._lock``, the only lock around the state machine.
Rule 2: the leader answers an order-entry request only once its entry is committed AND applied
        here: the handler registers a waiter for ``(client_id, seq)`` before proposing and the
        apply path hands it the reply. A request whose reply is already in the dedup table is
        answered from the table without proposing (it is committed and applied). On the leader
        consensus delivers a committed entry in the proposing thread before ``propose``
        returns (consensus pump Rule 6), so the handler usually finds its reply ready.
Rule 3: a proposal that raised ``NotLeader`` or timed out may still be committed; the client retries
        with the same seq and the replicated dedup table answers it (exactly-once).
Rule 4: a follower, a paused server or a server without a leader never proposes: it raises
        ``NotLeaderError`` (with the leader's address when known) or ``ServerUnavailable``. A
        request that finds no leader known (an election is running) first waits up to
        ``LEADER_WAIT_S`` for one (``leader_changed``, rung by the replica's leader-change
        callback): it is then executed here if this server won, or redirected to the winner,
        instead of sending the trader round the servers while the election runs (issue 14).
        A request that finds a leader known but suspected (silent for a few beats, consensus
        election Rule 10) waits the same way, re-reading the suspicion every
        ``SUSPECT_RECHECK_S``: a redirect to a leader that is gone costs the trader a round
        trip for nothing; if the beat resumes, the request is redirected as before.
Rule 5: every proposal goes through the group-commit ``Batcher`` (exchange.batching): unary calls
        and session requests that arrive while a proposal is in flight share the next entry.
        Replies reach their requesters through ``_sinks`` (a unary waiter, a session slot),
        registered under the lock before the request is queued, so none is missed.
Rule 6: a session's unsolicited fills (fills of a client's resting orders caused by another
        client's request) are routed by the owner's client id, which order ids carry
        (``"<client_id>.<seq>"``), to the newest open session of that client on this server.
Rule 7: a server that rejoins (consensus's ``recovery`` is set) reports role ``recovering`` with
        its progress; its state is replaced whole by ``install_snapshot`` (decoded outside the
        lock, swapped under it), and ``take_snapshot`` serves peers a consistent (index, bytes).
Rule 8: with a data directory (``exchange.durability``), ``on_commit`` queues every applied entry
        in the journal (under the lock, so in log order), ``execute`` acknowledges only once the
        reply's entry is durable (sync mode) and refuses order entry once the journal failed,
        and an installed snapshot is stored before delivery resumes. A replicated node
        without a replica yet (``attach`` not called: a server still loading or waiting for its
        peers, role ``starting``) never executes anything.
Rule 9: the instrument list is the replicated one (exchange.state_machine Rule 7). A node given
        a list (``instruments``) makes sure one is fixed before it proposes or applies its first
        order: the leader proposes an instruments entry with its list and waits for it to apply
        (``ensure_instruments``; an unreplicated node applies it itself). An order for a symbol
        outside the fixed list is refused before it is proposed (``RequestRefused``,
        INVALID_ARGUMENT). A node whose list differs from the replicated one serves the
        replicated one and says so (an error line in its log, ``NodeStatus.warning``), so
        replicas never diverge over the list.
Rule 10: at most ``IN_FLIGHT_PER_CLIENT_MAX`` requests of one client wait for their reply on
        this node (unary calls and session requests together: the sinks registered for the
        client, counted where ``_sinks`` changes); beyond it a request is refused
        (``RequestRefused``, RESOURCE_EXHAUSTED) before it is proposed.
Rule 11: a pause (FIFO ``p`` or ``s``) answers at once every request waiting on this server
        (for its reply or for an election) with ``ServerUnavailable``: a trader retries
        elsewhere with the same seq without waiting for the proposal in flight to fail. A
        proposal in flight may still commit; the replicated dedup table answers the retry with
        its reply (Rule 3), so exactly-once holds. A failed unary waiter is ``cancelled``, so
        the batcher drops it unproposed if it was still queued. The pause fails them before
        it writes its log line (a write releases the GIL, and taking it back under load can
        wait milliseconds).
Rule 12: order entry serves threads (``execute``) and the gRPC event loop (``execute_async``)
        with the same steps. The loop's path never blocks the loop for long: what may wait
        (an election, Rule 4; the instrument list, Rule 9: ``order_entry_may_block``) runs on a
        worker thread; a request that the idle batcher proposes at once is proposed and applied
        on the loop's thread; one that queued behind a proposal awaits its reply
        (``exchange.loop_signal``). A durable acknowledgement (Rule 8) syncs on the loop's
        thread: ``fdatasync`` releases the GIL and makes every entry applied by then durable
        at once, so the loop pauses once for all the replies waiting (a hop to a worker thread
        measured durable/memory-only p50 x1.54 against x1.29, and fewer orders/s).

No gRPC here: ``exchange.service`` maps these errors to status codes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from exchange.batching import Batcher, Dropped, Pending
from exchange.config import BATCH_REQUESTS_MAX, PAYLOAD_SIZE_MAX_BYTES
from exchange.limits import (
    IN_FLIGHT_PER_CLIENT_MAX,
    SESSION_IN_FLIGHT_MAX,
    SESSIONS_MAX_DEFAULT,
    SUBSCRIBERS_MAX_DEFAULT,
    limit_message,
)
from exchange.loop_signal import LoopSignal
from exchange.market_data import MarketDataHub, Update
from exchange.session import OrderSession, Slot
from exchange.state_machine import (
    ENTRY_HEADER,
    Applied,
    ExchangeStateMachine,
    Reply,
    encode_batch,
    encode_entry,
    encode_instruments,
)
from orderbook import Command, Filled, encode_command

if TYPE_CHECKING:
    from exchange.durability import Journal

PROPOSE_TIMEOUT_S = 1.0  # consensus propose: far above a commit (~tens of us), below client retry
APPLY_WAIT_S = 2.0  # committed -> applied here; only slow when this replica lost leadership
INSTRUMENTS_POLL_S = 0.001  # how often ensure_instruments looks for its entry to be applied
# Rule 4: how long a request waits for an election to name a leader. An election takes a few
# ms after the silence is detected; a trader's own retry would wait 1-2 ms and then ask again.
LEADER_WAIT_S = 0.05
SUSPECT_RECHECK_S = 0.001  # a held request re-reads the suspicion this often: a scan (Rule 4)

log = logging.getLogger("exchange.node")


class ConsensusReplica(Protocol):
    """The part of ``consensus.Replica`` the exchange uses (see docs/consensus.md)."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def leader_id(self) -> int | None: ...

    @property
    def leader_suspected(self) -> bool: ...

    @property
    def commit_index(self) -> int: ...

    def propose(self, payload: bytes, timeout_s: float = ...) -> int: ...

    @property
    def error(self) -> Exception | None: ...

    @property
    def recovery(self) -> RecoveryView | None: ...

    @property
    def last_recovery(self) -> RecoveryView | None: ...

    def pause(self, announce: bool = True) -> None: ...

    def resume(self) -> None: ...

    def stop(self) -> None: ...


class RecoveryView(Protocol):
    """The part of ``consensus.RecoveryStatus`` the exchange shows."""

    @property
    def snapshot_index(self) -> int: ...

    @property
    def bytes_done(self) -> int: ...

    @property
    def bytes_total(self) -> int: ...

    @property
    def entries_left(self) -> int: ...

    @property
    def elapsed_ns(self) -> int: ...

    @property
    def provider(self) -> int: ...

    @property
    def reason(self) -> str: ...


class NotLeaderError(Exception):
    """This server is a follower; ``leader_address`` is where to go (None when unknown)."""

    def __init__(self, message: str, leader_id: int | None, leader_address: str | None) -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_address = leader_address


class ServerUnavailable(Exception):
    """Order entry cannot be served right now (paused, no leader, timeout); retry elsewhere."""


class RequestRefused(Exception):
    """This request cannot be served as sent: ``code`` names the gRPC status
    (``INVALID_ARGUMENT``: unknown symbol, Rule 9; ``RESOURCE_EXHAUSTED``: a limit, Rule 10)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class NodeStatus:
    replica_id: int
    role: str  # leader | follower | recovering | paused | standalone | failed | starting
    error: str  # why the replica stopped taking part (role failed), else ""
    leader_id: int | None
    leader_address: str
    commit_index: int
    applied_index: int
    book_digest: bytes
    state_digest: bytes
    symbols: tuple[str, ...]
    executed_count: int
    duplicate_count: int
    replicas: int
    recovery: RecoveryView | None = None  # while role is recovering (Rule 7)
    instruments: tuple[str, ...] = ()  # the replicated list, else the configured one (Rule 9)
    warning: str = ""  # the configured list differs from the replicated one (Rule 9)


class _Settable(Protocol):
    def set(self) -> None: ...


DoneT = TypeVar("DoneT", bound=_Settable)


class _Waiter:
    """A unary handler waiting for its entry's reply (a batching ``Sink``). ``done`` (a
    ``threading.Event``, or a ``LoopSignal`` on the event loop: Rule 12) is made only if the reply
    was not there when ``submit`` returned (when idle the handler proposes and applies its own
    entry, so most requests never need one); the fields change under the node's lock."""

    __slots__ = ("done", "error", "reply")

    def __init__(self) -> None:
        self.done: _Settable | None = None
        self.reply: Reply | None = None
        self.error: Exception | None = None

    @property
    def cancelled(self) -> bool:
        return self.error is not None  # answered with an error (a pause): not worth proposing

    def deliver(self, reply: Reply) -> None:
        self.reply = reply
        if self.done is not None:
            self.done.set()

    def fail(self, error: Exception) -> None:
        if self.error is None:  # the first cause is the one the handler reports
            self.error = error
        if self.done is not None:
            self.done.set()


Sink = _Waiter | Slot


class ExchangeNode:
    """Order entry, apply path and reads of one server (replica ``None`` = unreplicated)."""

    def __init__(
        self,
        replica_id: int,
        addresses: dict[int, str],
        replicas: int,
        subscribers_max: int = SUBSCRIBERS_MAX_DEFAULT,
        sessions_max: int = SESSIONS_MAX_DEFAULT,
        instruments: tuple[str, ...] | None = None,
    ) -> None:
        self.replica_id = replica_id
        self.instruments = None if instruments is None else tuple(sorted(instruments))
        self.instruments_warning = ""  # Rule 9
        self._instruments_lock = threading.Lock()  # one instruments proposal at a time
        self._in_flight: dict[int, int] = {}  # Rule 10: client id -> registered sinks
        self.addresses = addresses
        self.replicas = replicas
        self.state = ExchangeStateMachine()
        self.hub = MarketDataHub(subscribers_max)
        self.replica: ConsensusReplica | None = None
        self.paused = False
        self.pause_listeners: list[Callable[[bool], None]] = []
        self._lock = threading.Lock()
        self._sinks: dict[tuple[int, int], list[Sink]] = {}
        self._sessions: dict[int, OrderSession] = {}  # client id -> newest open session
        self.sessions_max = sessions_max
        self._session_count = 0
        self.batcher = Batcher(self._propose, self._batch_failed, BATCH_REQUESTS_MAX,
                               PAYLOAD_SIZE_MAX_BYTES)
        self.journal: Journal | None = None  # Rule 8
        self._leader_known = threading.Condition(threading.Lock())  # Rule 4: leader changes

    def attach(self, replica: ConsensusReplica) -> None:
        """Use ``replica`` for order entry (called once, before the replica starts serving)."""
        assert self.replica is None
        assert self.replicas > 1
        self.replica = replica

    # -- apply path ---------------------------------------------------------------------------

    def on_commit(self, index: int, payload: bytes | memoryview) -> None:
        """Apply committed entry ``index`` (every replica, log order, exactly once: consensus's
        pump thread, or on the leader the proposing thread).

        Market data is offered under the lock so that it leaves in log order whichever thread
        applies; offering never blocks (bounded queues).
        """
        with self._lock:
            self._apply_locked(index, payload)

    def _apply_locked(self, index: int, payload: bytes | memoryview) -> None:
        results = self.state.apply_entry(index, payload)
        if self.journal is not None:
            self.journal.append(index, payload)
        sinks = self._sinks
        sessions = self._sessions
        woken: set[OrderSession] = set()
        market_data = False
        for applied in results:
            reply = applied.reply
            if sinks:
                waiting = sinks.pop((reply.client_id, reply.seq), None)
                if waiting is not None:
                    self._release_locked(reply.client_id, len(waiting))
                    for sink in waiting:
                        if type(sink) is Slot:
                            sink.reply = reply  # woken below, once per session
                            woken.add(sink.session)
                        else:
                            sink.deliver(reply)
            if sessions and reply.events and not reply.duplicate:  # a replay fills nothing
                self._route_fills(reply, sessions, woken)
            if applied.market_data:
                market_data = True
        if woken:
            for session in woken:
                session.wake()
        if market_data and self.hub.subscriber_count > 0:
            self.hub.publish([u for applied in results for u in _updates(applied)])
        if self.state.instruments_index == index:
            self._check_instruments_locked()

    def check_instruments(self) -> None:
        """``_check_instruments_locked`` for a state set from outside (loaded from disk)."""
        with self._lock:
            self._check_instruments_locked()

    def _check_instruments_locked(self) -> None:
        """Say once, loudly, that this node's list is not the replicated one (Rule 9)."""
        fixed = self.state.instruments
        if fixed is None or self.instruments is None or frozenset(self.instruments) == fixed:
            return
        self.instruments_warning = (
            f"this server was started with the instrument list {','.join(self.instruments)} "
            f"but the cluster's list, fixed by log entry {self.state.instruments_index}, is "
            f"{','.join(sorted(fixed))}: it serves the cluster's list; start it with that list")
        log.error("server %d: %s", self.replica_id, self.instruments_warning)

    # -- admission (Rules 9-10) ---------------------------------------------------------------

    def _register_locked(self, client_id: int, seq: int, sink: Sink) -> None:
        """Register ``sink`` for the reply of ``(client_id, seq)``; counted (Rule 10)."""
        self._sinks.setdefault((client_id, seq), []).append(sink)
        in_flight = self._in_flight
        in_flight[client_id] = in_flight.get(client_id, 0) + 1

    def _release_locked(self, client_id: int, count: int) -> None:
        in_flight = self._in_flight
        left = in_flight.get(client_id, 0) - count
        assert left >= 0, (client_id, left)
        if left:
            in_flight[client_id] = left
        else:
            in_flight.pop(client_id, None)

    def _check_in_flight_locked(self, client_id: int, count: int) -> None:
        """Raise ``RequestRefused`` unless ``count`` more requests of the client fit (Rule 10)."""
        if self._in_flight.get(client_id, 0) + count > IN_FLIGHT_PER_CLIENT_MAX:
            raise RequestRefused("RESOURCE_EXHAUSTED", limit_message(
                "IN_FLIGHT_PER_CLIENT_MAX", IN_FLIGHT_PER_CLIENT_MAX,
                f"requests of client {client_id} waiting for their reply on server "
                f"{self.replica_id}"))

    def in_flight_of(self, client_id: int) -> int:
        """Requests of ``client_id`` waiting for their reply here (Rule 10)."""
        with self._lock:
            return self._in_flight.get(client_id, 0)

    def symbol_refusal(self, symbol: str | None) -> str | None:
        """Why an order naming ``symbol`` is refused (Rule 9), or None (also for no symbol)."""
        fixed = self.state.instruments
        if symbol is None or fixed is None or symbol in fixed:
            return None
        return (f"unknown symbol {symbol!r}: this exchange lists {len(fixed)} instruments "
                f"({','.join(sorted(fixed)[:10])}{',...' if len(fixed) > 10 else ''})")

    def ensure_instruments(self) -> None:
        """Rule 9: make sure a list is fixed before the first order; the leader proposes its own
        and returns once it is applied here. Raises like ``execute``. Cheap once fixed."""
        wanted = self.instruments
        if wanted is None or self.state.instruments is not None:
            return
        if self.replica is None:
            if self.replicas == 1:
                with self._lock:
                    if self.state.instruments is None:
                        self._apply_locked(self.state.applied_index + 1,
                                           encode_instruments(wanted))
            return
        with self._instruments_lock:
            if self.state.instruments is not None:
                return
            try:
                index = self._propose(encode_instruments(wanted))
            except (NotLeaderError, ServerUnavailable):
                raise
            except Exception as exc:
                raise self._proposal_error(exc) from None
            deadline = time.monotonic() + APPLY_WAIT_S  # applied in propose (consensus pump
            while self.state.applied_index < index:  # Rule 6); a double may apply later
                if time.monotonic() > deadline:
                    raise ServerUnavailable(f"server {self.replica_id}: the instrument list "
                                            f"(entry {index}) was not applied in time; retry")
                time.sleep(INSTRUMENTS_POLL_S)
        log.warning("server %d: instrument list %s proposed and applied", self.replica_id,
                    ",".join(wanted))

    @staticmethod
    def _route_fills(
        reply: Reply, sessions: dict[int, OrderSession], woken: set[OrderSession]
    ) -> None:
        """Unsolicited fills of other clients' orders to their sessions (Rule 6)."""
        for event in reply.events:
            if type(event) is not Filled:
                continue
            owner_text, _, _ = event.order_id.partition(".")
            if not owner_text.isdigit():
                continue
            owner = int(owner_text)
            if owner == reply.client_id:
                continue
            session = sessions.get(owner)
            if session is not None:
                session.add_unsolicited(
                    Reply(owner, 0, event.order_id, (event,), reply.log_index))
                woken.add(session)

    # -- order entry --------------------------------------------------------------------------

    def acknowledge(self, log_index: int) -> None:
        """Rule 8 for a reply about to be sent: return once ``log_index`` is durable; raise
        ``ServerUnavailable`` when the journal failed. No-op without a journal."""
        journal = self.journal
        if journal is None:
            return
        from exchange.durability import JournalFailed

        try:
            if journal.failure:
                raise JournalFailed(journal.failure)
            journal.wait_durable(log_index)
        except JournalFailed as exc:
            raise ServerUnavailable(f"server {self.replica_id} does not acknowledge orders: "
                                    f"{exc}") from None

    def _check_journal(self) -> None:
        """Rule 8: refuse order entry once the journal failed."""
        journal = self.journal
        if journal is not None and journal.failure:
            raise ServerUnavailable(f"server {self.replica_id} does not acknowledge orders: "
                                    f"{journal.failure}")

    def order_entry_may_block(self) -> bool:
        """Whether order entry here may wait before proposing (Rule 12): for an election to end
        (Rule 4) or for the instrument list to be fixed (Rule 9)."""
        replica = self.replica
        if replica is None or self.paused:
            return False
        return not replica.is_leader or (self.instruments is not None
                                         and self.state.instruments is None)

    def execute(self, client_id: int, seq: int, command: Command) -> Reply:
        """Run one order-entry request exactly once and return its reply (see module rules);
        with a journal, only once its entry is durable (Rule 8)."""
        self._check_journal()
        started = self._start(client_id, seq, command, threading.Event)
        if isinstance(started, Reply):
            reply = started
        else:
            waiter, done = started
            reply = self._waited(client_id, seq, waiter, done.wait(APPLY_WAIT_S))
        self.acknowledge(reply.log_index)
        return reply

    async def execute_async(self, client_id: int, seq: int, command: Command) -> Reply:
        """``execute`` for a handler on the gRPC event loop (Rule 12)."""
        if self.order_entry_may_block():
            return await asyncio.get_running_loop().run_in_executor(
                None, self.execute, client_id, seq, command)
        self._check_journal()
        started = self._start(client_id, seq, command, LoopSignal)
        if isinstance(started, Reply):
            reply = started
        else:
            waiter, signal = started
            reply = self._waited(client_id, seq, waiter, await signal.wait(APPLY_WAIT_S))
        self.acknowledge(reply.log_index)  # Rule 12: the sync on the loop's thread
        return reply

    def _start(self, client_id: int, seq: int, command: Command,
               make_done: Callable[[], DoneT]) -> Reply | tuple[_Waiter, DoneT]:
        """The reply if it is known by the time the request is proposed (``_start_entry``),
        else its waiter and the ``done`` (``make_done()``) the apply path will set."""
        started = self._start_entry(client_id, seq, command)
        if isinstance(started, Reply):
            return started
        with self._lock:
            reply, error = started.reply, started.error
            if reply is None and error is None:
                done = make_done()
                started.done = done
                return started, done
        if error is not None:
            raise error
        assert reply is not None
        return reply

    def _start_entry(self, client_id: int, seq: int, command: Command) -> Reply | _Waiter:
        """Rule 2 up to the proposal: the reply when it is known at once (stored in the dedup
        table; unreplicated: applied here), else the registered waiter, its request submitted
        to the batcher (proposed and applied already when the batcher was idle). A unary call
        on the event loop does not wait for the loop turn's flush (batching Rule 6): one
        request per caller gives it little to batch (8 closed-loop unary traders: 1,598 and
        1,753 orders/s with it, 1,611 and 1,855 without, 2026-12-02 16:1x)."""
        if self.paused:
            raise ServerUnavailable(f"server {self.replica_id} is paused; try another server")
        replica = self.replica
        if replica is None:
            if self.replicas > 1:
                raise ServerUnavailable(f"server {self.replica_id} is starting (loading its "
                                        "data or waiting for its peers); retry")
            return self._execute_unreplicated(client_id, seq, command)
        if not replica.is_leader:
            self._await_leader(replica)
        self.ensure_instruments()
        self._check_symbol(command)
        waiter = _Waiter()
        body = encode_command(command)
        with self._lock:
            stored = self.state.lookup(client_id, seq, body)
            if stored is not None:
                return stored
            self._check_in_flight_locked(client_id, 1)
            self._register_locked(client_id, seq, waiter)
        self.batcher.submit([Pending(client_id, seq, body, waiter)])
        return waiter

    def _waited(self, client_id: int, seq: int, waiter: _Waiter, arrived: bool) -> Reply:
        """The end of a wait for ``waiter``'s reply (``arrived``: within ``APPLY_WAIT_S``)."""
        if not arrived:
            self._forget(client_id, seq, waiter)
            raise ServerUnavailable(
                f"request of client {client_id} seq {seq} not applied within "
                f"{APPLY_WAIT_S} s on server {self.replica_id}; retry with the same seq"
            )
        if waiter.error is not None:
            raise waiter.error
        assert waiter.reply is not None
        return waiter.reply

    def _execute_unreplicated(self, client_id: int, seq: int, command: Command) -> Reply:
        self.ensure_instruments()
        self._check_symbol(command)
        payload = encode_entry(client_id, seq, command)
        waiter = _Waiter()
        with self._lock:
            stored = self.state.lookup(client_id, seq, memoryview(payload)[ENTRY_HEADER.size:])
            if stored is not None:
                return stored
            self._check_in_flight_locked(client_id, 1)
            self._register_locked(client_id, seq, waiter)
            self._apply_locked(self.state.applied_index + 1, payload)  # sessions see its fills
        assert waiter.reply is not None
        return waiter.reply

    def _propose(self, payload: bytes) -> int:
        """The batcher's proposal (Rule 5): replicate and, on the leader, apply ``payload``."""
        replica = self.replica
        assert replica is not None
        if self.paused:
            raise ServerUnavailable(f"server {self.replica_id} is paused; try another server")
        return replica.propose(payload, PROPOSE_TIMEOUT_S)

    def _batch_failed(self, batch: list[Pending], exc: Exception) -> None:
        """A proposal raised: fail every request of it that is still waiting (batching Rule 3)."""
        error = exc if isinstance(exc, NotLeaderError | ServerUnavailable | Dropped) else \
            self._proposal_error(exc)
        with self._lock:
            for item in batch:
                self._forget_locked(item.client_id, item.seq, item.sink)
                item.sink.fail(error)

    def _forget(self, client_id: int, seq: int, sink: Sink) -> None:
        with self._lock:
            self._forget_locked(client_id, seq, sink)

    def _check_symbol(self, command: Command) -> None:
        why = self.symbol_refusal(command.symbol)
        if why is not None:
            raise RequestRefused("INVALID_ARGUMENT", why)

    def _forget_locked(self, client_id: int, seq: int, sink: object) -> None:
        key = (client_id, seq)
        sinks = self._sinks.get(key)
        if sinks is not None and sink in sinks:
            sinks.remove(sink)
            self._release_locked(client_id, 1)
            if not sinks:
                del self._sinks[key]

    # -- sessions -----------------------------------------------------------------------------

    def open_session(self, in_flight_max: int = SESSION_IN_FLIGHT_MAX,
                     on_ready: Callable[[], None] | None = None) -> OrderSession:
        """A new OrderSession (``on_ready``: exchange.session Rule 5); raises like ``execute``
        unless this server takes order entry."""
        self._check_order_entry()
        with self._lock:
            if self._session_count >= self.sessions_max:
                raise RequestRefused("RESOURCE_EXHAUSTED", limit_message(
                    "SESSIONS_MAX_DEFAULT", self.sessions_max,
                    "order sessions on this server (--grpc-workers / 2)"))
            self._session_count += 1
        return OrderSession(in_flight_max, on_ready)

    def bind_session(self, session: OrderSession, client_id: int) -> None:
        """Route ``client_id``'s unsolicited fills to ``session`` (Rule 6)."""
        with self._lock:
            session.client_id = client_id
            self._sessions[client_id] = session

    def close_session(self, session: OrderSession) -> None:
        with self._lock:
            self._session_count -= 1
            if self._sessions.get(session.client_id) is session:
                del self._sessions[session.client_id]

    def submit_session(
        self, session: OrderSession, requests: list[tuple[Slot, int, int, bytes]],
        schedule: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        """Queue ``(slot, client_id, seq, encoded command)`` requests of one session message, in
        order; answers from the dedup table fill their slots at once. Raises like ``execute``.
        ``schedule`` (the event loop's ``call_soon``) proposes them with the loop turn's other
        requests (batching Rule 6)."""
        self._check_order_entry()
        items: list[Pending] = []
        with self._lock:
            self._check_in_flight_locked(requests[0][1], len(requests))  # one client per session
            lookup, register = self.state.lookup, self._register_locked
            for slot, client_id, seq, body in requests:
                stored = lookup(client_id, seq, body)
                if stored is not None:
                    slot.deliver(stored)
                    continue
                register(client_id, seq, slot)
                items.append(Pending(client_id, seq, body, slot))
            if items and self.replica is None:  # unreplicated: apply the message as one entry
                payload = encode_batch([(p.client_id, p.seq, p.body) for p in items])
                self._apply_locked(self.state.applied_index + 1, payload)
                return
        if items:
            if schedule is not None:
                self.batcher.submit_later(items, schedule)  # batching Rule 6
            else:
                self.batcher.submit(items, pipelined=True)  # batching Rule 5

    def _check_order_entry(self) -> None:
        if self.paused:
            raise ServerUnavailable(f"server {self.replica_id} is paused; try another server")
        replica = self.replica
        if replica is None and self.replicas > 1:  # Rule 8: still loading or waiting for peers
            raise ServerUnavailable(f"server {self.replica_id} is starting (loading its data or "
                                    "waiting for its peers); retry")
        if replica is not None and not replica.is_leader:
            self._await_leader(replica)
        self.ensure_instruments()

    def _proposal_error(self, exc: Exception) -> Exception:
        """Map a consensus exception to NotLeaderError / ServerUnavailable."""
        name = type(exc).__name__
        if name == "NotLeader":
            leader_id = getattr(exc, "leader_id", None)
            if self.paused:
                return ServerUnavailable(f"server {self.replica_id} was paused; retry elsewhere")
            return self._not_leader(leader_id if isinstance(leader_id, int) else None)
        if name == "ProposalTimeout":
            return ServerUnavailable(
                f"server {self.replica_id}: consensus did not commit within "
                f"{PROPOSE_TIMEOUT_S} s ({exc}); retry with the same seq"
            )
        log.error("proposal failed on server %d: %r", self.replica_id, exc)
        return ServerUnavailable(f"server {self.replica_id}: proposal failed: {exc}")

    def leader_changed(self) -> None:
        """The replica's leader changed (its leader-change callback): wake waiting requests."""
        with self._leader_known:
            self._leader_known.notify_all()

    def _await_leader(self, replica: ConsensusReplica) -> None:
        """Rule 4: return if this server leads, perhaps after waiting for an election to end;
        otherwise raise the redirect (or ServerUnavailable while no leader is known)."""
        deadline = time.monotonic() + LEADER_WAIT_S
        with self._leader_known:
            while not (replica.is_leader or self.paused):
                leader_id = replica.leader_id  # our own id: we are still campaigning
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._not_leader(leader_id)
                if leader_id not in (None, self.replica_id):
                    if not replica.leader_suspected:
                        raise self._not_leader(leader_id)
                    left = min(left, SUSPECT_RECHECK_S)  # its beat may resume: then redirect
                self._leader_known.wait(left)
        if self.paused:
            raise ServerUnavailable(f"server {self.replica_id} is paused; try another server")

    def _not_leader(self, leader_id: int | None) -> Exception:
        if leader_id is None or leader_id == self.replica_id:
            return ServerUnavailable(
                f"server {self.replica_id} is not the leader and no leader is known yet; retry"
            )
        address = self.addresses.get(leader_id)
        return NotLeaderError(
            f"server {self.replica_id} is not the leader; the leader is server {leader_id} "
            f"at {address}",
            leader_id,
            address,
        )

    # -- reads --------------------------------------------------------------------------------

    def book_snapshot(
        self, symbol: str, levels: int | None
    ) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]], int, int] | None:
        """(bids, asks, last trade price, applied index) of ``symbol``, or None if unknown."""
        with self._lock:
            book = self.state.market.book(symbol)
            if book is None:
                return None
            bids, asks = book.depth(levels)
            return list(bids), list(asks), book.last_trade_price, self.state.applied_index

    def role(self) -> str:
        replica = self.replica
        if self.paused:
            return "paused"
        if replica is None:
            return "standalone" if self.replicas == 1 else "starting"
        if replica.error is not None:
            return "failed"
        if replica.recovery is not None:
            return "recovering"
        return "leader" if replica.is_leader else "follower"

    def status(self) -> NodeStatus:
        replica = self.replica
        standalone = self.replica_id if self.replicas == 1 else None  # None while starting
        leader_id = replica.leader_id if replica is not None else standalone
        with self._lock:
            state = self.state
            applied_index = state.applied_index
            book_digest, state_digest = state.book_digest(), state.state_digest()
            symbols = tuple(sorted(state.market.symbols()))
            executed, duplicates = state.executed_count, state.duplicate_count
            fixed = state.instruments
        instruments = tuple(sorted(fixed)) if fixed is not None else self.instruments or ()
        role = self.role()
        # A follower learns commit indexes only through its pump: report what it has applied.
        commit_index = replica.commit_index if role == "leader" and replica else applied_index
        error = replica.error if replica is not None else None
        return NodeStatus(
            replica_id=self.replica_id,
            role=role,
            error="" if error is None else str(error),
            leader_id=leader_id,
            leader_address=self.addresses.get(leader_id, "") if leader_id else "",
            commit_index=commit_index,
            applied_index=applied_index,
            book_digest=book_digest,
            state_digest=state_digest,
            symbols=symbols,
            executed_count=executed,
            duplicate_count=duplicates,
            replicas=self.replicas,
            recovery=None if replica is None else replica.recovery,
            instruments=instruments,
            warning=self.instruments_warning,
        )

    # -- state transfer (Rule 7) --------------------------------------------------------------

    def take_snapshot(self) -> tuple[int, bytes]:
        """``(applied index, snapshot bytes)`` of the state, consistent with each other."""
        with self._lock:
            return self.state.applied_index, self.state.snapshot()

    def install_snapshot(self, index: int, data: bytes) -> None:
        """Replace the whole state with the snapshot ``data`` of ``index``. Raises
        ``exchange.snapshot.SnapshotError`` (nothing changed) when it does not decode or does
        not cover ``index``."""
        from exchange.snapshot import SnapshotError

        current = self.state
        restored = ExchangeStateMachine.restore(
            data, seqs_per_client_max=current.dedup.seqs_per_client_max,
            clients_max=current.dedup.clients_max)
        if restored.applied_index != index:
            raise SnapshotError(f"snapshot covers index {restored.applied_index}, announced "
                                f"{index}")
        with self._lock:
            self.state = restored
            self._check_instruments_locked()
        if self.journal is not None:
            from exchange.durability import JournalFailed

            try:
                self.journal.installed(index, data)
            except JournalFailed as exc:  # the state is in memory; order entry refuses (Rule 8)
                log.error("server %d: the installed snapshot is not stored: %s",
                          self.replica_id, exc)

    # -- control ------------------------------------------------------------------------------

    def pause(self, announce: bool = False) -> None:
        """Stop serving order entry and heartbeating. Silent by default, as Mu's ``p`` (a
        stopped process): peers detect the silence. ``announce`` steps down first (``s``)."""
        if self.paused:
            log.warning("server %d: already paused", self.replica_id)
            return
        self.paused = True
        if self.replica is not None:
            self.replica.pause(announce=announce)
        self._fail_waiting(ServerUnavailable(  # before the log line (Rule 11)
            f"server {self.replica_id} was paused before answering; retry elsewhere with the "
            "same seq"))
        how = "stepped down, then" if announce else "silent:"
        log.warning("server %d: PAUSED (%s no heartbeat, no order entry)", self.replica_id, how)
        for listener in self.pause_listeners:
            listener(True)

    def _fail_waiting(self, error: ServerUnavailable) -> None:
        """Rule 11: answer every request waiting here (for its reply, or for an election) with
        ``error`` now, so its trader retries elsewhere at once instead of after the proposal in
        flight fails (when the peers revoke this leader, milliseconds later)."""
        with self._lock:
            waiting = [(key, sink) for key, sinks in self._sinks.items() for sink in sinks]
            for (client_id, seq), sink in waiting:
                self._forget_locked(client_id, seq, sink)
                sink.fail(error)
        with self._leader_known:
            self._leader_known.notify_all()

    def step_down(self) -> None:
        """The cooperative hand-off (FIFO ``s``): step down so peers take over at once, then
        stay paused like ``pause`` until ``resume``."""
        self.pause(announce=True)

    def resume(self) -> None:
        """Serve again: the replica rejoins as a follower and catches up."""
        if not self.paused:
            log.warning("server %d: not paused; resume ignored", self.replica_id)
            return
        if self.replica is not None:
            self.replica.resume()
        self.paused = False
        log.warning("server %d: RESUMED (rejoining as a follower)", self.replica_id)
        for listener in self.pause_listeners:
            listener(False)

    def close(self) -> None:
        self.batcher.stop()
        self.hub.close()


def _updates(applied: Applied) -> list[Update]:
    return [Update(applied.index, event.symbol, event) for event in applied.market_data]


__all__ = [
    "ConsensusReplica",
    "ExchangeNode",
    "NodeStatus",
    "NotLeaderError",
    "RequestRefused",
    "ServerUnavailable",
]
