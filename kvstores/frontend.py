"""The client-facing side of a server: RESP2/RESP3 or memcached text in, replies out, writes
proposed.

Rule 1: each client's replies leave in the order of its commands (a ``Slot`` per command); a
        command may be answered at once (refused, redirected, status) or by the local server.
Rule 2: commands are handled in arrival order across clients, once per event-loop turn
        (``Core.flush``): consecutive writes form one ``propose_many`` batch; a read is sent to
        the local server only after every write before it was applied there (on the leader
        consensus applies an entry in the proposing thread before ``propose`` returns, consensus
        pump Rule 6), so a client reads its own writes.
Rule 3: only the leader proposes. A follower answers a write with a redirect naming the leader
        (redis ``-MOVED 0 host:port``, memcached ``SERVER_ERROR ... leader is server N at
        host:port``) and serves reads from its own local server, which may be behind (the
        original's interactive session shows this). With ``--follower-writes forward`` a
        follower instead sends the write to the leader's front end (``kvstores.forward``). A
        paused server answers everything with ``-TRYAGAIN`` / ``SERVER_ERROR kvstores:
        unavailable``. A failed replica answers with an error.
Rule 4: a proposal that failed (``NotLeader``, timeout) may still be committed and applied: its
        tags stay claimed for ``UNKNOWN_WAIT_S``, so if this replica applies the entry anyway (the
        new leader committed it) the client gets the real reply; otherwise "outcome unknown"
        (never TRYAGAIN or a redirect, which promise that nothing was proposed), and a retry may
        apply the command twice (not exactly-once; see
        docs/kvstores.md). Unreplicated (``--replicas 1``) writes go straight to the pipe.
Rule 5: if the failed batch's log indexes are known (the event loop is the only proposer, so a
        batch lands right after the commit index; every success checks it), an index that this
        replica applies with another entry's tag proves the entry meant for it lost: its client
        gets TRYAGAIN (nothing applied), which the forwarder and the load clients retry.
Rule 6: a replica that recovers (killed and started again with an empty local server, or
        left behind by the log) refuses reads (role ``recovering``) until consensus reports it
        caught up: its local server is empty, being restored from a peer's snapshot, or behind
        the log (kvstores.snapshot).
Rule 7 (``WATCH``, redis_rules Rule 7): a connection's watched keys each keep the write count
        at their ``WATCH`` (``kvstores.watch`` Rule 1), and the connection the pipe's
        ``foreign_applied`` at its first. Every write a client submits here counts for the
        keys it may change (all of them when unknown) before it is queued, in the same loop
        turn as its parse (``KeyEvents.written``). An
        ``EXEC`` is aborted (RESP2 ``*-1``, RESP3 ``_``) when a watched key's count moved or an
        entry this front end did not propose was applied since (another leader's writes, or any
        write on a follower); it is checked and, if not aborted, queued in one turn, so no write
        slips between. ``EXEC``, ``DISCARD``, ``UNWATCH`` and the connection's end unwatch.
        So an ``EXEC`` may abort where redis would not (a ``DEL`` of a missing key, any write
        applied on a follower): never the other way round. A key's expiry does not count as a
        change (redis >= 6.0.9 counts it).
Rule 8 (memcached ``cas``, kvstores.mctext Rule 1): the key is watched (Rule 7) from the
        moment the ``cas`` is parsed (a write parsed after it is queued after its check's read,
        so only the watch sees it). In its turn the leader reads ``gets key`` from its local
        server after every write queued before it (Rule 2), and in the turn the reply arrives
        answers ``NOT_FOUND`` (no item), ``EXISTS`` (another unique, a write to the key
        submitted since the parse, or leadership lost meanwhile) or queues a ``set`` with the
        cas's flags, expiry and data, whose ``STORED`` is the answer. That ``set`` is never
        forwarded (a redirect promises it was not applied); a follower redirects or forwards
        the ``cas`` itself, and unreplicated the local server runs it.
Rule 9 (blocking pops, kvstores.blocking ``BlockedPop``): the client's connection stops
        parsing while its pop waits (later commands wait behind it, as in redis). The attempt
        is proposed at once; a null one registers the client, in arrival order, under each key
        it waits on (``kvstores.watch`` Rule 2). A write submitted to such a key (or to an
        unknown key; a script: to a key it declares, ``kvstores.watch`` Rule 3) wakes the first
        waiter of that key,
        whose next attempt is queued after that write (``call_soon``); a waiter woken while its
        attempt is in flight tries again after it. A successful pop wakes the next waiter. A
        timeout answers null, except while an attempt is in flight, whose reply then decides
        (an element it popped is delivered, never dropped). Attempts are never forwarded: on a
        follower the client gets the redirect. A leader change or a pause wakes every waiter
        (its next attempt is redirected, or refused: ``TRYAGAIN``). A client that disconnects
        while its attempt is in flight loses the element that attempt pops.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import socket
import time
from array import array
from collections import deque
from collections.abc import Callable
from typing import Protocol

from kvstores import blocking, mctext, resp
from kvstores.blocking import BlockedPop
from kvstores.constants import (
    CLIENT_BUFFER_BYTES_MAX,
    CLIENT_COMMANDS_PER_READ_MAX,
    COMMAND_BYTES_MAX,
    INFLIGHT_PER_CLIENT_MAX,
    LATENCY_SAMPLES_MAX,
    PROPOSE_TIMEOUT_S,
    UNKNOWN_WAIT_S,
)
from kvstores.pipe import NOOP_TAG, LocalPipe, Slot, SlotOwner, tag_entry
from kvstores.pubsub import Relay
from kvstores.redis_rules import OK, Route, classify, hello, woken_keys, written_keys
from kvstores.scripts import NOSCRIPT, ScriptCache
from kvstores.transaction import Transaction
from kvstores.watch import KeyEvents

log = logging.getLogger("kvstores.frontend")


class ReplicaView(Protocol):
    """The part of ``consensus.Replica`` the front end uses."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def leader_id(self) -> int | None: ...

    @property
    def applied_index(self) -> int: ...

    @property
    def commit_index(self) -> int: ...

    @property
    def error(self) -> Exception | None: ...

    @property
    def recovery(self) -> object | None: ...

    def propose(self, payload: bytes, timeout_s: float = ...) -> int: ...

    def propose_many(self, payloads: list[bytes], timeout_s: float = ...) -> list[int]: ...


