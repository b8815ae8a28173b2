"""`python -m orderbook replay FILE|-`: JSON-lines commands in, JSON-lines events out.

Rule 1: one command per line; blank lines are skipped. A line that is not valid UTF-8 or JSON,
        not an object, has an unknown op, an unknown field, a missing field or a field of the
        wrong type gives one line `line N: <what is wrong>` on stderr and the replay continues.
Rule 2: values of the right type go to the engine unchecked: the engine answers bad values
        (zero quantity, negative price, unknown id...) with reject events on stdout.
Rule 3: after the last line, one `depth` line per symbol (sorted by symbol), bids and asks best
        first as [price, open quantity, order count]. Exit status 0, or 1 if any line had an
        error, 2 if the input cannot be opened.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import IO, Any

from orderbook.constants import DEFAULT_SYMBOL
from orderbook.market import Market
from orderbook.types import AddOrder, CancelOrder, Command, ReplaceOrder, Side

DESCRIPTION = "Apply JSON-lines commands to a fresh market and print the events as JSON lines."
EPILOG = """\
commands (one JSON object per line; prices in integer ticks, 0 = market order):
  {"op":"add","id":"o1","symbol":"AAPL","side":"buy","price":10000,"qty":100,
   "stop":0,"aon":false,"ioc":false}        symbol, stop, aon, ioc optional (symbol AAPL)
  {"op":"cancel","id":"o1"}                  symbol optional
  {"op":"replace","id":"o1","qty_delta":-50,"price":10010}
                                             qty_delta optional (0); price 0/absent = unchanged
events (stdout): accept, reject (with reason), fill (one line per side), trade, cancel,
  cancel_reject, replace, replace_reject; with --market-data also depth_change and bbo;
  at the end one depth line per symbol:
  {"event":"depth","symbol":"AAPL","bids":[[10000,100,1]],"asks":[]}
errors (stderr): "line N: <reason>", one per bad line; the replay goes on with the next line.
exit status: 0 ok, 1 some lines had errors, 2 the input could not be opened.
example: printf '%s\\n' '{"op":"add","id":"a","side":"sell","price":100,"qty":5}' \\
  '{"op":"add","id":"b","side":"buy","price":0,"qty":5}' | python -m orderbook replay -
"""

SIDES = {"buy": Side.BUY, "sell": Side.SELL}
FIELDS = {
    "add": {"op", "id", "symbol", "side", "price", "qty", "stop", "aon", "ioc"},
    "cancel": {"op", "id", "symbol"},
    "replace": {"op", "id", "symbol", "qty_delta", "price"},
}
MARKET_DATA_EVENTS = {"bbo", "depth_change"}
JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number",
              bool: "true/false", type(None): "null"}


class LineError(Exception):
    """What is wrong with one input line (message printed as `line N: message`)."""


def _field(obj: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    """obj[name] checked to be exactly `kind` (bool is not int); default when absent."""
    if name not in obj:
        if default is None:
            raise LineError(f"missing field {name!r}")
        return default
    value = obj[name]
    if type(value) is not kind:
        expected = {int: "an integer", str: "a string", bool: "true or false"}[kind]
        raise LineError(f"field {name!r} must be {expected}, got {json.dumps(value)[:40]}")
    return value


def parse_command(obj: object) -> Command:
    """The command a decoded JSON value describes; LineError naming the problem otherwise."""
    if not isinstance(obj, dict):
        raise LineError(f"expected a JSON object, got {JSON_TYPES.get(type(obj), 'a value')}")
    op = _field(obj, "op", str)
    if op not in FIELDS:
        raise LineError(f"unknown op {op!r} (expected add, cancel or replace)")
    unknown = sorted(set(obj) - FIELDS[op])
    if unknown:
        raise LineError(f"unknown field {unknown[0]!r} for op {op!r}")
    order_id = _field(obj, "id", str)
    if op == "cancel":
        return CancelOrder(order_id, _field(obj, "symbol", str, ""))
    if op == "replace":
        return ReplaceOrder(order_id, _field(obj, "qty_delta", int, 0),
                            _field(obj, "price", int, 0), _field(obj, "symbol", str, ""))
    side_name = _field(obj, "side", str)
    if side_name not in SIDES:
        raise LineError(f"field 'side' must be \"buy\" or \"sell\", got {side_name!r}")
    return AddOrder(order_id, _field(obj, "symbol", str, DEFAULT_SYMBOL), SIDES[side_name],
                    _field(obj, "price", int), _field(obj, "qty", int), _field(obj, "stop", int, 0),
                    _field(obj, "aon", bool, False), _field(obj, "ioc", bool, False))


def _normalize(cmd: Command) -> Command:
    """Absent symbol on cancel/replace ("" from parse_command) means: look it up by id."""
    if isinstance(cmd, CancelOrder) and cmd.symbol == "":
        return CancelOrder(cmd.order_id)
    if isinstance(cmd, ReplaceOrder) and cmd.symbol == "":
        return ReplaceOrder(cmd.order_id, cmd.qty_delta, cmd.price)
    return cmd


def decode_line(raw: bytes) -> Command | None:
    """None for a blank line, the command otherwise; LineError when malformed."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LineError(f"not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LineError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise LineError(f"invalid JSON: {type(exc).__name__}") from None
    return _normalize(parse_command(obj))


def replay(lines: Iterable[bytes], out: IO[str], err: IO[str], market_data: bool) -> int:
    """Apply every line; write events to `out`, errors to `err`. Returns the error count."""
    market = Market()
    errors = 0
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    for number, raw in enumerate(lines, 1):
        try:
            cmd = decode_line(raw)
        except LineError as exc:
            errors += 1
            err.write(f"line {number}: {exc}\n")
            continue
        if cmd is None:
            continue
        for event in market.apply(cmd):
            data = event.to_dict()
            if market_data or data["event"] not in MARKET_DATA_EVENTS:
                out.write(dumps(data) + "\n")
    for symbol in market.symbols():
        book = market.book(symbol)
        assert book is not None
        bids, asks = book.depth()
        out.write(dumps({"event": "depth", "symbol": symbol, "bids": [list(lv) for lv in bids],
                         "asks": [list(lv) for lv in asks]}) + "\n")
    return errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE|-", help="JSON-lines command file, or - for stdin")
    parser.add_argument("--market-data", action="store_true",
                        help="also print depth_change and bbo events after each command")


def main(args: argparse.Namespace) -> int:
    try:
        # closed by the `with stream` below
        stream: IO[bytes] = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    except OSError as exc:
        print(f"error: cannot open {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        with stream:
            errors = replay(stream, sys.stdout, sys.stderr, args.market_data)
        sys.stdout.flush()
    except BrokenPipeError:
        sys.stderr.close()  # reader went away (e.g. `| head`): stop quietly
        return 0
    except OSError as exc:
        print(f"error: reading {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    if errors:
        print(f"{errors} line(s) with errors", file=sys.stderr)
    return 1 if errors else 0
