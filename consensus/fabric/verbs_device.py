"""The device half of the verbs fabric: importing pyverbs (or taking an injected one), opening
the device, the queue-pair attributes and transitions, and the connection details that travel
through the registry. ``consensus.fabric.verbs`` builds the fabric on it.

Rule 1: importing this module is cheap; ``Verbs()`` imports pyverbs (with Debian's dist-packages
        as a fallback) and a missing module or device raises ``FabricUnavailable`` with one line
        saying what is missing and to use ``--fabric shm``. ``Verbs(package)`` takes an injected
        ``pyverbs`` package instead (``consensus.fabric.fake_verbs``).
Rule 2: every queue pair is reliable-connected, created in RESET and taken to RTS once, towards
        one remote queue pair; it is never taken back to RTS after an error (the fabric replaces
        it, see ``consensus.fabric.verbs`` Rule 5).
Rule 3: registry values are ASCII: a queue pair ``"<qp_num> <lid> <gid> <psn>"``, a connection
        request the same plus ``" <nonce hex>"``, a region ``"<addr hex> <rkey> <size>"``;
        malformed values raise ``FabricError`` naming the value.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from consensus.fabric.base import FabricError, FabricUnavailable, ReplicaIdT

DEVICE_ENV = "MU_RDMA_DEVICE"  # device name (default: the first one)
GID_INDEX_ENV = "MU_RDMA_GID_INDEX"  # GID table index (RoCE needs one; default 0)
DEBIAN_DIST_PACKAGES = "/usr/lib/python3/dist-packages"
PORT_NUMBER = 1
STAGING_SLOT_BYTES = 16 * 1024  # the largest single write or read
STAGING_SLOTS = 64  # requests in flight per fabric (each owns a slot)
LINK_SEND_WR_MAX = 2 * STAGING_SLOTS  # every request of the fabric could be on one link
DRAIN_MARKERS_MAX = 4  # receive queue depth of a responder (drain markers only)
MARKER_BYTES = 64  # the receive buffer of drain markers (pyverbs wants one SGE per WR)
CQ_ENTRIES = 4 * STAGING_SLOTS  # >= 2 completions per request + drain markers
QP_TIMEOUT_CODE = 14  # 4.096 us * 2**14 = 67 ms per retry
QP_RETRY_COUNT = 7
QP_RNR_RETRY = 7
QP_RD_ATOMIC_MAX = 1
QP_MIN_RNR_TIMER_CODE = 12  # 0.64 ms
SHM_INSTEAD = "use --fabric shm on a single host"
assert CQ_ENTRIES >= 2 * STAGING_SLOTS + DRAIN_MARKERS_MAX


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


def encode_request(details: QpDetails, nonce: int) -> bytes:
    return details.encode() + f" {nonce:x}".encode()


def decode_request(value: bytes) -> tuple[QpDetails, int]:
    """A writer's connection request: its queue pair and the nonce naming the answer key."""
    head, _, nonce = value.rpartition(b" ")
    try:
        return QpDetails.decode(head), int(nonce, 16)
    except ValueError:
        raise FabricError(f"malformed connection request in the registry: {value!r}") from None


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


def answer_key(owner: ReplicaIdT, name: str, writer: ReplicaIdT, kind: str, nonce: int) -> str:
    return qp_key(owner, name, writer, f"{kind}/{nonce:x}")


def revoked_key(owner: ReplicaIdT, name: str, writer: ReplicaIdT) -> str:
    return qp_key(owner, name, writer, "write/revoked")


def doorbell_key(owner: ReplicaIdT) -> str:
    return f"fabric/verbs/{owner}/doorbell"


def random_psn() -> int:
    return int.from_bytes(os.urandom(3), "little")


def random_nonce() -> int:
    return int.from_bytes(os.urandom(8), "little") or 1


