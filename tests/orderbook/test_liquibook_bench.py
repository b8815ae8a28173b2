"""`python -m orderbook bench-liquibook`: the same stream on both sides, crashes as one line."""

from __future__ import annotations

import argparse
import importlib.util
import io
import subprocess
import sys

import pytest

from orderbook import liquibook_bench
from orderbook.bench import generate
from orderbook.types import AddOrder, CancelOrder

HAVE_LIQUIBOOK = importlib.util.find_spec("liquibook") is not None


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orderbook", *args], capture_output=True,
                          text=True, timeout=300, check=False)


def test_stream_is_issue_18s_mix_with_market_ioc() -> None:
    stream = liquibook_bench.build_stream(4000, 3)
    assert liquibook_bench.stream_digest(stream) == liquibook_bench.stream_digest(
        liquibook_bench.build_stream(4000, 3))
    markets = [c for c in stream if isinstance(c, AddOrder) and c.price == 0]
    limits = [c for c in stream if isinstance(c, AddOrder) and c.price]
    assert markets and all(c.ioc for c in markets)
    assert not any(c.ioc for c in limits)
    assert 0.15 < sum(isinstance(c, CancelOrder) for c in stream) / len(stream) < 0.25
    # the default bench stream keeps its resting market orders
    assert not any(isinstance(c, AddOrder) and c.ioc for c in generate(4000, 3, False))


def test_engine_round_counts_every_event_kind() -> None:
    stream = liquibook_bench.build_stream(3000, 2)
    result = liquibook_bench.run_engine(stream)
    adds = sum(isinstance(c, AddOrder) for c in stream)
    counts = result.counts
    assert counts.accepts == adds and counts.rejects == 0
    assert counts.trades > 0 and counts.traded_qty >= counts.trades
    assert counts.cancels >= sum(isinstance(c, CancelOrder) for c in stream)
    assert result.wall_s > 0 and result.cpu_s > 0


def _args(**overrides: int) -> argparse.Namespace:
    values = {"commands": 2000, "rounds": 2, "seed": 1} | overrides
    return argparse.Namespace(**values)


def test_a_crashing_liquibook_process_is_reported_in_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    crash = "import os, signal; print('dying', flush=True); os.kill(os.getpid(), signal.SIGSEGV)"
    monkeypatch.setattr(liquibook_bench.LiquibookWorker, "argv",
                        staticmethod(lambda commands, seed: [sys.executable, "-c", crash]))
    out = io.StringIO()
    assert liquibook_bench.compare(_args(), out) == 1
    assert out.getvalue().count("\n") == 1, out.getvalue()
    assert "error:" in out.getvalue()


def test_a_silent_death_names_the_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    crash = "import os, signal, sys; sys.stderr.write('boom\\n'); os.kill(os.getpid(), 11)"
    monkeypatch.setattr(liquibook_bench.LiquibookWorker, "argv",
                        staticmethod(lambda commands, seed: [sys.executable, "-c", crash]))
    out = io.StringIO()
    assert liquibook_bench.compare(_args(), out) == 1
    assert out.getvalue() == ("error: the Liquibook process killed by SIGSEGV during building "
                              "the stream (boom)\n")


def test_missing_wrapper_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None)
    assert liquibook_bench.main(_args()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install liquibook" in err


def test_bad_arguments_give_one_line() -> None:
    result = run(["bench-liquibook", "--rounds", "0"])
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "error:" in result.stderr
    assert run(["bench-liquibook", "--help"]).returncode == 0


@pytest.mark.skipif(not HAVE_LIQUIBOOK, reason="liquibook wheel not installed (x86-64 Linux)")
def test_side_by_side_run_agrees_on_every_count() -> None:
    result = run(["bench-liquibook", "--commands", "3000", "--rounds", "2"])
    assert result.returncode in (0, 3), result.stdout + result.stderr  # 3: ratio below target
    out = result.stdout
    assert "in both processes" in out and "round 1 (engine first)" in out
    assert "round 2 (Liquibook first)" in out and "both listeners counted" in out
    assert "wall clock: median x" in out and "CPU time: median x" in out
