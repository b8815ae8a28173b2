"""The README's main command and the benchmark, run as a user would (short runs)."""

import glob
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.plots.png import assert_png

pytestmark = pytest.mark.slow


def _leftovers(cluster_id: str) -> list[str]:
    return glob.glob(f"/dev/shm/mu.{cluster_id}.*") + glob.glob(f"/dev/shm/sem.mu.{cluster_id}.*")


def test_demo_fails_over_and_ends_with_equal_digests(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "exchange", "demo", "--seconds", "4", "--traders", "2",
         "--no-progress", "--plot-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "paused the leader" in out and "resumed server" in out
    assert re.search(r"failover: server \d paused -> server \d answering after [\d.]+ ms", out)
    assert "replicas' digests: ALL EQUAL" in out
    assert "failed 0" in out
    cluster_id = re.search(r"cluster (demo-\d+-\d+)", out).group(1)
    workdir = re.search(r"logs in (\S+)\)", out).group(1)
    assert _leftovers(cluster_id) == []
    assert glob.glob(f"{workdir}/*") == []
    for name in ("demo-latency-cdf.png", "demo-timeline.png"):
        assert f"picture: {tmp_path / name}" in out
        assert_png(tmp_path / name)


def test_demo_ctrl_c_stops_cleanly():
    process = subprocess.Popen(
        [sys.executable, "-m", "exchange", "demo", "--seconds", "30", "--no-progress",
         "--no-plots"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    header = process.stdout.readline()
    cluster_id = re.search(r"cluster (demo-\d+-\d+)", header).group(1)
    time.sleep(4)  # servers up, traders running
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    both = f"stdout:\n{out}\nstderr:\n{err}"
    assert process.returncode == 130, both
    assert "interrupted (Ctrl-C)" in err, both
    assert "servers stopped" in out, both
    assert "Traceback" not in err, both
    assert _leftovers(cluster_id) == [], both


def test_bench_prints_both_configurations_side_by_side(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "exchange", "bench", "--seconds", "0.5", "--rounds", "1",
         "--traders", "2", "--plot-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"unreplicated +\d+ +\d+", result.stdout)
    assert re.search(r"3 replicas +\d+ +\d+", result.stdout)
    assert re.search(r"replicated/unreplicated: p50 x[\d.]+", result.stdout)
    assert f"picture: {tmp_path / 'bench-latency-cdf.png'}" in result.stdout
    assert_png(tmp_path / "bench-latency-cdf.png")


def test_bench_stream_prints_one_line_per_configuration_and_the_verdicts():
    result = subprocess.run(
        [sys.executable, "-m", "exchange", "bench", "--stream", "--seconds", "0.3", "--rounds",
         "1", "--traders", "2"], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for mode in ("unary", "stream batch=1", "stream batch=20"):
        for replicas in (3, 1):
            line = rf"^{mode} replicas={replicas}: [\d,]+ orders/s, p50 \d+ us"
            assert re.search(line, result.stdout, re.MULTILINE), (line, result.stdout)
    assert re.search(r"^verdict: stream batch=20 replicas=3 [\d,]+ orders/s \((meets|MISSES)",
                     result.stdout, re.MULTILINE)
    assert result.stdout.count("verdict:") == 4
