"""The RDMA fabric on pyverbs (rdma-core): Mu's own setting. Shaped like ``consensus.fabric.shm``;
the network card does the copies and enforces the permissions.

Rule 1: one reliable-connected queue pair per (region, writer): the owner's end is a responder
        whose access flags say what the writer may do (always REMOTE_READ; REMOTE_WRITE only while
        granted), so permissions are per region as the fabric interface asks.
Rule 2: ``grant_write``/``revoke_write`` change the owner's QP access flags
        (``modify(attr, IBV_QP_ACCESS_FLAGS)``); when the device refuses (or the QP is in the
        error state after a rejected write) the QP is cycled RESET -> INIT -> RTR -> RTS with the
        new flags, as Mu does. The card checks the flags on every incoming write, so once the
        modify returns no write of the revoked peer lands.
Rule 3: regions are memory-mapped files (``/dev/shm/mu.<cluster>.<owner>.<region>.verbs``)
        registered with LOCAL_WRITE | REMOTE_READ | REMOTE_WRITE; ``reattach`` maps the old file.
Rule 4: connection details travel through the registry: the owner publishes ``(addr, rkey,
        size)``; a writer publishes its QP ``(qp_num, lid, gid, psn)`` and waits for the owner's
        answer under a key naming its own qp_num (so a stale answer is never taken); the owner's
        accept thread answers writers with ids ``1..PEER_ID_SCAN_MAX``.
Rule 5: a write is posted as body then tail (the last ``WRITE_TAIL_BYTES``), in order on one RC
        QP, and its completion is polled from the fabric's completion queue; completions of posted
        writes met on the way are kept for ``poll_completions``.
Rule 6: importing this module is cheap; pyverbs and the device are opened by ``VerbsFabric`` and
        a missing module or device raises ``FabricUnavailable`` with one line saying what is
        missing and to use ``--fabric shm``.
"""

from __future__ import annotations

import ctypes
import importlib
import mmap
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from consensus.fabric.base import (
    Buffer,
    Completion,
    FabricError,
    FabricUnavailable,
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
    region_path,
)
from consensus.registry.base import Registry, RegistryTimeout, validate_cluster_id

DEVICE_ENV = "MU_RDMA_DEVICE"  # device name (default: the first one)
GID_INDEX_ENV = "MU_RDMA_GID_INDEX"  # GID table index (RoCE needs one; default 0)
DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"
PORT_NUMBER = 1
PEER_ID_SCAN_MAX = 16
STAGING_SLOT_BYTES = 16 * 1024
STAGING_SLOTS = 64
CQ_ENTRIES = 4 * STAGING_SLOTS
COMPLETION_TIMEOUT_S = 1.0
ACCEPT_POLL_INTERVAL_S = 0.005
QP_TIMEOUT_CODE = 14  # 4.096 us * 2**14 = 67 ms per retry
QP_RETRY_COUNT = 7
QP_RNR_RETRY = 7
QP_RD_ATOMIC_MAX = 1
QP_MIN_RNR_TIMER_CODE = 12  # 0.64 ms
SYNC_WR_ID_BIT = 1 << 63  # internal synchronous operations; callers' wr_ids stay below
SHM_INSTEAD = "use --fabric shm on a single host"


@dataclass(frozen=True, slots=True)
class QpDetails:
    """One end of a queue pair, as published in the registry."""

    qp_num: int
    lid: int
    gid: str
    psn: int

    def encode(self) -> bytes:
        return f"{self.qp_num} {self.lid} {self.gid} {self.psn}".encode()

    @staticmethod
    def decode(value: bytes) -> QpDetails:
        parts = value.decode("ascii", "replace").split()
        if len(parts) != 4 or not all(p.isdigit() for p in (parts[0], parts[1], parts[3])):
            raise FabricError(f"malformed queue-pair details in the registry: {value!r}")
        return QpDetails(int(parts[0]), int(parts[1]), parts[2], int(parts[3]))


