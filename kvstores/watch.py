"""What a front end knows of which keys its clients' writes may change: the counts behind
``WATCH`` and memcached ``cas``, and the clients a blocking pop keeps waiting.

Rule 1 (counts): every write submitted through the front end is counted (``touch``); a watched
        key remembers the count of the last write that may change it, and a write whose keys
        are unknown (None) counts for every key. A connection's watched keys each keep the
        count at their ``watch``; ``changed`` says whether a later write may have changed one.
        Only watched keys are remembered: ``unwatch`` forgets a key nobody watches any more.
Rule 2 (waiters): ``wait`` registers a waiter under each of its keys, in arrival order;
        ``wake`` wakes the first waiter of each key named (every waiter for None). The waiter
        decides what waking means (``kvstores.blocking``).
Rule 3: ``written`` is what a client's write does: both of the above, each only while
        someone watches or waits (``active``), so that a front end nobody watches pays one
        truth test per write. A script counts for every key (it may touch undeclared ones)
        but wakes only its declared keys' waiters: a missed wake delays a waiter (until the
        next write to its key, or its timeout), a missed count could let an EXEC through.
        One event-loop thread uses this; nothing here does I/O.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol


class Waiter(Protocol):
    def wake(self) -> None: ...


class KeyEvents:
    """See the module rules."""

    def __init__(self) -> None:
        self.watchers: dict[bytes, int] = {}  # watched key -> connections watching it
        self._touched: dict[bytes, int] = {}  # watched key -> count of its last write
        self._writes = 0
        self._touched_all = 0  # count of the last write whose keys were unknown
        self.waiters: dict[bytes, deque[Waiter]] = {}  # Rule 2

    @property
    def active(self) -> bool:
        return bool(self.watchers or self.waiters)

    def written(self, keys: list[bytes] | None, wakes: list[bytes] | None) -> None:
        """Rule 3: a client's write that may change ``keys`` (None: any) is being submitted;
        it wakes the waiters of ``wakes`` (None: every waiter)."""
        if self.watchers:
            self.touch(keys)
        if self.waiters:
            self.wake(wakes)

    # -- counts (Rule 1) -------------------------------------------------------------------------
    def touch(self, keys: list[bytes] | None) -> None:
        self._writes += 1
        if keys is None:
            self._touched_all = self._writes
            return
        watchers = self.watchers
        for key in keys:
            if key in watchers:
                self._touched[key] = self._writes

    def watch(self, keys: list[bytes], watched: dict[bytes, int]) -> None:
        for key in keys:
            if key not in watched:
                watched[key] = self._writes
                self.watchers[key] = self.watchers.get(key, 0) + 1

    def unwatch(self, watched: dict[bytes, int]) -> None:
        watchers = self.watchers
        for key in watched:
            left = watchers[key] - 1
            if left:
                watchers[key] = left
            else:
                del watchers[key]
                self._touched.pop(key, None)
        watched.clear()

    def changed(self, watched: dict[bytes, int]) -> bool:
        touched, touched_all = self._touched, self._touched_all
        return any(max(touched.get(key, 0), touched_all) > at for key, at in watched.items())

    # -- waiters (Rule 2) ------------------------------------------------------------------------
    def wait(self, keys: tuple[bytes, ...], waiter: Waiter) -> None:
        for key in keys:
            self.waiters.setdefault(key, deque()).append(waiter)

    def stop_waiting(self, keys: tuple[bytes, ...], waiter: Waiter) -> None:
        for key in keys:
            queue = self.waiters.get(key)
            if queue is not None and waiter in queue:
                queue.remove(waiter)
                if not queue:
                    del self.waiters[key]

    def wake(self, keys: list[bytes] | tuple[bytes, ...] | None) -> None:
        waiters = self.waiters
        if keys is None:
            for waiter in {id(w): w for queue in waiters.values() for w in queue}.values():
                waiter.wake()
            return
        for key in keys:
            queue = waiters.get(key)
            if queue:
                queue[0].wake()
