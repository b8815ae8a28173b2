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


def test_plot_draws_st_lat_dumps_as_one_cdf(tmp_path, capsys):
    from tests.plots.png import assert_png

    dumps = []
    for outstanding, base_ns in ((1, 3000), (8, 9000)):
        dump = tmp_path / f"dump-st-64-{outstanding}.txt"
        dump.write_text("".join(f"{base_ns + (i * 37) % 2000}\n" for i in range(5000)))
        dumps.append(str(dump))
    assert main(["bench", "plot", *dumps]) == 0
    assert f"picture: {tmp_path / 'dump-st-64-1.png'}" in capsys.readouterr().out
    assert_png(tmp_path / "dump-st-64-1.png")
    (tmp_path / "bad.txt").write_text("12\nnot-a-number\n")
    assert main(["bench", "plot", str(tmp_path / "bad.txt")]) == 1
    assert main(["bench", "plot", str(tmp_path / "missing.txt")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"bench plot: error: {tmp_path / 'bad.txt'}:2: not a number: 'not-a-number'",
                   f"bench plot: error: cannot read {tmp_path / 'missing.txt'}: No such file or "
                   "directory"]
