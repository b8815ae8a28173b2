"""Wake a coroutine of the gRPC event loop from whichever thread has news for it.

Rule 1: a ``LoopSignal`` belongs to the event loop running where it was made; ``set`` may be
        called from any thread: on the loop's own thread it sets the flag at once (the usual
        case on a leader, whose apply path runs in the proposing handler), from another thread
        (the batcher's proposer, the consensus pump, a pause) it hands the set to the loop.
Rule 2: ``wait`` returns once ``set`` was called since the last ``wait`` returned (sets made
        meanwhile are not lost, several count as one), so a waiter that re-checks its state after
        every ``wait`` never misses news. A set after the loop closed is dropped: nobody waits.
"""

from __future__ import annotations

import asyncio
import threading


class LoopSignal:
    """A flag one coroutine waits on and any thread sets (see module rules)."""

    __slots__ = ("_event", "_loop", "_thread")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._event = asyncio.Event()

    def set(self) -> None:
        if threading.get_ident() == self._thread:
            self._event.set()
            return
        try:
            self._loop.call_soon_threadsafe(self._event.set)
        except RuntimeError:  # the loop is closed: the server is shutting down (Rule 2)
            pass

    async def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for a set (Rule 2); False if ``timeout_s`` passed first."""
        if timeout_s is None:
            await self._event.wait()
        else:
            try:
                await asyncio.wait_for(self._event.wait(), timeout_s)
            except TimeoutError:
                return False
        self._event.clear()
        return True


__all__ = ["LoopSignal"]