class LatencyLog:
    """Replication latency of every write (ns spent in propose), for the SIGUSR1 dump."""

    def __init__(self) -> None:
        self.samples = array("q")

    def add(self, latency_ns: int, count: int) -> None:
        if len(self.samples) + count <= LATENCY_SAMPLES_MAX:
            self.samples.extend([latency_ns] * count)

    def dump(self, path: str) -> int:
        with open(path, "w") as file:
            file.write("\n".join(map(str, self.samples)))
            file.write("\n" if self.samples else "")
        return len(self.samples)


class Flavor(Protocol):
    """Protocol-specific error replies. ``moved`` and ``unavailable`` say the command was not
    proposed (safe to retry anywhere); ``unknown`` says it may or may not be applied; ``failed``
    says this server cannot serve at all."""

    def moved(self, replica_id: int, leader_id: int, address: str | None) -> bytes: ...

    def unavailable(self, text: str) -> bytes: ...

    def unknown(self, text: str) -> bytes: ...

    def failed(self, text: str) -> bytes: ...

    def retryable(self, reply: bytes) -> bool: ...


class RedisFlavor:
    def moved(self, replica_id: int, leader_id: int, address: str | None) -> bytes:
        if address is None:
            return self.unavailable(f"server {replica_id} is a follower; leader {leader_id} "
                                    "has not published its address")
        # Exactly redis cluster's "MOVED <slot> <host>:<port>": redis-cli -c follows it, and
        # redis-py parses it into MovedError(host, port) (any further word breaks its parser).
        return resp.error(f"MOVED 0 {address}")

    def unavailable(self, text: str) -> bytes:
        return resp.error(f"TRYAGAIN kvstores: {text}")

    def unknown(self, text: str) -> bytes:
        return resp.error(f"ERR kvstores: outcome unknown: {text}")

    def failed(self, text: str) -> bytes:
        return resp.error(f"ERR kvstores: {text}")

    def retryable(self, reply: bytes) -> bool:
        return reply.startswith((b"-MOVED ", b"-TRYAGAIN "))


class MemcachedFlavor:
    def moved(self, replica_id: int, leader_id: int, address: str | None) -> bytes:
        return mctext.server_error(f"kvstores: server {replica_id} is a follower; the leader "
                                   f"is server {leader_id} at {address or 'an unknown address'}")

    def unavailable(self, text: str) -> bytes:
        return mctext.server_error(f"kvstores: unavailable: {text}")

    def unknown(self, text: str) -> bytes:
        return mctext.server_error(f"kvstores: outcome unknown: {text}")

    def failed(self, text: str) -> bytes:
        return mctext.server_error(f"kvstores: failed: {text}")

    def retryable(self, reply: bytes) -> bool:
        return reply.startswith(b"SERVER_ERROR kvstores: ") and (
            b" is a follower; " in reply or reply.startswith(b"SERVER_ERROR kvstores: unavail"))


