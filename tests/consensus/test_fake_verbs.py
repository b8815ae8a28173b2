"""The fake RDMA device itself: its object model against the real pyverbs (when importable), and
the RC semantics the verbs fabric's tests rely on."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from consensus.fabric.fake_verbs import ENUM_CLASSES, FakeRdma, PyverbsRDMAError

SETTLE_S = 5.0


def real_pyverbs() -> Any:
    try:
        from consensus.fabric.verbs import Verbs

        return Verbs()
    except Exception as error:  # noqa: BLE001 (any reason pyverbs cannot load here)
        pytest.skip(f"pyverbs not importable here: {error}")


def test_names_and_enum_values_match_real_pyverbs() -> None:
    real = real_pyverbs()
    fake = FakeRdma().package
    for module in ("device", "pd", "mr", "cq", "qp", "wr", "addr", "pyverbs_error"):
        real_module = getattr(real, module) if module != "pyverbs_error" else sys.modules[
            "pyverbs.pyverbs_error"]
        for name in vars(getattr(fake, module)):
            if not name.startswith("_"):
                assert hasattr(real_module, name), f"pyverbs.{module} has no {name}"
    for cls in ENUM_CLASSES:
        real_enum = getattr(real.enums, cls.__name__)
        for member in cls:  # type: ignore[attr-defined]
            assert int(getattr(real_enum, member.name)) == int(member), member.name
            assert int(getattr(real.enums, member.name)) == int(member), member.name


def test_constructors_take_the_real_keywords() -> None:
    """Build each object the fabric builds, with the same keywords, on both; compare fields."""
    real = real_pyverbs()
    fake = FakeRdma().package
    for package in (real, fake):
        enums = package.enums
        cap = package.qp.QPCap(max_send_wr=8, max_recv_wr=2, max_send_sge=1, max_recv_sge=1)
        assert (cap.max_send_wr, cap.max_recv_wr) == (8, 2)
        init = package.qp.QPInitAttr(qp_type=enums.IBV_QPT_RC, scq=None, rcq=None, cap=cap,
                                     sq_sig_all=0)
        assert init.qp_type == enums.IBV_QPT_RC
        attr = package.qp.QPAttr(qp_state=enums.IBV_QPS_ERR)
        assert attr.qp_state == enums.IBV_QPS_ERR
        attr = package.qp.QPAttr()
        attr.qp_access_flags = enums.IBV_ACCESS_REMOTE_READ
        attr.rq_psn, attr.sq_psn, attr.dest_qp_num = 5, 6, 77
        assert (attr.rq_psn, attr.sq_psn, attr.dest_qp_num) == (5, 6, 77)
        gid = package.addr.GID("fe80:0000:0000:0000:0000:0000:0000:0001")
        route = package.addr.GlobalRoute(dgid=gid, sgid_index=0)
        ah = package.addr.AHAttr(dlid=3, is_global=1, gr=route, port_num=1)
        assert (ah.dlid, ah.is_global) == (3, 1)
        sge = package.wr.SGE(0x1000, 64, 5)
        assert (sge.addr, sge.length, sge.lkey) == (0x1000, 64, 5)
        wr = package.wr.SendWR(wr_id=3, opcode=enums.IBV_WR_RDMA_WRITE, num_sge=1, sg=[sge],
                               send_flags=enums.IBV_SEND_SIGNALED)
        wr.set_wr_rdma(7, 0x2000)
        assert (wr.wr_id, wr.opcode, wr.num_sge) == (3, enums.IBV_WR_RDMA_WRITE, 1)
        assert package.wr.RecvWR(wr_id=9, num_sge=1, sg=[sge]).wr_id == 9
        assert package.cq.WC().status == enums.IBV_WC_SUCCESS
    for wr_module, error in ((real.wr, real.error), (fake.wr, fake.pyverbs_error.PyverbsError)):
        with pytest.raises(error, match="at least one SGE"):
            wr_module.RecvWR(wr_id=9)
        with pytest.raises(error, match="at least one SGE"):
            wr_module.SendWR(wr_id=1)


# ---- RC semantics -------------------------------------------------------------------------------


class Pair:
    """Two hosts on one fake network, a QP each, connected; an MR each."""

    def __init__(self, network: FakeRdma, access: int | None = None) -> None:
        self.network = network
        p = network.package
        self.e = e = p.enums
        self.contexts = [p.device.Context(name="fake0") for _ in range(2)]
        self.pds = [p.pd.PD(c) for c in self.contexts]
        self.cqs = [p.cq.CQ(c, 64) for c in self.contexts]
        self.mrs = [p.mr.MR(pd, 4096, e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE
                            | e.IBV_ACCESS_REMOTE_READ) for pd in self.pds]
        cap = p.qp.QPCap(max_send_wr=16, max_recv_wr=4)
        self.qps = [p.qp.QP(pd, p.qp.QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq, cap=cap,
                                                 sq_sig_all=0))
                    for pd, cq in zip(self.pds, self.cqs, strict=True)]
        flags = e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_WRITE | e.IBV_ACCESS_REMOTE_READ
        self.psns = [100, 200]
        for k in (0, 1):
            self.connect(k, access if (access is not None and k == 1) else flags)

    def connect(self, k: int, access: int, remote_psn: int | None = None) -> None:
        p, e = self.network.package, self.e
        other = 1 - k
        attr = p.qp.QPAttr()
        attr.qp_access_flags = access
        attr.ah_attr = p.addr.AHAttr(dlid=self.contexts[other].lid, port_num=1)
        attr.dest_qp_num = self.qps[other].qp_num
        attr.rq_psn = self.psns[other] if remote_psn is None else remote_psn
        attr.sq_psn = self.psns[k]
        attr.timeout, attr.retry_cnt = 1, 2
        qp = self.qps[k]
        qp.to_init(attr)
        qp.to_rtr(attr)
        qp.to_rts(attr)
        assert qp.qp_state == e.IBV_QPS_RTS

    def write(self, data: bytes, offset: int = 0, wr_id: int = 1) -> None:
        p, e = self.network.package, self.e
        mine, theirs = self.mrs
        mine.write(data, len(data), 0)
        sge = p.wr.SGE(mine.buf, len(data), mine.lkey)
        wr = p.wr.SendWR(wr_id=wr_id, opcode=e.IBV_WR_RDMA_WRITE, num_sge=1, sg=[sge],
                         send_flags=e.IBV_SEND_SIGNALED)
        wr.set_wr_rdma(theirs.rkey, theirs.buf + offset)
        self.qps[0].post_send(wr, None)

    def completions(self, count: int, host: int = 0) -> list[Any]:
        got: list[Any] = []
        deadline = time.monotonic() + SETTLE_S
        while len(got) < count:
            got += self.cqs[host].poll(8)[1]
            assert time.monotonic() < deadline, f"{len(got)} of {count} completions"
            time.sleep(0.0005)
        return got

    def remote_bytes(self, length: int) -> bytes:
        return ctypes.string_at(self.mrs[1].buf, length)


@pytest.fixture
def network() -> Iterator[FakeRdma]:
    made = FakeRdma()
    yield made
    made.stop()


def test_state_machine_refuses_skipped_states_and_posts_outside_rts(network: FakeRdma) -> None:
    p = network.package
    e = p.enums
    context = p.device.Context(name="fake0")
    pd, cq = p.pd.PD(context), p.cq.CQ(context, 8)
    qp = p.qp.QP(pd, p.qp.QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq))
    assert qp.qp_state == e.IBV_QPS_RESET
    attr = p.qp.QPAttr(qp_state=e.IBV_QPS_RTS)
    with pytest.raises(PyverbsRDMAError):
        qp.modify(attr, e.IBV_QP_STATE)  # RESET -> RTS skips INIT and RTR
    with pytest.raises(PyverbsRDMAError):
        qp.modify(p.qp.QPAttr(qp_state=e.IBV_QPS_INIT), e.IBV_QP_STATE)  # INIT needs flags etc
    wr = p.wr.SendWR(wr_id=1, opcode=e.IBV_WR_RDMA_WRITE, num_sge=1, sg=[p.wr.SGE(0, 0, 0)])
    with pytest.raises(PyverbsRDMAError):
        qp.post_send(wr, None)
    with pytest.raises(PyverbsRDMAError):
        p.device.Context(name="mlx5_0")


def test_write_lands_and_completes_in_the_device_thread(network: FakeRdma) -> None:
    pair = Pair(network)
    pair.write(b"hello")
    (wc,) = pair.completions(1)
    assert (wc.wr_id, wc.status) == (1, pair.e.IBV_WC_SUCCESS)
    assert pair.remote_bytes(5) == b"hello"


def test_access_error_moves_both_ends_to_error_and_flushes(network: FakeRdma) -> None:
    e = network.package.enums
    pair = Pair(network, access=e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_REMOTE_READ)
    pair.write(b"no", wr_id=1)
    pair.write(b"no", wr_id=2)
    first, second = pair.completions(2)
    assert (first.wr_id, first.status) == (1, e.IBV_WC_REM_ACCESS_ERR)
    assert (second.wr_id, second.status) == (2, e.IBV_WC_WR_FLUSH_ERR)
    assert pair.qps[0].qp_state == pair.qps[1].qp_state == e.IBV_QPS_ERR
    assert pair.remote_bytes(2) == bytes(2)
    pair.write(b"no", wr_id=3)  # posting in ERR is accepted and flushed at once
    assert pair.completions(1)[0].status == e.IBV_WC_WR_FLUSH_ERR


def test_stale_psn_is_acknowledged_as_a_duplicate_without_landing(network: FakeRdma) -> None:
    pair = Pair(network)
    for k in range(3):
        pair.write(bytes([k + 1]) * 4, wr_id=k)
    pair.completions(3)
    e = network.package.enums
    pair.qps[0].modify(network.package.qp.QPAttr(qp_state=e.IBV_QPS_RESET), e.IBV_QP_STATE)
    pair.connect(0, e.IBV_ACCESS_LOCAL_WRITE)  # the requester restarts at its first PSN
    pair.write(b"lost", wr_id=9)
    (wc,) = pair.completions(1)
    assert wc.status == e.IBV_WC_SUCCESS and pair.remote_bytes(4) == b"\x03" * 4
    assert network.counters.duplicates == 1


def test_dead_responder_ends_in_retry_exceeded(network: FakeRdma) -> None:
    pair = Pair(network)
    network.kill(pair.contexts[1])
    pair.write(b"void")
    (wc,) = pair.completions(1)
    assert wc.status == network.package.enums.IBV_WC_RETRY_EXC_ERR
    assert network.counters.dropped == 3  # first try + retry_cnt (2) retries


def test_drain_marker_flushes_only_after_dma_in_flight(network: FakeRdma) -> None:
    slow = FakeRdma(dma_delay_s=0.05)
    try:
        pair = Pair(slow)
        e, p = slow.package.enums, slow.package
        checked: list[float] = []
        slow.on_check = lambda *_: checked.append(time.monotonic())
        pair.write(b"late")
        deadline = time.monotonic() + SETTLE_S
        while not checked:
            assert time.monotonic() < deadline
            time.sleep(0.0005)
        responder = pair.qps[1]
        responder.modify(p.qp.QPAttr(qp_state=e.IBV_QPS_ERR), e.IBV_QP_STATE)
        sge = p.wr.SGE(pair.mrs[1].buf, 64, pair.mrs[1].lkey)
        responder.post_recv(p.wr.RecvWR(wr_id=42, num_sge=1, sg=[sge]), None)
        (marker,) = pair.completions(1, host=1)
        assert (marker.wr_id, marker.status) == (42, e.IBV_WC_WR_FLUSH_ERR)
        assert pair.remote_bytes(4) == b"late", "the marker flushed before the DMA landed"
    finally:
        slow.stop()


def test_check_verbs_runs_on_the_fake_device() -> None:
    result = subprocess.run([sys.executable, "-m", "consensus.fabric", "check-verbs", "--fake"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("verbs fabric available (fake device): device fake0")
    assert lines[1].startswith("verbs self-test passed")
