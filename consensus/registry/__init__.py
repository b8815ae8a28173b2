"""consensus.registry: where replicas publish and find each other's connection details.

``open_registry(cluster_id, address=None)`` picks the backend: ``address`` (or, when it is
``None``, the environment variable ``DORY_REGISTRY_IP``) of the form ``host:port`` selects the
memcached registry; no address selects the embedded single-host registry, which needs no server.
"""

from __future__ import annotations

import os

from consensus.registry.base import (
    InProcessRegistry,
    Registry,
    RegistryError,
    RegistryTimeout,
    validate_cluster_id,
)

REGISTRY_ADDRESS_ENV = "DORY_REGISTRY_IP"


def open_registry(cluster_id: str, address: str | None = None) -> Registry:
    """Open the registry of ``cluster_id``: memcached at ``address`` (default:
    ``$DORY_REGISTRY_IP``) or, without an address, the embedded single-host registry.

    Raises ``ValueError`` for a bad cluster id and ``RegistryError`` for a malformed address or an
    unreachable server.
    """
    validate_cluster_id(cluster_id)
    if address is None:
        address = os.environ.get(REGISTRY_ADDRESS_ENV, "").strip() or None
    if address is None:
        from consensus.registry.embedded import EmbeddedRegistry

        return EmbeddedRegistry(cluster_id)
    from consensus.registry.memcached import MemcachedRegistry

    return MemcachedRegistry(cluster_id, address)


__all__ = [
    "REGISTRY_ADDRESS_ENV",
    "InProcessRegistry",
    "Registry",
    "RegistryError",
    "RegistryTimeout",
    "open_registry",
]
