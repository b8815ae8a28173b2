"""Our replay reproduces Liquibook's output on the golden streams (see golden/README.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
STREAMS = sorted(path.name.removesuffix(".jsonl") for path in GOLDEN.glob("*.jsonl")
                 if not path.name.endswith(".expected.jsonl"))
WAITING_STOP_REASON = ("stop order has not triggered yet", "not found")


def test_golden_streams_exist() -> None:
    assert len(STREAMS) >= 6


@pytest.mark.parametrize("name", STREAMS)
def test_replay_matches_liquibook(name: str) -> None:
    result = subprocess.run([sys.executable, "-m", "orderbook", "replay",
                             str(GOLDEN / f"{name}.jsonl")],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    ours = result.stdout.replace(*WAITING_STOP_REASON).splitlines()
    expected = (GOLDEN / f"{name}.expected.jsonl").read_text().splitlines()
    assert len(ours) > 500
    for number, (mine, theirs) in enumerate(zip(ours, expected, strict=False), 1):
        assert mine == theirs, f"{name}: first difference at output line {number}"
    assert len(ours) == len(expected)
