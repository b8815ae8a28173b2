"""``SimRuntime``: the ``consensus.runtime.Runtime`` protocol on top of the deterministic scheduler.

Rule 1: one ``SimRuntime`` per replica incarnation; every task it spawns belongs to that replica
        (``owner``), so crashing, pausing or slowing the replica reaches all of its activities.
Rule 2: ``now_ns`` is simulated time; ``sleep`` blocks on a simulated timer; ``yield_now`` is a
        switch point; ``Signal.wait`` blocks until set or until its simulated timeout.
Rule 3: ``SimMutex`` is scheduler-aware: an uncontended acquire takes it at once (no switch point);
        a contended one blocks the task, and ``release`` hands the mutex to the first waiter (FIFO,
        so hand-over order is deterministic). Outside the simulation's tasks (set-up code on the
        main thread, before the run) a mutex may only be taken when free.
Rule 4: ``rng()`` is a ``random.Random`` seeded from the run's seed and the replica id, never from
        the clock.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from types import TracebackType

from consensus.runtime import Activity, Mutex, Signal
from consensus.sim.scheduler import DONE, Scheduler, Task, Waitable

NS_PER_S = 1_000_000_000


def seconds_to_ns(seconds: float) -> int:
    return int(seconds * NS_PER_S)


class SimActivity:
    """A spawned task seen through the ``Activity`` protocol."""

    def __init__(self, scheduler: Scheduler, task: Task) -> None:
        self.name = task.name
        self._scheduler = scheduler
        self._task = task

    def join(self, timeout_s: float | None) -> None:
        scheduler, task = self._scheduler, self._task
        if task.state == DONE:
            return
        assert scheduler.in_task(), "join a simulated activity from inside the simulation only"
        me = scheduler.me()
        assert me is not task, f"activity {task.name} joins itself"
        task.joiners.append(me)
        timeout = None if timeout_s is None else seconds_to_ns(timeout_s)
        try:
            scheduler.block(f"join {task.name}", timeout, _JoinWait(task))
        finally:
            if me in task.joiners:
                task.joiners.remove(me)

    def is_alive(self) -> bool:
        return self._task.state != DONE


class _JoinWait(Waitable):
    def __init__(self, task: Task) -> None:
        self._task = task

    def forget(self, task: Task) -> None:
        if task in self._task.joiners:
            self._task.joiners.remove(task)


class SimMutex(Waitable):
    """A mutex whose contention is a switch point (see Rule 3)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._holder: Task | None = None
        self._held_outside = False
        self._waiters: deque[Task] = deque()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        scheduler = self._scheduler
        if not scheduler.in_task():
            assert not self.locked(), "a simulated mutex is contended outside the simulation"
            self._held_outside = True
            return True
        me = scheduler.me()
        if not self.locked():
            self._holder = me
            return True
        assert self._holder is not me, f"task {me.name} acquires a mutex it already holds"
        if not blocking:
            scheduler.switch("mutex try")
            return False
        self._waiters.append(me)
        timeout_ns = None if timeout < 0 else seconds_to_ns(timeout)
        try:
            got = scheduler.block("mutex wait", timeout_ns, self)
        except BaseException:
            if self._holder is me:  # handed over, then killed before running: pass it on
                self.release()
            raise
        if not got and me in self._waiters:
            self._waiters.remove(me)
        return got

    def release(self) -> None:
        assert self.locked(), "release of an unlocked simulated mutex"
        self._held_outside = False
        if self._waiters:
            nxt = self._waiters.popleft()
            self._holder = nxt
            self._scheduler.wake(nxt)
        else:
            self._holder = None

    def locked(self) -> bool:
        return self._holder is not None or self._held_outside

    def forget(self, task: Task) -> None:
        if task in self._waiters:
            self._waiters.remove(task)

    def __enter__(self) -> object:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> None:
        self.release()


class SimSignal(Waitable):
    """A level-triggered flag; ``wait`` is always a switch point."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._flag = False
        self._waiters: list[Task] = []

    def set(self) -> None:
        self._flag = True
        waiters, self._waiters = self._waiters, []
        for task in waiters:
            self._scheduler.wake(task)

    def clear(self) -> None:
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout_s: float | None) -> bool:
        scheduler = self._scheduler
        if self._flag or (timeout_s is not None and timeout_s <= 0):
            scheduler.switch("signal poll")
            return self._flag
        me = scheduler.me()
        self._waiters.append(me)
        timeout_ns = None if timeout_s is None else seconds_to_ns(timeout_s)
        scheduler.block("signal wait", timeout_ns, self)
        if me in self._waiters:
            self._waiters.remove(me)
        return self._flag

    def forget(self, task: Task) -> None:
        if task in self._waiters:
            self._waiters.remove(task)


class SimRuntime:
    """The ``Runtime`` of one replica incarnation inside the simulation."""

    def __init__(self, scheduler: Scheduler, owner: int, label: str, seed: int) -> None:
        assert owner >= 0
        self.scheduler = scheduler
        self.owner = owner
        self.label = label
        self._rng = random.Random(f"{seed}/{label}")

    def now_ns(self) -> int:
        return self.scheduler.now_ns

    def sleep(self, seconds: float) -> None:
        self.scheduler.sleep("sleep", seconds_to_ns(seconds))

    def yield_now(self) -> None:
        self.scheduler.switch("yield")

    def spawn(self, name: str, target: Callable[[], None]) -> Activity:
        task = self.scheduler.spawn(f"{self.label}.{name}", self.owner, target)
        return SimActivity(self.scheduler, task)

    def mutex(self) -> Mutex:
        return SimMutex(self.scheduler)

    def signal(self) -> Signal:
        return SimSignal(self.scheduler)

    def rng(self) -> random.Random:
        return self._rng