@dataclass(frozen=True, slots=True)
class RegionDetails:
    """Where a region lives in its owner's address space, as published in the registry."""

    addr: int
    rkey: int
    size: int

    def encode(self) -> bytes:
        return f"{self.addr:x} {self.rkey} {self.size}".encode()

    @staticmethod
    def decode(value: bytes) -> RegionDetails:
        parts = value.decode("ascii", "replace").split()
        try:
            addr, rkey, size = int(parts[0], 16), int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            raise FabricError(f"malformed region details in the registry: {value!r}") from None
        if len(parts) != 3 or size <= 0:
            raise FabricError(f"malformed region details in the registry: {value!r}")
        return RegionDetails(addr, rkey, size)


def region_key(owner: ReplicaIdT, name: str) -> str:
    return f"fabric/verbs/{owner}/{name}"


def qp_key(owner: ReplicaIdT, name: str, writer: ReplicaIdT, side: str) -> str:
    return f"fabric/verbs/{owner}/{name}/qp/{writer}/{side}"


class Verbs:
    """The pyverbs modules this fabric uses, imported on demand (Rule 6)."""

    def __init__(self) -> None:
        modules = ("device", "pd", "mr", "cq", "qp", "wr", "addr", "pyverbs_error")
        loaded = _import_pyverbs(modules)
        self.device, self.pd, self.mr, self.cq, self.qp, self.wr, self.addr, errors = loaded
        self.error: type[Exception] = errors.PyverbsError
        try:
            self.enums: Any = importlib.import_module("pyverbs.enums")  # rdma-core <= 47
        except ImportError:
            self.enums = importlib.import_module("pyverbs.libibverbs_enums")


def _import_pyverbs(names: tuple[str, ...]) -> list[ModuleType]:
    """Import ``pyverbs.<name>`` for every name, trying Debian's dist-packages as a fallback
    (python3-pyverbs is built for Debian's CPython 3.11, ABI-compatible with other 3.11s)."""
    try:
        return [importlib.import_module(f"pyverbs.{name}") for name in names]
    except ImportError as first:
        if DEBIAN_DIST_PACKAGES in sys.path or not Path(DEBIAN_DIST_PACKAGES, "pyverbs").is_dir():
            raise FabricUnavailable(
                f"verbs fabric: pyverbs is not importable by {sys.executable} ({first}); install "
                f"rdma-core's python3-pyverbs for this Python, or {SHM_INSTEAD}"
            ) from None
    sys.path.append(DEBIAN_DIST_PACKAGES)
    try:
        return [importlib.import_module(f"pyverbs.{name}") for name in names]
    except ImportError as second:
        raise FabricUnavailable(
            f"verbs fabric: Debian's pyverbs in {DEBIAN_DIST_PACKAGES} does not load in "
            f"{sys.executable} ({second}); {SHM_INSTEAD}"
        ) from None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def open_device(verbs: Verbs, name: str | None) -> Any:
    """Open RDMA device ``name`` (default ``$MU_RDMA_DEVICE``, else the first one)."""
    hint = "add Soft-RoCE with `rdma link add rxe0 type rxe netdev eth0` or " + SHM_INSTEAD
    try:
        devices = [_text(d.name) for d in verbs.device.get_device_list()]
    except verbs.error as error:
        raise FabricUnavailable(f"verbs fabric: no RDMA device ({error}); {hint}") from None
    if not devices:
        raise FabricUnavailable(f"verbs fabric: no RDMA device; {hint}")
    wanted = name or os.environ.get(DEVICE_ENV) or devices[0]
    if wanted not in devices:
        raise FabricUnavailable(
            f"verbs fabric: no RDMA device {wanted!r} (found {', '.join(devices)})"
        )
    try:
        return verbs.device.Context(name=wanted)
    except verbs.error as error:
        raise FabricUnavailable(f"verbs fabric: cannot open {wanted}: {error}") from None


