"""``python -m exchange bench-failover`` / ``bench-steady`` (issue 14): the parsing and counting
they rest on, their bad-input handling, the CPU hogs' clean-up, and short real runs (slow)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from exchange import failover_bench as fb
from traders.load import ACKED, FAILED, REJECTED, Sample

ROOT = Path(__file__).resolve().parents[2]


def _run(*argv: str, timeout_s: float = 300.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), MU_BENCH_NICE="0")
    return subprocess.run([sys.executable, "-m", "exchange", *argv], capture_output=True,
                          text=True, timeout=timeout_s, env=env, cwd=ROOT, check=False)


def _log_line(stamp: str, server: int, who: str) -> str:
    return f"{stamp} WARNING exchange.replication: server {server}: leader is now {who}\n"


@dataclass
class _Server:
    log_path: Path


def test_leader_lines_are_counted_per_kind(tmp_path):
    """Rule 4: every 'this server' line is one election, 'server None' a moment without a
    leader; other lines (followers naming the leader) count for nothing."""
    one, two = tmp_path / "s1.log", tmp_path / "s2.log"
    one.write_text(_log_line("10:00:00.100", 1, "this server")
                   + "10:00:00.200 WARNING exchange.fifo: control FIFO received 'p'\n"
                   + _log_line("10:00:01.000", 1, "server 2"))
    two.write_text(_log_line("10:00:00.101", 2, "server 1")
                   + _log_line("10:00:00.990", 2, "server None")
                   + _log_line("10:00:00.995", 2, "this server"))
    cluster = SimpleNamespace(servers={1: _Server(one), 2: _Server(two), 3: _Server(
        tmp_path / "missing.log")})
    assert fb.count_leader_lines(cluster) == (2, 1)  # type: ignore[arg-type]


def test_the_new_leaders_line_is_timed_from_the_pause(tmp_path):
    """Rule 3: the first 'this server' line at or after the pause, in seconds; earlier lines
    (the previous election) and lines naming others are skipped."""
    log = tmp_path / "server-2.log"
    pause_wall = time.mktime((2026, 12, 1, 10, 0, 0, 0, 0, -1)) + 0.5  # 10:00:00.500 local
    log.write_text(_log_line("10:00:00.100", 2, "this server")
                   + _log_line("10:00:00.505", 2, "server None")
                   + _log_line("10:00:00.512", 2, "this server"))
    found = fb._leader_line_after(log, pause_wall)
    assert found is not None and abs(found - 0.012) < 1e-6
    assert fb._leader_line_after(tmp_path / "none.log", pause_wall) is None


def _sample(end_ns: int, replica: str, outcome: int = ACKED) -> Sample:
    return Sample(end_ns - 1000, end_ns, 1, 0, outcome, replica)


def test_answering_switches_count_changes_of_the_answering_server():
    samples = [_sample(1, "a"), _sample(3, "a", REJECTED), _sample(2, "a"), _sample(4, "b"),
               _sample(5, "b"), _sample(6, "", FAILED), _sample(7, "a")]
    assert fb.answering_switches(samples) == 2
    assert fb.answering_switches([]) == 0


def test_cpu_hogs_run_and_are_killed():
    """Rule 5: one busy loop per CPU while the context lasts, none after."""
    with fb._hogs(True) as hogs:
        assert len(hogs) == (os.cpu_count() or 1)
        time.sleep(0.2)
        assert all(hog.poll() is None for hog in hogs)
        pids = [hog.pid for hog in hogs]
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    with fb._hogs(False) as none:
        assert none == []


@pytest.mark.parametrize("argv", [("bench-failover", "--pauses", "0"),
                                  ("bench-steady", "--minutes", "0"),
                                  ("bench-failover", "--traders", "0")])
def test_bad_arguments_are_one_line_and_status_2(argv):
    result = _run(*argv, timeout_s=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_help_names_the_targets():
    for command, words in (("bench-failover", ("--pauses", "--step", "--sigstop", "10 ms")),
                           ("bench-steady", ("--minutes", "--cpu-hogs"))):
        result = _run(command, "--help", timeout_s=60)
        assert result.returncode == 0
        for word in words:
            assert word in result.stdout, (command, word)


@pytest.mark.slow
def test_bench_failover_runs_and_reports():
    """A short real run: every pause ends in an answer from another server; the report has the
    percentiles, the servers' view and a verdict (met or not: timing is the machine's)."""
    result = _run("bench-failover", "--pauses", "3", "--traders", "2")
    out = result.stdout
    assert result.returncode in (0, 1), result.stderr[-2000:]
    assert re.search(r"^3 fail-overs: p50 [\d.]+ ms, p90 .* aborted 0$", out, re.M), out
    assert len(re.findall(r"^round \d: leader \d paused -> first answer from server \d", out,
                          re.M)) == 3, out
    assert "servers' view" in out
    assert re.search(r"^verdict: p50 [\d.]+ ms <= 10 ms: (met|NOT met)$", out, re.M), out


@pytest.mark.slow
def test_bench_steady_counts_changes_with_hogs_and_cleans_up():
    """A ~15 s fault-free run with CPU hogs: a count, a verdict, and no hog left behind."""
    result = _run("bench-steady", "--minutes", "0.25", "--traders", "2", "--cpu-hogs")
    out = result.stdout
    assert result.returncode in (0, 1), result.stderr[-2000:]
    changes = re.search(r"^leader changes \(servers' logs\): (\d+);", out, re.M)
    assert changes, out
    assert re.search(r"^verdict: \d+ leader changes <= 1: (met|NOT met)$", out, re.M), out
    hogs = re.search(r"CPU hogs running \(pids ([\d, ]+)\)", out)
    assert hogs, out
    for pid in hogs.group(1).split(", "):
        assert not Path(f"/proc/{pid}").exists(), f"hog {pid} survived"


@pytest.mark.slow
@pytest.mark.parametrize("entry", [(), ("--stream",)], ids=["unary", "stream"])
def test_a_sigstopped_leader_is_hedged_around_before_the_attempt_timeout(entry):
    """``--sigstop``: the stopped leader answers nothing, not even its requests in flight; the
    traders' hedge (traders.client Rule 7; a session's adaptive stall limit, traders.session
    Rule 2) gets an answer from the new leader well before the 1 s that used to bound it, and
    the stopped server rejoins."""
    result = _run("bench-failover", "--sigstop", "--pauses", "2", "--traders", "2", *entry)
    out = result.stdout
    assert result.returncode in (0, 1), result.stderr[-2000:]
    assert re.search(r"^== SIGSTOP on the leader", out, re.M), out
    rounds = re.findall(r"^round \d: leader \d paused -> first answer from server \d after "
                        r"([\d.]+) ms", out, re.M)
    assert len(rounds) == 2, out
    from traders.client import ATTEMPT_TIMEOUT_S
    assert all(float(ms) < ATTEMPT_TIMEOUT_S * 1000 * 0.8 for ms in rounds), rounds
