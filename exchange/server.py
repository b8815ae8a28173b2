"""``python -m exchange serve``: one exchange server process = consensus replica + order books.

Rule 1: start order: node -> consensus replica (replicated mode) -> gRPC port -> control FIFO ->
        ``READY`` line on stdout; stop order is the reverse, on SIGINT/SIGTERM, and always removes
        the FIFO.
Rule 2: a configuration or startup problem is one line on stderr and exit status 2 (never a
        traceback); the server never exits because of a request.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2_grpc

from exchange.config import DEFAULT_FIFO_TEMPLATE, ConfigError, ServerConfig
from exchange.control_fifo import ControlFifo, ControlFifoError
from exchange.node import ExchangeNode
from exchange.proto import exchange_pb2_grpc as pb_grpc
from exchange.replication import ReplicationHandle, ReplicationUnavailable, start_replication
from exchange.service import ExchangeService, HealthReporter
from exchange.state_transfer import SnapshotService

ROLE_POLL_INTERVAL_S = 0.02  # how often health statuses follow the replica's role
SHUTDOWN_GRACE_S = 1.0
GRPC_MESSAGE_BYTES_MAX = 4 * 1024 * 1024
GIL_SWITCH_INTERVAL_S = 0.0005  # a handler holding the GIL delays a heartbeat by at most this

log = logging.getLogger("exchange.server")


class StartupError(RuntimeError):
    """The server cannot start; the message says why."""


def _watch_role(
    node: ExchangeNode, health: HealthReporter, stop: threading.Event, parent_pid: int
) -> None:
    """Log role changes, keep health statuses current, stop when the launcher is gone."""
    last_role = ""
    recovering_since = 0.0
    while not stop.wait(ROLE_POLL_INTERVAL_S):
        if parent_pid and os.getppid() != parent_pid:
            log.warning("server %d: launcher %d exited; shutting down", node.replica_id,
                        parent_pid)
            stop.set()
            return
        role = node.role()
        if role != last_role:
            if role == "recovering":
                recovering_since = time.monotonic()
                log.warning("server %d: recovering: fetching a peer's snapshot, then catching up "
                            "the log (GetStatus shows progress)", node.replica_id)
            elif last_role == "recovering":
                _log_caught_up(node, role, time.monotonic() - recovering_since)
            else:
                log.warning("server %d: role %s -> %s", node.replica_id, last_role or "-", role)
            last_role = role
        health.refresh()


def _log_caught_up(node: ExchangeNode, role: str, watched_s: float) -> None:
    """The rejoin's closing line, with consensus's own measure (from replica start)."""
    done = node.replica.last_recovery if node.replica is not None else None
    if done is None:
        log.warning("server %d: caught up at index %d in %.0f ms; serving as %s",
                    node.replica_id, node.state.applied_index, watched_s * 1000, role)
        return
    log.warning("server %d: caught up at index %d in %.0f ms (snapshot of index %d, %d bytes from "
                "server %d); serving as %s", node.replica_id, node.state.applied_index,
                done.elapsed_ns / 1e6, done.snapshot_index, done.bytes_total, done.provider, role)


def build_grpc_server(
    config: ServerConfig, node: ExchangeNode, health: HealthReporter
) -> grpc.Server:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.grpc_workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES_MAX),
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_ExchangeServicer_to_server(  # type: ignore[no-untyped-call]
        ExchangeService(node), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    pb_grpc.add_ReplicationServicer_to_server(  # type: ignore[no-untyped-call]
        SnapshotService(node.take_snapshot, lambda: node.role() == "recovering"), server
    )
    try:
        port = server.add_insecure_port(config.listen)
    except RuntimeError as exc:
        raise StartupError(f"cannot listen on {config.listen}: {exc}") from None
    if port == 0:
        raise StartupError(f"cannot listen on {config.listen} (address in use?)")
    return server


def serve(config: ServerConfig) -> int:
    """Run one server until SIGINT/SIGTERM; return the exit status."""
    # The consensus activities (heartbeat, detector, pump) share the GIL with the gRPC threads:
    # a shorter switch interval bounds how long a busy handler can delay a heartbeat.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    # Half the gRPC workers at most may be held by market-data streams; order entry keeps the rest.
    node = ExchangeNode(config.replica_id, config.addresses, config.replicas,
                        subscribers_max=max(1, config.grpc_workers // 2))
    health = HealthReporter(node)
    node.pause_listeners.append(lambda _paused: health.refresh())
    replication: ReplicationHandle | None = None
    fifo: ControlFifo | None = None
    server: grpc.Server | None = None
    stop = threading.Event()
    try:
        if config.replicas > 1:
            replication = start_replication(config, node)
        server = build_grpc_server(config, node, health)
        health.refresh()
        server.start()
        if config.fifo_path is not None:
            fifo = ControlFifo(config.fifo_path, node.pause, node.resume, node.step_down)
        _install_signal_handlers(stop)
        watcher = threading.Thread(target=_watch_role, args=(node, health, stop, config.parent_pid),
                                   daemon=True)
        watcher.start()
        mode = "unreplicated" if config.replicas == 1 else f"{config.replicas} replicas"
        log.warning(
            "server %d serving on %s (%s, fabric %s, cluster %s, fifo %s)",
            config.replica_id, config.listen, mode, config.fabric, config.cluster_id,
            config.fifo_path or "off",
        )
        print(f"READY {config.replica_id} {config.listen}", flush=True)
        stop.wait()
        log.warning("server %d shutting down", config.replica_id)
        return 0
    except (StartupError, ReplicationUnavailable, ControlFifoError, ConfigError) as exc:
        print(f"exchange serve: error: {exc}", file=sys.stderr)
        return 2
    finally:
        stop.set()
        if fifo is not None:
            fifo.close()
        health.shutdown()
        node.close()
        if server is not None:
            server.stop(SHUTDOWN_GRACE_S).wait(SHUTDOWN_GRACE_S * 2)
        if replication is not None:
            replication.close()


def _install_signal_handlers(stop: threading.Event) -> None:
    # ``kill -USR1 <pid>`` writes every thread's stack to the log, even if the process is stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.warning("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    # A launcher may have started us with SIGINT blocked (LocalCluster does, around fork).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def default_fifo_path(replica_id: int) -> str:
    return DEFAULT_FIFO_TEMPLATE.format(id=replica_id)
