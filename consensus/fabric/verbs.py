"""The RDMA fabric on pyverbs (rdma-core): Mu's own setting. Shaped like ``consensus.fabric.shm``;
the network card does the copies and enforces the permissions. Design and argument:
docs/fabric.md ("verbs").

Rule 1 (queue pairs): per (region, writer) there are two reliable-connected links, each its own
        queue pair on both ends: a *read* link, whose responder allows REMOTE_READ only and is
        never revoked, and a *write* link, whose responder allows REMOTE_WRITE while the writer
        is granted and nothing remote otherwise. Reads therefore work whatever happens to write
        permission (base Rule 3).
Rule 2 (revoke drains): ``revoke_write`` moves the write link's responder to ERR (the card
        drops every later request of that queue pair), posts a receive marker on it and waits
        for the marker's flush completion, which the card produces only after the queue pair
        has finished the requests it accepted before the state change. Then it destroys the
        responder and publishes ``revoked``. So when it returns no write of the peer can land
        (base Rule 4); if the flush does not come within ``DRAIN_WAIT_S_MAX`` it raises
        ``RevokeStalled`` (permission is already withdrawn). ``grant_write`` adds REMOTE_WRITE
        to a live responder in place (``IBV_QP_ACCESS_FLAGS``); a device refusing that gets the
        responder torn down instead, and the writer reconnects.
Rule 3 (threads): any thread may call ``write``/``read``/``read_into``/``post_write``/
        ``poll_completions`` at once: posting is serialized per link (``verbs_link`` Rule 5),
        completions are routed per request (``verbs_link`` Rules 1-2), staging slots are owned
        per request (``verbs_link`` Rule 3). Region grants, revokes and accepts are serialized per
        region by its lock. The fabric's own threads: ``accept`` (the owner's answers) and
        ``repair`` (the writer's reconnections); neither is ever waited for by a data operation.
Rule 4 (timeouts): a synchronous operation waits at most ``op_timeout_s`` for its own completion.
        Then, or on any error completion, its link is broken and later operations on it fail at
        once (``WriteRejected`` if the owner rejected or revoked the writer, else
        ``FabricError``) until it is repaired; so a dead peer costs one timeout, not one per
        operation, and never the card's 0.5 s retry budget.
Rule 5 (repair is a hard reset of both ends): the repair thread resets and destroys the broken
        queue pair (abandoning its requests, whose slots are free once the reset returned),
        creates a new one with a new random PSN and nonce, and publishes it; the owner's accept
        thread tears down its old responder for that link (ERR, drain, destroy) and answers
        with a new one. No end ever keeps a PSN from an earlier connection, and no write of
        the old connection can land after the new one is answered.
Rule 6 (registry): the owner publishes ``(addr, rkey, size)`` per region and a doorbell that
        writers ring after publishing a request ``(qp_num, lid, gid, psn, nonce)`` per link; the
        answer goes under a key naming the nonce, so a stale answer is never taken.
Rule 7: a write is posted as body then tail (the last ``WRITE_TAIL_BYTES``), in order on one RC
        queue pair, both signaled. Regions are memory-mapped files
        (``/dev/shm/mu.<cluster>.<owner>.<region>.verbs``); ``reattach`` maps the old file.
Rule 8: importing this module is cheap; pyverbs and the device are opened by ``VerbsFabric``
        (or injected: ``Verbs(package)``, as the fake device does; ``consensus.fabric.
        verbs_device``) and a missing module or device raises ``FabricUnavailable`` with one
        line saying what is missing.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from typing import Any

from consensus.fabric.base import (
    Buffer,
    Completion,
    FabricError,
    RegionClosed,
    RemoteRegion,
    ReplicaIdT,
    UnknownPeer,
    WriteRejected,
    check_range,
)
from consensus.fabric.shm import (
    WRITE_TAIL_BYTES,
    check_region_name,
    check_replica_id,
)
from consensus.fabric.verbs_device import (
    DEBIAN_DIST_PACKAGES,
    STAGING_SLOT_BYTES,
    STAGING_SLOTS,
    Endpoint,
    QpDetails,
    RegionDetails,
    Verbs,
    answer_key,
    decode_request,
    doorbell_key,
    encode_request,
    open_device,
    probe,
    qp_attributes,
    qp_key,
    random_nonce,
    random_psn,
    region_key,
    revoked_key,
)
from consensus.fabric.verbs_link import (
    AWAITING,
    BROKEN,
    KIND_READ,
    KIND_WRITE,
    KINDS,
    READY,
    CompletionRouter,
    Link,
    Request,
    SlotPool,
)
from consensus.fabric.verbs_region import DRAIN_WAIT_S_MAX, Acceptance, VerbsRegion
from consensus.registry.base import Registry, RegistryError, validate_cluster_id

__all__ = [  # the device half, re-exported for callers of this module
    "DEBIAN_DIST_PACKAGES", "Endpoint", "QpDetails", "RegionDetails", "Verbs", "open_device",
    "probe", "qp_attributes", "qp_key", "region_key", "VerbsFabric", "VerbsRegion",
    "VerbsRemote",
]

PEER_ID_SCAN_MAX = 16
OP_TIMEOUT_S_DEFAULT = 0.01  # a synchronous op waits this long for its completion (Rule 4)
REPAIR_INTERVAL_S = 0.001  # the repair thread's turn while some link is not ready
REPAIR_ANSWER_WAIT_S = 0.5  # an unanswered reconnection is retried with a new queue pair
ACCEPT_POLL_INTERVAL_S = 0.002  # the owner looks at its doorbell this often
ACCEPT_FULL_SCAN_S = 0.5  # and at every request key this often, doorbell or not
assert OP_TIMEOUT_S_DEFAULT < DRAIN_WAIT_S_MAX < REPAIR_ANSWER_WAIT_S


class VerbsRemote:
    """This replica's connection to a peer's region (``RemoteRegion``): a read link and a write
    link (Rule 1)."""

    def __init__(self, fabric: VerbsFabric, owner: int, name: str, region: RegionDetails,
                 links: dict[str, Link]) -> None:
        self.fabric = fabric
        self.owner = owner
        self.name = name
        self.size = region.size
        self.links = links

    def write(self, offset: int, data: Buffer) -> None:
        length = len(data)
        check_range(self.name, self.size, offset, length)
        if length:
            self.fabric.run(self.links[KIND_WRITE], offset, length, data)

    def read(self, offset: int, length: int) -> bytes:
        check_range(self.name, self.size, offset, length)
        if not length:
            return b""
        return self.fabric.run(self.links[KIND_READ], offset, length, None)

    def read_into(self, offset: int, out: memoryview) -> None:
        out[:] = self.read(offset, len(out))


class VerbsFabric:
    """One replica's endpoint on the RDMA fabric (``Fabric``)."""

    def __init__(
        self, replica_id: ReplicaIdT, cluster_id: str, registry: Registry, reattach: bool = False,
        *, verbs: Verbs | None = None, device: str | None = None,
        op_timeout_s: float = OP_TIMEOUT_S_DEFAULT,
    ) -> None:
        assert op_timeout_s > 0
        self.replica_id = check_replica_id(replica_id)
        self.cluster_id = validate_cluster_id(cluster_id)
        self.registry = registry
        self.reattach = reattach
        self.op_timeout_s = op_timeout_s
        self.endpoint = Endpoint(verbs or Verbs(), device)
        enums = self.endpoint.verbs.enums
        self._success = int(enums.IBV_WC_SUCCESS)
        self._flushed = int(enums.IBV_WC_WR_FLUSH_ERR)
        self._rejections = {int(enums.IBV_WC_REM_ACCESS_ERR), int(enums.IBV_WC_REM_INV_REQ_ERR)}
        self._regions: dict[str, VerbsRegion] = {}
        self._slots = SlotPool(STAGING_SLOTS, STAGING_SLOT_BYTES)
        self.requests = CompletionRouter(self.endpoint.send_cq, self._success, self._finished)
        self.drains = CompletionRouter(self.endpoint.drain_cq, self._success, lambda _: None)
        # (wr_id, status, link, nonce, error) of finished posted writes; at most STAGING_SLOTS
        self._posted_done: deque[tuple[int, int, Link, int, FabricError | None]] = deque()
        self._posted_lock = threading.Lock()
        self._links: list[Link] = []
        self._links_lock = threading.Lock()
        self._closed = threading.Event()
        self._repair_wake = threading.Event()
        self._threads = [
            threading.Thread(target=self._accept_loop, name=f"verbs-accept-{replica_id}",
                             daemon=True),
            threading.Thread(target=self._repair_loop, name=f"verbs-repair-{replica_id}",
                             daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise RegionClosed(f"fabric endpoint of replica {self.replica_id} is closed")

    # --- regions and connections --------------------------------------------------------------
    def register(self, name: str, size: int) -> VerbsRegion:
        self._check_open()
        check_region_name(name)
        if size <= 0:
            raise ValueError(f"region {name!r}: size must be positive, got {size}")
        region = self._regions.get(name)
        if region is None:
            region = VerbsRegion(self, name, size)
            self._regions[name] = region
            self.registry.publish(region_key(self.replica_id, name), region.details.encode())
        elif region.size != size:
            raise FabricError(f"region {name!r} is registered with size {region.size}")
        return region

    def connect(self, owner: ReplicaIdT, name: str, timeout_s: float) -> VerbsRemote:
        self._check_open()
        check_replica_id(owner)
        check_region_name(name)
        deadline = time.monotonic() + timeout_s
        links = {kind: Link(owner, name, self.replica_id, kind) for kind in KINDS}
        try:
            for link in links.values():
                self._renew(link, deadline)
                while not self._try_establish(link):
                    if time.monotonic() > deadline:
                        raise UnknownPeer(f"replica {owner} did not answer a connection to its "
                                          f"region {name!r} within {timeout_s} s")
                    time.sleep(ACCEPT_POLL_INTERVAL_S / 2)
        except (UnknownPeer, RegistryError) as error:
            for link in links.values():
                if link.qp is not None:
                    link.qp.close()
            raise UnknownPeer(f"replica {owner} has no region {name!r} (or did not answer): "
                              f"{error}") from None
        with self._links_lock:
            self._links.extend(links.values())
        region = links[KIND_READ].region
        return VerbsRemote(self, owner, name, region, links)

    def _renew(self, link: Link, deadline: float | None = None) -> None:
        """Rule 5, the writer's end: a new queue pair and PSN, published for the owner."""
        endpoint, registry = self.endpoint, self.registry
        with link.lock:
            old, requests = link.qp, list(link.outstanding)
            link.outstanding.clear()
            link.state = AWAITING
            link.answer_deadline = float("inf")
        if old is not None:  # after the reset the card no longer touches the requests' slots
            endpoint.set_state(old, endpoint.verbs.enums.IBV_QPS_RESET)
            old.close()
        self.requests.abandon(requests, self._flushed)
        key = region_key(link.owner, link.name)
        value = (registry.wait_for(key, max(deadline - time.monotonic(), 0.0))
                 if deadline is not None else registry.lookup(key))
        if value is None:
            raise FabricError(f"replica {link.owner} publishes no region {link.name!r}")
        region = RegionDetails.decode(value)
        qp, psn, nonce = endpoint.create_qp(endpoint.send_cq), random_psn(), random_nonce()
        with link.lock:
            link.qp, link.psn, link.nonce, link.region = qp, psn, nonce, region
            link.revoked = None
            link.renewals += 1
            link.answer_deadline = time.monotonic() + REPAIR_ANSWER_WAIT_S
        registry.publish(qp_key(link.owner, link.name, self.replica_id, link.kind),
                         encode_request(endpoint.details(qp, psn), nonce))
        registry.publish(doorbell_key(link.owner), random_nonce().to_bytes(8, "little").hex()
                         .encode())

    def _try_establish(self, link: Link) -> bool:
        """Connect an awaiting link if the owner has answered."""
        value = self.registry.lookup(
            answer_key(link.owner, link.name, self.replica_id, link.kind, link.nonce))
        if value is None:
            return False
        remote = QpDetails.decode(value)
        self.endpoint.connect_qp(link.qp, link.psn, remote, self.endpoint.no_access)
        with link.lock:
            link.remote = remote
            link.cause = None
            link.unresponsive = False
            link.state = READY
        return True

    # --- data path ------------------------------------------------------------------------------
    def run(self, link: Link, offset: int, length: int, data: Buffer | None) -> bytes:
        """One synchronous write (``data``) or read on ``link`` (Rules 3 and 4)."""
        self._check_open()
        deadline = time.monotonic() + self.op_timeout_s
        while link.state != READY and not link.unresponsive and time.monotonic() < deadline:
            time.sleep(REPAIR_INTERVAL_S / 4)  # a rejected link is being renewed: a few ms
        request = self._start(link, offset, length, data, None, deadline)
        assert request is not None
        if not self.requests.wait(request, deadline):
            link.break_with(FabricError(f"{link.describe()}: no completion within "
                                        f"{self.op_timeout_s * 1000:.0f} ms"), unresponsive=True)
            self._repair_wake.set()
            if self.requests.release_on_timeout(request) and request.hold:
                self._slots.give(request.slot)
            error = self._error(link, self._flushed, "timed out", request.nonce)
            if isinstance(error, WriteRejected):  # the owner is alive: it revoked this link
                link.unresponsive = False
            raise error
        try:
            if request.status != self._success:
                raise self._error(link, request.status, "failed", request.nonce)
            return b"" if data is not None else self.endpoint.staging.read(length, request.slot)
        finally:
            if request.hold:
                self._slots.give(request.slot)

    def _start(self, link: Link, offset: int, length: int, data: Buffer | None,
               posted_wr_id: int | None, deadline: float) -> Request | None:
        """Take a slot, stage ``data``, post the work requests of one request. A posted write
        that could not be posted at all is reported through ``poll_completions`` (``None``)."""
        if length > STAGING_SLOT_BYTES:
            raise FabricError(f"{link.describe()}: {length} bytes exceed {STAGING_SLOT_BYTES}")
        slot = self._take_slot(link, deadline)
        verbs, endpoint = self.endpoint.verbs, self.endpoint
        if data is None:
            opcode, parts = verbs.enums.IBV_WR_RDMA_READ, [(0, length)]
        else:
            endpoint.staging.write(bytes(data), length, slot)
            body = max(length - WRITE_TAIL_BYTES, 0)
            opcode = verbs.enums.IBV_WR_RDMA_WRITE
            parts = [(0, body), (body, length - body)] if body else [(0, length)]
        request = Request(self.requests.new_id(), link, slot, len(parts), posted_wr_id,
                          hold=data is None)

        def build(region: RegionDetails) -> list[Any]:
            work_requests = []
            for k, (start, size) in enumerate(parts):
                sge = verbs.wr.SGE(endpoint.staging.buf + slot + start, size,
                                   endpoint.staging.lkey)
                work_request = verbs.wr.SendWR(
                    wr_id=request.wr_id(k), opcode=opcode, num_sge=1, sg=[sge],
                    send_flags=verbs.enums.IBV_SEND_SIGNALED)
                work_request.set_wr_rdma(region.rkey, region.addr + offset + start)
                work_requests.append(work_request)
            return work_requests

        self.requests.add(request)
        try:
            link.post(request, build, verbs.error, WriteRejected)
        except FabricError as error:
            self._repair_wake.set()
            if request in link.outstanding:  # partly posted: the repair abandons (reports) it
                if posted_wr_id is None:
                    raise
                return request
            self.requests.forget(request)
            self._slots.give(slot)
            if posted_wr_id is None:
                raise
            with self._posted_lock:
                self._posted_done.append((posted_wr_id, self._flushed, link, link.nonce, error))
            return None
        return request

    def _take_slot(self, link: Link, deadline: float) -> int:
        """A free staging slot; helps polling while none is (Rule 4 of verbs_link)."""
        while True:
            slot = self._slots.take()
            if slot is not None:
                return slot
            if self.requests.poll() == 0:
                if time.monotonic() > deadline:
                    raise FabricError(f"{link.describe()}: all {STAGING_SLOTS} staging slots "
                                      "are in use by requests in flight")
                time.sleep(0)

    def _finished(self, request: Request) -> None:
        """A request's last completion was routed (any thread): free, report, break."""
        link = request.link
        assert link is not None
        link.finished(request)
        if request.status not in (self._success, self._flushed) and link.break_with(
                self._error_plain(link, request.status),
                unresponsive=request.status not in self._rejections):
            self._repair_wake.set()
        if request.posted_wr_id is not None:
            assert link is not None
            with self._posted_lock:
                self._posted_done.append((request.posted_wr_id, request.status, link,
                                          request.nonce, None))
        if not request.hold:
            self._slots.give(request.slot)

    def _error_plain(self, link: Link, status: int) -> FabricError:
        kind = WriteRejected if status in self._rejections and link.kind == KIND_WRITE else (
            FabricError)
        return kind(f"{link.describe()}: work completion status {status}")

    def _error(self, link: Link, status: int, what: str, nonce: int | None = None) -> FabricError:
        """The error a caller sees: rejected if the owner refused or revoked it (Rule 4)."""
        if status in self._rejections and link.kind == KIND_WRITE:
            return WriteRejected(f"{link.describe()}: write rejected (status {status})")
        if link.kind == KIND_WRITE and self._was_revoked(link, nonce):
            return WriteRejected(f"{link.describe()}: write permission revoked")
        if isinstance(link.cause, WriteRejected):
            return WriteRejected(f"{link.describe()}: {link.cause}")
        return FabricError(f"{link.describe()}: {what} (status {status})")

    def _was_revoked(self, link: Link, nonce: int | None = None) -> bool:
        """Did the owner revoke incarnation ``nonce`` (default: the current one) of ``link``?
        The slow path of an error only: a registry lookup, cached for the current one."""
        current = nonce is None or nonce == link.nonce
        if current and link.revoked is not None:
            return link.revoked
        try:
            value = self.registry.lookup(revoked_key(link.owner, link.name, self.replica_id))
        except RegistryError:
            return False
        revoked = value == f"{link.nonce if nonce is None else nonce:x}".encode()
        if current:
            link.revoked = revoked
        return revoked

    def publish_revoked(self, name: str, peer: int, nonce: int) -> None:
        self.registry.publish(revoked_key(self.replica_id, name, peer), f"{nonce:x}".encode())

    def post_write(self, remote: RemoteRegion, offset: int, data: Buffer, wr_id: int) -> None:
        """Start a write; every outcome, refusals to start included, is reported once by
        ``poll_completions``."""
        self._check_open()
        assert isinstance(remote, VerbsRemote), "a remote region of another fabric"
        link = remote.links[KIND_WRITE]
        try:
            check_range(remote.name, remote.size, offset, len(data))
            self._start(link, offset, len(data), data, wr_id,
                        time.monotonic() + self.op_timeout_s)
        except FabricError as error:
            with self._posted_lock:
                self._posted_done.append((wr_id, self._flushed, link, link.nonce, error))

    def poll_completions(self, max_entries: int) -> list[Completion]:
        self.requests.poll()
        now = time.monotonic()
        for request in self.requests.alive():  # a posted write waits at most op_timeout_s too
            link = request.link
            if (request.posted_wr_id is not None and link is not None
                    and now - request.started > self.op_timeout_s
                    and link.break_with(FabricError(f"{link.describe()}: a posted write had no "
                                                    "completion in time"), unresponsive=True)):
                self._repair_wake.set()
        taken: list[tuple[int, int, Link, int, FabricError | None]] = []
        with self._posted_lock:
            while self._posted_done and len(taken) < max_entries:
                taken.append(self._posted_done.popleft())
        done = []
        for wr_id, status, link, nonce, error in taken:
            if error is None and status != self._success:
                error = self._error(link, status, f"posted write {wr_id} failed", nonce)
            elif error is not None and link.kind == KIND_WRITE and self._was_revoked(link, nonce):
                error = WriteRejected(str(error))
            done.append(Completion(wr_id, error))
        return done

    # --- owner side ------------------------------------------------------------------------------
    def teardown(self, acceptance: Acceptance) -> bool:
        """ERR, drain, destroy (Rule 2): True once nothing accepted before can still land."""
        endpoint = self.endpoint
        enums = endpoint.verbs.enums
        if acceptance.marker is None:
            endpoint.set_state(acceptance.qp, enums.IBV_QPS_ERR)
            if acceptance.write_enabled:
                marker = Request(self.drains.new_id(), None, -1, 1, None, hold=True)
                self.drains.add(marker)
                acceptance.qp.post_recv(endpoint.drain_marker(marker.wr_id(0)), None)
                acceptance.marker = marker
        pending = acceptance.marker
        if pending is not None and not self.drains.wait(
                pending, time.monotonic() + DRAIN_WAIT_S_MAX):
            return False
        acceptance.qp.close()
        return True

    def _accept_loop(self) -> None:
        """Answer writers' connection requests for every local region (Rules 5 and 6)."""
        seen: dict[tuple[str, int, str], bytes] = {}
        doorbell: bytes | None = None
        full_scan_at = 0.0
        while not self._closed.wait(ACCEPT_POLL_INTERVAL_S):
            try:
                ring = self.registry.lookup(doorbell_key(self.replica_id))
            except RegistryError as error:
                print(f"verbs fabric: registry: {error}", file=sys.stderr)
                continue
            now = time.monotonic()
            if ring == doorbell and now < full_scan_at:
                continue
            doorbell, full_scan_at = ring, now + ACCEPT_FULL_SCAN_S
            for region in list(self._regions.values()):
                for peer in range(1, PEER_ID_SCAN_MAX + 1):
                    for kind in KINDS:
                        if not self._accept_guarded(region, peer, kind, seen):
                            full_scan_at = 0.0  # an old responder did not drain yet: retry

    def _accept_guarded(self, region: VerbsRegion, peer: int, kind: str,
                        seen: dict[tuple[str, int, str], bytes]) -> bool:
        try:
            return self._accept_one(region, peer, kind, seen)
        except (FabricError, RegistryError, self.endpoint.verbs.error, OSError) as error:
            print(f"verbs fabric: cannot accept replica {peer}: {error}", file=sys.stderr)
            return True

    def _accept_one(self, region: VerbsRegion, peer: int, kind: str,
                    seen: dict[tuple[str, int, str], bytes]) -> bool:
        """Answer ``peer``'s request for its ``kind`` link if it is new; False to retry."""
        value = self.registry.lookup(qp_key(self.replica_id, region.name, peer, kind))
        if value is None or seen.get((region.name, peer, kind)) == value:
            return True
        writer, nonce = decode_request(value)
        answer = region.accept(peer, kind, writer, nonce)
        if answer is None:
            return False
        seen[(region.name, peer, kind)] = value
        self.registry.publish(answer_key(self.replica_id, region.name, peer, kind, nonce),
                              answer.encode())
        return True

    # --- writer side: repair --------------------------------------------------------------------
    def _repair_loop(self) -> None:
        """Rule 5: renew broken links, connect answered ones; only this thread does either."""
        while not self._closed.is_set():
            with self._links_lock:
                links = list(self._links)
            unready = False
            for link in links:
                if link.state != READY:
                    unready = True
                    self._repair_step(link)
            self._repair_wake.wait(REPAIR_INTERVAL_S if unready else None)
            self._repair_wake.clear()

    def _repair_step(self, link: Link) -> None:
        now = time.monotonic()
        try:
            if link.state == BROKEN and now >= link.retry_at:
                self._renew(link)
            elif (link.state == AWAITING and not self._try_establish(link)
                  and now > link.answer_deadline):
                with link.lock:
                    link.state = BROKEN
        except (FabricError, RegistryError, self.endpoint.verbs.error) as error:
            with link.lock:
                link.state = BROKEN
                link.retry_at = now + REPAIR_ANSWER_WAIT_S
            print(f"verbs fabric: {link.describe()}: reconnect failed: {error}", file=sys.stderr)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._repair_wake.set()
        for thread in self._threads:
            thread.join()
        with self._links_lock:
            for link in self._links:
                if link.qp is not None:
                    link.qp.close()
            self._links.clear()
        for region in self._regions.values():
            region.close()
        self.endpoint.context.close()


SELF_TEST_TIMEOUT_S = 5.0


def self_test(verbs: Verbs | None = None, device: str | None = None) -> str:
    """Two endpoints of this process on the device, through an in-process registry: connect,
    write and read back, revoke, check the revoked write is refused and nothing landed. One line
    on success; ``FabricError`` (``FabricUnavailable`` without a device) otherwise."""
    from consensus.fabric.shm import cleanup
    from consensus.registry.base import InProcessRegistry

    cluster_id = f"check-verbs-{os.getpid()}"
    store: dict[str, bytes] = {}
    verbs = verbs or Verbs()
    owner = VerbsFabric(1, cluster_id, InProcessRegistry(cluster_id, store), verbs=verbs,
                        device=device, op_timeout_s=SELF_TEST_TIMEOUT_S / 10)
    writer = VerbsFabric(2, cluster_id, InProcessRegistry(cluster_id, store), verbs=verbs,
                         device=device, op_timeout_s=SELF_TEST_TIMEOUT_S / 10)
    try:
        region = owner.register("selftest", 4096)
        region.grant_write(2)
        remote = writer.connect(1, "selftest", SELF_TEST_TIMEOUT_S)
        started = time.monotonic()
        remote.write(64, b"mu-exchange verbs self-test")
        if bytes(region.buf[64:91]) != b"mu-exchange verbs self-test":
            raise FabricError("verbs self-test: a write completed but its bytes are not there")
        if remote.read(64, 27) != b"mu-exchange verbs self-test":
            raise FabricError("verbs self-test: a read returned other bytes")
        elapsed_us = (time.monotonic() - started) * 1e6
        region.revoke_write(2)
        try:
            remote.write(0, b"after revoke")
            raise FabricError("verbs self-test: a write after revoke_write was accepted")
        except WriteRejected:
            pass
        if bytes(region.buf[:12]) != bytes(12):
            raise FabricError("verbs self-test: a write landed after revoke_write returned")
        return (f"verbs self-test passed: write+read of 27 bytes in {elapsed_us:.0f} us, "
                "revoked write refused")
    finally:
        writer.close()
        owner.close()
        cleanup(cluster_id)
