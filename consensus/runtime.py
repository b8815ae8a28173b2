"""Time, threads and waiting, injected into the replica so that one protocol code base runs both for
real and under the deterministic simulator.

Rule 1: protocol code (everything in ``consensus`` except fabrics, this module's ``RealRuntime`` and
        the CLI) never calls ``time``, ``threading`` or ``random`` directly; it asks its
        ``Runtime``.
Rule 2: every blocking point of protocol code is either a fabric operation or a ``Runtime`` call
        (``sleep``, ``yield_now``, ``Signal.wait``). The simulator switches replicas' activities
        at exactly
        those points, which is what makes a seeded run reproducible.
Rule 3: a ``Mutex`` may be held across fabric operations (the simulator's mutex is scheduler-aware),
        but never while waiting on a ``Signal`` or sleeping: release every ``Mutex`` before waiting.

``RealRuntime`` maps this onto the clock and OS threads. The simulator's runtime lives in
``consensus.sim``.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol


class Mutex(Protocol):
    def __enter__(self) -> object: ...

    def locked(self) -> bool:
        """Whether some activity holds it (for invariant checks, never for control flow)."""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> None: ...


class Signal(Protocol):
    """A level-triggered flag: ``set`` wakes every waiter; ``clear`` resets it."""

    def set(self) -> None: ...

    def clear(self) -> None: ...

    def is_set(self) -> bool: ...

    def wait(self, timeout_s: float | None) -> bool:
        """Wait until set or until ``timeout_s`` passes; return whether it is set."""


class Activity(Protocol):
    """A started background activity (a thread in production)."""

    name: str

    def join(self, timeout_s: float | None) -> None: ...

    def is_alive(self) -> bool: ...


class Runtime(Protocol):
    def now_ns(self) -> int:
        """Monotonic time in nanoseconds."""

    def sleep(self, seconds: float) -> None: ...

    def yield_now(self) -> None:
        """Give other activities a chance to run (a polling loop calls this when it found
        nothing)."""

    def spawn(self, name: str, target: Callable[[], None]) -> Activity: ...

    def mutex(self) -> Mutex: ...

    def signal(self) -> Signal: ...

    def rng(self) -> random.Random:
        """A random source (seeded in the simulator)."""


def _name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` in the kernel too (``top -H``, ``/proc/<pid>/task``),
    so per-activity CPU can be read from outside; best effort (Linux only, 15 bytes)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


_PR_SET_NAME = 15


class _Thread:
    def __init__(self, name: str, target: Callable[[], None]) -> None:
        self.name = name

        def run() -> None:
            _name_os_thread(name)
            target()

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def join(self, timeout_s: float | None) -> None:
        self._thread.join(timeout_s)

    def is_alive(self) -> bool:
        return self._thread.is_alive()


class RealRuntime:
    """The production runtime: monotonic clock, OS threads, ``threading`` locks and events."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def yield_now(self) -> None:
        # sched_yield releases the GIL (other threads of this process run) and also hands the
        # CPU to another runnable process on this core (a follower sharing it), which
        # sleep(0) does not.
        os.sched_yield()

    def spawn(self, name: str, target: Callable[[], None]) -> Activity:
        return _Thread(name, target)

    def mutex(self) -> Mutex:
        return threading.Lock()

    def signal(self) -> Signal:
        return threading.Event()

    def rng(self) -> random.Random:
        return self._rng