class Forwarder(Protocol):
    def forward(self, leader_id: int | None, payload: bytes, slot: Slot, kind: int) -> None: ...

    def retrying(self, payload: bytes, slot: Slot, kind: int) -> Slot: ...

    def release(self) -> None: ...


class Core:
    """Routing shared by every client connection of one server (see module rules)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        replica_id: int,
        flavor: Flavor,
        address_of: Callable[[int], str | None],
        latencies: LatencyLog,
    ) -> None:
        self.loop = loop
        self.replica_id = replica_id
        self.flavor = flavor
        self.address_of = address_of
        self.latencies = latencies
        self.pipe: LocalPipe | None = None
        self.replica: ReplicaView | None = None  # None: unreplicated
        self.paused = False
        self.side_call: Callable[[bytes], bytes] | None = None  # request -> reply, any thread
        self.forwarder: Forwarder | None = None  # --follower-writes forward
        self.connect_local: Callable[[], socket.socket] | None = None  # redis pub/sub's
        self.keys = KeyEvents()  # Rules 7-9: watched keys, blocked clients
        self.scripts = ScriptCache()  # kvstores.scripts Rule 3
        self._cas_watches: dict[Slot, tuple[dict[bytes, int], int]] = {}  # Rule 8
        # Tags are unique per proposal: this server's id and a counter from a random start.
        self._next_tag = (replica_id << 48) | secrets.randbits(40)
        self.index_prediction_ok = True
        self._queue: list[tuple[Route, bytes, Slot, int]] = []
        self._scheduled = False

    def changed(self, watched: dict[bytes, int], foreign_at_watch: int) -> bool:
        """Rule 7: whether a watched key may have changed since its WATCH."""
        pipe = self.pipe
        if pipe is not None and pipe.foreign_applied != foreign_at_watch:
            return True
        return self.keys.changed(watched)

    def submit(self, route: Route, data: bytes, slot: Slot, kind: int) -> None:
        """Queue a READ or WRITE for this loop turn's ``flush`` (Rule 2)."""
        self._queue.append((route, data, slot, kind))
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        queue = self._queue
        self._queue = []
        self._scheduled = False
        pipe = self.pipe
        assert pipe is not None
        pipe.hold()
        try:
            self._route(queue)
        finally:
            pipe.release()
            if self.forwarder is not None:
                self.forwarder.release()

    def _route(self, queue: list[tuple[Route, bytes, Slot, int]]) -> None:
        payloads: list[bytes] = []
        slots: list[Slot] = []
        for route, data, slot, kind in queue:
            if route is Route.WRITE:
                payloads.append(data)
                slots.append(slot)
                continue
            if payloads:
                self._write(payloads, slots)
                payloads, slots = [], []
            if route is Route.CAS:
                self._cas(data, slot)
            else:
                self._read(data, slot, kind)
        if payloads:
            self._write(payloads, slots)

    def submit_cas(self, data: bytes, slot: Slot) -> None:
        """Rule 8: queue a memcached ``cas``, watching its key from now on: a write parsed
        after it is queued after its check's read, so only the watch can see it."""
        watched: dict[bytes, int] = {}
        self.keys.watch([data.split(None, 2)[1]], watched)
        pipe = self.pipe
        self._cas_watches[slot] = (watched, pipe.foreign_applied if pipe is not None else 0)
        self.submit(Route.CAS, data, slot, mctext.Framing.LINE)

    def _cas(self, data: bytes, slot: Slot) -> None:
        """Rule 8: a memcached ``cas``, in its place among this turn's commands."""
        watched, foreign = self._cas_watches.pop(slot)
        refusal = self._refusal()
        pipe, replica = self.pipe, self.replica
        assert pipe is not None
        if refusal is not None or replica is None or not replica.is_leader:
            self.keys.unwatch(watched)
            if refusal is not None:
                slot.fill(refusal)
            elif replica is None:  # unreplicated: the one local server decides
                pipe.send(data, slot, mctext.Framing.LINE)
            else:  # the cas itself goes to the leader; it is never proposed from here
                self._not_here(replica, data, slot, mctext.Framing.LINE)
            return
        line, block = data.split(mctext.CRLF, 1)
        words = line.split()
        key, unique = words[1], words[5]

        def decide(reply: bytes) -> None:
            changed = self.changed(watched, foreign) or not replica.is_leader
            self.keys.unwatch(watched)
            if not reply.startswith(b"VALUE "):
                slot.fill(b"NOT_FOUND\r\n" if reply == b"END\r\n" else reply)
            elif changed or reply[:reply.find(mctext.CRLF)].split()[4] != unique:
                slot.fill(b"EXISTS\r\n")
            else:
                self.keys.written([key], [key])
                slot.forwarded = True  # never forwarded: the check was this leader's
                self.submit(Route.WRITE, b" ".join([b"set", *words[1:5]]) + mctext.CRLF + block,
                            slot, mctext.Framing.LINE)

        self._read(b"gets " + key + mctext.CRLF, Slot(_Then(decide)), mctext.Framing.BLOCK)

    def _refusal(self) -> bytes | None:
        """Why this server cannot serve now, as a reply; None when it can."""
        if self.paused:
            return self.flavor.unavailable(f"server {self.replica_id} is paused; retry later or "
                                           "at another server")
        pipe = self.pipe
        assert pipe is not None
        if pipe.failed is not None:
            return self.flavor.failed(f"server {self.replica_id} failed: {pipe.failed}")
        replica = self.replica
        if replica is not None and replica.error is not None:
            return self.flavor.failed(f"server {self.replica_id} failed: {replica.error}")
        return None

    def _read_refusal(self) -> bytes | None:
        """Why this server cannot serve a read now (Rule 6), as a reply; None when it can."""
        refusal = self._refusal()
        if refusal is None and self.replica is not None and self.replica.recovery is not None:
            refusal = self.flavor.unavailable(
                f"server {self.replica_id} is recovering (restoring a peer's snapshot or "
                "catching up the log); retry later or at another server")
        return refusal

    def _read(self, data: bytes, slot: Slot, kind: int) -> None:
        refusal = self._read_refusal()
        if refusal is not None:
            slot.fill(refusal)
            return
        assert self.pipe is not None
        self.pipe.send(data, slot, kind)

    def _write(self, payloads: list[bytes], slots: list[Slot]) -> None:
        refusal = self._refusal()
        if refusal is not None:
            for slot in slots:
                slot.fill(refusal)
            return
        pipe = self.pipe
        assert pipe is not None
        replica = self.replica
        if replica is None:
            for payload, slot in zip(payloads, slots, strict=True):
                pipe.send(payload, slot, pipe.kind_of(payload))
            return
        if not replica.is_leader:
            for payload, slot in zip(payloads, slots, strict=True):
                self._not_here(replica, payload, slot, pipe.kind_of(payload))
            return
        first_tag = self._next_tag
        self._next_tag += len(payloads)
        entries = []
        forwarder = self.forwarder
        for tag, payload, slot in zip(itertools.count(first_tag), payloads, slots):
            # With forwarding on, a write proven not applied is retried here too (forward Rule 2).
            pipe.claim(tag, slot if forwarder is None else
                       forwarder.retrying(payload, slot, pipe.kind_of(payload)))
            entries.append(tag_entry(tag, payload))
        # This loop is the only proposer, so a serving leader puts the batch right after its
        # commit index; checked on every success, relied on only after a failure (Rule 5).
        first_index = replica.commit_index + 1
        started_ns = time.perf_counter_ns()
        try:
            if len(entries) == 1:
                indexes = [replica.propose(entries[0], PROPOSE_TIMEOUT_S)]
            else:
                indexes = replica.propose_many(entries, PROPOSE_TIMEOUT_S)
        except Exception as exc:
            self._proposal_failed(exc, first_tag, first_index, len(entries))
            return
        self.latencies.add(time.perf_counter_ns() - started_ns, len(entries))
        if indexes[0] != first_index and self.index_prediction_ok:
            self.index_prediction_ok = False
            log.warning("server %d: a batch went to index %d, not %d: failed proposals now "
                        "answer 'outcome unknown' only", self.replica_id, indexes[0], first_index)

    def _not_here(self, replica: ReplicaView, payload: bytes, slot: Slot, kind: int) -> None:
        """A write on a follower: redirected, or forwarded to the leader (never twice: forward
        Rule 5, the origin retries)."""
        if self.forwarder is None or slot.forwarded:
            slot.fill(self._not_leader(replica.leader_id))
        else:
            self.forwarder.forward(replica.leader_id, payload, slot, kind)

    def _proposal_failed(self, exc: Exception, first_tag: int, first_index: int,
                         count: int) -> None:
        """Rule 4/5: the entries may still be committed; their claims stay for a while, and an
        index applied with another entry proves the one meant for it lost (safe to retry)."""
        pipe = self.pipe
        assert pipe is not None
        if self.index_prediction_ok:
            pipe.expect(first_index, list(range(first_tag, first_tag + count)),
                        self.flavor.unavailable(
                            f"server {self.replica_id} lost leadership; this write was not "
                            "applied (another entry took its place in the log)"))
        reply = self._proposal_error(exc)
        self.loop.call_later(UNKNOWN_WAIT_S, self._give_up, first_tag, count, reply)

    def propose_noop(self) -> None:
        """A new leader's first entry (loop thread): it takes the next index at once, so a
        deposed leader's failed batch learns there that its entry was lost (Rule 5) without
        waiting for the next client write."""
        replica = self.replica
        if replica is None or self.paused or not replica.is_leader:
            return
        try:
            replica.propose(tag_entry(NOOP_TAG, b""), PROPOSE_TIMEOUT_S)
        except Exception as exc:
            log.warning("server %d: the new leader's no-op was not committed: %s",
                        self.replica_id, exc)

    def _give_up(self, first_tag: int, count: int, reply: bytes) -> None:
        """Answer the claims of a failed proposal that no applied entry answered."""
        pipe = self.pipe
        assert pipe is not None
        for tag in range(first_tag, first_tag + count):
            slot = pipe.unclaim(tag)
            if slot is not None:
                slot.fill(reply)

    def _not_leader(self, leader_id: int | None) -> bytes:
        if leader_id is None or leader_id == self.replica_id:
            return self.flavor.unavailable(f"server {self.replica_id} is not the leader and no "
                                           "leader is known yet; retry")
        return self.flavor.moved(self.replica_id, leader_id, self.address_of(leader_id))

    def _proposal_error(self, exc: Exception) -> bytes:
        """A failed ``propose``: the entry may still be committed (Rule 4)."""
        name = type(exc).__name__
        if name == "NotLeader":
            return self.flavor.unknown(f"server {self.replica_id} lost leadership while "
                                       "replicating this write and did not see it applied "
                                       f"within {UNKNOWN_WAIT_S} s")
        if name == "ProposalTimeout":
            return self.flavor.unknown(f"server {self.replica_id}: not committed within "
                                       f"{PROPOSE_TIMEOUT_S} s, nor applied {UNKNOWN_WAIT_S} s "
                                       "later")
        log.error("proposal failed on server %d: %r", self.replica_id, exc)
        return self.flavor.unknown(f"server {self.replica_id}: proposal failed: {exc}")

    def side(self, request: bytes, slot: Slot) -> None:
        """Answer ``request`` on a separate connection to the local server, after every command
        sent before it was answered (a ``version`` round trip through the pipe is the barrier)."""
        side_call = self.side_call
        if side_call is None:
            slot.fill(self.flavor.failed("not available on this server"))
            return
        refusal = self._read_refusal()
        if refusal is not None:
            slot.fill(refusal)
            return
        loop = self.loop

        def run_after_barrier() -> None:
            future = loop.run_in_executor(None, side_call, request)
            future.add_done_callback(lambda done: slot.fill(
                done.result() if done.exception() is None
                else self.flavor.failed(f"side request failed: {done.exception()}")))

        self.submit(Route.READ, b"version\r\n", Slot(_Callback(run_after_barrier)), 0)

    # -- status -------------------------------------------------------------------------------

    def role(self) -> str:
        replica = self.replica
        if self.paused:
            return "paused"
        if self.pipe is not None and self.pipe.failed is not None:
            return "failed"
        if replica is None:
            return "standalone"
        if replica.error is not None:
            return "failed"
        if replica.is_leader:
            return "leader"
        return "follower" if replica.recovery is None else "recovering"

    def status(self) -> list[tuple[str, str]]:
        replica = self.replica
        pipe = self.pipe
        leader_id = self.replica_id if replica is None else replica.leader_id
        error = pipe.failed if pipe is not None and pipe.failed else (
            str(replica.error) if replica is not None and replica.error is not None else "")
        return [
            ("id", str(self.replica_id)),
            ("role", self.role()),
            ("leader", "" if leader_id is None else str(leader_id)),
            ("leader_address", "" if leader_id is None else (self.address_of(leader_id) or "")),
            ("applied", str(0 if pipe is None else pipe.applied_index)),
            ("commands_sent", str(0 if pipe is None else pipe.sent_count)),
            ("replicated", "no" if replica is None else "yes"),
            ("error", error.replace("\r", " ").replace("\n", " ")),
        ]


