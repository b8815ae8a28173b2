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
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kvstores.config import KvConfig
from kvstores.constants import PAYLOAD_BYTES_MAX

log = logging.getLogger("kvstores.replication")


class ReplicationUnavailable(RuntimeError):
    """The consensus layer cannot start on this machine; the message says why."""


def address_key(replica_id: int) -> str:
    return f"kvstores/{replica_id}/address"


class Replication:
    """The replica plus what must be closed after it (fabric, registry), and an address book."""

    def __init__(self, replica: Any, fabric: Any, registry: Any, restarted: bool,
                 replica_id: int) -> None:
        self.replica = replica
        self.restarted = restarted
        self._replica_id = replica_id
        self._fabric = fabric
        self.registry = registry
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

    def forget_addresses(self) -> None:
        self._addresses.clear()

    def close(self) -> None:
        for closer in (self.replica.stop, self._forget_address, self._fabric.close,
                       self.registry.close):
            try:
                closer()
            except Exception:
                log.exception("closing %r failed", closer)


def _timings(config: KvConfig) -> dict[str, int]:
    from exchange.replication import detector_timings

    return detector_timings(config.pump_poll_us, config.dead_after_us,
                            config.heartbeat_interval_us)


def start_replication(
    config: KvConfig,
    on_commit: Callable[[int, bytes | memoryview], None],
    on_leader_change: Callable[[int | None, bool], None],
) -> Replication:
    """Open the registry and fabric, publish this server's address, start a replica."""
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
    try:
        replica_config = ReplicaConfig(
            replica_id=config.replica_id,
            members=config.members,
            payload_size_max=PAYLOAD_BYTES_MAX,
            log_slots=config.log_slots,
            **_timings(config),
        )
        replica = Replica(replica_config, fabric, registry, on_commit=on_commit,
                          on_leader_change=on_leader_change)
        replica.start()
    except Exception as exc:
        fabric.close()
        registry.close()
        raise ReplicationUnavailable(f"consensus replica failed to start: {exc}") from None
    return Replication(replica, fabric, registry, restarted, config.replica_id)