def probe(name: str | None = None) -> str:
    """One line saying which device and port the verbs fabric would use (or
    ``FabricUnavailable``)."""
    verbs = Verbs()
    context = open_device(verbs, name)
    port = context.query_port(PORT_NUMBER)
    gid = context.query_gid(PORT_NUMBER, int(os.environ.get(GID_INDEX_ENV, "0")))
    state = "active" if port.state == verbs.enums.IBV_PORT_ACTIVE else f"state {port.state}"
    return (
        f"verbs fabric available: device {_text(context.name)}, port {PORT_NUMBER} {state}, "
        f"lid {port.lid}, gid {gid.gid}"
    )


def qp_attributes(
    verbs: Verbs, gid_index: int, local_psn: int, remote: QpDetails, access: int
) -> Any:
    """The ``QPAttr`` taking an RC queue pair through INIT, RTR and RTS towards ``remote``."""
    enums = verbs.enums
    route = verbs.addr.GlobalRoute(dgid=verbs.addr.GID(remote.gid), sgid_index=gid_index)
    attr = verbs.qp.QPAttr()
    attr.ah_attr = verbs.addr.AHAttr(dlid=remote.lid, is_global=1, gr=route, port_num=PORT_NUMBER)
    attr.port_num = PORT_NUMBER
    attr.qp_access_flags = access
    attr.path_mtu = enums.IBV_MTU_1024
    attr.dest_qp_num = remote.qp_num
    attr.rq_psn = remote.psn
    attr.sq_psn = local_psn
    attr.max_dest_rd_atomic = attr.max_rd_atomic = QP_RD_ATOMIC_MAX
    attr.min_rnr_timer = QP_MIN_RNR_TIMER_CODE
    attr.timeout = QP_TIMEOUT_CODE
    attr.retry_cnt = QP_RETRY_COUNT
    attr.rnr_retry = QP_RNR_RETRY
    return attr


class Endpoint:
    """A replica's device resources: context, protection domain, completion queue, staging
    memory for outgoing writes and incoming reads, and its address (lid, gid)."""

    def __init__(self, verbs: Verbs, device: str | None) -> None:
        self.verbs = verbs
        enums = verbs.enums
        self.context = open_device(verbs, device)
        self.gid_index = int(os.environ.get(GID_INDEX_ENV, "0"))
        self.lid = self.context.query_port(PORT_NUMBER).lid
        self.gid = str(self.context.query_gid(PORT_NUMBER, self.gid_index).gid)
        self.pd = verbs.pd.PD(self.context)
        self.cq = verbs.cq.CQ(self.context, CQ_ENTRIES)
        self.staging = verbs.mr.MR(
            self.pd, STAGING_SLOT_BYTES * STAGING_SLOTS, enums.IBV_ACCESS_LOCAL_WRITE
        )
        self.write_access: int = (
            enums.IBV_ACCESS_LOCAL_WRITE
            | enums.IBV_ACCESS_REMOTE_READ
            | enums.IBV_ACCESS_REMOTE_WRITE
        )
        self.read_access: int = enums.IBV_ACCESS_LOCAL_WRITE | enums.IBV_ACCESS_REMOTE_READ

    def create_qp(self) -> Any:
        verbs = self.verbs
        capabilities = verbs.qp.QPCap(
            max_send_wr=2 * STAGING_SLOTS, max_recv_wr=1, max_send_sge=1, max_recv_sge=1
        )
        attributes = verbs.qp.QPInitAttr(
            qp_type=verbs.enums.IBV_QPT_RC,
            scq=self.cq,
            rcq=self.cq,
            cap=capabilities,
            sq_sig_all=0,
        )
        return verbs.qp.QP(self.pd, attributes)

    def details(self, qp: Any, psn: int) -> QpDetails:
        return QpDetails(qp.qp_num, self.lid, self.gid, psn)

    def connect_qp(self, qp: Any, local_psn: int, remote: QpDetails, access: int) -> None:
        """Bring ``qp`` from any state to RTS towards ``remote`` with ``access`` flags."""
        verbs, enums = self.verbs, self.verbs.enums
        qp.modify(verbs.qp.QPAttr(qp_state=enums.IBV_QPS_RESET), enums.IBV_QP_STATE)
        attr = qp_attributes(verbs, self.gid_index, local_psn, remote, access)
        qp.to_init(attr)
        qp.to_rtr(attr)
        qp.to_rts(attr)

    def set_access(self, qp: Any, local_psn: int, remote: QpDetails, access: int) -> None:
        """Change ``qp``'s access flags in place (Mu's fast path), else cycle it (Rule 2)."""
        verbs, enums = self.verbs, self.verbs.enums
        attr = verbs.qp.QPAttr()
        attr.qp_access_flags = access
        try:
            qp.modify(attr, enums.IBV_QP_ACCESS_FLAGS)
        except verbs.error:
            self.connect_qp(qp, local_psn, remote, access)


