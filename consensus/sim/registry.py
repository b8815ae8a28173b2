"""``SimRegistry``: the in-process registry with switch points and simulated-time waiting.

Rule 1: ``publish``, ``lookup`` and ``delete`` are switch points (a registry look-up is a network
        round trip in production), then act on one shared in-process store.
Rule 2: ``wait_for`` polls in simulated time (``REGISTRY_POLL_NS``) and raises ``RegistryTimeout``
        after ``timeout_s`` simulated seconds; it never sleeps in wall-clock time.
"""

from __future__ import annotations

from consensus.registry.base import InProcessRegistry, RegistryTimeout
from consensus.sim.scheduler import Scheduler

REGISTRY_POLL_NS = 50_000


class SimRegistry:
    """One replica's view of the simulated cluster's registry (``Registry``)."""

    def __init__(self, scheduler: Scheduler, cluster_id: str, store: dict[str, bytes]) -> None:
        self.cluster_id = cluster_id
        self._scheduler = scheduler
        self._inner = InProcessRegistry(cluster_id, store)

    def _switch(self, label: str) -> None:
        if self._scheduler.in_task():
            self._scheduler.switch(label)

    def publish(self, key: str, value: bytes) -> None:
        self._switch(f"publish {key}")
        self._inner.publish(key, value)

    def lookup(self, key: str) -> bytes | None:
        self._switch(f"lookup {key}")
        return self._inner.lookup(key)

    def delete(self, key: str) -> None:
        self._switch(f"delete {key}")
        self._inner.delete(key)

    def wait_for(self, key: str, timeout_s: float) -> bytes:
        deadline_ns = self._scheduler.now_ns + int(timeout_s * 1e9)
        while True:
            value = self.lookup(key)
            if value is not None:
                return value
            if self._scheduler.now_ns >= deadline_ns:
                raise RegistryTimeout(
                    f"registry {self.describe()}: no entry {key!r} for cluster "
                    f"{self.cluster_id!r} after {timeout_s:.3f} simulated s"
                )
            self._scheduler.sleep("registry wait", REGISTRY_POLL_NS)

    def describe(self) -> str:
        return "simulated in-process"

    def close(self) -> None:
        pass
