"""The owner's half of the verbs fabric: a registered region and the responder ends of its
writers' links (``consensus.fabric.verbs`` Rules 1, 2 and 5).

Rule 1: per (writer, kind) a region has at most one live responder (``accepted``); a new one
        replaces the old only after the old is torn down (ERR, drained if it ever allowed
        writes, destroyed).
Rule 2: a write responder allows REMOTE_WRITE exactly while its writer is in ``writers()``:
        created with it if granted, given it in place by ``grant_write``, and torn down with a
        drain by ``revoke_write``; a read responder allows REMOTE_READ only.
Rule 3: grants, revokes and accepts of one region are serialized by its ``lock``.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from consensus.fabric.base import ReplicaIdT, RevokeStalled
from consensus.fabric.shm import check_replica_id, region_path
from consensus.fabric.verbs_device import QpDetails, RegionDetails, random_psn
from consensus.fabric.verbs_link import KIND_READ, KIND_WRITE, Request

if TYPE_CHECKING:
    from consensus.fabric.verbs import VerbsFabric

DRAIN_WAIT_S_MAX = 0.1  # a revoke waits this long for the responder's flush


@dataclass(slots=True)
class Acceptance:
    """The owner's end of one writer's link to one region."""

    qp: Any
    nonce: int
    write_enabled: bool  # REMOTE_WRITE was on at some point of this queue pair's life
    marker: Request | None = None  # the drain marker posted by an unfinished teardown


class VerbsRegion:
    """A region this replica owns (``LocalRegion``), registered with the device."""

    def __init__(self, fabric: VerbsFabric, name: str, size: int) -> None:
        self.fabric = fabric
        self.name = name
        self.size = size
        shm_path = region_path(fabric.cluster_id, fabric.replica_id, name)
        path = shm_path.with_name(f"{shm_path.name}.verbs")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | (0 if fabric.reattach else os.O_TRUNC), 0o600)
        try:
            os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.buf = memoryview(self.map)
        self._anchor = ctypes.c_char.from_buffer(self.map)  # pins the mapping's address
        endpoint = fabric.endpoint
        self.mr = endpoint.verbs.mr.MR(
            endpoint.pd, size, endpoint.write_access, address=ctypes.addressof(self._anchor)
        )
        self.details = RegionDetails(ctypes.addressof(self._anchor), self.mr.rkey, size)
        self.accepted: dict[tuple[int, str], Acceptance] = {}
        self._writers: set[int] = set()
        self.lock = threading.Lock()

    def grant_write(self, peer: ReplicaIdT) -> None:
        """Rule 2: a live write responder gets REMOTE_WRITE in place (nothing to drain)."""
        check_replica_id(peer)
        endpoint = self.fabric.endpoint
        with self.lock:
            self._writers.add(peer)
            acceptance = self.accepted.get((peer, KIND_WRITE))
            if acceptance is None or acceptance.write_enabled:
                return
            acceptance.write_enabled = True
            try:
                endpoint.set_access(acceptance.qp, endpoint.write_access)
            except endpoint.verbs.error:  # the writer reconnects and gets write access then
                if self.fabric.teardown(acceptance):
                    del self.accepted[(peer, KIND_WRITE)]

    def revoke_write(self, peer: ReplicaIdT) -> None:
        """Rule 2: on return no write of ``peer`` can land; ``RevokeStalled`` otherwise."""
        check_replica_id(peer)
        with self.lock:
            self._writers.discard(peer)
            acceptance = self.accepted.get((peer, KIND_WRITE))
            if acceptance is None or not acceptance.write_enabled:
                return
            if not self.fabric.teardown(acceptance):
                raise RevokeStalled(
                    f"region {self.name!r} of replica {self.fabric.replica_id}: the queue pair "
                    f"of replica {peer} did not drain in {DRAIN_WAIT_S_MAX * 1000:.0f} ms; its "
                    "permission is withdrawn, retry"
                )
            del self.accepted[(peer, KIND_WRITE)]
            nonce = acceptance.nonce
        self.fabric.publish_revoked(self.name, peer, nonce)

    def writers(self) -> frozenset[ReplicaIdT]:
        with self.lock:
            return frozenset(self._writers)

    def accept(self, peer: int, kind: str, writer: QpDetails, nonce: int) -> QpDetails | None:
        """A new responder for ``peer``'s ``kind`` link, after tearing down the old one
        (verbs Rule 5);
        ``None`` if the old one did not drain yet (the accept thread tries again)."""
        endpoint = self.fabric.endpoint
        with self.lock:
            old = self.accepted.get((peer, kind))
            if old is not None:
                if not self.fabric.teardown(old):
                    return None
                del self.accepted[(peer, kind)]
            writable = kind == KIND_WRITE and peer in self._writers
            if kind == KIND_READ:
                access = endpoint.read_access
            else:
                access = endpoint.write_access if writable else endpoint.no_access
            qp = endpoint.create_qp(endpoint.drain_cq)
            psn = random_psn()
            endpoint.connect_qp(qp, psn, writer, access)
            self.accepted[(peer, kind)] = Acceptance(qp, nonce, writable)
            return endpoint.details(qp, psn)

    def close(self) -> None:
        with self.lock:
            for acceptance in self.accepted.values():
                acceptance.qp.close()
            self.accepted.clear()
        self.mr.close()
