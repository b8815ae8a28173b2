"""``python -m exchange serve``: one exchange server process = consensus replica + order books.

Rule 1: start order: node (loaded from ``--data-dir``) -> gRPC port -> (durable: start gate) ->
        consensus replica (replicated mode) -> control FIFO -> ``READY`` line on stdout; stop
        order is the reverse, on SIGINT/SIGTERM, and always removes the FIFO.
Rule 2: a configuration or startup problem is one line on stderr and exit status 2 (never a
        traceback); the server never exits because of a request.
Rule 3: with ``--data-dir`` the node loads its state from the directory first (a bad file stops
        the start, Rule 2), the gRPC port opens before consensus starts (so that peers can read
        this server's durable index and fetch its snapshot), and a replicated server starts its
        replica only after ``exchange.cold_start``'s gate, at the loaded index. Without it the
        server says once that it runs in memory only.
Rule 4: with ``--tls-cert`` the port serves TLS only, for traders and peers alike, and the
        server's calls to its peers (snapshot fetch, the start gate) use TLS with its own
        certificate (``exchange.tls``); the start line says which security is on.
Rule 5: the port also serves gRPC server reflection (the exchange, replication and health
        services), so generic clients such as ``grpcurl`` can list and call the API without the
        ``.proto`` file; under TLS it is behind the same transport security as the rest.
Rule 6: the port is a ``grpc.aio`` server on an event-loop thread (``exchange.grpc_loop``):
        order entry runs on the loop, everything else on ``--grpc-workers`` worker threads.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from exchange.cold_start import GateStopped, pass_gate
from exchange.config import DEFAULT_FIFO_TEMPLATE, ConfigError, ServerConfig
from exchange.control_fifo import ControlFifo, ControlFifoError
from exchange.durability import DataDirError, Journal, load, open_data_dir
from exchange.grpc_checked import add_checked
from exchange.grpc_loop import LoopServer
from exchange.limits import GRPC_SERVER_OPTIONS
from exchange.node import ExchangeNode
from exchange.proto import exchange_pb2 as pb
from exchange.proto import exchange_pb2_grpc as pb_grpc
from exchange.replication import ReplicationHandle, ReplicationUnavailable, start_replication
from exchange.service import ExchangeService, HealthReporter
from exchange.state_transfer import SnapshotService

ROLE_POLL_INTERVAL_S = 0.02  # how often health statuses follow the replica's role
SHUTDOWN_GRACE_S = 1.0
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
                if node.journal is None:
                    log.warning("server %d: recovering: fetching a peer's snapshot, then catching "
                                "up the log (GetStatus shows progress)", node.replica_id)
                else:
                    log.warning("server %d: recovering: catching up the log from index %d (a "
                                "peer's snapshot only if the leader's log no longer holds it)",
                                node.replica_id, node.state.applied_index + 1)
            elif last_role == "recovering":
                _log_caught_up(node, role, time.monotonic() - recovering_since)
            elif not last_role and node.replica is not None and node.replica.last_recovery:
                # the whole rejoin ran before this first look: still one line each
                log.warning("server %d: recovering: fetching a peer's snapshot, then catching up "
                            "the log (done before gRPC was up)", node.replica_id)
                _log_caught_up(node, role, 0.0)
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
    source = (f"snapshot of index {done.snapshot_index}, {done.bytes_total} bytes from server "
              f"{done.provider}" if done.provider else
              f"its own data from index {done.snapshot_index}")
    log.warning("server %d: caught up at index %d in %.0f ms (%s); serving as %s",
                node.replica_id, node.state.applied_index, done.elapsed_ns / 1e6, source, role)


def build_grpc_server(
    config: ServerConfig, node: ExchangeNode, health: HealthReporter
) -> LoopServer:
    """Rule 6: the port's services on a ``grpc.aio`` server (exchange.grpc_loop); not started."""
    server = LoopServer([*GRPC_SERVER_OPTIONS, ("grpc.so_reuseport", 0)], config.grpc_workers)
    authorizer = None if config.tls is None else config.tls.authorizer

    def setup(aio_server: grpc.aio.Server) -> int:
        add_checked(pb_grpc.add_ExchangeServicer_to_server, ExchangeService(node, authorizer),
                    aio_server)
        add_checked(health_pb2_grpc.add_HealthServicer_to_server, health.servicer, aio_server)
        add_checked(pb_grpc.add_ReplicationServicer_to_server,
                    SnapshotService(node.take_snapshot, lambda: _no_snapshot_to_serve(node),
                                    authorizer), aio_server)
        _enable_reflection(aio_server)
        # exchange.tls Rule 1: one port, TLS for every service when configured
        if config.tls is None:
            return aio_server.add_insecure_port(config.listen)
        return aio_server.add_secure_port(config.listen, config.tls.credentials())

    try:
        port = server.configure(setup)
    except RuntimeError as exc:
        server.stop(0).wait(SHUTDOWN_GRACE_S)
        raise StartupError(f"cannot listen on {config.listen}: {exc}") from None
    if port == 0:
        server.stop(0).wait(SHUTDOWN_GRACE_S)
        raise StartupError(f"cannot listen on {config.listen} (address in use?)")
    return server


def _enable_reflection(server: grpc.aio.Server) -> None:
    """Rule 5: server reflection lists the API to generic clients (``grpcurl -plaintext HOST:PORT
    list``, ``describe mu.exchange.Exchange``)."""
    try:
        from grpc_reflection.v1alpha import reflection
    except ImportError:  # an install older than the dependency: serve without it, say so
        log.warning("gRPC server reflection is off: grpcio-reflection is not installed "
                    "(bash scripts/setup.sh installs it)")
        return
    names = [service.full_name for service in pb.DESCRIPTOR.services_by_name.values()]
    names.append(health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], server)


