"""Blocking list pops (``BLPOP``, ``BRPOP``, ``BLMOVE``, ``BRPOPLPUSH``) on a replicated server.

Rule 1: a blocking pop never blocks a local server (every client shares its connection): the
        leader's front end proposes an *attempt*, a fixed Lua script that pops like the command
        would if something is there and answers null otherwise (``attempt``), so every replica
        pops the same element in log order. A null attempt leaves the client waiting
        (``kvstores.frontend`` Rule 9); anything else (the popped element, an error such as
        ``WRONGTYPE``, a redirect) is the client's reply.
Rule 2: ``parse`` checks the arguments as redis-server does, with its error texts, before
        anything is proposed: arity, the timeout (a non-negative float, seconds; 0 waits for
        ever) and ``BLMOVE``'s directions.
Rule 3: the reply to a wait that timed out is redis-server's: a null array in RESP2, null in
        RESP3 (``timed_out``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from kvstores.resp import encode_command, error

POP_SCRIPT = b"""for i = 1, #KEYS do
  local popped = redis.pcall(ARGV[1], KEYS[i])
  if type(popped) == 'table' and popped.err then return popped end
  if popped then return {KEYS[i], popped} end
end
return false"""
"""BLPOP/BRPOP's attempt: the first non-empty list's first (LPOP) or last (RPOP) element."""

MOVE_SCRIPT = b"""local moved = redis.pcall('LMOVE', KEYS[1], KEYS[2], ARGV[1], ARGV[2])
if type(moved) == 'table' and moved.err then return moved end
return moved"""
"""BLMOVE/BRPOPLPUSH's attempt: LMOVE, or null when the source is empty."""

COMMANDS = frozenset((b"BLPOP", b"BRPOP", b"BLMOVE", b"BRPOPLPUSH"))
_FLOAT = re.compile(rb"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_DIRECTIONS = (b"LEFT", b"RIGHT")


@dataclass(frozen=True, slots=True)
class Blocking:
    """One parsed blocking pop: its attempt (bytes to propose), the keys whose writes may
    satisfy it, and how long to wait (0: for ever)."""

    attempt: bytes
    keys: tuple[bytes, ...]
    timeout_s: float


def _wrong_args(name: bytes) -> bytes:
    return error(f"ERR wrong number of arguments for '{name.decode().lower()}' command")


def _timeout(arg: bytes) -> float | bytes:
    if _FLOAT.fullmatch(arg) is None:
        return error("ERR timeout is not a float or out of range")
    value = float(arg)
    if not math.isfinite(value):
        return error("ERR timeout is not a float or out of range")
    if value < 0:
        return error("ERR timeout is negative")
    return value


def parse(args: list[bytes]) -> Blocking | bytes:
    """Rule 2: the blocking pop ``args``, or the error reply redis-server would give."""
    name = args[0].upper()
    if name in (b"BLPOP", b"BRPOP"):
        if len(args) < 3:
            return _wrong_args(name)
        keys = args[1:-1]
        pop = b"LPOP" if name == b"BLPOP" else b"RPOP"
        attempt = encode_command([b"EVAL", POP_SCRIPT, b"%d" % len(keys), *keys, pop])
    elif name == b"BLMOVE" or name == b"BRPOPLPUSH":
        if len(args) != (6 if name == b"BLMOVE" else 4):
            return _wrong_args(name)
        keys = args[1:3]
        if name == b"BLMOVE":
            wherefrom, whereto = args[3].upper(), args[4].upper()
            if wherefrom not in _DIRECTIONS or whereto not in _DIRECTIONS:
                return error("ERR syntax error")
        else:
            wherefrom, whereto = b"RIGHT", b"LEFT"
        attempt = encode_command([b"EVAL", MOVE_SCRIPT, b"2", *keys, wherefrom, whereto])
    else:
        raise AssertionError(name)
    timeout = _timeout(args[-1])
    if isinstance(timeout, bytes):
        return timeout
    return Blocking(attempt, tuple(keys), timeout)


def is_null(reply: bytes) -> bool:
    """Whether an attempt's reply says nothing was there (Rule 1)."""
    return reply in (b"$-1\r\n", b"*-1\r\n", b"_\r\n")


def timed_out(resp3: bool) -> bytes:
    """Rule 3."""
    return b"_\r\n" if resp3 else b"*-1\r\n"
