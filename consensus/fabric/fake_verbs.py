"""A fake RDMA device with pyverbs' object model and reliable-connected (RC) semantics, for tests
and ``python -m consensus.fabric check-verbs --fake``. No kernel, no NIC: one process.

Rule 1: ``FakeRdma().install()`` (a context manager) puts a ``pyverbs`` package into
        ``sys.modules`` whose submodules (device, pd, mr, cq, qp, wr, addr, enums,
        pyverbs_error) carry the class names, keyword arguments and enum values of rdma-core's
        pyverbs (checked against the real module by tests/consensus/test_fake_verbs.py), so the
        verbs fabric runs unchanged on it. ``FakeRdma.package`` is the same package as an object.
Rule 2: every ``Context`` is its own host with its own lid on one fake network. Memory is real:
        an MR covers real addresses (``address=`` or a buffer of its own) and the device copies
        with ``ctypes.memmove``: it reads a WRITE's source each time the packet leaves (a retry
        re-reads it, as a NIC does) and writes the target when the DMA lands.
Rule 3: QPs follow the state machine RESET -> INIT -> RTR -> RTS (any -> RESET, any -> ERR);
        ``modify`` refuses other transitions and transitions lacking the attribute-mask bits the
        kernel requires. Sends are accepted in RTS (and ERR, where they flush at once), receives
        in every state but RESET; anything else is ``PyverbsRDMAError`` with errno EINVAL.
Rule 4: posted WRs are carried by the device's own thread, never the poster's: a request reaches
        the responder after ``latency_s`` (+ ``set_delay``), is checked there (state RTR/RTS,
        connected source QP, PSN, access flags, rkey and bounds), its DMA lands ``dma_delay_s``
        after the check, and only then is it acknowledged; completions of one QP arrive in
        posting order.
Rule 5: RC errors: a request the responder's access flags or MR do not allow completes with
        REM_ACCESS_ERR and moves both QPs to ERR; a QP entering ERR flushes every outstanding WR
        with WR_FLUSH_ERR (signaled or not); RESET discards them without completions; a responder
        in RESET/INIT/ERR, closed, or on a dead host drops requests, so the requester retries
        every ack timeout (4.096 us * 2**timeout * ``time_scale``) ``retry_cnt`` times, then
        completes with RETRY_EXC_ERR. A PSN behind the expected one is a duplicate (a WRITE is
        acknowledged without being applied, a READ re-executed); one ahead is dropped.
Rule 6: a receive WR pending on a QP that enters ERR (or posted while in ERR) is flushed only once
        the QP has no DMA in flight: the marker the verbs fabric's revoke waits for.
Rule 7: faults and probes: ``kill``/``revive`` a host (it neither answers nor sends), ``set_delay``
        between two hosts, ``refuse_access_modify`` (a device refusing RTS->RTS flag changes),
        ``on_post``/``on_check`` hooks (called without the device lock, in the poster's thread and
        in the device thread after a request passed its check), ``quiesce`` and counters.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import heapq
import itertools
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from consensus.fabric.fake_verbs_types import (  # noqa: F401 (re-exported)
    ENUM_CLASSES,
    GID,
    PREVIOUS_STATE,
    REQUIRED_MASK,
    SGE,
    WC,
    AHAttr,
    Device,
    GlobalRoute,
    M,
    PortAttr,
    PyverbsError,
    PyverbsRDMAError,
    PyverbsUserError,
    QPAttr,
    QPCap,
    QPInitAttr,
    RecvWR,
    S,
    SendWR,
    W,
    ibv_access_flags,
    ibv_mtu,
    ibv_port_state,
    ibv_qp_attr_mask,
    ibv_qp_state,
    ibv_qp_type,
    ibv_send_flags,
    ibv_wc_opcode,
    ibv_wc_status,
    ibv_wr_opcode,
)

DEVICE_NAME = "fake0"
PSN_MASK = 0xFFFFFF
PSN_WINDOW = 1 << 23  # a PSN up to this far behind the expected one is a duplicate
ACK_TIMEOUT_UNIT_S = 4.096e-6
QUIESCE_POLL_S = 0.001


# ---- device objects ----------------------------------------------------------------------------


class Context:
    def __init__(self, **kwargs: Any) -> None:
        network: FakeRdma = kwargs.pop("_network")
        name = kwargs.get("name")
        if name != network.device_name:
            raise PyverbsRDMAError(f"Failed to open device {name}", errno.ENODEV)
        self.network = network
        self.name = name
        self.lid = network.new_lid()

    def query_port(self, port_num: int) -> PortAttr:
        if port_num != 1:
            raise PyverbsRDMAError(f"Failed to query port {port_num}", errno.EINVAL)
        return PortAttr(ibv_port_state.IBV_PORT_ACTIVE, self.lid)

    def query_gid(self, port_num: int, index: int) -> GID:
        if port_num != 1 or index != 0:
            raise PyverbsRDMAError("Failed to query gid", errno.EINVAL)
        return GID(f"fe80:0000:0000:0000:0000:0000:0000:{self.lid:04x}")

    def close(self) -> None:
        pass


class PD:
    def __init__(self, creator: Context) -> None:
        self.context = creator

    def close(self) -> None:
        pass


class MR:
    def __init__(self, creator: PD, length: int, access: int, address: int | None = None,
                 implicit: bool = False, **kwargs: Any) -> None:
        self.pd = creator
        network = creator.context.network
        self._own = ctypes.create_string_buffer(length if address is None else 0)
        self.buf: int = address if address is not None else ctypes.addressof(self._own)
        self.length, self.access = length, int(access)
        self.lkey = self.rkey = network.register(self)
        self.closed = False

    def covers(self, addr: int, length: int) -> bool:
        return not self.closed and self.buf <= addr and addr + length <= self.buf + self.length

    def write(self, data: bytes | str, length: int, offset: int = 0) -> None:
        raw = data.encode() if isinstance(data, str) else bytes(data)
        if offset < 0 or offset + length > self.length or length > len(raw):
            raise PyverbsUserError(f"Invalid write: offset {offset}, length {length}")
        ctypes.memmove(self.buf + offset, raw, length)

    def read(self, length: int, offset: int) -> bytes:
        if offset < 0 or offset + length > self.length:
            raise PyverbsUserError(f"Invalid read: offset {offset}, length {length}")
        return ctypes.string_at(self.buf + offset, length)

    def close(self) -> None:
        self.pd.context.network.unregister(self)
        self.closed = True


class CQ:
    def __init__(self, creator: Context, cqe: int, cq_context: Any = None, channel: Any = None,
                 comp_vector: int = 0) -> None:
        self.network = creator.network
        self.cqe = cqe
        self.entries: deque[WC] = deque()
        self.overrun = False

    def push(self, wc: WC) -> None:
        """Device lock held."""
        if len(self.entries) >= self.cqe:
            self.overrun = True
            return
        self.entries.append(wc)

    def poll(self, num_entries: int = 1) -> tuple[int, list[WC]]:
        with self.network.lock:
            if self.overrun:
                raise PyverbsRDMAError("Failed to poll CQ (overrun)", errno.EOVERFLOW)
            taken = [self.entries.popleft() for _ in range(min(num_entries, len(self.entries)))]
        return len(taken), taken

    def close(self) -> None:
        pass


@dataclass(eq=False, slots=True)
class _SendWork:
    wr_id: int
    opcode: int
    local_addr: int
    length: int
    lkey: int
    rkey: int
    remote_addr: int
    signaled: bool
    psn: int
    epoch: int
    attempts: int = 0


@dataclass(slots=True)
class Counters:
    transmitted: int = 0
    landed: int = 0
    duplicates: int = 0
    dropped: int = 0
    access_errors: int = 0
    flushed: int = 0
    retry_exceeded: int = 0


class QP:
    def __init__(self, creator: PD, init_attr: QPInitAttr, qp_attr: QPAttr | None = None) -> None:
        self.pd = creator
        self.network: FakeRdma = creator.context.network
        if init_attr.qp_type != ibv_qp_type.IBV_QPT_RC:
            raise PyverbsRDMAError("Failed to create QP", errno.EOPNOTSUPP)
        self.qp_type = init_attr.qp_type
        self.lid = creator.context.lid
        self.scq: CQ = init_attr.send_cq
        self.rcq: CQ = init_attr.recv_cq or init_attr.send_cq
        self.cap = init_attr.cap
        self.sq_sig_all = bool(init_attr.sq_sig_all)
        self.state: int = S.IBV_QPS_RESET
        self.access = 0
        self.dlid = self.dest_qp_num = self.epsn = self.npsn = 0
        self.timeout = self.retry_cnt = 0
        self.send_queue: deque[_SendWork] = deque()
        self.results: dict[_SendWork, tuple[int, bytes | None]] = {}
        self.recv_queue: deque[int] = deque()
        self.dma_in_flight = 0
        self.epoch = 0  # bumped by RESET: packets of an earlier epoch are gone
        self.last_send_at = 0.0
        self.closed = False
        self.qp_num = self.network.add_qp(self)
        if qp_attr is not None:
            self.to_init(qp_attr)

    @property
    def qp_state(self) -> int:
        return self.state

    def _transition(self, qp_attr: QPAttr, target: int, message: str) -> None:
        """One step towards RTS with the mask pyverbs' ``to_*`` methods pass."""
        source = PREVIOUS_STATE[target]
        qp_attr.qp_state = target
        try:
            self.modify(qp_attr, REQUIRED_MASK[(source, target)] | M.IBV_QP_STATE)
        except PyverbsRDMAError:
            raise PyverbsRDMAError(message, errno.EINVAL) from None

    def to_init(self, qp_attr: QPAttr) -> None:
        self._transition(qp_attr, S.IBV_QPS_INIT, "Failed to modify QP state to init")

    def to_rtr(self, qp_attr: QPAttr) -> None:
        if self.qp_state != S.IBV_QPS_INIT:
            self.to_init(qp_attr)
        self._transition(qp_attr, S.IBV_QPS_RTR, "Failed to modify QP state to RTR")

    def to_rts(self, qp_attr: QPAttr) -> None:
        if self.qp_state != S.IBV_QPS_RTR:
            self.to_rtr(qp_attr)
        self._transition(qp_attr, S.IBV_QPS_RTS, "Failed to modify QP state to RTS")

    def modify(self, qp_attr: QPAttr, comp_mask: int) -> None:
        with self.network.lock:
            self.network.modify(self, qp_attr, int(comp_mask))

    def query(self, attr_mask: int) -> tuple[QPAttr, QPInitAttr]:
        with self.network.lock:
            attr = QPAttr(self.state, self.state)
            attr.qp_access_flags, attr.dest_qp_num = self.access, self.dest_qp_num
            attr.rq_psn, attr.sq_psn = self.epsn, self.npsn
            attr.timeout, attr.retry_cnt = self.timeout, self.retry_cnt
            attr.ah_attr = AHAttr(dlid=self.dlid)
        return attr, QPInitAttr(self.qp_type, None, self.scq, self.rcq, None, self.cap,
                                int(self.sq_sig_all))

    def post_send(self, wr: SendWR, bad_wr: SendWR | None = None) -> None:
        self.network.post_send(self, wr)
        hook = self.network.on_post
        if hook is not None:
            hook(self, wr)

    def post_recv(self, wr: RecvWR, bad_wr: RecvWR | None = None) -> None:
        self.network.post_recv(self, wr)

    def close(self) -> None:
        with self.network.lock:
            if not self.closed:
                self.network.discard(self)
                self.closed = True


