"""The one ordered connection from a front end to its local server, shared by every client.

Rule 1: the order in which commands reach the local server is the order of ``send`` calls, and
        each command's reply goes to the target recorded with it: replies come back in order on
        one connection, so a FIFO of targets routes them. A target is a client's reply ``Slot``,
        an entry's tag (the reply goes to the slot that ``claim``ed the tag: the leader's front
        end claims it before proposing; unclaimed, it is dropped) or ``None`` (dropped).
Rule 2: a log entry is ``TAG_BYTES`` of tag (unique per proposal: proposer id and a counter)
        then the command; an entry with no command is a new leader's no-op (``NOOP_TAG``), which
        only takes its index. ``apply`` (consensus's ``on_commit``) sends committed entries'
        commands in log order with no gap:
        a replica whose first entry is not 1, or that skips one, stops with ``PipeFailed`` rather
        than serve a data set that is not the log's.
Rule 3: the event loop's thread never blocks on the socket: what the kernel does not take waits
        in a buffer flushed when the socket is writable. Another thread (the consensus pump)
        may send too; it waits, without holding the lock, while more than
        ``PIPE_OUT_BYTES_SOFT_MAX`` is unsent. The lock covers target FIFO + buffer + send, so
        targets and bytes stay in the same order.
Rule 4: claims are made and replies routed only on the loop's thread, and a claim precedes the
        proposal; a leader that loses leadership during ``propose`` keeps its claims a while, so
        an entry the new leader commits anyway still answers its client, and ``expect`` turns an
        index applied with someone else's entry into a definite "not applied".
Rule 5: if the local server goes away the pipe calls ``on_failure`` once: the replica's data is
        gone, so the server stops (restarted, it comes back empty and rejoins by snapshot; see
        docs/kvstores.md).
Rule 6: between ``hold`` and ``release`` (one event-loop turn of the front end) the loop
        thread's sends only append to the buffer, so a turn's commands from many clients reach
        the local server in one system call; other threads' sends are not held.
Rule 7 (snapshots): ``apply`` moves ``applied_index`` and queues the entry's command under one
        hold of the lock, and ``begin_snapshot`` reads ``applied_index`` and queues its barrier
        under the same lock, then holds every later command (of any thread) back until
        ``end_snapshot``. So once the barrier's reply arrives, the local server has executed
        exactly the log up to the returned index and nothing after it, and stays so while the
        snapshot is read on another connection. Nobody blocks meanwhile (the leader's event
        loop applies entries too): held commands wait in a buffer, in order.
Rule 8 (RESP3 clients, redis pipes only: ``resp3_wrap``): a command whose reply goes to a slot
        marked ``resp3`` (a read, or an applied entry whose tag that slot claimed) must run while
        the connection speaks RESP3; one whose reply goes to any other slot, while it speaks
        RESP2; one whose reply nobody reads (an unclaimed entry: every follower's) in either.
        The protocol is tracked in send order under the lock, and where a command needs the
        other one, ``HELLO 3`` or ``HELLO 2`` is queued just before it (its reply dropped). So
        a RESP3 client gets redis-server's RESP3 replies, every other client RESP2, and a switch
        costs a command only where the two kinds interleave. The protocol changes only replies,
        never the data set.
Rule 9: a command that the local server answers more than once (a redis transaction block,
        ``kvstores.transaction`` Rule 2: a command that starts with ``multi_reply[0]``, whose
        replies ``multi_reply[1]`` counts) records that many targets: the last is the
        command's, the others are dropped.
Rule 10: ``foreign_applied`` counts the applied entries with a command whose tag no client of
        this front end claimed (another leader's, or one whose claim was withdrawn), in the
        lock hold that queues the command: a ``WATCH`` that reads the count before such an
        entry's command is queued sees it grow; one that reads it after is followed on this
        connection by everything that command did (``kvstores.frontend`` Rule 7).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable

from kvstores.constants import PIPE_OUT_BYTES_SOFT_MAX, PIPE_RECV_BYTES, PIPE_WAIT_S, TAG_BYTES

_TAG = struct.Struct("<Q")
NOOP_TAG = 0  # real tags are >= 1 << 48 (replica ids start at 1)
RECENT_TAGS_MASK = 4095  # the last 4,096 applied tags are kept (a failed batch is <= 256)
assert _TAG.size == TAG_BYTES

log = logging.getLogger("kvstores.pipe")


def tag_entry(tag: int, command: bytes) -> bytes:
    """The log payload of ``command`` proposed under ``tag`` (Rule 2)."""
    return _TAG.pack(tag) + command


class PipeFailed(RuntimeError):
    """The local server is unusable, or the log arrived out of order; the message says why."""


class Slot:
    """One client command's place in that client's reply order."""

    __slots__ = ("conn", "data", "drop", "retry_deadline", "forwarded", "resp3")

    def __init__(self, conn: SlotOwner, drop: bool = False, forwarded: bool = False,
                 resp3: bool = False) -> None:
        self.conn = conn
        self.data: bytes | None = None
        self.drop = drop  # memcached noreply: the reply is read but not sent
        self.retry_deadline = 0.0  # kvstores.forward: retry a forwarded write until then
        self.forwarded = forwarded  # came from another server's forwarder: never forward again
        self.resp3 = resp3  # the reply must be RESP3 (Rule 8)

    def fill(self, data: bytes) -> None:
        assert self.data is None
        self.data = data
        self.conn.slot_filled(self)


class SlotOwner:
    """What a ``Slot`` reports to (a client connection)."""

    def slot_filled(self, slot: Slot) -> None:
        raise NotImplementedError


Target = Slot | int | None
Framer = Callable[[bytearray, int, int], int]


class LocalPipe:
    """See module rules. ``framer(buf, pos, kind)`` returns a reply's end or -1;
    ``kind_of(payload)`` gives the framing kind of a log entry."""

    def __init__(
        self,
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
        framer: Framer,
        kind_of: Callable[[bytes], int],
        on_failure: Callable[[str], None],
        failure_reply: bytes,
        resp3_wrap: tuple[bytes, bytes] | None = None,
        multi_reply: tuple[bytes, Callable[[bytes], int]] | None = None,
    ) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._loop = loop
        self._framer = framer
        self.kind_of = kind_of
        self._on_failure = on_failure
        self._failure_reply = failure_reply
        self._resp3_wrap = resp3_wrap  # (HELLO 3, HELLO 2) on redis pipes (Rule 8)
        self._resp3_on = False  # the protocol the server speaks after the last queued command
        # Rule 9: (the prefix of commands answered more than once, their count), or None
        self._multi_reply = multi_reply
        self._lock = threading.Lock()
        self._out = bytearray()
        self._pending: deque[tuple[Target, int]] = deque()
        self._claims: dict[int, Slot] = {}
        self._in = bytearray()
        self._writer_on = False
        self._held = False
        self._deferring = False  # Rule 7: a snapshot is being read
        self._deferred = bytearray()
        self._loop_thread = threading.get_ident()
        self.failed: str | None = None
        self.applied_index = 0
        self._recent_tags = [0] * (RECENT_TAGS_MASK + 1)  # tag applied at each recent index
        self._expected: dict[int, int] = {}  # index -> tag a failed proposal may have put there
        self._lost_reply = failure_reply
        self.sent_count = 0
        self.foreign_applied = 0  # Rule 10
        loop.add_reader(sock.fileno(), self._on_readable)

    # -- sending (any thread) -----------------------------------------------------------------

    def send(self, data: bytes, target: Target, kind: int = 0) -> None:
        """Queue ``data`` for the local server; its reply goes to ``target`` (Rule 1)."""
        if self.failed is not None:
            if isinstance(target, Slot):
                target.fill(self._failure_reply)
            return
        in_loop = threading.get_ident() == self._loop_thread
        with self._lock:
            self._enqueue_locked(data, target, kind, in_loop)
        if not in_loop:
            self._wait_unsent()

    def send_many(self, commands: list[bytes], targets: list[Target], kind: int = 0) -> None:
        """``send`` of each command in order, under one hold of the lock and with one buffer
        append (a snapshot's restores: thousands of commands). Any thread but the loop's."""
        assert len(commands) == len(targets)
        assert threading.get_ident() != self._loop_thread
        if self.failed is not None:
            for target in targets:
                if isinstance(target, Slot):
                    target.fill(self._failure_reply)
            return
        with self._lock:
            switch = self._switch_locked(False, kind) if self._resp3_on else b""
            self._pending.extend((target, kind) for target in targets)
            self.sent_count += len(targets)
            buffer = self._deferred if self._deferring else self._out
            buffer += switch
            for command in commands:
                buffer += command
            if not self._deferring:
                self._flush_locked()
                if self._out:
                    self._want_writer_locked(False)
        self._wait_unsent()

    def _enqueue_locked(self, data: bytes, target: Target, kind: int, in_loop: bool) -> None:
        """Record ``target`` and send or buffer ``data`` (caller holds ``_lock``, Rules 1, 3,
        6, 7, 8 and 9)."""
        pending = self._pending
        multi = self._multi_reply
        if multi is not None and data.startswith(multi[0]):  # Rule 9
            pending.extend([(None, kind)] * (multi[1](data) - 1))
        if self._resp3_wrap is not None:  # Rule 8
            slot = self._claims.get(target) if isinstance(target, int) else target
            if slot is not None and slot.resp3 is not self._resp3_on:
                data = self._switch_locked(slot.resp3, kind) + data  # its reply comes first
        pending.append((target, kind))
        self.sent_count += 1
        if self._deferring:
            self._deferred += data  # Rule 7: leaves after the snapshot was read
            return
        out = self._out
        if in_loop and self._held:
            out += data  # release() sends the whole turn's commands at once (Rule 6)
            return
        if out:
            out += data
            self._flush_locked()
        else:
            try:
                sent = self._sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._fail(f"cannot write to the local server: {exc}")
                return
            if sent == len(data):
                return
            out += memoryview(data)[sent:]
        if out:
            self._want_writer_locked(in_loop)

    def _switch_locked(self, resp3: bool, kind: int) -> bytes:
        """Queue the switch of the server's protocol (Rule 8): its bytes, to send first."""
        assert self._resp3_wrap is not None
        self._resp3_on = resp3
        self._pending.append((None, kind))  # HELLO's reply: dropped
        return self._resp3_wrap[0 if resp3 else 1]

    def _want_writer_locked(self, in_loop: bool) -> None:
        if not self._writer_on and self.failed is None:
            self._writer_on = True
            if in_loop:
                self._loop.add_writer(self._sock.fileno(), self._on_writable)
            else:
                self._loop.call_soon_threadsafe(self._add_writer)

    def _wait_unsent(self) -> None:
        """A non-loop thread waits while too much is unsent (Rule 3)."""
        while (len(self._out) + len(self._deferred) > PIPE_OUT_BYTES_SOFT_MAX
               and self.failed is None):
            time.sleep(PIPE_WAIT_S)

    def hold(self) -> None:
        """Loop thread: buffer this turn's sends until ``release`` (Rule 6)."""
        self._held = True

    def release(self) -> None:
        """Loop thread: send what ``hold`` buffered, in one system call when the kernel takes it."""
        self._held = False
        with self._lock:
            if not self._out:
                return
            self._flush_locked()
            if self._out:
                self._want_writer_locked(True)

    def apply(self, index: int, payload: bytes | memoryview) -> None:
        """Consensus ``on_commit``: send the command of committed entry ``index`` (Rule 2). The
        index moves and the command is queued under one hold of the lock (Rule 7)."""
        if index != self.applied_index + 1:
            reason = (f"log entry {index} arrived after {self.applied_index}: this replica's "
                      "local server does not hold the entries before it")
            self._fail(reason)
            raise PipeFailed(reason)
        tag = _TAG.unpack_from(payload)[0]
        data = bytes(payload[TAG_BYTES:])  # empty: a new leader's no-op (Rule 2)
        in_loop = threading.get_ident() == self._loop_thread
        with self._lock:
            self._recent_tags[index & RECENT_TAGS_MASK] = tag
            self.applied_index = index
            expected = self._expected.pop(index, None) if self._expected else None
            if data and self.failed is None:
                if tag not in self._claims:
                    self.foreign_applied += 1  # Rule 10
                self._enqueue_locked(data, tag, self.kind_of(data), in_loop)
        if expected is not None and expected != tag:
            self._loop.call_soon_threadsafe(self._lost, expected)
        if data and not in_loop:
            self._wait_unsent()

    # -- snapshots (Rule 7) -------------------------------------------------------------------

    def begin_snapshot(self, barrier: bytes, kind: int, target: Slot) -> int:
        """Freeze the local server at the applied index, returned: ``barrier`` is sent (its
        reply, routed to ``target``, says every command before it was executed) and every later
        command is held until ``end_snapshot``. Any thread; at most one snapshot at a time."""
        assert not self._deferring
        if self.failed is not None:
            raise PipeFailed(self.failed)
        in_loop = threading.get_ident() == self._loop_thread
        with self._lock:
            index = self.applied_index
            self._enqueue_locked(barrier, target, kind, in_loop)
            self._deferring = True
        return index

    def end_snapshot(self) -> None:
        """Send what ``begin_snapshot`` held, in order (any thread)."""
        in_loop = threading.get_ident() == self._loop_thread
        with self._lock:
            assert self._deferring
            self._deferring = False
            if not self._deferred:
                return
            self._out += self._deferred
            self._deferred = bytearray()
            if self.failed is None:
                self._flush_locked()
            if self._out:
                self._want_writer_locked(in_loop)

    def installed(self, index: int) -> None:
        """A snapshot of ``index`` replaced the local server's data (its commands went through
        ``send_many`` before this call): the log continues at ``index + 1`` (Rule 2)."""
        with self._lock:
            self.applied_index = index
            self._expected.clear()

    def expect(self, first_index: int, tags: list[int], lost_reply: bytes) -> None:
        """A failed proposal wrote ``tags`` at ``first_index``... if anywhere: each index that
        is (or gets) applied with another entry's tag proves that entry lost, and its claim is
        answered ``lost_reply`` (nothing applied: safe to retry). Loop thread (Rule 4)."""
        self._lost_reply = lost_reply
        lost: list[int] = []
        with self._lock:
            for index, tag in enumerate(tags, first_index):
                if index > self.applied_index:
                    self._expected[index] = tag
                elif (index > self.applied_index - RECENT_TAGS_MASK
                      and self._recent_tags[index & RECENT_TAGS_MASK] != tag):
                    lost.append(tag)
        for tag in lost:
            self._lost(tag)

    def _lost(self, tag: int) -> None:
        slot = self._claims.pop(tag, None)
        if slot is not None:
            slot.fill(self._lost_reply)

    def claim(self, tag: int, slot: Slot) -> None:
        """Route the reply of the entry tagged ``tag`` to ``slot`` (loop thread, Rule 4)."""
        self._claims[tag] = slot

    def unclaim(self, tag: int) -> Slot | None:
        """Withdraw a claim; the slot if it was still waiting (loop thread)."""
        return self._claims.pop(tag, None)

    def _flush_locked(self) -> None:
        out = self._out
        try:
            sent = self._sock.send(out)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(f"cannot write to the local server: {exc}")
            return
        del out[:sent]

    def _add_writer(self) -> None:
        if self.failed is None:
            self._loop.add_writer(self._sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        with self._lock:
            self._flush_locked()
            if not self._out or self.failed is not None:
                self._writer_on = False
                self._loop.remove_writer(self._sock.fileno())

    # -- replies (loop thread) ----------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(PIPE_RECV_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(f"cannot read from the local server: {exc}")
            return
        if not data:
            self._fail("the local server closed the connection (did it exit?)")
            return
        buf = self._in
        buf += data
        pending = self._pending
        framer = self._framer
        claims = self._claims
        pos = 0
        while pending:
            target, kind = pending[0]
            end = framer(buf, pos, kind)
            if end < 0:
                break
            pending.popleft()
            if target is not None:
                if type(target) is int:
                    slot = claims.pop(target, None)
                    if slot is not None:
                        slot.fill(bytes(buf[pos:end]))
                else:
                    assert isinstance(target, Slot)
                    target.fill(bytes(buf[pos:end]))
            pos = end
        if pos:
            del buf[:pos]
        if buf and not pending:
            self._fail(f"the local server sent {len(buf)} bytes nobody asked for")

    def _fail(self, reason: str) -> None:
        if self.failed is not None:
            return
        self.failed = reason
        log.critical("local server pipe failed: %s", reason)
        self._loop.call_soon_threadsafe(self._on_failure, reason)

    def abandon(self) -> None:
        """After a failure: answer every outstanding client slot with the failure reply."""
        assert self.failed is not None
        while self._pending:
            target, _kind = self._pending.popleft()
            slot = self._claims.pop(target, None) if type(target) is int else target
            if isinstance(slot, Slot):
                slot.fill(self._failure_reply)

    def close(self) -> None:
        try:
            self._loop.remove_reader(self._sock.fileno())
            if self._writer_on:
                self._loop.remove_writer(self._sock.fileno())
        except (ValueError, RuntimeError):
            pass
        self._sock.close()