class _Callback(SlotOwner):
    """A slot owner that runs a function when its one slot is filled (a barrier)."""

    def __init__(self, function: Callable[[], None]) -> None:
        self._function = function

    def slot_filled(self, slot: Slot) -> None:
        self._function()


def _too_large(name: bytes, size: int) -> bytes:
    return resp.error(f"ERR kvstores: '{name.decode(errors='replace')}' of {size} bytes exceeds "
                      f"the {COMMAND_BYTES_MAX} bytes a log entry holds")


class _Then(SlotOwner):
    """A slot owner that hands its one slot's reply to a function."""

    def __init__(self, function: Callable[[bytes], None]) -> None:
        self._function = function

    def slot_filled(self, slot: Slot) -> None:
        assert slot.data is not None
        self._function(slot.data)


class _Connection(asyncio.Protocol, SlotOwner):
    """Per-client ordering and flow control (Rule 1); subclasses parse one protocol."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._buf = bytearray()
        self._slots: deque[Slot] = deque()
        self._transport: asyncio.Transport | None = None
        self._closing = False
        self._reading_paused = False
        self.from_forwarder = False  # another server's forwarder (forward Rule 5)
        self.resp3 = False  # this client chose RESP3 with HELLO 3 (redis_rules Rule 6)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._buf += data
        self.parse()
        if len(self._buf) > CLIENT_BUFFER_BYTES_MAX:
            self.reply_and_close(self.protocol_error("request too large"))
        elif len(self._slots) > INFLIGHT_PER_CLIENT_MAX and self._transport is not None:
            self._transport.pause_reading()
            self._reading_paused = True

    def parse(self) -> None:
        raise NotImplementedError

    def protocol_error(self, text: str) -> bytes:
        raise NotImplementedError

    def reply(self, data: bytes, drop: bool = False) -> None:
        slot = Slot(self, drop)
        self._slots.append(slot)
        slot.fill(data)

    def reply_and_close(self, data: bytes) -> None:
        self.reply(data)
        self._closing = True
        self._drain()

    def slot(self, drop: bool = False) -> Slot:
        slot = Slot(self, drop, self.from_forwarder, self.resp3)
        self._slots.append(slot)
        return slot

    def slot_filled(self, slot: Slot) -> None:
        if self._slots[0] is slot:
            self._drain()

    def _drain(self) -> None:
        slots = self._slots
        parts = []
        while slots and slots[0].data is not None:
            slot = slots.popleft()
            if not slot.drop:
                assert slot.data is not None
                parts.append(slot.data)
        transport = self._transport
        if transport is None:
            return
        if parts:
            transport.write(parts[0] if len(parts) == 1 else b"".join(parts))
        if self._closing and not slots:
            transport.close()
        elif self._reading_paused and len(slots) < INFLIGHT_PER_CLIENT_MAX // 2:
            self._reading_paused = False
            transport.resume_reading()


class RedisConnection(_Connection):
    def __init__(self, core: Core) -> None:
        super().__init__(core)
        self._transaction: Transaction | None = None  # between MULTI and EXEC
        self._relay: Relay | None = None  # a subscriber's own local connection (pubsub Rule 2)
        self._held: list[bytes] = []  # relayed before earlier replies left (pubsub Rule 3)
        self._watched: dict[bytes, int] = {}  # Rule 7: key -> the write count at its WATCH
        self._foreign_at_watch = 0
        self._blocked: BlockedPop | None = None  # Rule 9: a pop waiting, parsing stopped
        self._backlog: list[tuple[list[bytes], bytes]] = []  # parsed after it

    # -- a subscriber (kvstores.pubsub) -----------------------------------------------------------
    def relay(self, data: bytes) -> None:
        if self._slots or self._held:
            self._held.append(data)
        elif self._transport is not None:
            self._transport.write(data)

    def relay_closed(self) -> None:
        self._closing = True
        if not self._slots:
            self._drain()

    def _drain(self) -> None:
        held = self._held
        if not held:
            super()._drain()
            return
        closing, self._closing = self._closing, False  # the held output leaves before a close
        super()._drain()
        self._closing = closing
        if not self._slots and self._transport is not None:
            self._transport.write(b"".join(held))
            held.clear()
            if closing:
                self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._relay is not None:
            self._relay.close()
        if self._blocked is not None:
            self._blocked.abandon()
        if self._watched:
            self.core.keys.unwatch(self._watched)

    def pause_writing(self) -> None:
        if self._relay is not None:
            self._relay.pause()

    def resume_writing(self) -> None:
        if self._relay is not None:
            self._relay.resume()

    def protocol_error(self, text: str) -> bytes:
        return resp.error(f"ERR Protocol error: {text}")

    def parse(self) -> None:
        if self._blocked is not None:  # Rule 9: the bytes wait in the buffer
            return
        try:
            commands, used = resp.parse_commands(self._buf, CLIENT_COMMANDS_PER_READ_MAX)
        except resp.ProtocolError as exc:
            self.reply_and_close(self.protocol_error(str(exc)))
            return
        del self._buf[:used]
        self._run(commands)
        if len(commands) == CLIENT_COMMANDS_PER_READ_MAX and self._blocked is None:
            self.core.loop.call_soon(self._continue)

    def _run(self, commands: list[tuple[list[bytes], bytes]]) -> None:
        now_ms = time.time_ns() // 1_000_000
        core = self.core
        for number, (args, raw) in enumerate(commands):
            if self._relay is not None:
                self._relay.command(args, raw)
                if self._closing:
                    break
                continue
            route, data = classify(args, raw, now_ms)
            if route is Route.EVALSHA:  # kvstores.scripts Rule 3: the body, or NOSCRIPT
                body = core.scripts.get(args[1])
                if body is None:
                    route, data = Route.REPLY, NOSCRIPT
                else:
                    name = b"EVAL_RO" if args[0].upper() == b"EVALSHA_RO" else b"EVAL"
                    args = [name, body, *args[2:]]
                    raw = resp.encode_command(args)
                    route, data = classify(args, raw, now_ms)
            elif route is Route.SCRIPT:
                route, data = self._script_statement(args, raw)
            elif args[0][:1] in (b"E", b"e") and args[0].upper() in (b"EVAL", b"EVAL_RO") and (
                    route is Route.WRITE or route is Route.READ):
                core.scripts.add(args[1])  # a later EVALSHA finds it, as in redis
            if route is Route.SUBSCRIBE and self._transaction is None:
                connect = core.connect_local
                if connect is None:
                    self.reply(resp.error("ERR kvstores: pub/sub needs a local server"))
                    continue
                self._relay = Relay(self, self.resp3, core.loop, connect)
                self._relay.command(args, raw)
                continue
            statement = route is Route.MULTI or route is Route.EXEC or route is Route.DISCARD
            if statement:
                route, data = self._transaction_statement(route)  # touches its own keys
            elif route is Route.WATCH:
                route, data = self._watch_statement(args)
            elif self._transaction is not None and route is not Route.QUIT:
                self.reply(self._transaction.queue(route, data, args))
                continue
            if route is Route.WRITE or route is Route.READ:
                if route is Route.WRITE and len(data) > COMMAND_BYTES_MAX:
                    self.reply(_too_large(args[0], len(data)))
                    continue
                if route is Route.WRITE and not statement and core.keys.active:
                    keys = written_keys(args)
                    core.keys.written(keys, woken_keys(args, keys))
                core.submit(route, data, self.slot(), 0)
            elif route is Route.REPLY:
                self.reply(data)
            elif route is Route.STATUS:
                text = "".join(f"{key}:{value}\r\n" for key, value in core.status())
                self.reply(resp.bulk(text.encode()))
            elif route is Route.HELLO:
                protocol, answer = hello(args, 3 if self.resp3 else 2)
                self.resp3 = protocol == 3
                self.reply(answer)
            elif route is Route.FORWARDER:
                self.from_forwarder = True
                self.reply(data)
            elif route is Route.BLOCK:
                self._block(args)
                if self._blocked is not None:
                    self._backlog = commands[number + 1:]
                    return
            else:
                self.reply_and_close(data)
                return

    def _block(self, args: list[bytes]) -> None:
        """Rule 9: start a blocking pop (or answer its argument error)."""
        parsed = blocking.parse(args)
        if isinstance(parsed, bytes):
            self.reply(parsed)
            return
        if len(parsed.attempt) > COMMAND_BYTES_MAX:
            self.reply(_too_large(args[0], len(parsed.attempt)))
            return
        self._blocked = BlockedPop(self.core, parsed, self.slot(), self.resp3, self.unblocked)
        self._blocked.start()

    def unblocked(self) -> None:
        """Rule 9: the pop was answered; go on with what was parsed and buffered after it."""
        self._blocked = None
        backlog, self._backlog = self._backlog, []
        if backlog:
            self._run(backlog)
        if self._blocked is None and self._buf and not self._closing:
            self.core.loop.call_soon(self._continue)

    def _transaction_statement(self, route: Route) -> tuple[Route, bytes]:
        """MULTI, EXEC or DISCARD (kvstores.transaction): what to do, as ``classify`` says it."""
        transaction = self._transaction
        if route is Route.MULTI:
            if transaction is not None:
                return Route.REPLY, resp.error("ERR MULTI calls can not be nested")
            self._transaction = Transaction()
            return Route.REPLY, OK
        if transaction is None:
            name = "EXEC" if route is Route.EXEC else "DISCARD"
            return Route.REPLY, resp.error(f"ERR {name} without MULTI")
        self._transaction = None
        watched = self._watched
        aborted = False
        if watched:
            aborted = route is Route.EXEC and not transaction.failed and self.core.changed(
                watched, self._foreign_at_watch)
            self.core.keys.unwatch(watched)
        if route is Route.DISCARD:
            return Route.REPLY, OK
        if aborted:
            return Route.REPLY, resp.null_array(self.resp3)
        block = transaction.block()
        if block[0] is Route.WRITE and self.core.keys.active:
            self.core.keys.written(transaction.keys, transaction.keys)
        return block

    def _script_statement(self, args: list[bytes], raw: bytes) -> tuple[Route, bytes]:
        """SCRIPT LOAD|EXISTS|FLUSH (kvstores.scripts Rule 3)."""
        sub = args[1].upper()
        scripts = self.core.scripts
        if sub == b"LOAD":
            if len(args) != 3:
                return Route.REPLY, resp.error("ERR unknown subcommand or wrong number of "
                                               "arguments for 'load'. Try SCRIPT HELP.")
            scripts.add(args[2])
            return Route.READ, raw  # the local server compiles it and answers its SHA1
        if sub == b"EXISTS":
            return Route.REPLY, scripts.exists(args[2:])
        scripts.flush()
        return Route.REPLY, OK

    def _watch_statement(self, args: list[bytes]) -> tuple[Route, bytes]:
        """WATCH or UNWATCH (Rule 7)."""
        unwatch = args[0].upper() == b"UNWATCH"
        if self._transaction is not None:
            if unwatch:  # queued as redis queues it (EXEC unwatches anyway)
                return Route.REPLY, self._transaction.queue(Route.REPLY, OK, args)
            return Route.REPLY, resp.error("ERR WATCH inside MULTI is not allowed")
        if unwatch:
            self.core.keys.unwatch(self._watched)
            return Route.REPLY, OK
        if not self._watched:
            pipe = self.core.pipe
            self._foreign_at_watch = pipe.foreign_applied if pipe is not None else 0
        self.core.keys.watch(args[1:], self._watched)
        return Route.REPLY, OK

    def _continue(self) -> None:
        if not self._closing and self._buf:
            self.parse()


class MemcachedConnection(_Connection):
    def protocol_error(self, text: str) -> bytes:
        return mctext.client_error(text)

    def parse(self) -> None:
        buf = self._buf
        now_s = int(time.time())
        core = self.core
        pos = 0
        count = 0
        while count < CLIENT_COMMANDS_PER_READ_MAX:
            try:
                parsed = mctext.parse_one(buf, pos, now_s)
            except mctext.LineError as exc:
                del buf[:pos]
                self.reply_and_close(self.protocol_error(str(exc)))
                return
            if parsed is None:
                break
            command, pos = parsed
            count += 1
            route = command.route
            if route is Route.WRITE or route is Route.READ:
                if route is Route.WRITE and core.keys.active:
                    keys = mctext.written_keys(command.data)
                    core.keys.written(keys, keys)
                core.submit(route, command.data, self.slot(command.noreply), command.framing)
            elif route is Route.CAS:
                core.submit_cas(command.data, self.slot(command.noreply))
            elif route is Route.REPLY:
                self.reply(command.data, command.noreply)
            elif route is Route.STATUS:
                lines = "".join(f"STAT {key} {value or '-'}\r\n" for key, value in core.status())
                self.reply(lines.encode() + b"END\r\n")
            elif route is Route.SIDE:
                core.side(command.data, self.slot())
            elif route is Route.FORWARDER:
                self.from_forwarder = True
                self.reply(command.data)
            else:
                del buf[:pos]
                self._closing = True
                self._drain()
                if not self._slots and self._transport is not None:
                    self._transport.close()
                return
        del buf[:pos]
        if count == CLIENT_COMMANDS_PER_READ_MAX:
            self.core.loop.call_soon(self._continue)

    def _continue(self) -> None:
        if not self._closing and self._buf:
            self.parse()