# ---- the network and its device thread -----------------------------------------------------------


class FakeRdma:
    """One fake RDMA network (Rules 1-7). Thread-safe; its device thread starts on first use."""

    def __init__(self, latency_s: float = 0.0, dma_delay_s: float = 0.0, time_scale: float = 1.0,
                 refuse_access_modify: bool = False, device_name: str = DEVICE_NAME) -> None:
        self.latency_s, self.dma_delay_s, self.time_scale = latency_s, dma_delay_s, time_scale
        self.refuse_access_modify = refuse_access_modify
        self.device_name = device_name
        self.lock = threading.RLock()
        self._wake = threading.Condition(self.lock)
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._qp_numbers = itertools.count(0x11)
        self._keys = itertools.count(0x1000)
        self._lids = itertools.count(1)
        self._qps: dict[int, QP] = {}
        self._mrs: dict[int, MR] = {}
        self._dead: set[int] = set()
        self._delays: dict[tuple[int, int], float] = {}
        self._pending_hooks: list[Callable[[], None]] = []
        self._running_event = False
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.on_post: Callable[[QP, SendWR], None] | None = None
        self.on_check: Callable[[QP, int, int, int], None] | None = None
        self.counters = Counters()
        self.package = self._build_package()

    # --- installation ---------------------------------------------------------------------------
    def _build_package(self) -> types.ModuleType:
        network = self

        def context(**kwargs: Any) -> Context:
            return Context(_network=network, **kwargs)

        def get_device_list() -> list[Device]:
            return [Device(network.device_name.encode())]

        modules: dict[str, dict[str, Any]] = {
            "device": {"Context": context, "get_device_list": get_device_list, "Device": Device,
                       "PortAttr": PortAttr},
            "pd": {"PD": PD},
            "mr": {"MR": MR},
            "cq": {"CQ": CQ, "WC": WC},
            "qp": {"QP": QP, "QPAttr": QPAttr, "QPInitAttr": QPInitAttr, "QPCap": QPCap},
            "wr": {"SendWR": SendWR, "RecvWR": RecvWR, "SGE": SGE},
            "addr": {"GID": GID, "GlobalRoute": GlobalRoute, "AHAttr": AHAttr},
            "pyverbs_error": {"PyverbsError": PyverbsError, "PyverbsRDMAError": PyverbsRDMAError,
                              "PyverbsUserError": PyverbsUserError},
            "enums": {},
        }
        for cls in ENUM_CLASSES:
            modules["enums"][cls.__name__] = cls
            for member in cls:  # type: ignore[attr-defined]
                modules["enums"][member.name] = member
        package = types.ModuleType("pyverbs")
        package.__path__ = []  # a package, so ``import pyverbs.x`` looks in sys.modules
        for name, members in modules.items():
            module = types.ModuleType(f"pyverbs.{name}")
            module.__dict__.update(members)
            setattr(package, name, module)
        return package

    @contextlib.contextmanager
    def install(self) -> Iterator[FakeRdma]:
        """Make ``import pyverbs...`` return this fake while the context lasts (Rule 1)."""
        saved = {k: v for k, v in sys.modules.items() if k == "pyverbs" or k.startswith("pyverbs.")}
        for key in saved:
            del sys.modules[key]
        sys.modules["pyverbs"] = self.package
        for name, module in vars(self.package).items():
            if isinstance(module, types.ModuleType):
                sys.modules[f"pyverbs.{name}"] = module
        try:
            yield self
        finally:
            for key in [k for k in sys.modules if k == "pyverbs" or k.startswith("pyverbs.")]:
                del sys.modules[key]
            sys.modules.update(saved)
            self.stop()

    # --- faults ---------------------------------------------------------------------------------
    def kill(self, context: Context) -> None:
        with self.lock:
            self._dead.add(context.lid)

    def revive(self, context: Context) -> None:
        with self.lock:
            self._dead.discard(context.lid)

    def set_delay(self, a: Context, b: Context, delay_s: float) -> None:
        """Extra one-way delay from host ``a`` to host ``b`` (both ways if called twice)."""
        with self.lock:
            self._delays[(a.lid, b.lid)] = delay_s

    def quiesce(self, timeout_s: float = 10.0) -> None:
        """Wait until no packet, DMA or acknowledgement is in flight."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.lock:
                if not self._events and not self._running_event:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"fake RDMA network still busy after {timeout_s} s")
            time.sleep(QUIESCE_POLL_S)

    def stop(self) -> None:
        with self.lock:
            self._stopped = True
            self._wake.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    # --- bookkeeping (device lock held) ---------------------------------------------------------
    def new_lid(self) -> int:
        with self.lock:
            return next(self._lids)

    def add_qp(self, qp: QP) -> int:
        with self.lock:
            number = next(self._qp_numbers)
            self._qps[number] = qp
            return number

    def register(self, mr: MR) -> int:
        with self.lock:
            key = next(self._keys)
            self._mrs[key] = mr
            return key

    def unregister(self, mr: MR) -> None:
        with self.lock:
            self._mrs.pop(mr.rkey, None)

    def _after(self, delay_s: float, action: Callable[[], None]) -> None:
        self._at(time.monotonic() + delay_s, action)

    def _at(self, at: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (at, next(self._seq), action))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fake-rdma", daemon=True)
            self._thread.start()
        self._wake.notify()

    def _one_way_s(self, src: int, dst: int) -> float:
        return self.latency_s + self._delays.get((src, dst), 0.0)

    def _run(self) -> None:
        while True:
            with self.lock:
                while not self._stopped:
                    if self._events:
                        wait = self._events[0][0] - time.monotonic()
                        if wait <= 0:
                            break
                        self._wake.wait(wait)
                    else:
                        self._wake.wait()
                if self._stopped:
                    return
                _, _, action = heapq.heappop(self._events)
                self._running_event = True
                action()
                hooks, self._pending_hooks = self._pending_hooks, []
            for hook in hooks:  # Rule 7: without the device lock
                hook()
            with self.lock:
                self._running_event = False

    # --- verbs (device lock held unless said otherwise) -----------------------------------------
    def modify(self, qp: QP, attr: QPAttr, mask: int) -> None:
        if qp.closed:
            raise PyverbsRDMAError("Failed to modify QP", errno.EINVAL)
        target = attr.qp_state if mask & M.IBV_QP_STATE else qp.state
        if mask & M.IBV_QP_STATE and target in (S.IBV_QPS_RESET, S.IBV_QPS_ERR):
            self._enter(qp, target)
            return
        needed = REQUIRED_MASK.get((qp.state, target))
        if needed is None or mask & needed != needed:
            raise PyverbsRDMAError("Failed to modify QP", errno.EINVAL)
        if (mask & M.IBV_QP_ACCESS_FLAGS and target == qp.state == S.IBV_QPS_RTS
                and self.refuse_access_modify):
            raise PyverbsRDMAError("Failed to modify QP", errno.EINVAL)
        if mask & M.IBV_QP_ACCESS_FLAGS:
            qp.access = int(attr.qp_access_flags)
        if mask & M.IBV_QP_AV:
            qp.dlid = attr.ah_attr.dlid
        if mask & M.IBV_QP_DEST_QPN:
            qp.dest_qp_num = attr.dest_qp_num
        if mask & M.IBV_QP_RQ_PSN:
            qp.epsn = attr.rq_psn & PSN_MASK
        if mask & M.IBV_QP_SQ_PSN:
            qp.npsn = attr.sq_psn & PSN_MASK
        if mask & M.IBV_QP_TIMEOUT:
            qp.timeout = attr.timeout
        if mask & M.IBV_QP_RETRY_CNT:
            qp.retry_cnt = attr.retry_cnt
        qp.state = target

    def _enter(self, qp: QP, target: int) -> None:
        if target == S.IBV_QPS_RESET:
            qp.send_queue.clear()
            qp.results.clear()
            qp.recv_queue.clear()
            qp.epoch += 1
            qp.access = qp.dlid = qp.dest_qp_num = qp.epsn = qp.npsn = 0
        qp.state = target
        if target == S.IBV_QPS_ERR:
            self._flush(qp)

    def _flush(self, qp: QP) -> None:
        """Rule 5: every outstanding send WR completes with WR_FLUSH_ERR; Rule 6: receives once
        no DMA is in flight."""
        qp.results.clear()
        while qp.send_queue:
            work = qp.send_queue.popleft()
            self.counters.flushed += 1
            qp.scq.push(WC(work.wr_id, W.IBV_WC_WR_FLUSH_ERR, _wc_opcode(work.opcode),
                           qp_num=qp.qp_num))
        if qp.dma_in_flight == 0:
            while qp.recv_queue:
                qp.rcq.push(WC(qp.recv_queue.popleft(), W.IBV_WC_WR_FLUSH_ERR,
                               ibv_wc_opcode.IBV_WC_RECV, qp_num=qp.qp_num))

    def discard(self, qp: QP) -> None:
        self._enter(qp, S.IBV_QPS_RESET)
        self._qps.pop(qp.qp_num, None)

    def post_send(self, qp: QP, wr: SendWR) -> None:
        with self.lock:
            if qp.closed or qp.state not in (S.IBV_QPS_RTS, S.IBV_QPS_ERR):
                raise PyverbsRDMAError("Failed to post send", errno.EINVAL)
            if len(qp.send_queue) >= qp.cap.max_send_wr:
                raise PyverbsRDMAError("Failed to post send", errno.ENOMEM)
            sge = wr._sg[0]
            signaled = qp.sq_sig_all or bool(wr.send_flags & ibv_send_flags.IBV_SEND_SIGNALED)
            work = _SendWork(wr.wr_id, int(wr.opcode), sge.addr, sge.length, sge.lkey, wr._rkey,
                             wr._remote_addr, signaled, qp.npsn, qp.epoch)
            qp.npsn = (qp.npsn + 1) & PSN_MASK
            qp.send_queue.append(work)
            if qp.state == S.IBV_QPS_ERR:
                self._flush(qp)
                return
            self._send(qp, work)

    def post_recv(self, qp: QP, wr: RecvWR) -> None:
        with self.lock:
            if qp.closed or qp.state == S.IBV_QPS_RESET:
                raise PyverbsRDMAError("Failed to post recv", errno.EINVAL)
            if len(qp.recv_queue) >= qp.cap.max_recv_wr:
                raise PyverbsRDMAError("Failed to post recv", errno.ENOMEM)
            qp.recv_queue.append(wr.wr_id)
            if qp.state == S.IBV_QPS_ERR:
                self._flush(qp)

    def _send(self, qp: QP, work: _SendWork) -> None:
        """Schedule the next transmission of ``work`` (in order per QP)."""
        delay = self._one_way_s(qp.lid, qp.dlid)
        at = max(time.monotonic() + delay, qp.last_send_at)
        qp.last_send_at = at
        self._at(at, lambda: self._arrive(qp, work))

    def _outstanding(self, qp: QP, work: _SendWork) -> bool:
        return (work.epoch == qp.epoch and qp.state == S.IBV_QPS_RTS and not qp.closed
                and work in qp.send_queue)

    def _arrive(self, qp: QP, work: _SendWork) -> None:
        """A request packet reaches (or fails to reach) its responder."""
        if not self._outstanding(qp, work) or qp.lid in self._dead:
            return
        work.attempts += 1
        self.counters.transmitted += 1
        local = self._mr(work.lkey)
        write = work.opcode == ibv_wr_opcode.IBV_WR_RDMA_WRITE
        if local is None or not local.covers(work.local_addr, work.length) or (
                not write and not local.access & ibv_access_flags.IBV_ACCESS_LOCAL_WRITE):
            self._complete(qp, work, W.IBV_WC_LOC_PROT_ERR, 0.0)
            return
        payload = ctypes.string_at(work.local_addr, work.length) if write else b""
        responder = self._qps.get(qp.dest_qp_num)
        if responder is None or not self._accepts(responder, qp):
            self._lost(qp, work)
            return
        distance = (responder.epsn - work.psn) & PSN_MASK
        if 0 < distance < PSN_WINDOW:  # a duplicate
            self.counters.duplicates += 1
            if write:
                self._ack(qp, work, responder, 0.0)
            else:
                self._execute(qp, work, responder, b"")
            return
        if distance != 0:  # ahead of what the responder expects: sequence error, dropped
            self._lost(qp, work)
            return
        responder.epsn = (responder.epsn + 1) & PSN_MASK
        self._execute(qp, work, responder, payload)

    def _accepts(self, responder: QP, requester: QP) -> bool:
        return (not responder.closed and responder.lid == requester.dlid
                and responder.lid not in self._dead
                and responder.state in (S.IBV_QPS_RTR, S.IBV_QPS_RTS)
                and responder.dest_qp_num == requester.qp_num)

    def _execute(self, qp: QP, work: _SendWork, responder: QP, payload: bytes) -> None:
        """The responder's check, then the DMA after ``dma_delay_s`` (Rule 4)."""
        write = work.opcode == ibv_wr_opcode.IBV_WR_RDMA_WRITE
        right = ibv_access_flags.IBV_ACCESS_REMOTE_WRITE if write else (
            ibv_access_flags.IBV_ACCESS_REMOTE_READ)
        target = self._mr(work.rkey)
        if (not responder.access & right or target is None or not target.access & right
                or not target.covers(work.remote_addr, work.length)):
            self.counters.access_errors += 1
            self._enter(responder, S.IBV_QPS_ERR)
            self._complete(qp, work, W.IBV_WC_REM_ACCESS_ERR,
                           self._one_way_s(responder.lid, qp.lid))
            return
        hook = self.on_check
        if hook is not None:
            self._pending_hooks.append(
                lambda: hook(responder, work.opcode, work.remote_addr, work.length))
        responder.dma_in_flight += 1

        def land() -> None:
            responder.dma_in_flight -= 1
            if responder.lid in self._dead:
                return
            if write:
                ctypes.memmove(work.remote_addr, payload, work.length)
                self.counters.landed += 1
                self._ack(qp, work, responder, 0.0)
            else:
                data = ctypes.string_at(work.remote_addr, work.length)
                self._ack(qp, work, responder, 0.0, data)
            if responder.state == S.IBV_QPS_ERR:
                self._flush(responder)

        self._after(self.dma_delay_s, land)

    def _ack(self, qp: QP, work: _SendWork, responder: QP, extra_s: float,
             data: bytes | None = None) -> None:
        delay = self._one_way_s(responder.lid, qp.lid) + extra_s
        self._complete(qp, work, W.IBV_WC_SUCCESS, delay, data)

    def _lost(self, qp: QP, work: _SendWork) -> None:
        """Rule 5: no answer; retry after the ack timeout, or give up after ``retry_cnt``."""
        self.counters.dropped += 1
        timeout_s = ACK_TIMEOUT_UNIT_S * (1 << qp.timeout) * self.time_scale
        if work.attempts > qp.retry_cnt:
            self._complete(qp, work, W.IBV_WC_RETRY_EXC_ERR, timeout_s)
            return
        self._after(timeout_s, lambda: self._arrive(qp, work))

    def _complete(self, qp: QP, work: _SendWork, status: int, delay_s: float,
                  data: bytes | None = None) -> None:
        def deliver() -> None:
            if not self._outstanding(qp, work):
                return  # flushed or reset meanwhile
            qp.results[work] = (status, data)
            while qp.send_queue and qp.send_queue[0] in qp.results:  # RC completes in order
                head = qp.send_queue.popleft()
                if not self._finish(qp, head, *qp.results.pop(head)):
                    return

        self._after(delay_s, deliver)

    def _finish(self, qp: QP, work: _SendWork, status: int, data: bytes | None) -> bool:
        """Report ``work``'s completion; False if the QP went to ERR (the rest is flushed)."""
        if data is not None and status == W.IBV_WC_SUCCESS:
            ctypes.memmove(work.local_addr, data, work.length)
        if status != W.IBV_WC_SUCCESS or work.signaled:
            qp.scq.push(WC(work.wr_id, status, _wc_opcode(work.opcode), 0, work.length,
                           qp.qp_num))
        if status == W.IBV_WC_SUCCESS:
            return True
        if status == W.IBV_WC_RETRY_EXC_ERR:
            self.counters.retry_exceeded += 1
        qp.results.clear()
        self._enter(qp, S.IBV_QPS_ERR)
        return False

    def _mr(self, key: int) -> MR | None:
        mr = self._mrs.get(key)
        return None if mr is None or mr.closed else mr


def _wc_opcode(opcode: int) -> int:
    if opcode == ibv_wr_opcode.IBV_WR_RDMA_READ:
        return ibv_wc_opcode.IBV_WC_RDMA_READ
    return ibv_wc_opcode.IBV_WC_RDMA_WRITE
