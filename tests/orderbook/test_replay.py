"""`python -m orderbook replay` and `bench` as a user runs them (subprocess), plus the parser."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orderbook import AddOrder, CancelOrder, ReplaceOrder, Side
from orderbook.replay import LineError, decode_line


def run(args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "orderbook", *args], input=stdin,
                          capture_output=True, timeout=120, check=False)


def lines(*objects: object) -> bytes:
    return b"".join(json.dumps(obj).encode() + b"\n" for obj in objects)


def test_replay_prints_events_and_final_depth_per_symbol() -> None:
    stdin = lines(
        {"op": "add", "id": "o1", "symbol": "AAPL", "side": "sell", "price": 10000, "qty": 100,
         "stop": 0, "aon": False, "ioc": False},
        {"op": "add", "id": "o2", "side": "buy", "price": 10000, "qty": 150},
        {"op": "add", "id": "z1", "symbol": "MSFT", "side": "sell", "price": 500, "qty": 7},
        {"op": "replace", "id": "o2", "qty_delta": -10, "price": 9990},
        {"op": "cancel", "id": "nope"},
    )
    result = run(["replay", "-"], stdin)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    out = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert out == [
        {"event": "accept", "id": "o1"},
        {"event": "accept", "id": "o2"},
        {"event": "fill", "id": "o2", "contra": "o1", "price": 10000, "qty": 100},
        {"event": "fill", "id": "o1", "contra": "o2", "price": 10000, "qty": 100},
        {"event": "trade", "symbol": "AAPL", "price": 10000, "qty": 100},
        {"event": "accept", "id": "z1"},
        {"event": "replace", "id": "o2", "qty": 140, "price": 9990},
        {"event": "cancel_reject", "id": "nope", "reason": "not found"},
        {"event": "depth", "symbol": "AAPL", "bids": [[9990, 40, 1]], "asks": []},
        {"event": "depth", "symbol": "MSFT", "bids": [], "asks": [[500, 7, 1]]},
    ]
    assert result.stdout.startswith(b'{"event":"accept","id":"o1"}\n')  # compact JSON


def test_replay_reports_bad_lines_and_continues(tmp_path: Path) -> None:
    path = tmp_path / "cmds.jsonl"
    path.write_bytes(b"\n".join([
        b'{"op":"add","id":"a","side":"buy","price":100,"qty":5}',
        b"not json",
        b"[1, 2]",
        b'{"op":"fly","id":"a"}',
        b'{"op":"add","id":"b","side":"buy","price":100}',
        b'{"op":"add","id":"b","side":"up","price":100,"qty":1}',
        b'{"op":"add","id":"b","side":"buy","price":1.5,"qty":1}',
        b'{"op":"cancel","id":"a","qyt":1}',
        b"\xff\xfe",
        b"",
        b'{"op":"add","id":"c","side":"sell","price":100,"qty":0}',
        b'{"op":"cancel","id":"a"}',
    ]) + b"\n")
    result = run(["replay", str(path)])
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        "line 2: invalid JSON: Expecting value at column 1",
        "line 3: expected a JSON object, got an array",
        "line 4: unknown op 'fly' (expected add, cancel or replace)",
        "line 5: missing field 'qty'",
        "line 6: field 'side' must be \"buy\" or \"sell\", got 'up'",
        "line 7: field 'price' must be an integer, got 1.5",
        "line 8: unknown field 'qyt' for op 'cancel'",
        "line 9: not UTF-8 text (byte 0)",
        "8 line(s) with errors",
    ]
    out = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert out == [
        {"event": "accept", "id": "a"},
        {"event": "reject", "id": "c", "reason": "size must be positive"},
        {"event": "cancel", "id": "a", "qty": 5},
        {"event": "depth", "symbol": "AAPL", "bids": [], "asks": []},
    ]
    assert b"Traceback" not in result.stderr


def test_replay_market_data_flag_and_missing_file(tmp_path: Path) -> None:
    stdin = lines({"op": "add", "id": "a", "side": "buy", "price": 100, "qty": 5})
    result = run(["replay", "--market-data", "-"], stdin)
    events = [json.loads(line)["event"] for line in result.stdout.decode().splitlines()]
    assert events == ["accept", "depth_change", "bbo", "depth"]
    missing = run(["replay", str(tmp_path / "nope.jsonl")])
    assert missing.returncode == 2
    assert missing.stderr.decode().startswith("error: cannot open")
    assert b"Traceback" not in missing.stderr


def test_help_texts() -> None:
    result = run(["replay", "--help"])
    assert result.returncode == 0
    assert b'"op":"replace"' in result.stdout and b"exit status" in result.stdout
    assert run(["bench", "--help"]).returncode == 0
    assert run([]).returncode == 2


def test_bench_small_run_prints_every_figure() -> None:
    result = run(["bench", "--commands", "3000", "--no-progress"])
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    for needle in ("commands/s", "engine/baseline", "p50", "p99", "bytes", "digests of the two",
                   "engine: "):
        assert needle in text
    assert run(["bench", "--commands", "0"]).returncode == 2


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"op":"add","id":"a","side":"sell","price":0,"qty":3,"stop":9,"aon":true,"ioc":true,'
     b'"symbol":"Z"}', AddOrder("a", "Z", Side.SELL, 0, 3, 9, True, True)),
    (b'{"op":"cancel","id":"a"}', CancelOrder("a")),
    (b'{"op":"cancel","id":"a","symbol":"Z"}', CancelOrder("a", "Z")),
    (b'{"op":"replace","id":"a"}', ReplaceOrder("a")),
    (b'{"op":"replace","id":"a","qty_delta":-2,"price":7}', ReplaceOrder("a", -2, 7)),
    (b"   ", None),
])
def test_decode_line(raw: bytes, expected: object) -> None:
    assert decode_line(raw) == expected


@pytest.mark.parametrize("raw", [
    b'{"op":"add","id":"a","side":"buy","price":1,"qty":1,"aon":1}',
    b'{"op":"add","id":3,"side":"buy","price":1,"qty":1}',
    b'{"id":"a"}',
    b'"add"',
    b"[" * 100000,
    b'{"op":"add","id":"a","side":"buy","price":NaN,"qty":1}',
])
def test_decode_line_errors(raw: bytes) -> None:
    with pytest.raises(LineError):
        decode_line(raw)
