"""Endpoints of every fabric the conformance suite runs on, behind one small interface.

- ``shm``: the shared-memory fabric (all endpoints in this process; the cross-process cases live
  in test_fabric_shm.py).
- ``memory``: the in-process fabric, the substrate of the simulator's fabric. The simulator's own
  ``SimNetwork`` is not driven directly: every one of its operations is a switch point of its
  seeded scheduler and must run inside a simulated task (test_sim_fabric.py covers it there).
- ``verbs-fake``: the verbs fabric, unchanged, on ``consensus.fabric.fake_verbs`` injected as the
  ``pyverbs`` package.
"""

from __future__ import annotations

from typing import Any

from consensus.fabric import Fabric, open_fabric
from consensus.fabric.fake_verbs import FakeRdma
from consensus.fabric.memory import MemoryNetwork
from consensus.registry import InProcessRegistry, open_registry

FABRIC_KINDS = ("shm", "memory", "verbs-fake")
# A verbs operation waits this long for its completion in tests: long enough that a loaded
# 2-core machine never times out a healthy operation, short enough for a revoked writer's first
# write (which times out: its responder is gone) to keep tests quick.
VERBS_OP_TIMEOUT_S = 0.25


class Kit:
    """Opens endpoints of one fabric kind for one cluster id and closes them all at the end."""

    def __init__(self, kind: str, cluster_id: str, **fake_options: Any) -> None:
        assert kind in FABRIC_KINDS
        self.kind = kind
        self.cluster_id = cluster_id
        self.fabrics: list[Fabric] = []
        self.network = MemoryNetwork() if kind == "memory" else None
        self.store: dict[str, bytes] = {}
        self.fake: FakeRdma | None = None
        self._installed: Any = None
        if kind == "verbs-fake":
            self.fake = FakeRdma(**fake_options)
            self._installed = self.fake.install()
            self._installed.__enter__()

    # What the fabric promises beyond the base rules' common core:
    @property
    def closed_endpoint_refuses(self) -> bool:
        """A closed endpoint's remote handles raise ``RegionClosed`` (memory keeps them)."""
        return self.kind != "memory"

    def endpoint(self, replica_id: int, **options: Any) -> Fabric:
        fabric: Fabric
        if self.kind == "shm":
            fabric = open_fabric("shm", replica_id, self.cluster_id,
                                 open_registry(self.cluster_id))
        elif self.kind == "memory":
            assert self.network is not None
            fabric = self.network.endpoint(replica_id)  # type: ignore[assignment]
        else:
            from consensus.fabric.verbs import VerbsFabric

            options.setdefault("op_timeout_s", VERBS_OP_TIMEOUT_S)
            fabric = VerbsFabric(replica_id, self.cluster_id,
                                 InProcessRegistry(self.cluster_id, self.store), **options)
        self.fabrics.append(fabric)
        return fabric

    def close(self) -> None:
        for fabric in self.fabrics:
            fabric.close()
        if self.network is not None:
            self.network.close()
        if self._installed is not None:
            self._installed.__exit__(None, None, None)
