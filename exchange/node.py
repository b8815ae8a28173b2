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
        ``NotLeaderError`` (with the leader's address when known) or ``ServerUnavailable``.
Rule 5: a server that rejoins (consensus's ``recovery`` is set) reports role ``recovering`` with
        its progress; its state is replaced whole by ``install_snapshot`` (decoded outside the
        lock, swapped under it), and ``take_snapshot`` serves peers a consistent (index, bytes).
Rule 6: with a data directory (``exchange.durability``), ``on_commit`` queues every applied entry
        in the journal (under the lock, so in log order), ``execute`` acknowledges only once the
        reply's entry is durable (sync mode) and refuses order entry once the journal failed,
        and an installed snapshot is stored before delivery resumes. A replicated node
        without a replica yet (``attach`` not called: a server still loading or waiting for its
        peers, role ``starting``) never executes anything.

No gRPC here: ``exchange.service`` maps these errors to status codes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from exchange.market_data import SUBSCRIBERS_MAX_DEFAULT, MarketDataHub, Update
from exchange.state_machine import Applied, ExchangeStateMachine, Reply, encode_entry
from orderbook import Command

if TYPE_CHECKING:
    from exchange.durability import Journal

PROPOSE_TIMEOUT_S = 1.0  # consensus propose: far above a commit (~tens of us), below client retry
APPLY_WAIT_S = 2.0  # committed -> applied here; only slow when this replica lost leadership

log = logging.getLogger("exchange.node")


class ConsensusReplica(Protocol):
    """The part of ``consensus.Replica`` the exchange uses (see docs/consensus.md)."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def leader_id(self) -> int | None: ...

    @property
    def commit_index(self) -> int: ...

    def propose(self, payload: bytes, timeout_s: float = ...) -> int: ...

    @property
    def error(self) -> Exception | None: ...

    @property
    def recovery(self) -> RecoveryView | None: ...

    def pause(self) -> None: ...

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


class NotLeaderError(Exception):
    """This server is a follower; ``leader_address`` is where to go (None when unknown)."""

    def __init__(self, message: str, leader_id: int | None, leader_address: str | None) -> None:
        super().__init__(message)
        self.leader_id = leader_id
        self.leader_address = leader_address


class ServerUnavailable(Exception):
    """Order entry cannot be served right now (paused, no leader, timeout); retry elsewhere."""


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
    recovery: RecoveryView | None = None  # while role is recovering (Rule 5)


class _Waiter:
    """A handler waiting for its entry's reply. The event is made only if the reply was not
    there when ``propose`` returned (on the leader consensus usually applies the entry in the
    handler's own thread, so most requests never need one); both fields change under the
    node's lock."""

    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.done: threading.Event | None = None
        self.reply: Reply | None = None


class ExchangeNode:
    """Order entry, apply path and reads of one server (replica ``None`` = unreplicated)."""

    def __init__(
        self,
        replica_id: int,
        addresses: dict[int, str],
        replicas: int,
        subscribers_max: int = SUBSCRIBERS_MAX_DEFAULT,
    ) -> None:
        self.replica_id = replica_id
        self.addresses = addresses
        self.replicas = replicas
        self.state = ExchangeStateMachine()
        self.hub = MarketDataHub(subscribers_max)
        self.replica: ConsensusReplica | None = None
        self.paused = False
        self.pause_listeners: list[Callable[[bool], None]] = []
        self._lock = threading.Lock()
        self._waiters: dict[tuple[int, int], list[_Waiter]] = {}
        self.journal: Journal | None = None  # Rule 6

    def attach(self, replica: ConsensusReplica) -> None:
        """Use ``replica`` for order entry (called once, before the replica starts serving)."""
        assert self.replica is None
        assert self.replicas > 1
        self.replica = replica

    # -- apply path ---------------------------------------------------------------------------

    def on_commit(self, index: int, payload: bytes | memoryview) -> None:
        """Apply committed entry ``index`` (every replica, log order, exactly once: consensus's
        pump thread, or on the leader the proposing handler's thread).

        Market data is offered under the lock so that it leaves in log order whichever thread
        applies; offering never blocks (bounded queues).
        """
        with self._lock:
            applied = self.state.apply(index, payload)
            if self.journal is not None:
                self.journal.append(index, payload)
            reply = applied.reply
            waiters = self._waiters.pop((reply.client_id, reply.seq), None)
            if waiters:
                for waiter in waiters:
                    waiter.reply = reply
                    if waiter.done is not None:
                        waiter.done.set()
            if applied.market_data and self.hub.subscriber_count > 0:
                self.hub.publish(_updates(applied))

    # -- order entry --------------------------------------------------------------------------

    def execute(self, client_id: int, seq: int, command: Command) -> Reply:
        """Run one order-entry request exactly once and return its reply (see module rules);
        with a journal, only once its entry is durable (Rule 6)."""
        journal = self.journal
        if journal is None:
            return self._execute_entry(client_id, seq, command)
        from exchange.durability import JournalFailed

        try:
            if journal.failure:
                raise JournalFailed(journal.failure)
            reply = self._execute_entry(client_id, seq, command)
            journal.wait_durable(reply.log_index)
        except JournalFailed as exc:
            raise ServerUnavailable(f"server {self.replica_id} does not acknowledge orders: "
                                    f"{exc}") from None
        return reply

    def _execute_entry(self, client_id: int, seq: int, command: Command) -> Reply:
        if self.paused:
            raise ServerUnavailable(f"server {self.replica_id} is paused; try another server")
        replica = self.replica
        if replica is None:
            if self.replicas > 1:
                raise ServerUnavailable(f"server {self.replica_id} is starting (loading its "
                                        "data or waiting for its peers); retry")
            return self._execute_unreplicated(client_id, seq, command)
        if not replica.is_leader:
            raise self._not_leader(replica.leader_id)
        payload = encode_entry(client_id, seq, command)
        key = (client_id, seq)
        waiter = _Waiter()
        with self._lock:
            stored = self.state.lookup(client_id, seq)
            if stored is not None:
                return stored
            self._waiters.setdefault(key, []).append(waiter)
        try:
            replica.propose(payload, PROPOSE_TIMEOUT_S)
        except Exception as exc:
            self._forget(key, waiter)
            raise self._proposal_error(exc) from exc
        with self._lock:
            reply = waiter.reply
            if reply is None:
                waiter.done = done = threading.Event()
        if reply is not None:
            return reply
        if not done.wait(APPLY_WAIT_S):
            self._forget(key, waiter)
            raise ServerUnavailable(
                f"entry for client {client_id} seq {seq} committed but not applied within "
                f"{APPLY_WAIT_S} s on server {self.replica_id}; retry with the same seq"
            )
        assert waiter.reply is not None
        return waiter.reply

    def _execute_unreplicated(self, client_id: int, seq: int, command: Command) -> Reply:
        payload = encode_entry(client_id, seq, command)
        with self._lock:
            stored = self.state.lookup(client_id, seq)
            if stored is not None:
                return stored
            applied = self.state.apply(self.state.applied_index + 1, payload)
            if self.journal is not None:
                self.journal.append(applied.index, payload)
        if applied.market_data and self.hub.subscriber_count:
            self.hub.publish(_updates(applied))
        return applied.reply

    def _forget(self, key: tuple[int, int], waiter: _Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(key)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[key]

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
        )

    # -- state transfer (Rule 5) --------------------------------------------------------------

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
        if self.journal is not None:
            from exchange.durability import JournalFailed

            try:
                self.journal.installed(index, data)
            except JournalFailed as exc:  # the state is in memory; order entry refuses (Rule 6)
                log.error("server %d: the installed snapshot is not stored: %s",
                          self.replica_id, exc)

    # -- control ------------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop serving order entry; the replica stops heartbeating so leadership moves."""
        if self.paused:
            log.warning("server %d: already paused", self.replica_id)
            return
        self.paused = True
        if self.replica is not None:
            self.replica.pause()
        log.warning("server %d: PAUSED (no heartbeat, no order entry)", self.replica_id)
        for listener in self.pause_listeners:
            listener(True)

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
        self.hub.close()


def _updates(applied: Applied) -> list[Update]:
    return [Update(applied.index, event.symbol, event) for event in applied.market_data]


__all__ = [
    "ConsensusReplica",
    "ExchangeNode",
    "NodeStatus",
    "NotLeaderError",
    "ServerUnavailable",
]
