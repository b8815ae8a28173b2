"""``python -m kvstores redis-server-replicated|memcached-replicated``: one replica process.

Rule 1: start order: local server (``kvstores.backend``) -> pipe -> consensus replica (replicated
        mode) -> client port -> control FIFO -> ``READY <id> <host:port> pid <pid>`` on stdout.
        Stop order is the reverse, on SIGINT/SIGTERM, and always stops the local server and
        removes the FIFO.
Rule 2: a configuration or startup problem is one line on stderr and exit status 2; losing the
        local server is exit status 1 (the replica's data is gone); a request never ends the
        process.
Rule 3: ``kill -USR1 <pid>`` writes the replication latencies (ns in ``propose``, one per write)
        to ``dump-<id>.txt`` in the working directory, as the original did.
Rule 4: ``/tmp/fifo-<id>``: ``p`` pauses the replica (no heartbeat: leadership moves; clients get
        TRYAGAIN), ``r`` resumes it as a follower; the exchange's FIFO reader is reused. Both run
        on the event loop's thread, between two turns, so a pause never lands inside a proposal.
Rule 5: a replica restarted after ``kill -9`` (same command line) rejoins by itself: consensus
        fetches a peer's snapshot into the empty local server, then the log after it
        (``kvstores.replication`` Rule 5); its role reads ``recovering`` meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

from exchange.control_fifo import ControlFifo, ControlFifoError
from kvstores import backend, mctext, resp
from kvstores.config import ConfigError, KvConfig
from kvstores.constants import STATUS_POLL_S
from kvstores.frontend import (
    Core,
    LatencyLog,
    MemcachedConnection,
    MemcachedFlavor,
    RedisConnection,
    RedisFlavor,
)
from kvstores.pipe import LocalPipe
from kvstores.redis_rules import RESP3_WRAP
from kvstores.transaction import MULTI, replies_in

GIL_SWITCH_INTERVAL_S = 0.0005  # a busy event loop delays a consensus heartbeat by at most this
EXIT_CONFIG = 2
EXIT_LOST_DATA = 1

log = logging.getLogger("kvstores.server")


class StartupError(RuntimeError):
    """The server cannot start; the message says why."""


def _redis_kind(_payload: bytes) -> int:
    return 0


def _redis_framer(buf: bytearray, pos: int, _kind: int) -> int:
    return resp.reply_end(buf, pos)


def _memcached_framer(buf: bytearray, pos: int, kind: int) -> int:
    return mctext.reply_end(buf, pos, mctext.Framing(kind))


class KvServer:
    """One replica process (see module rules)."""

    def __init__(self, config: KvConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.loop = loop
        self.latencies = LatencyLog()
        flavor = RedisFlavor() if config.kind == "redis" else MemcachedFlavor()
        self.core = Core(loop, config.replica_id, flavor, self._address_of, self.latencies)
        self.backend: backend.Backend | None = None
        self.pipe: LocalPipe | None = None
        self.replication: Any = None
        self.fifo: ControlFifo | None = None
        self.server: asyncio.AbstractServer | None = None
        self.forwarder: Any = None
        self.stopped = asyncio.Event()
        self.exit_status = 0
        self._last_role = ""

    def _address_of(self, replica_id: int) -> str | None:
        if self.replication is None:
            return self.config.advertise if replica_id == self.config.replica_id else None
        address: str | None = self.replication.address_of(replica_id)
        return address

    async def start(self) -> None:
        config = self.config
        try:
            self.backend = backend.start(config.kind, config.cluster_id, config.replica_id)
        except backend.BackendError as exc:
            raise StartupError(str(exc)) from None
        redis = config.kind == "redis"
        # pipe Rules 8 and 9 (RESP3 clients, transaction blocks), for the local server's pipe and
        # the forwarder's pipes to the leader alike
        redis_options = (RESP3_WRAP, (MULTI, replies_in)) if redis else (None, None)
        self.pipe = LocalPipe(
            self.backend.connect(), self.loop,
            _redis_framer if redis else _memcached_framer,
            _redis_kind if redis else mctext.framing_of,
            self._on_pipe_failure,
            self.core.flavor.unavailable(f"server {config.replica_id}: local server lost"),
            *redis_options,
        )
        self.core.pipe = self.pipe
        if redis:
            self.core.connect_local = self.backend.connect  # a subscriber's own (pubsub Rule 2)
        if not redis:
            local = self.backend
            self.core.side_call = lambda request: local.call(
                request, lambda buf: mctext.reply_end(buf, 0, mctext.Framing.BLOCK))
        if config.replicas > 1:
            from kvstores.replication import ReplicationUnavailable, start_replication
            from kvstores.snapshot import Snapshots

            snapshots = Snapshots(config.kind, self.pipe, self.backend)
            try:
                self.replication = await self.loop.run_in_executor(
                    None, start_replication, config, self.pipe.apply, self._on_leader_change,
                    snapshots)
            except ReplicationUnavailable as exc:
                raise StartupError(str(exc)) from None
            self.core.replica = self.replication.replica
            if self.replication.restarted:
                log.warning("server %d: restarted after a crash: the local server is empty; it "
                            "fetches a peer's snapshot and catches up the log (reads are refused "
                            "until it has)", config.replica_id)
        if config.follower_writes == "forward" and config.replicas > 1:
            from kvstores.forward import LeaderForwarder

            self.forwarder = LeaderForwarder(
                self.core, self.loop, _redis_framer if redis else _memcached_framer,
                _redis_kind if redis else mctext.framing_of,
                resp.encode_command([b"KVSTORES", b"FORWARDER"]) if redis
                else b"kvstores forwarder\r\n", *redis_options)
            self.core.forwarder = self.forwarder
        factory = RedisConnection if redis else MemcachedConnection
        try:
            self.server = await self.loop.create_server(
                lambda: factory(self.core), config.bind, config.port, reuse_address=True)
        except OSError as exc:
            raise StartupError(f"cannot listen on {config.bind}:{config.port}: "
                               f"{exc.strerror or exc}") from None
        if config.fifo_path is not None:
            try:
                # No native pause relay (exchange.control_fifo Rule 4): here `p` is a step-down
                # run on the loop between two turns, never a silence inside a proposal.
                self.fifo = ControlFifo(config.fifo_path, self._pause_soon, self._resume_soon)
            except ControlFifoError as exc:
                raise StartupError(str(exc)) from None
        self.loop.call_later(STATUS_POLL_S, self._watch)

    def _on_leader_change(self, leader_id: int | None, is_self: bool) -> None:  # consensus thread
        who = "this server" if is_self else f"server {leader_id}"
        log.warning("server %d: leader is now %s", self.config.replica_id, who)
        if is_self:
            self.loop.call_soon_threadsafe(self.core.propose_noop)
        self.loop.call_soon_threadsafe(self.core.keys.wake, None)  # frontend Rule 9

    def _watch(self) -> None:
        """Log role changes; stop when the launcher is gone."""
        role = self.core.role()
        if role != self._last_role:
            log.warning("server %d: role %s -> %s", self.config.replica_id,
                        self._last_role or "-", role)
            self._last_role = role
        parent = self.config.parent_pid
        if parent and os.getppid() != parent:
            log.warning("server %d: launcher %d exited; shutting down", self.config.replica_id,
                        parent)
            self.stopped.set()
            return
        self.loop.call_later(STATUS_POLL_S, self._watch)

    def _pause_soon(self) -> None:  # FIFO thread
        self.loop.call_soon_threadsafe(self._pause)

    def _resume_soon(self) -> None:  # FIFO thread
        self.loop.call_soon_threadsafe(self._resume)

    def _pause(self) -> None:  # loop thread: between two turns, so no proposal is in flight
        if self.core.paused:
            log.warning("server %d: already paused", self.config.replica_id)
            return
        self.core.paused = True
        self.core.keys.wake(None)  # blocked clients' next attempt is refused (frontend Rule 9)
        if self.replication is not None:
            self.replication.replica.pause()
        log.warning("server %d: PAUSED (no heartbeat, no service)", self.config.replica_id)

    def _resume(self) -> None:  # loop thread
        if not self.core.paused:
            log.warning("server %d: not paused; resume ignored", self.config.replica_id)
            return
        if self.replication is not None:
            self.replication.forget_addresses()
            self.replication.replica.resume()
        self.core.paused = False
        log.warning("server %d: RESUMED (rejoining as a follower)", self.config.replica_id)

    def _on_pipe_failure(self, reason: str) -> None:
        log.critical("server %d: stopping: %s", self.config.replica_id, reason)
        self.exit_status = EXIT_LOST_DATA
        self.stopped.set()

    def dump_latencies(self) -> None:
        path = f"dump-{self.config.replica_id}.txt"
        count = self.latencies.dump(path)
        log.warning("server %d: wrote %d replication latencies (ns) to %s",
                    self.config.replica_id, count, os.path.abspath(path))

    async def close(self) -> None:
        if self.fifo is not None:
            self.fifo.close()
        if self.server is not None:
            self.server.close()
        if self.forwarder is not None:
            self.forwarder.close()
        if self.replication is not None:
            await self.loop.run_in_executor(None, self.replication.close)
        if self.pipe is not None:
            self.pipe.close()
        if self.backend is not None:
            self.backend.stop()


async def _serve(config: KvConfig) -> int:
    loop = asyncio.get_running_loop()
    kv = KvServer(config, loop)
    try:
        try:
            await kv.start()
        except StartupError as exc:
            print(f"kvstores: error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, kv.stopped.set)
        loop.add_signal_handler(signal.SIGUSR1, kv.dump_latencies)
        mode = "unreplicated" if config.replicas == 1 else f"replica {config.replica_id} of " \
            f"{','.join(map(str, config.members))}"
        log.warning("%s front end on %s:%d (%s, cluster %s, fifo %s, pid %d)", config.kind,
                    config.bind, config.port, mode, config.cluster_id, config.fifo_path or "off",
                    os.getpid())
        print(f"READY {config.replica_id} {config.advertise} pid {os.getpid()}", flush=True)
        await kv.stopped.wait()
        log.warning("server %d shutting down", config.replica_id)
        return kv.exit_status
    finally:
        await kv.close()


def serve(config: KvConfig) -> int:
    """Run one server until SIGINT/SIGTERM; return the exit status (Rule 2)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        return asyncio.run(_serve(config))
    except ConfigError as exc:
        print(f"kvstores: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
