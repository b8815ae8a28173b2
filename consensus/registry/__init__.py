"""consensus.registry: where replicas publish and find each other's connection details."""

from consensus.registry.base import (
    InProcessRegistry,
    Registry,
    RegistryError,
    RegistryTimeout,
)

__all__ = ["InProcessRegistry", "Registry", "RegistryError", "RegistryTimeout"]
