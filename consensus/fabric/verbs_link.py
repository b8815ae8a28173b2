"""The writer's half of the verbs fabric: requests and their completions, staging slots, and the
links (reliable-connected queue pairs) a writer posts on. ``consensus.fabric.verbs`` wires them to
the device and the registry.

Rule 1 (one request, one caller): every synchronous read or write and every posted write is one
        ``Request`` with an id unique for the life of the fabric. Its work requests carry the ids
        ``id << 1 | k`` and are all signaled, so each yields exactly one completion (success,
        error or flush) unless its queue pair is reset. The caller waits for its own request and
        sees its own status; nobody else's completion can end its wait.
Rule 2 (polling): one ``CompletionRouter`` per completion queue. Any thread may poll it; the one
        holding the poll lock hands every polled completion to its request, so a completion is
        never parked for someone who will not come. A completion whose request is gone (its
        queue pair was reset meanwhile) is counted and dropped: ids are never reused.
Rule 3 (staging): a request owns one staging slot from ``SlotPool`` until it is finished (every
        work request accounted for, or abandoned after its queue pair was reset), so the device
        never reads or fills a slot that another request uses. A synchronous read keeps its slot
        until its caller copied the data out (``hold``).
Rule 4 (bounds): a fabric has at most ``slots`` requests alive (each owns a slot); a caller that
        finds no free slot helps polling until its deadline, then fails. Nothing here grows with
        the number of operations.
Rule 5 (links): a ``Link`` is one queue pair towards one (owner, region, kind). Any thread may post
        on it, under the link's lock, which is held only while posting. A link is ``READY``,
        ``BROKEN`` (after an error completion or a timeout: posts fail at once with the cause) or
        ``AWAITING`` (a new queue pair is published and waits for the owner's answer). Only the
        fabric's repair thread takes a link out of ``BROKEN`` (``consensus.fabric.verbs`` Rule 5).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from consensus.fabric.base import FabricError

POLL_BATCH = 32  # completions taken per poll
SPIN_POLLS = 64  # polls that only yield the GIL before a waiter starts sleeping between polls
POLL_SLEEP_S = 0.00002  # a waiter's sleep between polls once it stops spinning
WRS_PER_REQUEST_MAX = 2  # body and tail (verbs Rule 4)

READY = "ready"
AWAITING = "awaiting"
BROKEN = "broken"
CLOSED = "closed"
KIND_READ = "read"
KIND_WRITE = "write"
KINDS = (KIND_READ, KIND_WRITE)


class Request:
    """One operation of one caller (Rule 1)."""

    __slots__ = ("finished", "hold", "link", "nonce", "posted_wr_id", "request_id", "slot",
                 "started", "status", "wrs_left")

    def __init__(self, request_id: int, link: Link | None, slot: int, wrs: int,
                 posted_wr_id: int | None, hold: bool) -> None:
        assert 1 <= wrs <= WRS_PER_REQUEST_MAX
        self.request_id = request_id
        self.link = link
        self.slot = slot
        self.wrs_left = wrs
        self.status = 0  # IBV_WC_SUCCESS until a work request says otherwise
        self.finished = False
        self.posted_wr_id = posted_wr_id
        self.hold = hold
        self.started = time.monotonic()
        self.nonce = 0  # the link incarnation it was posted on

    def wr_id(self, k: int) -> int:
        assert 0 <= k < WRS_PER_REQUEST_MAX
        return self.request_id << 1 | k


class SlotPool:
    """Free staging slots (Rule 3); thread-safe."""

    def __init__(self, count: int, slot_bytes: int) -> None:
        self._free: deque[int] = deque(k * slot_bytes for k in range(count))
        self._lock = threading.Lock()
        self.count = count

    def take(self) -> int | None:
        with self._lock:
            return self._free.popleft() if self._free else None

    def give(self, slot: int) -> None:
        with self._lock:
            assert slot not in self._free, f"staging slot {slot} freed twice"
            self._free.append(slot)
            assert len(self._free) <= self.count

    def free(self) -> int:
        with self._lock:
            return len(self._free)


class CompletionRouter:
    """Rule 2 for one completion queue; ``on_finish`` runs once per request, in whichever thread
    saw its last completion (or abandoned it)."""

    def __init__(self, cq: Any, success: int, on_finish: Callable[[Request], None]) -> None:
        self._cq = cq
        self._success = success
        self._on_finish = on_finish
        self._poll_lock = threading.Lock()
        self.lock = threading.Lock()  # guards _requests and each request's fields
        self._requests: dict[int, Request] = {}
        self._next_id = 0
        self.strays = 0

    def new_id(self) -> int:
        with self.lock:
            self._next_id += 1
            return self._next_id

    def add(self, request: Request) -> None:
        with self.lock:
            assert request.request_id not in self._requests
            self._requests[request.request_id] = request

    def forget(self, request: Request) -> None:
        """Drop a request none of whose work requests was posted."""
        with self.lock:
            self._requests.pop(request.request_id, None)
            request.finished = True

    def __len__(self) -> int:
        with self.lock:
            return len(self._requests)

    def alive(self) -> list[Request]:
        with self.lock:
            return list(self._requests.values())

    def poll(self) -> int:
        """Poll once if no other thread is polling; return how many completions were routed."""
        if not self._poll_lock.acquire(blocking=False):
            return 0
        try:
            _, completions = self._cq.poll(POLL_BATCH)
            finished = [r for wc in completions
                        if (r := self._account(wc.wr_id >> 1, int(wc.status))) is not None]
        finally:
            self._poll_lock.release()
        for request in finished:
            self._on_finish(request)
        return len(completions)

    def _account(self, request_id: int, status: int) -> Request | None:
        """Count one completion of ``request_id``; the request if that finished it."""
        with self.lock:
            request = self._requests.get(request_id)
            if request is None:
                self.strays += 1
                return None
            if status != self._success and request.status == self._success:
                request.status = status  # the first error is the request's outcome
            request.wrs_left -= 1
            if request.wrs_left:
                return None
            request.finished = True
            del self._requests[request_id]
            return request

    def abandon(self, requests: Iterable[Request], status: int) -> None:
        """Finish ``requests`` whose queue pair was reset (no completion will come)."""
        finished = []
        with self.lock:
            for request in requests:
                if self._requests.pop(request.request_id, None) is None:
                    continue
                if request.status == self._success:
                    request.status = status
                request.finished = True
                finished.append(request)
        for request in finished:
            self._on_finish(request)

    def wait(self, request: Request, deadline: float) -> bool:
        """Poll until ``request`` is finished (True) or ``deadline`` passes (False)."""
        spins = 0
        while not request.finished:
            if self.poll() == 0:
                if time.monotonic() > deadline:
                    return request.finished
                spins += 1
                time.sleep(0 if spins < SPIN_POLLS else POLL_SLEEP_S)
        return True

    def release_on_timeout(self, request: Request) -> bool:
        """The caller of a held request gives up waiting: True if it is finished already (the
        caller frees the slot), else the slot is freed when the request finishes."""
        with self.lock:
            if request.finished:
                return True
            request.hold = False
            return False


class Link:
    """One queue pair towards one (owner, region, kind), Rule 5. The repair thread and the
    initial ``connect`` set ``qp``/``psn``/``nonce``/``remote``/``region``."""

    def __init__(self, owner: int, name: str, writer: int, kind: str) -> None:
        assert kind in KINDS
        self.owner = owner
        self.name = name
        self.writer = writer
        self.kind = kind
        self.lock = threading.Lock()
        self.state = AWAITING
        self.qp: Any = None
        self.psn = 0
        self.nonce = 0
        self.remote: Any = None
        self.region: Any = None
        self.outstanding: set[Request] = set()
        self.cause: FabricError | None = None
        self.revoked: bool | None = None  # cached answer of "did the owner revoke this link?"
        self.unresponsive = False  # broken by a timeout: callers fail fast until it is repaired
        self.retry_at = 0.0
        self.answer_deadline = 0.0
        self.renewals = 0

    def describe(self) -> str:
        return (f"replica {self.writer} -> region {self.name!r} of replica {self.owner} "
                f"({self.kind} link)")

    def post(self, request: Request, build: Callable[[Any], list[Any]],
             device_error: type[Exception], rejected: type[FabricError]) -> None:
        """Post the work requests ``build(region)`` makes for ``request`` (Rule 5), with the
        region details of the connection it is posted on; raises the link's cause if it is not
        ready, and breaks it if the device refuses a post."""
        with self.lock:
            if self.state != READY:
                raise self.failure(rejected)
            work_requests = build(self.region)
            self.outstanding.add(request)
            request.nonce = self.nonce
            for k, work_request in enumerate(work_requests):
                try:
                    self.qp.post_send(work_request, None)
                except device_error as error:
                    if k == 0:  # nothing of it is on the queue pair
                        self.outstanding.discard(request)
                    failure = FabricError(f"{self.describe()}: post failed: {error}")
                    self._break_locked(failure)
                    raise failure from None

    def finished(self, request: Request) -> None:
        with self.lock:
            self.outstanding.discard(request)

    def break_with(self, cause: FabricError, unresponsive: bool = False) -> bool:
        """Mark the link broken (True if it was ready); the repair thread takes it from here."""
        with self.lock:
            return self._break_locked(cause, unresponsive)

    def _break_locked(self, cause: FabricError, unresponsive: bool = False) -> bool:
        if self.state != READY:
            return False
        self.state = BROKEN
        self.cause = cause
        self.unresponsive = unresponsive
        self.retry_at = 0.0
        return True

    def failure(self, rejected: type[FabricError]) -> FabricError:
        """The error a post on a link that is not ready raises."""
        cause = self.cause
        if isinstance(cause, rejected) or (self.kind == KIND_WRITE and self.revoked):
            return rejected(f"{self.describe()}: write permission revoked or not granted")
        detail = f": {cause}" if cause is not None else ""
        return FabricError(f"{self.describe()} is {self.state}, reconnecting{detail}")
