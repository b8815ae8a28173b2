"""The command line: help that helps, bad input rejected with one clear line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from consensus.__main__ import build_parser, main


def test_help_lists_every_benchmark(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bench", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for word in ("st", "st-lat", "failover", "DORY_REGISTRY_IP", "--local"):
        assert word in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "st", "0", "64", "1"], "positive integer"),
        (["bench", "st", "1", "x", "1"], "positive integer"),
        (["bench", "st", "1", "64", "1", "--members", "1,1,2"], "distinct"),
        (["bench", "failover", "--pauses", "-1"], "positive integer"),
    ],
)
def test_bad_arguments_are_one_clear_line(capsys, argv, message):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(argv)
    assert done.value.code == 2
    assert message in capsys.readouterr().err


def test_too_many_outstanding_is_refused(capsys):
    assert main(["bench", "st", "1", "64", "100000"]) == 2
    assert "outstanding must be at most" in capsys.readouterr().err


@pytest.mark.slow
def test_local_st_runs_a_whole_cluster(tmp_path):
    launcher = subprocess.Popen(
        [sys.executable, "-m", "consensus", "bench", "st-lat", "--local", "3", "1", "64", "4",
         "--count", "2000", "--dump-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and its replicas
            launcher.wait()
    assert launcher.returncode == 0, stderr
    assert "Received 2000 in " in stdout
    assert "p99" in stdout
    lines = (tmp_path / "dump-st-64-4.txt").read_text().split()
    assert len(lines) == 2000 and all(int(v) > 0 for v in lines)
