"""The exchange server's gRPC port: a ``grpc.aio`` server on an event loop of its own thread.

Rule 1: one port, one ``grpc.aio`` server, served by one event loop on the thread
        ``grpc-loop``: coroutine handlers (order entry, exchange.service Rule 6) run on that
        thread, with no hand-off between threads per message; thread handlers (market data,
        snapshots, status, health, reflection) run on ``workers`` worker threads (the server's
        migration pool), and blocking work of the coroutines (node Rule 12) runs on the loop's
        default executor, ``workers`` threads of its own.
Rule 2: the object is driven from ordinary threads like a ``grpc.Server``: ``configure`` runs a
        setup function (registrations, ports) on the loop's thread, where ``grpc.aio`` requires
        it, ``start`` starts serving, and ``stop(grace).wait(timeout)`` ends the RPCs, waits
        up to ``grace``, then stops the loop and joins its thread. A failure raised on the loop's
        thread is raised again in the caller.
Rule 3: the loop's thread never blocks for long: a proposal (microseconds, up to consensus's
        propose timeout when the log is full and order entry is stalled anyway) and, with
        ``--data-dir``, a durable acknowledgement's ``fdatasync`` (~0.2 ms for every reply
        waiting: node Rule 12).

Why: with 8 order sessions, the synchronous server spent most of the leader's GIL time in its
hand-offs between its poller thread, a worker per stream and a reader thread per session (one
order per message: 2,207-2,984 orders/s through it; measurements in docs/exchange.md).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent import futures
from typing import Any, TypeVar

import grpc

T = TypeVar("T")
START_TIMEOUT_S = 10.0


class _Stopping:
    """What ``stop`` returns: ``wait(timeout)`` like the ``threading.Event`` of grpc.Server."""

    def __init__(self, server: LoopServer, grace_s: float | None) -> None:
        self._server = server
        self._grace_s = grace_s

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._server._stop(self._grace_s, timeout_s)


class LoopServer:
    """A ``grpc.aio.Server`` on its own event-loop thread (see module rules)."""

    def __init__(self, options: tuple[tuple[str, int], ...] | list[tuple[str, int]],
                 workers: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blocking"))
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc-loop",
                                        daemon=True)
        self._thread.start()
        self._stopped = False

        async def make() -> grpc.aio.Server:
            return grpc.aio.server(
                migration_thread_pool=futures.ThreadPoolExecutor(
                    max_workers=workers, thread_name_prefix="grpc"),
                options=list(options))

        self.server: grpc.aio.Server = self._run(make())

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(START_TIMEOUT_S)

    def configure(self, setup: Callable[[grpc.aio.Server], T]) -> T:
        """Run ``setup(server)`` on the loop's thread and return its result (Rule 2)."""

        async def run() -> T:
            return setup(self.server)

        return self._run(run())

    def start(self) -> None:
        self._run(self.server.start())

    def stop(self, grace_s: float | None) -> _Stopping:
        """End the RPCs (``grace_s`` for those in flight), then the loop (Rule 2)."""
        return _Stopping(self, grace_s)

    def _stop(self, grace_s: float | None, timeout_s: float | None) -> bool:
        if self._stopped:
            return True
        self._stopped = True
        done = True
        try:
            future = asyncio.run_coroutine_threadsafe(self.server.stop(grace_s), self.loop)
            future.result(timeout_s)
        except (futures.TimeoutError, RuntimeError):
            done = False
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            return False
        self.loop.close()
        return done


__all__ = ["LoopServer"]