def _security(config: ServerConfig) -> str:
    if config.tls is None:
        return "plaintext"
    if config.tls.authorizer is None:
        return "TLS without client certificates: callers are not authenticated"
    return "mutual TLS"


def _no_snapshot_to_serve(node: ExchangeNode) -> bool:
    """A recovering server refuses to serve its snapshot (its state is being replaced), unless
    its state came from its own disk: a durable server that passed the cold-start gate at the
    highest index is the one its peers must copy while it waits for them in consensus."""
    if node.role() != "recovering":
        return False
    return node.journal is None or node.state.applied_index == 0


def serve(config: ServerConfig) -> int:
    """Run one server until SIGINT/SIGTERM; return the exit status."""
    # The consensus activities (heartbeat, detector, pump) share the GIL with the gRPC threads:
    # a shorter switch interval bounds how long a busy handler can delay a heartbeat.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    # Order sessions may hold half the gRPC workers and market-data streams a quarter; unary
    # order entry and reads keep the rest.
    node = ExchangeNode(config.replica_id, config.addresses, config.replicas,
                        subscribers_max=max(1, config.grpc_workers // 4),
                        sessions_max=max(1, config.grpc_workers // 2),
                        instruments=config.instruments)
    health = HealthReporter(node)
    node.pause_listeners.append(lambda _paused: health.refresh())
    replication: ReplicationHandle | None = None
    fifo: ControlFifo | None = None
    server: LoopServer | None = None
    journal: Journal | None = None
    lock_fd = -1
    stop = threading.Event()
    try:
        if config.data_dir is not None:
            journal, lock_fd = _open_journal(config, node)
        else:
            log.warning("server %d runs in memory only (no --data-dir): restarting every server "
                        "at once loses the market", config.replica_id)
        _install_signal_handlers(stop)
        server = build_grpc_server(config, node, health)
        health.refresh()
        server.start()
        if config.replicas > 1:
            initial = node.state.applied_index
            if journal is not None:
                pass_gate(node, stop.is_set, None if config.tls is None else config.tls.peer)
                initial = node.state.applied_index
            replication = start_replication(config, node, initial)
        if config.fifo_path is not None:
            fifo = ControlFifo(config.fifo_path, node.pause, node.resume, node.step_down,
                               None if replication is None else replication.start_pause_relay)
        watcher = threading.Thread(target=_watch_role, args=(node, health, stop, config.parent_pid),
                                   daemon=True)
        watcher.start()
        _log_serving(config, node)
        print(f"READY {config.replica_id} {config.listen}", flush=True)
        stop.wait()
        log.warning("server %d shutting down", config.replica_id)
        return 0
    except (StartupError, ReplicationUnavailable, ControlFifoError, ConfigError,
            DataDirError) as exc:
        print(f"exchange serve: error: {exc}", file=sys.stderr)
        return 2
    except GateStopped:
        log.warning("server %d stopped before it served", config.replica_id)
        return 0
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
        if journal is not None:
            journal.close()
        if lock_fd >= 0:
            os.close(lock_fd)


def _log_serving(config: ServerConfig, node: ExchangeNode) -> None:
    """The start lines: the instrument list in force and how the server serves."""
    mode = "unreplicated" if config.replicas == 1 else f"{config.replicas} replicas"
    fixed = node.state.instruments
    log.warning("server %d: instrument list %s (%s)", config.replica_id,
                ",".join(config.instruments),
                "configured; proposed when it leads a cluster without one" if fixed is None
                else f"the cluster's, fixed by log entry {node.state.instruments_index}"
                if frozenset(config.instruments) == fixed else
                "configured, but the cluster's list differs: see the error above")
    log.warning(
        "server %d serving on %s (%s, %s, fabric %s, cluster %s, fifo %s)",
        config.replica_id, config.listen, mode, _security(config), config.fabric,
        config.cluster_id, config.fifo_path or "off",
    )


def _open_journal(config: ServerConfig, node: ExchangeNode) -> tuple[Journal, int]:
    """Rule 3: load the data directory into ``node`` and journal from there on. Raises
    ``DataDirError``."""
    assert config.data_dir is not None
    directory, lock_fd = open_data_dir(config.data_dir)
    try:
        limits = (node.state.dedup.seqs_per_client_max, node.state.dedup.clients_max)
        started = time.monotonic()
        loaded = load(directory, config.cluster_id, limits)
        node.state = loaded.machine
        node.check_instruments()
        index = loaded.machine.applied_index
        journal = Journal(directory, config.cluster_id, config.durability, index,
                          node.take_snapshot, config.snapshot_entries)
    except OSError as exc:
        os.close(lock_fd)
        raise DataDirError(f"--data-dir {directory}: {exc}") from None
    except BaseException:
        os.close(lock_fd)
        raise
    node.journal = journal
    journal.on_failure = lambda _reason: node.pause()  # leadership moves to a healthy server
    journal.start()
    log.warning("server %d: data dir %s (durability %s): state at index %d loaded in %.0f ms "
                "(snapshot %d + %d journal records%s)", config.replica_id, directory,
                config.durability, index, (time.monotonic() - started) * 1000,
                loaded.snapshot_index, loaded.replayed,
                f"; {loaded.cut_bytes} torn bytes cut" if loaded.cut_bytes else "")
    return journal, lock_fd


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