@dataclass(slots=True)
class Acceptance:
    """The owner's end of one writer's connection to one region."""

    qp: Any
    psn: int
    remote: QpDetails


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
        self.accepted: dict[int, Acceptance] = {}
        self._writers: set[int] = set()
        self.lock = threading.Lock()

    def _access(self, peer: int) -> int:
        endpoint = self.fabric.endpoint
        return endpoint.write_access if peer in self._writers else endpoint.read_access

    def grant_write(self, peer: ReplicaIdT) -> None:
        self._change(check_replica_id(peer), grant=True)

    def revoke_write(self, peer: ReplicaIdT) -> None:
        self._change(check_replica_id(peer), grant=False)

    def _change(self, peer: int, grant: bool) -> None:
        with self.lock:
            if grant:
                self._writers.add(peer)
            else:
                self._writers.discard(peer)
            acceptance = self.accepted.get(peer)
            if acceptance is not None:
                self.fabric.endpoint.set_access(
                    acceptance.qp, acceptance.psn, acceptance.remote, self._access(peer)
                )

    def writers(self) -> frozenset[ReplicaIdT]:
        with self.lock:
            return frozenset(self._writers)

    def accept(self, peer: int, remote: QpDetails) -> QpDetails:
        """Create (or replace, for a restarted writer) the owner's end for ``peer``."""
        endpoint = self.fabric.endpoint
        with self.lock:
            qp = endpoint.create_qp()
            psn = int.from_bytes(os.urandom(3), "little")
            endpoint.connect_qp(qp, psn, remote, self._access(peer))
            self.accepted[peer] = Acceptance(qp, psn, remote)
            return endpoint.details(qp, psn)


class VerbsRemote:
    """This replica's connection to a peer's region (``RemoteRegion``)."""

    def __init__(
        self, fabric: VerbsFabric, owner: int, name: str, region: RegionDetails, timeout_s: float
    ) -> None:
        self.fabric = fabric
        self.owner = owner
        self.name = name
        self.size = region.size
        self.region = region
        endpoint = fabric.endpoint
        self.qp = endpoint.create_qp()
        self.psn = int.from_bytes(os.urandom(3), "little")
        writer = fabric.replica_id
        registry = fabric.registry
        registry.publish(
            qp_key(owner, name, writer, "writer"), endpoint.details(self.qp, self.psn).encode()
        )
        answer_key = qp_key(owner, name, writer, f"owner.{self.qp.qp_num}")  # not a stale one
        answer = registry.wait_for(answer_key, timeout_s)
        self.remote = QpDetails.decode(answer)
        endpoint.connect_qp(self.qp, self.psn, self.remote, endpoint.read_access)

    def _recover(self) -> None:
        """After a failed work request the QP is in the error state: cycle it back to RTS."""
        endpoint = self.fabric.endpoint
        endpoint.connect_qp(self.qp, self.psn, self.remote, endpoint.read_access)

    def write(self, offset: int, data: Buffer) -> None:
        self.fabric.post_write(self, offset, data, self.fabric.sync_wr_id())
        self.fabric.wait_sync(self)

    def read(self, offset: int, length: int) -> bytes:
        check_range(self.name, self.size, offset, length)
        slot = self.fabric.post_read(self, offset, length)
        self.fabric.wait_sync(self)
        data: bytes = self.fabric.endpoint.staging.read(length, slot)
        return data

    def read_into(self, offset: int, out: memoryview) -> None:
        out[:] = self.read(offset, len(out))


