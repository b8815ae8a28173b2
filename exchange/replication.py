"""Joining the consensus layer: registry + fabric + ``consensus.Replica`` wired to an ExchangeNode.

Rule 1: this is the only exchange module that imports ``consensus``; the import happens when a
        replicated server starts, so the unreplicated baseline runs without it.
Rule 2: every replica applies committed entries through ``ExchangeNode.on_commit`` (the pump calls
        it in log order, exactly once per index, on the leader too).
Rule 3: a fabric or registry that cannot run here (no RDMA device, unreachable memcached) raises
        ``ReplicationUnavailable`` with the underlying one-line reason.
Rule 4: the replica's snapshot port (``GrpcSnapshotPort``) fetches peers' snapshots through
        ``exchange.state_transfer`` and installs them into the node; every failure reaches
        consensus as ``SnapshotUnavailable`` so that it asks another peer. The port knows the
        application only through an address look-up and an install function, so kvstores
        uses it too (``kvstores.replication`` Rule 5).
Rule 5: ``start_pause_relay`` puts consensus's native pause relay between the control FIFO and
        its reader (exchange.control_fifo Rule 4): a ``p`` silences the heartbeat at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exchange.config import PAYLOAD_SIZE_MAX_BYTES, ServerConfig
from exchange.node import ExchangeNode

if TYPE_CHECKING:
    from consensus import Replica, Transfer
    from exchange.control_fifo import FifoRelay
    from exchange.tls import ClientTls

log = logging.getLogger("exchange.replication")


class ReplicationUnavailable(RuntimeError):
    """The consensus layer cannot start on this machine; the message says why."""


@dataclass(slots=True)
class ReplicationHandle:
    """What the server must close on exit, in this order: replica, fabric, registry."""

    replica: Replica
    closers: tuple[object, ...]

    def start_pause_relay(self, fifo_fd: int) -> FifoRelay | None:
        """Rule 5: the native pause relay over the control FIFO ``fifo_fd``, holding this
        replica's heartbeat on a pause line (consensus replica Rule 9); None when there is no
        native beat here."""
        return self.replica.start_pause_relay(fifo_fd)

    def close(self) -> None:
        try:
            self.replica.stop()
        except Exception:
            log.exception("stopping the consensus replica failed")
        for closer in self.closers:
            close = getattr(closer, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    log.exception("closing %r failed", closer)


def detector_timings(
    pump_poll_us: int, dead_after_us: int, heartbeat_interval_us: int, scan_interval_us: int = 0,
    scan_fast_interval_us: int = 0,
) -> dict[str, int]:
    """Failure-detector timings for a server process that also serves clients from Python
    threads (see docs/exchange.md); 0 means consensus's default (``scan_interval_us``: the
    heartbeat interval; ``scan_fast_interval_us``: the scan interval). Shared with kvstores."""
    from consensus import constants

    timings: dict[str, int] = {"pump_poll_us": pump_poll_us}
    dead_after = dead_after_us or constants.DEAD_AFTER_US
    if dead_after_us:
        timings["dead_after_us"] = dead_after_us
    if heartbeat_interval_us:
        timings["heartbeat_interval_us"] = heartbeat_interval_us
    scan = scan_interval_us or heartbeat_interval_us
    if scan:
        timings["scan_interval_us"] = scan
        # A scan gap counts for at most one scan period (or consensus's cap if larger), so a
        # stalled scanner never blames its peers for its own stall.
        timings["scan_gap_cap_us"] = min(max(scan, constants.SCAN_GAP_CAP_US), dead_after - 1)
        if scan_fast_interval_us:
            timings["scan_fast_interval_us"] = min(scan_fast_interval_us, scan)
    return timings


def _timings(config: ServerConfig) -> dict[str, int]:
    return detector_timings(config.pump_poll_us, config.dead_after_us,
                            config.heartbeat_interval_us, config.scan_interval_us,
                            config.scan_fast_interval_us)


class GrpcSnapshotPort:
    """``consensus.SnapshotPort`` over gRPC (``exchange.state_transfer``), for any application
    that serves ``Replication.FetchSnapshot`` (Rule 4; kvstores uses it too). ``address_of(peer)``
    names the peer's service (None: unknown); ``install(index, data)`` replaces the
    application's state and raises one of ``refused`` when ``data`` does not decode."""

    def __init__(self, replica_id: int, address_of: Callable[[int], str | None],
                 install: Callable[[int, bytes], None],
                 refused: tuple[type[Exception], ...], tls: ClientTls | None = None) -> None:
        self.replica_id = replica_id
        self.address_of = address_of
        self._install = install
        self._refused = refused
        self.tls = tls  # exchange.tls Rule 5: this server's certificate, the peers' CA

    def fetch(self, peer: int, transfer: Transfer) -> tuple[int, bytes]:
        from consensus import SnapshotUnavailable
        from exchange.state_transfer import TransferFailed, fetch_snapshot

        address = self.address_of(peer)
        if address is None:
            raise SnapshotUnavailable(f"no address for server {peer}")
        try:
            return fetch_snapshot(address, self.replica_id, transfer.begin, transfer.advance,
                                  tls=self.tls)
        except TransferFailed as exc:
            raise SnapshotUnavailable(str(exc)) from None

    def install(self, index: int, data: bytes) -> None:
        from consensus import SnapshotUnavailable

        try:
            self._install(index, data)
        except self._refused as exc:
            raise SnapshotUnavailable(f"snapshot of index {index} refused: {exc}") from None


