"""``--follower-writes forward``: a follower sends clients' writes to the leader's front end.

Rule 1: a forwarded write travels as the bytes the leader would propose (expiries already
        absolute, ``noreply`` removed), over one ordered connection per leader address; the
        leader's reply goes back to the client's slot.
Rule 2: a reply that promises nothing was applied (redirect, TRYAGAIN: the leader moved, is
        paused or not elected yet, or its entry provably lost its log index) is retried through
        this server's own routing after ``FORWARD_RETRY_SLEEP_S``, until ``FORWARD_RETRY_S_MAX``:
        if this server became leader it proposes the write itself. The same holds for this
        server's own proposals while it leads (``retrying``). Any other reply, "outcome
        unknown" included, goes to the client.
Rule 3: a connection lost with writes outstanding answers them "outcome unknown" (the leader may
        have applied them); they are never retried.
Rule 4: a client's pipelined writes may be reordered when one of them is retried (the next one
        may reach the new leader first): clients that need their own writes in order across a
        failover wait for each reply (redis-benchmark and the load clients do).
Rule 5: a forwarded write is forwarded once: each connection opens with ``KVSTORES FORWARDER``
        (memcached ``kvstores forwarder``), and a server that is not the leader answers that
        connection's writes with a redirect instead of forwarding them, which the origin retries.
        Two servers that each think the other leads would otherwise forward to each other and
        wait forever, each connection's replies being in order.
Rule 6: a RESP3 client's write is forwarded on a connection switched to RESP3 for it
        (pipe Rule 8): the leader's front end answers it in RESP3, and RESP2 clients' writes in
        RESP2.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

from kvstores.constants import FORWARD_RETRY_S_MAX, FORWARD_RETRY_SLEEP_S, QUERY_CONNECT_S
from kvstores.frontend import Core
from kvstores.pipe import Framer, LocalPipe, Slot, SlotOwner
from kvstores.redis_rules import Route

log = logging.getLogger("kvstores.forward")


class _Retry(SlotOwner):
    """Receives the leader's reply to one forwarded write (Rule 2)."""

    __slots__ = ("forwarder", "payload", "client_slot", "kind", "deadline")

    def __init__(self, forwarder: LeaderForwarder, payload: bytes, client_slot: Slot, kind: int,
                 deadline: float) -> None:
        self.forwarder = forwarder
        self.payload = payload
        self.client_slot = client_slot
        self.kind = kind
        self.deadline = deadline

    def slot_filled(self, slot: Slot) -> None:
        assert slot.data is not None
        self.forwarder.replied(self, slot.data)


class LeaderForwarder:
    """See module rules. One per follower front end; loop thread only."""

    def __init__(self, core: Core, loop: asyncio.AbstractEventLoop, framer: Framer,
                 kind_of: Callable[[bytes], int], hello: bytes,
                 resp3_wrap: tuple[bytes, bytes] | None,
                 multi_reply: tuple[bytes, Callable[[bytes], int]] | None) -> None:
        self._hello = hello
        self._resp3_wrap = resp3_wrap
        self._multi_reply = multi_reply
        self._core = core
        self._loop = loop
        self._framer = framer
        self._kind_of = kind_of
        self._pipes: dict[str, LocalPipe] = {}
        self._held: list[LocalPipe] = []
        self.forwarded_count = 0
        self.retried_count = 0

    def forward(self, leader_id: int | None, payload: bytes, slot: Slot, kind: int) -> None:
        deadline = slot.retry_deadline or time.monotonic() + FORWARD_RETRY_S_MAX
        core = self._core
        address = None if leader_id is None or leader_id == core.replica_id else \
            core.address_of(leader_id)
        if address is None:
            self._retry_later(payload, slot, kind, deadline, core.flavor.unavailable(
                f"server {core.replica_id}: no leader known yet"))
            return
        pipe = self._pipes.get(address)
        if pipe is None:
            try:
                pipe = self._open(address)
            except OSError as exc:
                self._retry_later(payload, slot, kind, deadline, core.flavor.unavailable(
                    f"server {core.replica_id}: cannot reach the leader at {address}: {exc}"))
                return
        self.forwarded_count += 1
        if pipe not in self._held:
            pipe.hold()  # this turn's forwarded writes leave together (pipe Rule 6)
            self._held.append(pipe)
        pipe.send(payload, Slot(_Retry(self, payload, slot, kind, deadline), resp3=slot.resp3),
                  kind)

    def release(self) -> None:
        """End of the front end's turn: send what this turn forwarded."""
        held, self._held = self._held, []
        for pipe in held:
            pipe.release()

    def retrying(self, payload: bytes, slot: Slot, kind: int) -> Slot:
        """A slot for this leader's own proposal of ``payload``: a reply saying it was not
        applied (its log index went to another entry) retries it like a forwarded one."""
        deadline = slot.retry_deadline or time.monotonic() + FORWARD_RETRY_S_MAX
        return Slot(_Retry(self, payload, slot, kind, deadline), resp3=slot.resp3)

    def replied(self, retry: _Retry, reply: bytes) -> None:
        if self._core.flavor.retryable(reply):
            self._retry_later(retry.payload, retry.client_slot, retry.kind, retry.deadline, reply)
        else:
            retry.client_slot.fill(reply)

    def _retry_later(self, payload: bytes, slot: Slot, kind: int, deadline: float,
                     reply: bytes) -> None:
        if time.monotonic() >= deadline:
            slot.fill(reply)
            return
        self.retried_count += 1
        slot.retry_deadline = deadline
        self._loop.call_later(FORWARD_RETRY_SLEEP_S, self._core.submit, Route.WRITE, payload,
                              slot, kind)

    def _open(self, address: str) -> LocalPipe:
        host, _, port = address.rpartition(":")
        sock = socket.create_connection((host, int(port)), QUERY_CONNECT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        unknown = self._core.flavor.unknown(
            f"server {self._core.replica_id} lost its connection to the leader at {address}")
        pipe = LocalPipe(sock, self._loop, self._framer, self._kind_of,
                         lambda reason: self._lost(address, reason), unknown, self._resp3_wrap,
                         self._multi_reply)
        pipe.send(self._hello, None, 0)  # Rule 5: the leader must never forward these again
        self._pipes[address] = pipe
        log.warning("server %d: forwarding writes to the leader at %s", self._core.replica_id,
                    address)
        return pipe

    def _lost(self, address: str, reason: str) -> None:
        pipe = self._pipes.pop(address, None)
        if pipe is not None:
            log.warning("server %d: connection to the leader at %s lost: %s",
                        self._core.replica_id, address, reason)
            pipe.abandon()
            pipe.close()

    def close(self) -> None:
        for address in list(self._pipes):
            self._lost(address, "closing")
