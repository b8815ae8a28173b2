"""Joining the consensus layer: registry + fabric + ``consensus.Replica`` feeding a local pipe.

Rule 1: this is the only kvstores module that imports ``consensus``; the unreplicated front end
        (``--replicas 1``) never imports it.
Rule 2: every replica applies committed entries through ``LocalPipe.apply`` (consensus's
        ``on_commit``: log order, once per index, on the leader in the proposing thread).
Rule 3: each server publishes its client address under ``kvstores/<id>/address`` in the
        registry, so followers can name the leader's address in redirects; a clean stop deletes
        it, so finding it at start means the previous process of this replica was killed
        (``Replication.restarted``).
Rule 4: a fabric or registry that cannot run here raises ``ReplicationUnavailable`` with the
        underlying one-line reason.
Rule 5: the replica has a snapshot port: a replica that restarts on fresh memory (killed, then
        started with the same command) or finds its log overrun fetches a peer's snapshot
        (``kvstores.snapshot``), installs it into its local server and catches up the log from
        there (consensus rejoin). The transfer is the exchange's: each server serves
        ``Replication.FetchSnapshot`` (``exchange.state_transfer``) on an ephemeral gRPC port
        published under ``kvstores/<id>/snapshots``, looked up afresh at every fetch (a
        restarted peer has a new port), and fetches through ``exchange.replication``'s
        ``GrpcSnapshotPort``. A server refuses to serve while it recovers itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from kvstores.config import KvConfig
from kvstores.constants import PAYLOAD_BYTES_MAX, SNAPSHOT_SERVICE_WORKERS

log = logging.getLogger("kvstores.replication")


class ReplicationUnavailable(RuntimeError):
    """The consensus layer cannot start on this machine; the message says why."""


def address_key(replica_id: int) -> str:
    return f"kvstores/{replica_id}/address"


def snapshots_key(replica_id: int) -> str:
    return f"kvstores/{replica_id}/snapshots"


class SnapshotHandler(Protocol):
    """What the replica's snapshot port and service act on (``kvstores.snapshot.Snapshots``)."""

    def take(self) -> tuple[int, bytes]: ...

    def install(self, index: int, data: bytes) -> None: ...


class Replication:
    """The replica plus what must be closed after it (fabric, registry), and an address book."""

    def __init__(self, replica: Any, fabric: Any, registry: Any, restarted: bool,
                 replica_id: int, snapshot_server: Any) -> None:
        self.replica = replica
        self.restarted = restarted
        self._replica_id = replica_id
        self._fabric = fabric
        self.registry = registry
        self._snapshot_server = snapshot_server
        self._addresses: dict[int, str] = {}

    def address_of(self, replica_id: int) -> str | None:
        """The client address ``replica_id`` published (cached; one registry look-up)."""
        address = self._addresses.get(replica_id)
        if address is None:
            try:
                value = self.registry.lookup(address_key(replica_id))
            except Exception as exc:
                log.warning("registry look-up of server %d failed: %s", replica_id, exc)
                return None
            if value is None:
                return None
            address = value.decode()
            self._addresses[replica_id] = address
        return address

    def _forget_address(self) -> None:
        self.registry.delete(address_key(self._replica_id))
        self.registry.delete(snapshots_key(self._replica_id))

    def forget_addresses(self) -> None:
        self._addresses.clear()

    def _stop_snapshot_server(self) -> None:
        self._snapshot_server.stop(0).wait()

    def close(self) -> None:
        for closer in (self.replica.stop, self._stop_snapshot_server, self._forget_address,
                       self._fabric.close, self.registry.close):
            try:
                closer()
            except Exception:
                log.exception("closing %r failed", closer)


def _timings(config: KvConfig) -> dict[str, int]:
    from exchange.replication import detector_timings

    return detector_timings(config.pump_poll_us, config.dead_after_us,
                            config.heartbeat_interval_us)


def _serve_snapshots(config: KvConfig, snapshots: SnapshotHandler,
                     recovering: Callable[[], bool]) -> tuple[Any, str]:
    """Start this server's ``Replication`` service on an ephemeral port (Rule 5): the server and
    the address peers reach it at."""
    from concurrent import futures

    import grpc

    from exchange.grpc_checked import add_checked
    from exchange.proto import exchange_pb2_grpc as pb_grpc
    from exchange.state_transfer import SnapshotService

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SNAPSHOT_SERVICE_WORKERS,
                                                    thread_name_prefix="snapshot"),
                         options=[("grpc.so_reuseport", 0)])
    add_checked(pb_grpc.add_ReplicationServicer_to_server,
                SnapshotService(snapshots.take, recovering), server)
    bind = f"[{config.bind}]" if ":" in config.bind else config.bind
    try:
        port = server.add_insecure_port(f"{bind}:0")
    except RuntimeError as exc:
        raise ReplicationUnavailable(f"cannot serve snapshots on {config.bind}: {exc}") from None
    server.start()
    return server, f"{config.advertise.rpartition(':')[0]}:{port}"


def _snapshot_port(config: KvConfig, registry: Any, snapshots: SnapshotHandler) -> Any:
    from exchange.replication import GrpcSnapshotPort
    from kvstores.snapshot import SnapshotError

    def address_of(replica_id: int) -> str | None:
        value = registry.lookup(snapshots_key(replica_id))
        return None if value is None else bytes(value).decode()

    return GrpcSnapshotPort(config.replica_id, address_of, snapshots.install, (SnapshotError,))


def start_replication(
    config: KvConfig,
    on_commit: Callable[[int, bytes | memoryview], None],
    on_leader_change: Callable[[int | None, bool], None],
    snapshots: SnapshotHandler,
) -> Replication:
    """Open the registry and fabric, publish this server's addresses, start a replica that
    rejoins by snapshot (Rule 5)."""
    assert config.replicas > 1
    try:
        from consensus import Replica, ReplicaConfig
        from consensus.fabric import open_fabric
        from consensus.registry import open_registry
    except ImportError as exc:
        raise ReplicationUnavailable(f"the consensus package is not usable: {exc}") from None
    try:
        registry = open_registry(config.cluster_id, config.registry_address)
        restarted = registry.lookup(address_key(config.replica_id)) is not None
        registry.publish(address_key(config.replica_id), config.advertise.encode())
    except Exception as exc:
        raise ReplicationUnavailable(f"cannot use the replica registry: {exc}") from None
    try:
        fabric = open_fabric(config.fabric, config.replica_id, config.cluster_id, registry)
    except Exception as exc:
        registry.close()
        raise ReplicationUnavailable(f"cannot open the {config.fabric} fabric: {exc}") from None
    replica: Any = None
    snapshot_server: Any = None
    try:
        replica_config = ReplicaConfig(
            replica_id=config.replica_id,
            members=config.members,
            payload_size_max=PAYLOAD_BYTES_MAX,
            log_slots=config.log_slots,
            **_timings(config),
        )
        replica = Replica(replica_config, fabric, registry, on_commit=on_commit,
                          on_leader_change=on_leader_change,
                          snapshots=_snapshot_port(config, registry, snapshots))
        snapshot_server, address = _serve_snapshots(
            config, snapshots, lambda: replica.recovery is not None)
        registry.publish(snapshots_key(config.replica_id), address.encode())
        replica.start()
    except Exception as exc:
        if snapshot_server is not None:
            snapshot_server.stop(0)
        fabric.close()
        registry.close()
        raise ReplicationUnavailable(f"consensus replica failed to start: {exc}") from None
    return Replication(replica, fabric, registry, restarted, config.replica_id, snapshot_server)
