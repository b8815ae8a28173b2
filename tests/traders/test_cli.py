"""The trader CLIs against a real unreplicated server: the shell driven through stdin, and load."""

import os
import subprocess
import sys

import pytest

from exchange.cluster import LocalCluster
from tests.plots.png import assert_png
from traders.workload import DEFAULT_SYMBOLS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server():
    with LocalCluster(1, name="t-traders", symbols=("SHL", "SHF", "SHG", *DEFAULT_SYMBOLS)) \
            as cluster:
        yield cluster


def _run(args, stdin="", timeout=60):
    return subprocess.run([sys.executable, "-m", "traders", *args], input=stdin, text=True,
                          capture_output=True, timeout=timeout, check=False)


def test_shell_places_cancels_replaces_and_reads(server):
    script = "\n".join([
        "sell SHL 100 1010",
        "buy SHL 40 1010",
        "replace 77.1 qty=+20",
        "book SHL",
        "cancel 77.1",
        "cancel 78.1",
        "buy SHL 0",
        "frobnicate",
        "status",
        "watch SHL 1",
        "quit",
    ]) + "\n"
    result = _run(["shell", "--servers", server.server_uris, "--client-id", "77"], script)
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "client id 77, first seq 1" in out
    assert "order 77.1 seq 1" in out and "accept 77.1" in out
    assert "fill 77.2 contra=77.1 price=1010 qty=40" in out
    assert "replace 77.1 price=1010 qty=120" in out  # order quantity 100 + 20; 80 open
    assert "ask       1010         80 (1)" in out
    assert "cancel 77.1 qty=80" in out
    assert "error: order '78.1' is not an order of client 77" in out
    assert "error: quantity must be in" in out
    assert "error: unknown command 'frobnicate'" in out
    assert "standalone leader 1" in out
    assert "watching SHL for 1 s" in out and "watch ended" in out
    assert "an order session" in out


def test_shell_reports_unsolicited_fills_and_runs_unary(server):
    seller = _run(["shell", "--servers", server.server_uris, "--client-id", "91"],
                  "sell SHF 10 500\nbuy SHF 1 1\nfills\nquit\n")
    assert seller.returncode == 0, seller.stderr
    buyer = _run(["shell", "--servers", server.server_uris, "--client-id", "92", "--unary"],
                 "buy SHF 4 500\nquit\n")
    assert "fill 92.1 contra=91.1 price=500 qty=4" in buyer.stdout and "unary" in buyer.stdout
    script = "sell SHG 10 600\nfills\nfills\nfills\nfills\nquit\n"
    with subprocess.Popen([sys.executable, "-m", "traders", "shell", "--servers",
                           server.server_uris, "--client-id", "93"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as shell:
        assert shell.stdin is not None and shell.stdout is not None
        shell.stdin.write("sell SHG 10 600\n")
        shell.stdin.flush()
        while "accept 93.1" not in shell.stdout.readline():
            pass
        bought = _run(["shell", "--servers", server.server_uris, "--client-id", "94"],
                      "buy SHG 3 600\nquit\n")
        assert "fill 94.1 contra=93.1" in bought.stdout
        out, _ = shell.communicate(script.split("\n", 1)[1], timeout=60)
    assert "fill (unsolicited" in out and "fill 93.1 contra=94.1 price=600 qty=3" in out


def test_load_reports_and_dumps_latencies(server, tmp_path):
    dump = tmp_path / "lat.txt"
    env_uris = {**os.environ, "SERVER_URIS": server.server_uris, "TRADERS_NUM": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "traders", "load", "--test-ms", "1500", "--seed", "3",
         "--latency-file", str(dump), "--no-progress", "--plot-dir", str(tmp_path)],
        text=True, capture_output=True, timeout=60, env=env_uris, check=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "load: 2 traders, closed loop, 1500 ms, seed 3" in out
    assert "failed 0" in out and "latency p50" in out
    lines = dump.read_text().splitlines()
    assert lines[0].startswith("# start_us latency_us")
    assert len(lines) > 10
    assert all(len(line.split()) == 5 for line in lines[1:])
    for name in ("load-latency-cdf.png", "load-timeline.png"):
        assert f"picture: {tmp_path / name}" in out
        assert_png(tmp_path / name)


def test_load_over_sessions(server):
    result = _run(["load", "--servers", server.server_uris, "--traders", "2", "--test-ms",
                   "1500", "--seed", "4", "--stream", "--batch", "10", "--window", "3",
                   "--latency-file", "", "--no-progress"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "sessions, 10 orders per message, 3 messages unanswered per trader" in out
    assert "failed 0" in out and "unsolicited fills reported on sessions" in out
    bad = _run(["load", "--servers", server.server_uris, "--stream", "--batch", "20",
                "--window", "6", "--test-ms", "10"])
    assert bad.returncode == 2 and "at most 100 orders may be unanswered" in bad.stderr


def test_load_bad_arguments_are_one_line_errors():
    result = _run(["load", "--servers", "1=nohostport", "--test-ms", "10"])
    assert result.returncode == 2
    assert result.stderr.strip().startswith("python -m traders load: error:")
    assert "Traceback" not in result.stderr


def test_load_without_any_server_is_one_clear_error():
    """traders.client Rule 8: nothing listening is one line and exit 2, not a report of nothing;
    the wait is announced while it lasts."""
    import socket

    with socket.socket() as probe:  # a free port: bound, never listened on, then released
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _run(["load", "--servers", f"1=127.0.0.1:{port}", "--test-ms", "500",
                   "--wait-for-servers", "1.5", "--no-progress", "--no-plots",
                   "--latency-file", ""])
    assert result.returncode == 2, result
    assert "load: waiting for a server to answer" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m traders load: error: no server answered within 1.5 s")
    assert f"127.0.0.1:{port}" in last and "Traceback" not in result.stderr
    assert "requests sent" not in result.stdout  # no empty report
    bad = _run(["load", "--servers", f"1=127.0.0.1:{port}", "--wait-for-servers", "0"])
    assert bad.returncode == 2 and "--wait-for-servers 0: must be > 0" in bad.stderr
