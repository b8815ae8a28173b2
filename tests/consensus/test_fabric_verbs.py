"""The verbs fabric where no RDMA device exists: it must stop with one clear line, and its pure
parts (connection details, queue-pair attributes built from real pyverbs objects) must be right."""

from __future__ import annotations

import subprocess
import sys

import pytest

from consensus.fabric import FabricError, FabricUnavailable, open_fabric
from consensus.fabric.verbs import (
    QpDetails,
    RegionDetails,
    Verbs,
    qp_attributes,
    qp_key,
    region_key,
)
from consensus.registry import InProcessRegistry


def test_details_round_trip() -> None:
    qp = QpDetails(qp_num=0x11A, lid=7, gid="fe80:0000:0000:0000:0202:c9ff:fe00:0001", psn=99)
    assert QpDetails.decode(qp.encode()) == qp
    region = RegionDetails(addr=0x7F00_DEAD_B000, rkey=0x1234, size=4096)
    assert region.encode() == b"7f00deadb000 4660 4096"
    assert RegionDetails.decode(region.encode()) == region
    assert qp_key(1, "log", 2, "writer") == "fabric/verbs/1/log/qp/2/writer"
    assert region_key(3, "ctrl") == "fabric/verbs/3/ctrl"


@pytest.mark.parametrize("value", [b"", b"1 2 3", b"x 2 g 4", b"1 2 g 4 5"])
def test_malformed_qp_details_are_rejected(value: bytes) -> None:
    with pytest.raises(FabricError, match="malformed queue-pair details"):
        QpDetails.decode(value)


@pytest.mark.parametrize("value", [b"", b"zz 1 2", b"10 1", b"10 1 0", b"10 1 2 3"])
def test_malformed_region_details_are_rejected(value: bytes) -> None:
    with pytest.raises(FabricError, match="malformed region details"):
        RegionDetails.decode(value)


def test_open_fails_with_one_clear_line() -> None:
    """No RDMA device here (and maybe no pyverbs): FabricUnavailable, one line, names shm."""
    with pytest.raises(FabricUnavailable) as caught:
        open_fabric("verbs", 1, "verbs-test", InProcessRegistry("verbs-test"))
    message = str(caught.value)
    assert message.startswith("verbs fabric: ") and "\n" not in message
    assert "--fabric shm" in message
    assert "no RDMA device" in message or "pyverbs" in message


def test_missing_pyverbs_is_reported_clearly() -> None:
    """In a Python where pyverbs cannot be imported at all, the message says so."""
    script = (
        "import sys; sys.modules['pyverbs'] = None\n"
        "import consensus.fabric.verbs_device as verbs\n"
        "verbs.DEBIAN_DIST_PACKAGES = '/nonexistent'\n"
        "try:\n"
        "    verbs.Verbs()\n"
        "except verbs.FabricUnavailable as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    line = result.stdout.strip()
    assert line.startswith("verbs fabric: pyverbs is not importable by ")
    assert line.endswith("use --fabric shm on a single host")


def test_check_verbs_command_exits_non_zero_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "consensus.fabric", "check-verbs"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "verbs fabric: " in result.stderr
    assert "Traceback" not in result.stderr


def test_queue_pair_attributes_with_real_pyverbs() -> None:
    """Build the RTS attributes from real pyverbs objects (no device needed for that)."""
    try:
        verbs = Verbs()
    except FabricUnavailable as error:
        pytest.skip(f"pyverbs not installed here: {error}")
    enums = verbs.enums
    remote = QpDetails(qp_num=77, lid=3, gid="fe80:0000:0000:0000:0000:0000:0000:0001", psn=5)
    access = enums.IBV_ACCESS_REMOTE_READ | enums.IBV_ACCESS_LOCAL_WRITE
    attr = qp_attributes(verbs, 0, 6, remote, access)
    assert (attr.dest_qp_num, attr.rq_psn, attr.sq_psn) == (77, 5, 6)
    assert attr.ah_attr.dlid == 3 and attr.qp_access_flags == access
    assert attr.path_mtu == enums.IBV_MTU_1024
