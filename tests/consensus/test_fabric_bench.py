"""``python -m consensus.fabric``: the benchmark prints every figure (no timing is asserted here;
targets are checked by reading its output), and the commands fail with one line."""

from __future__ import annotations

import pytest

from consensus.fabric.__main__ import main
from consensus.fabric.shm import SHM_DIR


@pytest.mark.slow
def test_bench_prints_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--ops", "2000", "--revoke-ops", "400"]) == 0
    output = capsys.readouterr().out
    for name in (
        "baseline: bare 64 B copy",
        "write 64 B",
        "write 4 KiB",
        "read 64 B",
        "revoke+grant",
        "revoke+grant, writer busy",
        "timer overhead",
    ):
        assert name in output
    assert "<= 1000 ns" in output and "<= 50000 ns" in output
    assert not any(".bench-" in path.name for path in SHM_DIR.iterdir())


def test_cleanup_command_reports_and_rejects_bad_ids(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cleanup", "nothing-here"]) == 0
    assert "removed 0 objects of 'nothing-here'" in capsys.readouterr().out
    assert main(["cleanup", "bad/id"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_bad_arguments_exit_with_usage() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["bench", "--ops", "0"])
    assert caught.value.code == 2
