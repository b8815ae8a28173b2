"""The data types of the fake RDMA device (``consensus.fabric.fake_verbs``): pyverbs' errors,
``ibv_*`` enums (with rdma-core's values) and its plain attribute and work-request objects.

Rule 1: names, keyword arguments and defaults are those of rdma-core's pyverbs (checked against
        the real module by tests/consensus/test_fake_verbs.py); only the members the verbs
        fabric and its tests use exist.
Rule 2: as in pyverbs, a work request needs at least one scatter-gather element.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Any


class PyverbsError(Exception):
    def __init__(self, msg: str, error_code: int = -1) -> None:
        if error_code != -1:
            msg = f"{msg}. Errno: {error_code}, {os.strerror(error_code)}"
        super().__init__(msg)


class PyverbsRDMAError(PyverbsError):
    def __init__(self, msg: str, error_code: int = -1) -> None:
        super().__init__(msg, error_code)
        self._error_code = error_code

    @property
    def error_code(self) -> int:
        return self._error_code


class PyverbsUserError(PyverbsError):
    def __init__(self, msg: str) -> None:
        super().__init__(msg)


class ibv_wc_status(enum.IntEnum):  # noqa: N801 (pyverbs' names)
    IBV_WC_SUCCESS = 0
    IBV_WC_LOC_LEN_ERR = 1
    IBV_WC_LOC_QP_OP_ERR = 2
    IBV_WC_LOC_PROT_ERR = 4
    IBV_WC_WR_FLUSH_ERR = 5
    IBV_WC_REM_INV_REQ_ERR = 9
    IBV_WC_REM_ACCESS_ERR = 10
    IBV_WC_REM_OP_ERR = 11
    IBV_WC_RETRY_EXC_ERR = 12
    IBV_WC_RNR_RETRY_EXC_ERR = 13


class ibv_qp_state(enum.IntEnum):  # noqa: N801
    IBV_QPS_RESET = 0
    IBV_QPS_INIT = 1
    IBV_QPS_RTR = 2
    IBV_QPS_RTS = 3
    IBV_QPS_SQD = 4
    IBV_QPS_SQE = 5
    IBV_QPS_ERR = 6


class ibv_qp_attr_mask(enum.IntFlag):  # noqa: N801
    IBV_QP_STATE = 1
    IBV_QP_CUR_STATE = 2
    IBV_QP_ACCESS_FLAGS = 8
    IBV_QP_PKEY_INDEX = 16
    IBV_QP_PORT = 32
    IBV_QP_AV = 128
    IBV_QP_PATH_MTU = 256
    IBV_QP_TIMEOUT = 512
    IBV_QP_RETRY_CNT = 1024
    IBV_QP_RNR_RETRY = 2048
    IBV_QP_RQ_PSN = 4096
    IBV_QP_MAX_QP_RD_ATOMIC = 8192
    IBV_QP_MIN_RNR_TIMER = 32768
    IBV_QP_SQ_PSN = 65536
    IBV_QP_MAX_DEST_RD_ATOMIC = 131072
    IBV_QP_DEST_QPN = 1048576


class ibv_access_flags(enum.IntFlag):  # noqa: N801
    IBV_ACCESS_LOCAL_WRITE = 1
    IBV_ACCESS_REMOTE_WRITE = 2
    IBV_ACCESS_REMOTE_READ = 4


class ibv_wr_opcode(enum.IntEnum):  # noqa: N801
    IBV_WR_RDMA_WRITE = 0
    IBV_WR_SEND = 2
    IBV_WR_RDMA_READ = 4


class ibv_send_flags(enum.IntFlag):  # noqa: N801
    IBV_SEND_FENCE = 1
    IBV_SEND_SIGNALED = 2


class ibv_qp_type(enum.IntEnum):  # noqa: N801
    IBV_QPT_RC = 2
    IBV_QPT_UC = 3
    IBV_QPT_UD = 4


class ibv_mtu(enum.IntEnum):  # noqa: N801
    IBV_MTU_256 = 1
    IBV_MTU_512 = 2
    IBV_MTU_1024 = 3
    IBV_MTU_2048 = 4
    IBV_MTU_4096 = 5


class ibv_port_state(enum.IntEnum):  # noqa: N801
    IBV_PORT_DOWN = 1
    IBV_PORT_ACTIVE = 4


class ibv_wc_opcode(enum.IntEnum):  # noqa: N801
    IBV_WC_SEND = 0
    IBV_WC_RDMA_WRITE = 1
    IBV_WC_RDMA_READ = 2
    IBV_WC_RECV = 128


ENUM_CLASSES: tuple[type[enum.Enum], ...] = (
    ibv_wc_status, ibv_qp_state, ibv_qp_attr_mask, ibv_access_flags, ibv_wr_opcode,
    ibv_send_flags, ibv_qp_type, ibv_mtu, ibv_port_state, ibv_wc_opcode,
)
S = ibv_qp_state
M = ibv_qp_attr_mask
W = ibv_wc_status
# The attribute-mask bits each transition needs (pyverbs' _get_comp_mask for RC, minus STATE).
REQUIRED_MASK: dict[tuple[int, int], int] = {
    (S.IBV_QPS_RESET, S.IBV_QPS_INIT): M.IBV_QP_PKEY_INDEX | M.IBV_QP_PORT | M.IBV_QP_ACCESS_FLAGS,
    (S.IBV_QPS_INIT, S.IBV_QPS_INIT): 0,
    (S.IBV_QPS_INIT, S.IBV_QPS_RTR): M.IBV_QP_AV | M.IBV_QP_PATH_MTU | M.IBV_QP_DEST_QPN
    | M.IBV_QP_RQ_PSN | M.IBV_QP_MAX_DEST_RD_ATOMIC | M.IBV_QP_MIN_RNR_TIMER,
    (S.IBV_QPS_RTR, S.IBV_QPS_RTS): M.IBV_QP_TIMEOUT | M.IBV_QP_RETRY_CNT | M.IBV_QP_RNR_RETRY
    | M.IBV_QP_SQ_PSN | M.IBV_QP_MAX_QP_RD_ATOMIC,
    (S.IBV_QPS_RTS, S.IBV_QPS_RTS): 0,
}

PREVIOUS_STATE: dict[int, int] = {S.IBV_QPS_INIT: S.IBV_QPS_RESET, S.IBV_QPS_RTR: S.IBV_QPS_INIT,
                                  S.IBV_QPS_RTS: S.IBV_QPS_RTR}


# ---- plain attribute objects --------------------------------------------------------------------


class GID:
    def __init__(self, val: str | None = None) -> None:
        self.gid = val or "0000:0000:0000:0000:0000:0000:0000:0000"


class GlobalRoute:
    def __init__(self, dgid: GID | None = None, flow_label: int = 0, sgid_index: int = 0,
                 hop_limit: int = 1, traffic_class: int = 0) -> None:
        self.dgid, self.flow_label, self.sgid_index = dgid, flow_label, sgid_index
        self.hop_limit, self.traffic_class = hop_limit, traffic_class


class AHAttr:
    def __init__(self, dlid: int = 0, sl: int = 0, src_path_bits: int = 0, static_rate: int = 0,
                 is_global: int = 0, port_num: int = 1, gr: GlobalRoute | None = None) -> None:
        self.dlid, self.sl, self.src_path_bits = dlid, sl, src_path_bits
        self.static_rate = static_rate
        self.is_global, self.port_num, self.gr = is_global, port_num, gr


class QPCap:
    def __init__(self, max_send_wr: int = 1, max_recv_wr: int = 10, max_send_sge: int = 1,
                 max_recv_sge: int = 1, max_inline_data: int = 0) -> None:
        self.max_send_wr, self.max_recv_wr = max_send_wr, max_recv_wr
        self.max_send_sge, self.max_recv_sge = max_send_sge, max_recv_sge
        self.max_inline_data = max_inline_data


class QPInitAttr:
    def __init__(self, qp_type: int = ibv_qp_type.IBV_QPT_UD, qp_context: Any = None,
                 scq: Any = None, rcq: Any = None, srq: Any = None, cap: QPCap | None = None,
                 sq_sig_all: int = 1) -> None:
        self.qp_type, self.qp_context, self.send_cq, self.recv_cq = qp_type, qp_context, scq, rcq
        self.srq, self.cap, self.sq_sig_all = srq, cap or QPCap(), sq_sig_all


class QPAttr:
    def __init__(self, qp_state: int = S.IBV_QPS_INIT, cur_qp_state: int = S.IBV_QPS_RESET) -> None:
        self.qp_state, self.cur_qp_state = qp_state, cur_qp_state
        self.qp_access_flags = 0
        self.path_mtu = ibv_mtu.IBV_MTU_1024
        self.dest_qp_num = self.rq_psn = self.sq_psn = self.qkey = self.pkey_index = 0
        self.port_num = 1
        self.timeout = self.retry_cnt = self.rnr_retry = self.min_rnr_timer = 0
        self.max_rd_atomic = self.max_dest_rd_atomic = 0
        self.ah_attr = AHAttr()


class SGE:
    def __init__(self, addr: int, length: int, lkey: int) -> None:
        self.addr, self.length, self.lkey = addr, length, lkey


class SendWR:
    def __init__(self, wr_id: int = 0, opcode: int = ibv_wr_opcode.IBV_WR_SEND, num_sge: int = 0,
                 imm_data: int = 0, sg: list[SGE] | None = None,
                 send_flags: int = ibv_send_flags.IBV_SEND_SIGNALED) -> None:
        if num_sge < 1 or not sg:
            raise PyverbsUserError("A WR needs at least one SGE")
        self.wr_id, self.opcode, self.num_sge, self.imm_data = wr_id, opcode, num_sge, imm_data
        self._sg = list(sg or [])[:num_sge]
        self.send_flags = send_flags
        self._rkey = self._remote_addr = 0

    def set_wr_rdma(self, rkey: int, addr: int) -> None:
        self._rkey, self._remote_addr = rkey, addr


class RecvWR:
    def __init__(self, wr_id: int = 0, num_sge: int = 0, sg: list[SGE] | None = None,
                 next_wr: RecvWR | None = None) -> None:
        if num_sge < 1 or not sg:
            raise PyverbsUserError("A WR needs at least one SGE")
        self.wr_id, self.num_sge, self._sg, self.next_wr = wr_id, num_sge, list(sg or []), next_wr


@dataclass(slots=True)
class WC:
    wr_id: int = 0
    status: int = 0
    opcode: int = 0
    vendor_err: int = 0
    byte_len: int = 0
    qp_num: int = 0
    src_qp: int = 0
    imm_data: int = 0
    wc_flags: int = 0
    pkey_index: int = 0
    slid: int = 0
    sl: int = 0
    dlid_path_bits: int = 0


@dataclass(frozen=True, slots=True)
class Device:
    name: bytes
    node_type: int = 1
    transport_type: int = 0
    guid: str = "0000:0000:0000:0001"


@dataclass(frozen=True, slots=True)
class PortAttr:
    state: int
    lid: int
    active_mtu: int = ibv_mtu.IBV_MTU_1024
    gid_tbl_len: int = 1
