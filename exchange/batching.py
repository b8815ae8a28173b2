"""Group commit on the leader: requests that arrive while a proposal is in flight share one entry.

Rule 1: no added delay when idle: a request that finds no proposal in flight is proposed at once,
        in the submitting thread. Requests that arrive while a proposal is in flight wait in one
        FIFO queue; when that proposal returns, the queue leaves as the next batch (proposed by the
        proposer thread, which keeps proposing until the queue is empty). So at most one proposal
        is in flight, and requests are proposed in the order they were submitted.
Rule 2: a batch holds at most ``requests_max`` requests and its entry at most ``bytes_max`` bytes
        (a consensus slot); a batch of one request is a single-request entry (the format the
        unary path always used), so an idle exchange logs exactly what it logged before batching.
Rule 3: a proposal that raises fails every request of its batch (``Sink.fail``); a request whose
        sink is already cancelled (its session failed) is dropped from the queue unproposed (and
        handed to ``failed`` with ``Dropped``, so its owner forgets it), so a session's later
        requests never overtake its failed earlier ones.
Rule 4: the batcher never touches the state machine: replies reach sinks through the apply path
        (``ExchangeNode.on_commit``), which runs inside ``propose`` on the leader.
Rule 5: a pipelined submitter (an order session, which keeps several messages in flight) yields
        once under contention before it proposes. A proposal (microseconds of replication plus
        the apply) holds the GIL almost throughout, so other handlers rarely get to queue behind
        it: with 8 sessions of one order per message an entry carried 1.05 requests. So when a
        request was queued behind a proposal within the last ``CONTENDED_S`` and fewer than
        ``SMALL_BATCH`` requests are queued, such a submitter that takes the proposer role first
        releases the GIL once (``sleep(0)``): handlers that are runnable queue their requests,
        and they leave in the same entry (2.5 requests per entry there). Never otherwise: an
        idle exchange or one closed-loop trader is not contended (a yield there cost one trader
        50-100 us of p50); a batch that is already large (order lists of 20) gains nothing (the
        hand-offs cost 7-16% of the throughput); unary calls (one request per caller in flight)
        pay the wait and gain little (4 closed-loop unary traders: -3% answers, and the first
        answer after a fail-over ~0.5 ms later).
Rule 6: on the gRPC event loop (one thread runs every handler, so nothing queues behind a
        proposal made there) a session's requests are queued with ``submit_later``: the first of
        a loop turn schedules one flush (``schedule``: the loop's ``call_soon``), which runs after
        every handler that was ready in that turn and proposes all their requests as one batch
        (Rule 2's bounds). An idle loop runs the flush in its next turn, with nothing ahead of
        it. A flush that finds a proposal in flight leaves the queue to its proposer (Rule 1).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from exchange.state_machine import (
    BATCH_HEADER,
    BATCH_ITEM,
    ENTRY_HEADER,
    Reply,
    encode_batch,
)

log = logging.getLogger("exchange.batching")
STOP_JOIN_S = 2.0
CONTENDED_S = 0.01  # Rule 5: a request queued behind a proposal this recently means contention
SMALL_BATCH = 8  # Rule 5: only a batch smaller than this waits for more by yielding


class Dropped(Exception):
    """A queued request was not proposed because its sink was cancelled (Rule 3)."""


class Sink(Protocol):
    """Where one request's reply goes (a unary handler's waiter, a session's slot)."""

    @property
    def cancelled(self) -> bool: ...

    def deliver(self, reply: Reply) -> None: ...

    def fail(self, error: Exception) -> None: ...


class Pending:
    """One request waiting for a proposal: ids, encoded command, where the reply goes."""

    __slots__ = ("body", "client_id", "seq", "sink", "size")

    def __init__(self, client_id: int, seq: int, body: bytes, sink: Sink) -> None:
        self.client_id = client_id
        self.seq = seq
        self.body = body
        self.sink = sink
        self.size = BATCH_ITEM.size + len(body)  # bytes it adds to a batch entry