class VerbsFabric:
    """One replica's endpoint on the RDMA fabric (``Fabric``)."""

    def __init__(
        self, replica_id: ReplicaIdT, cluster_id: str, registry: Registry, reattach: bool = False
    ) -> None:
        self.replica_id = check_replica_id(replica_id)
        self.cluster_id = validate_cluster_id(cluster_id)
        self.registry = registry
        self.reattach = reattach
        self.endpoint = Endpoint(Verbs(), None)
        self._regions: dict[str, VerbsRegion] = {}
        self._pending: dict[int, VerbsRemote] = {}
        self._completions: list[Completion] = []
        self._sync_counter = 0
        self._slot_counter = 0
        self._closed = threading.Event()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"verbs-accept-{replica_id}", daemon=True
        )
        self._accept_thread.start()

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise RegionClosed(f"fabric endpoint of replica {self.replica_id} is closed")

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
        deadline = time.monotonic() + timeout_s
        try:
            value = self.registry.wait_for(region_key(owner, name), timeout_s)
            region = RegionDetails.decode(value)
            remaining = max(deadline - time.monotonic(), 0.0)
            return VerbsRemote(self, owner, name, region, remaining)
        except RegistryTimeout as error:
            raise UnknownPeer(
                f"replica {owner} has no region {name!r} (or did not answer): {error}"
            ) from None

    def _accept_loop(self) -> None:
        """Answer writers' connection requests for every local region (Rule 4)."""
        seen: dict[tuple[str, int], bytes] = {}
        while not self._closed.wait(ACCEPT_POLL_INTERVAL_S):
            for region in list(self._regions.values()):
                for peer in range(1, PEER_ID_SCAN_MAX + 1):
                    try:
                        self._accept_one(region, peer, seen)
                    except (FabricError, self.endpoint.verbs.error, OSError) as error:
                        print(
                            f"verbs fabric: cannot accept replica {peer}: {error}", file=sys.stderr
                        )

    def _accept_one(
        self, region: VerbsRegion, peer: int, seen: dict[tuple[str, int], bytes]
    ) -> None:
        key = qp_key(self.replica_id, region.name, peer, "writer")
        value = self.registry.lookup(key)
        if value is None or seen.get((region.name, peer)) == value:
            return
        seen[(region.name, peer)] = value
        writer = QpDetails.decode(value)
        answer = region.accept(peer, writer)
        side = f"owner.{writer.qp_num}"
        self.registry.publish(qp_key(self.replica_id, region.name, peer, side), answer.encode())

    def sync_wr_id(self) -> int:
        self._sync_counter += 1
        return SYNC_WR_ID_BIT | self._sync_counter

    def _next_slot(self) -> int:
        """A staging slot no outstanding work request uses (waits for completions if needed)."""
        while len(self._pending) >= STAGING_SLOTS - 1:
            self._poll_into_stash(STAGING_SLOTS)
        self._slot_counter = (self._slot_counter + 1) % STAGING_SLOTS
        return self._slot_counter * STAGING_SLOT_BYTES

    def _post(
        self,
        remote: VerbsRemote,
        opcode: int,
        slot: int,
        offset: int,
        length: int,
        wr_id: int,
        signaled: bool,
    ) -> None:
        verbs, endpoint = self.endpoint.verbs, self.endpoint
        sge = verbs.wr.SGE(endpoint.staging.buf + slot, length, endpoint.staging.lkey)
        flags = verbs.enums.IBV_SEND_SIGNALED if signaled else 0
        request = verbs.wr.SendWR(wr_id=wr_id, opcode=opcode, num_sge=1, sg=[sge], send_flags=flags)
        request.set_wr_rdma(remote.region.rkey, remote.region.addr + offset)
        remote.qp.post_send(request, None)

    def post_write(self, remote: RemoteRegion, offset: int, data: Buffer, wr_id: int) -> None:
        self._check_open()
        assert isinstance(remote, VerbsRemote), "a remote region of another fabric"
        length = len(data)
        check_range(remote.name, remote.size, offset, length)
        if length > STAGING_SLOT_BYTES:
            raise FabricError(f"write of {length} bytes exceeds {STAGING_SLOT_BYTES} bytes")
        slot = self._next_slot()
        self.endpoint.staging.write(bytes(data), length, slot)
        opcode = self.endpoint.verbs.enums.IBV_WR_RDMA_WRITE
        self._pending[wr_id] = remote
        body = max(length - WRITE_TAIL_BYTES, 0)
        if body:  # body first, then the tail, in order on this RC queue pair (Rule 5)
            self._post(remote, opcode, slot, offset, body, wr_id, signaled=False)
        self._post(remote, opcode, slot + body, offset + body, length - body, wr_id, True)

    def post_read(self, remote: VerbsRemote, offset: int, length: int) -> int:
        """Start a synchronous-path RDMA READ into a staging slot; return the slot."""
        self._check_open()
        if length > STAGING_SLOT_BYTES:
            raise FabricError(f"read of {length} bytes exceeds {STAGING_SLOT_BYTES} bytes")
        slot = self._next_slot()
        wr_id = self.sync_wr_id()
        self._pending[wr_id] = remote
        opcode = self.endpoint.verbs.enums.IBV_WR_RDMA_READ
        self._post(remote, opcode, slot, offset, length, wr_id, signaled=True)
        return slot

    def wait_sync(self, remote: VerbsRemote) -> None:
        """Poll until the latest synchronous work request completes; raise its error."""
        wr_id = SYNC_WR_ID_BIT | self._sync_counter
        deadline = time.monotonic() + COMPLETION_TIMEOUT_S
        while wr_id in self._pending:
            for completion in self._poll_into_stash(STAGING_SLOTS, keep=wr_id):
                if completion.error is not None:
                    raise completion.error
            if time.monotonic() > deadline:
                self._pending.pop(wr_id, None)
                remote._recover()
                raise FabricError(
                    f"region {remote.name!r} of replica {remote.owner}: no completion after "
                    f"{COMPLETION_TIMEOUT_S} s"
                )

    def _poll_into_stash(self, max_entries: int, keep: int | None = None) -> list[Completion]:
        """Poll the CQ; stash callers' completions, return the one with id ``keep``."""
        enums = self.endpoint.verbs.enums
        _, work_completions = self.endpoint.cq.poll(max_entries)
        kept: list[Completion] = []
        for wc in work_completions:
            remote = self._pending.pop(wc.wr_id, None)
            if remote is None:  # the second completion of a failed body+tail pair
                continue
            error: FabricError | None = None
            if wc.status != enums.IBV_WC_SUCCESS:
                remote._recover()
                rejected = wc.status in (
                    enums.IBV_WC_REM_ACCESS_ERR,
                    enums.IBV_WC_REM_INV_REQ_ERR,
                    enums.IBV_WC_WR_FLUSH_ERR,
                )
                kind = WriteRejected if rejected else FabricError
                error = kind(
                    f"replica {self.replica_id} -> region {remote.name!r} of replica "
                    f"{remote.owner}: work completion status {wc.status}"
                )
            completion = Completion(wc.wr_id, error)
            (kept if wc.wr_id == keep else self._completions).append(completion)
        return kept

    def poll_completions(self, max_entries: int) -> list[Completion]:
        if len(self._completions) < max_entries:
            self._poll_into_stash(max_entries - len(self._completions))
        done = self._completions[:max_entries]
        del self._completions[:max_entries]
        return done

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._accept_thread.join()
        for region in self._regions.values():
            for acceptance in region.accepted.values():
                acceptance.qp.close()
            region.mr.close()
        self.endpoint.context.close()