def start_replication(config: ServerConfig, node: ExchangeNode,
                      initial_applied: int = 0) -> ReplicationHandle:
    """Open the registry and fabric, start a replica feeding ``node``, and attach it.
    ``initial_applied``: the index of the state ``node`` loaded from its data directory."""
    assert config.replicas > 1
    try:
        from consensus import Replica, ReplicaConfig
        from consensus.fabric import open_fabric
        from consensus.registry import open_registry
    except ImportError as exc:
        raise ReplicationUnavailable(f"the consensus package is not usable: {exc}") from None
    from exchange.snapshot import SnapshotError

    try:
        registry = open_registry(config.cluster_id, config.registry_address)
    except Exception as exc:
        raise ReplicationUnavailable(f"cannot open the replica registry: {exc}") from None
    try:
        fabric = open_fabric(config.fabric, config.replica_id, config.cluster_id, registry)
    except Exception as exc:
        registry.close()
        raise ReplicationUnavailable(f"cannot open the {config.fabric} fabric: {exc}") from None
    try:
        replica_config = ReplicaConfig(
            replica_id=config.replica_id,
            members=config.members,
            payload_size_max=PAYLOAD_SIZE_MAX_BYTES,
            log_slots=config.log_slots,
            **_timings(config),
        )
    except ValueError as exc:
        raise ReplicationUnavailable(f"bad consensus settings: {exc}") from None

    def on_leader_change(leader_id: int | None, is_self: bool) -> None:
        who = "this server" if is_self else f"server {leader_id}"
        log.warning("server %d: leader is now %s", config.replica_id, who)
        node.leader_changed()

    replica = Replica(
        replica_config,
        fabric,
        registry,
        on_commit=node.on_commit,
        on_leader_change=on_leader_change,
        snapshots=GrpcSnapshotPort(node.replica_id, config.addresses.get, node.install_snapshot,
                                   (SnapshotError,),
                                   None if config.tls is None else config.tls.peer),
        initial_applied=initial_applied,
    )
    node.attach(replica)
    try:
        replica.start()
    except Exception as exc:
        fabric.close()
        registry.close()
        raise ReplicationUnavailable(f"consensus replica failed to start: {exc}") from None
    return ReplicationHandle(replica, (fabric, registry))