class Batcher:
    """The leader's group commit (see module rules); ``submit`` from any thread."""

    def __init__(
        self,
        propose: Callable[[bytes], int],
        failed: Callable[[list[Pending], Exception], None],
        requests_max: int,
        bytes_max: int,
        yield_gil: Callable[[], None] = lambda: time.sleep(0),
    ) -> None:
        assert requests_max >= 1, requests_max
        assert bytes_max >= BATCH_HEADER.size + BATCH_ITEM.size, bytes_max
        self._propose_entry = propose
        self._yield_gil = yield_gil
        self._failed = failed
        self.requests_max = requests_max
        self.bytes_max = bytes_max
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[Pending] = deque()
        self._busy = False  # somebody holds the proposer role (a proposal is in flight)
        self._handed_over = False  # the proposer thread holds it
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._contended_until = 0.0  # Rule 5 (monotonic seconds)
        self._flush_due = False  # Rule 6: a flush is scheduled
        self.entries = 0  # proposals made (statistics)
        self.requests = 0  # requests proposed

    def submit(self, items: list[Pending], pipelined: bool = False) -> None:
        """Queue ``items`` (in order); propose them now if no proposal is in flight (Rule 1),
        after one yield if ``pipelined`` and contended (Rule 5).

        Returns once the items are proposed (idle case: applied, sinks delivered) or queued."""
        assert items
        with self._cond:
            self._queue.extend(items)
            if self._busy:
                self._contended_until = time.monotonic() + CONTENDED_S
                return
            self._busy = True
            contended = (pipelined and len(self._queue) < SMALL_BATCH
                         and time.monotonic() < self._contended_until)
        if contended:
            self._yield_gil()  # Rule 5: runnable handlers queue behind this request
        self._propose_then_release()

    def submit_later(self, items: list[Pending], schedule: Callable[[Callable[[], None]], object],
                     ) -> None:
        """Queue ``items`` (in order) for the flush of this loop turn (Rule 6)."""
        assert items
        with self._cond:
            self._queue.extend(items)
            if self._busy or self._flush_due:
                return
            self._flush_due = True
        schedule(self._flush)

    def _flush(self) -> None:
        with self._cond:
            self._flush_due = False
            if self._busy or not self._queue:  # Rule 6: the proposer in flight takes the queue
                return
            self._busy = True
        self._propose_then_release()

    def _propose_then_release(self) -> None:
        """Holding the proposer role: propose the next batch, then give the role back, or hand
        it to the proposer thread when requests queued meanwhile (Rule 1)."""
        batch = self._take()
        if batch:
            self._propose(batch)
        with self._cond:
            if not self._queue:
                self._busy = False
                return
            self._handed_over = True
            self._ensure_thread()
            self._cond.notify()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="proposer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        """The proposer thread: takes over the role when a proposal ends with requests queued."""
        while True:
            with self._cond:
                while not self._handed_over and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
            batch = self._take()
            if batch:
                self._propose(batch)
                continue
            with self._cond:
                if not self._queue:  # nothing arrived since _take: give the role back
                    self._handed_over = False
                    self._busy = False

    def _take(self) -> list[Pending]:
        """Pop the next batch (Rule 2), dropping requests whose sink is cancelled (Rule 3)."""
        batch: list[Pending] = []
        dropped: list[Pending] = []
        size = BATCH_HEADER.size
        requests_max, bytes_max = self.requests_max, self.bytes_max
        with self._cond:
            queue = self._queue
            while queue and len(batch) < requests_max:
                item = queue[0]
                if item.sink.cancelled:
                    dropped.append(queue.popleft())
                    continue
                if size + item.size > bytes_max and batch:
                    break
                batch.append(queue.popleft())
                size += item.size
        if dropped:
            self._failed(dropped, Dropped("not proposed: the request's session ended"))
        return batch

    def _propose(self, batch: list[Pending]) -> None:
        if len(batch) == 1:
            item = batch[0]
            payload = ENTRY_HEADER.pack(item.client_id, item.seq) + item.body
        else:
            payload = encode_batch([(item.client_id, item.seq, item.body) for item in batch])
        try:
            self._propose_entry(payload)
        except Exception as exc:
            self._failed(batch, exc)
            return
        self.entries += 1
        self.requests += len(batch)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(STOP_JOIN_S)


__all__ = ["Batcher", "Dropped", "Pending", "Sink"]
