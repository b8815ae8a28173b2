"""The deterministic scheduler: real threads, one baton, every choice drawn from one seeded RNG.

Rule 1: exactly one task runs at a time. A task is a real thread that owns the baton between two
        switch points; every other task waits on its own lock. A switch point is a call into
        this scheduler (``switch``, ``block``, ``sleep``), made by the simulated fabric before
        every operation and by the simulated runtime (``yield_now``, ``sleep``, ``Signal.wait``,
        contended ``Mutex``).
Rule 2: every choice (which task runs next, when a fault strikes) is drawn from
        ``Scheduler.rng``, seeded by the run's seed, and happens with the baton held. Given the
        same seed and the same code, two runs make the same choices and produce the same trace
        hash.
Rule 3: time is simulated. ``now_ns`` advances by ``step_ns`` per switch point; when no task is
        runnable the clock jumps to the next timer or world event. Wall-clock time never enters.
Rule 4: a killed task raises ``SimKilled`` (a ``BaseException``, so ``except Exception`` in
        protocol code does not swallow it) at its next switch point and unwinds; its thread ends.
        A killed task is never paused, so a crash takes effect promptly.
Rule 5: a paused owner's tasks are not scheduled (SIGSTOP); a slowed owner's tasks are picked with
        a smaller weight. Owner 0 is the world (clients are owned by their replica).
Rule 6: the run ends when ``stop`` is called (by the world or a checker) or when every task is
        blocked with no timer left (a deadlock, reported as a failure); at the end every task is
        killed and unwound before ``run`` returns.
Rule 7: a wake-up is never lost: a task that blocks is blocked before its switch point's
        step, whose world events (faults, hook commands) may already wake it. Marking it blocked
        only after the step lost such a wake-up (a ``resume`` hook command queued in the very step
        in which the control task went to wait was never run, and the replica stayed paused for
        good: issue 17's soak, seed 2020385).

The hot path is a lock hand-off between two threads (about 20 us on this machine), so a task keeps
the baton with probability ``stickiness`` at each switch point: fewer hand-offs, same coverage.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

RUNNABLE = 0
BLOCKED = 1
DONE = 2

WORLD_OWNER = 0
HANG_TIMEOUT_S = 60.0  # wall-clock seconds without a single step before the run is declared hung
WATCHDOG_POLL_S = 0.5
SLOW_WEIGHT = 0.1  # a delayed owner's tasks are picked this much less often


class SimKilled(BaseException):
    """Raised inside a task of a crashed replica (or at the end of a run) to unwind its thread."""


class Waitable:
    """Something tasks block on (signal, mutex, join); ``forget`` drops a killed waiter."""

    def forget(self, task: Task) -> None:
        raise NotImplementedError


@dataclass(eq=False)
class Task:
    """One activity: a thread, its baton and its scheduling state (mutable, owned by the
    scheduler)."""

    name: str
    owner: int
    baton: threading.Lock = field(default_factory=threading.Lock)
    state: int = RUNNABLE
    killed: bool = False
    wake_value: bool = False
    timer_token: int | None = None
    waiting_on: Waitable | None = None
    thread: threading.Thread | None = None
    joiners: list[Task] = field(default_factory=list)


class Scheduler:
    """Runs tasks one at a time in a seeded order; see the module rules."""

    def __init__(self, seed: int, step_ns: int, stickiness: float) -> None:
        assert step_ns > 0
        assert 0.0 <= stickiness < 1.0
        self.seed = seed
        self.rng = random.Random(seed)
        self.step_ns = step_ns
        self.stickiness = stickiness
        self.now_ns = 0
        self.steps = 0
        self.tasks: list[Task] = []
        self.current: Task | None = None
        self.paused: set[int] = set()
        self.slowed: set[int] = set()
        self.failure: str | None = None
        self.stopping = False
        self.on_step: Callable[[], None] | None = None
        self._timers: list[tuple[int, int, Task]] = []
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self._trace = hashlib.blake2b(digest_size=16)
        self._finished = threading.Event()
        self._started = False

    # ------------------------------------------------------------------ tasks
    def spawn(self, name: str, owner: int, target: Callable[[], None]) -> Task:
        """Create a runnable task; it first runs when the scheduler picks it."""
        task = Task(name=name, owner=owner)
        task.baton.acquire()
        thread = threading.Thread(target=self._task_main, args=(task, target), name=name)
        thread.daemon = True
        task.thread = thread
        self.tasks.append(task)
        self.trace(f"spawn {name}")
        thread.start()
        return task

    def _task_main(self, task: Task, target: Callable[[], None]) -> None:
        task.baton.acquire()
        try:
            if task.killed:
                raise SimKilled
            target()
        except SimKilled:
            pass
        except Exception:
            self.fail(f"task {task.name} raised:\n{traceback.format_exc()}")
        self._exit(task)

    def _exit(self, task: Task) -> None:
        task.state = DONE
        self.tasks.remove(task)
        for joiner in task.joiners:
            self._wake(joiner, True)
        task.joiners.clear()
        self.trace(f"exit {task.name}")
        if not self.tasks:
            self.current = None
            self._finished.set()
            return
        self._hand_to(self._pick())

    def kill(self, task: Task) -> None:
        """Make ``task`` raise ``SimKilled`` at its next switch point (at once if blocked)."""
        if task.state == DONE or task.killed:
            return
        task.killed = True
        if task.state == BLOCKED:
            if task.waiting_on is not None:
                task.waiting_on.forget(task)
            self._wake(task, False)

    def kill_owner(self, owner: int) -> None:
        for task in list(self.tasks):
            if task.owner == owner:
                self.kill(task)

    # ------------------------------------------------------------ switch points
    def me(self) -> Task:
        task = self.current
        assert task is not None, "a simulated operation ran outside the simulation's tasks"
        assert task.thread is threading.current_thread(), "a task ran without holding the baton"
        return task

    def in_task(self) -> bool:
        task = self.current
        return task is not None and task.thread is threading.current_thread()

    def switch(self, label: str) -> None:
        """A switch point: count a step, advance time, maybe run another task."""
        me = self.me()
        if me.killed:
            raise SimKilled
        self._step(me, label)
        self._continue_elsewhere(me)

    def block(self, label: str, timeout_ns: int | None, waiting_on: Waitable | None) -> bool:
        """Block the current task until woken (``True``) or its timeout passes (``False``).

        Rule 7: the task counts as blocked from before its step, so a world event of that step
        that wakes it (a hook command's ``Signal.set``) is kept, not lost: it then does not
        block, only yields."""
        me = self.me()
        if me.killed:
            raise SimKilled
        me.state = BLOCKED
        me.waiting_on = waiting_on
        me.wake_value = False
        self._step(me, label)
        if me.killed:
            raise SimKilled
        if me.state != BLOCKED:  # woken by a world event of this very step
            self._continue_elsewhere(me)
            return me.wake_value
        if timeout_ns is not None:
            self._seq += 1
            me.timer_token = self._seq
            heapq.heappush(self._timers, (self.now_ns + max(0, timeout_ns), self._seq, me))
        self._continue_elsewhere(me)
        return me.wake_value

    def sleep(self, label: str, duration_ns: int) -> None:
        if duration_ns <= 0:
            self.switch(label)
        else:
            self.block(label, duration_ns, None)

    def wake(self, task: Task) -> None:
        """Wake a blocked task with ``True`` (a signal was set, a mutex handed over)."""
        self._wake(task, True)

    def _wake(self, task: Task, value: bool) -> None:
        if task.state != BLOCKED:
            return
        task.state = RUNNABLE
        task.wake_value = value
        task.timer_token = None
        task.waiting_on = None

    def _continue_elsewhere(self, me: Task) -> None:
        nxt = self._pick()
        if nxt is not me:
            self._hand_to(nxt)
            me.baton.acquire()
        self.current = me
        if me.killed:
            raise SimKilled

    def _hand_to(self, task: Task) -> None:
        self.current = task
        task.baton.release()

    # -------------------------------------------------------------- the choice
    def _pick(self) -> Task:
        while True:
            for task in self.tasks:
                if task.killed and task.state == RUNNABLE:
                    return task
            cur = self.current
            if (
                cur is not None
                and cur.state == RUNNABLE
                and cur.owner not in self.paused
                and self.rng.random() < self.stickiness
            ):
                return cur
            ready = [t for t in self.tasks if t.state == RUNNABLE and t.owner not in self.paused]
            if ready:
                if not self.slowed:
                    return ready[self.rng.randrange(len(ready))]
                weights = [SLOW_WEIGHT if t.owner in self.slowed else 1.0 for t in ready]
                return self.rng.choices(ready, weights)[0]
            if not self._advance_clock():
                self.fail(self._deadlock_report())
                self._kill_all()

    def _advance_clock(self) -> bool:
        """Jump to the next timer or world event; ``False`` if there is none."""
        while self._timers and self._timers[0][2].timer_token != self._timers[0][1]:
            heapq.heappop(self._timers)
        candidates: list[int] = []
        if self._timers:
            candidates.append(self._timers[0][0])
        if self._events:
            candidates.append(self._events[0][0])
        if not candidates:
            return False
        self.now_ns = max(self.now_ns, min(candidates))
        self._fire_due()
        return True

    def _fire_due(self) -> None:
        now = self.now_ns
        while self._timers and self._timers[0][0] <= now:
            _, token, task = heapq.heappop(self._timers)
            if task.timer_token == token:
                self._wake(task, False)
        while self._events and self._events[0][0] <= now and not self.stopping:
            _, _, action = heapq.heappop(self._events)
            action()

    def _step(self, me: Task, label: str) -> None:
        self.steps += 1
        self.now_ns += self.step_ns
        self._trace.update(f"{me.name}|{label};".encode())
        self._fire_due()
        hook = self.on_step
        if hook is not None and not self.stopping:
            hook()

    # ------------------------------------------------------------- the world
    def at(self, time_ns: int, action: Callable[[], None]) -> None:
        """Run ``action`` (with the baton held) once simulated time reaches ``time_ns``."""
        self._seq += 1
        heapq.heappush(self._events, (time_ns, self._seq, action))

    def trace(self, text: str) -> None:
        self._trace.update(text.encode())
        self._trace.update(b";")

    def trace_hash(self) -> str:
        return self._trace.hexdigest()

    def fail(self, message: str) -> None:
        """Record the first failure and end the run."""
        if self.failure is None:
            self.failure = message
            self.trace(f"FAIL {message}")
        self.stop()

    def stop(self) -> None:
        """End the run: every task is killed and unwinds."""
        if not self.stopping:
            self.stopping = True
            self._kill_all()

    def _kill_all(self) -> None:
        self.stopping = True
        for task in list(self.tasks):
            self.kill(task)

    def _deadlock_report(self) -> str:
        blocked = ", ".join(
            f"{t.name}{' (paused)' if t.owner in self.paused else ''}" for t in self.tasks
        )
        return f"deadlock at t={self.now_ns} ns: every task blocked with no timer: {blocked}"

    def run(self, hang_timeout_s: float = HANG_TIMEOUT_S) -> None:
        """Run until every task has ended. Call from the (non-task) main thread, once."""
        assert not self._started
        self._started = True
        if not self.tasks:
            return
        self._hand_to(self._pick())
        last_steps, last_change = -1, time.monotonic()
        while not self._finished.wait(WATCHDOG_POLL_S):
            if self.steps != last_steps:
                last_steps, last_change = self.steps, time.monotonic()
            elif time.monotonic() - last_change > hang_timeout_s:
                self.failure = self.failure or self._hang_report(hang_timeout_s)
                return

    def _hang_report(self, hang_timeout_s: float) -> str:
        task = self.current
        if task is None or task.thread is None or task.thread.ident is None:
            return "hang: no task holds the baton"
        frame = sys._current_frames().get(task.thread.ident)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)"
        return (
            f"hang: task {task.name} ran {hang_timeout_s:.0f} s of wall-clock time without "
            f"reaching a switch point (a polling loop without yield_now/sleep?):\n{stack}"
        )