class Verbs:
    """The pyverbs modules this fabric uses: imported on demand, or taken from ``package`` (an
    injected ``pyverbs``, e.g. ``consensus.fabric.fake_verbs``), verbs Rule 8."""

    def __init__(self, package: ModuleType | None = None) -> None:
        modules = ("device", "pd", "mr", "cq", "qp", "wr", "addr", "pyverbs_error")
        if package is not None:
            loaded = [getattr(package, name) for name in modules]
            self.enums: Any = package.enums
        else:
            loaded = _import_pyverbs(modules)
            try:
                self.enums = importlib.import_module("pyverbs.enums")  # rdma-core <= 47
            except ImportError:
                self.enums = importlib.import_module("pyverbs.libibverbs_enums")
        self.device, self.pd, self.mr, self.cq, self.qp, self.wr, self.addr, errors = loaded
        self.error: type[Exception] = errors.PyverbsError


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


def probe(name: str | None = None, verbs: Verbs | None = None) -> str:
    """One line saying which device and port the verbs fabric would use (or
    ``FabricUnavailable``)."""
    verbs = verbs or Verbs()
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
    """A replica's device resources: context, protection domain, the completion queue of its
    links, the completion queue of its responders' drain markers, and staging memory."""

    def __init__(self, verbs: Verbs, device: str | None) -> None:
        self.verbs = verbs
        enums = verbs.enums
        self.context = open_device(verbs, device)
        self.gid_index = int(os.environ.get(GID_INDEX_ENV, "0"))
        self.lid = self.context.query_port(PORT_NUMBER).lid
        self.gid = str(self.context.query_gid(PORT_NUMBER, self.gid_index).gid)
        self.pd = verbs.pd.PD(self.context)
        self.send_cq = verbs.cq.CQ(self.context, CQ_ENTRIES)
        self.drain_cq = verbs.cq.CQ(self.context, CQ_ENTRIES)
        self.staging = verbs.mr.MR(
            self.pd, STAGING_SLOT_BYTES * STAGING_SLOTS, enums.IBV_ACCESS_LOCAL_WRITE
        )
        # where a drain marker (a receive WR) would put a SEND's bytes; no SEND ever comes
        self.marker_memory = verbs.mr.MR(self.pd, MARKER_BYTES, enums.IBV_ACCESS_LOCAL_WRITE)
        local = enums.IBV_ACCESS_LOCAL_WRITE
        self.write_access: int = (
            local | enums.IBV_ACCESS_REMOTE_READ | enums.IBV_ACCESS_REMOTE_WRITE
        )
        self.read_access: int = local | enums.IBV_ACCESS_REMOTE_READ
        self.no_access: int = local

    def create_qp(self, cq: Any) -> Any:
        verbs = self.verbs
        capabilities = verbs.qp.QPCap(max_send_wr=LINK_SEND_WR_MAX, max_recv_wr=DRAIN_MARKERS_MAX,
                                      max_send_sge=1, max_recv_sge=1)
        attributes = verbs.qp.QPInitAttr(qp_type=verbs.enums.IBV_QPT_RC, scq=cq, rcq=cq,
                                         cap=capabilities, sq_sig_all=0)
        return verbs.qp.QP(self.pd, attributes)

    def drain_marker(self, wr_id: int) -> Any:
        """A receive WR to post on a responder in ERR: its flush completion is the drain mark."""
        memory = self.marker_memory
        sge = self.verbs.wr.SGE(memory.buf, MARKER_BYTES, memory.lkey)
        return self.verbs.wr.RecvWR(wr_id=wr_id, num_sge=1, sg=[sge])

    def details(self, qp: Any, psn: int) -> QpDetails:
        return QpDetails(qp.qp_num, self.lid, self.gid, psn)

    def connect_qp(self, qp: Any, local_psn: int, remote: QpDetails, access: int) -> None:
        """Bring a new ``qp`` (RESET) to RTS towards ``remote`` with ``access`` flags."""
        attr = qp_attributes(self.verbs, self.gid_index, local_psn, remote, access)
        qp.to_init(attr)
        qp.to_rtr(attr)
        qp.to_rts(attr)

    def set_state(self, qp: Any, state: int) -> None:
        qp.modify(self.verbs.qp.QPAttr(qp_state=state), self.verbs.enums.IBV_QP_STATE)

    def set_access(self, qp: Any, access: int) -> None:
        attr = self.verbs.qp.QPAttr()
        attr.qp_access_flags = access
        qp.modify(attr, self.verbs.enums.IBV_QP_ACCESS_FLAGS)
