"""The real-process nemesis: 3 replica processes on the shm fabric, SIGSTOP/SIGKILL+restart of
followers, SIGSTOP of the leader and the leader's pause hook under a steady stream of proposals,
then the history check.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from consensus.sim.proc_nemesis import run_nemesis

NEMESIS_SECONDS = float(os.environ.get("MU_NEMESIS_SECONDS", "20"))
SEED = int(os.environ.get("MU_NEMESIS_SEED", "1"))


@pytest.mark.slow
def test_history_survives_real_process_faults(tmp_path: Path) -> None:
    report = run_nemesis(NEMESIS_SECONDS, SEED, tmp_path)
    shown = "\n".join(str(v) for v in report.violations[:20])
    assert report.ok, f"seed {SEED}: {len(report.violations)} violation(s):\n{shown}"
    faults = dict(report.faults)
    assert faults.get("kill", 0) >= 1 and faults.get("sigstop", 0) >= 1, faults
    assert faults.get("pause-leader", 0) >= 1 and faults.get("sigstop-leader", 0) >= 1, faults
    assert report.acked >= 100, f"only {report.acked} proposals acknowledged"
    leftovers = [p.name for p in Path("/dev/shm").glob(f"*nemesis-{os.getpid()}-{SEED}*")]
    assert not leftovers, f"shared memory left behind: {leftovers}"
