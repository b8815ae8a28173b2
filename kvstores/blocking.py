"""Blocking pops (``BLPOP``, ``BRPOP``, ``BLMOVE``, ``BRPOPLPUSH``, ``BLMPOP``, ``BZPOPMIN``,
``BZPOPMAX``, ``BZMPOP``) on a replicated server.

Rule 1: a blocking pop never blocks a local server (every client shares its connection): the
        leader's front end proposes an *attempt*, a fixed Lua script that pops like the command
        would if something is there and answers null otherwise (``attempt``), so every replica
        pops the same element in log order. A null attempt leaves the client waiting
        (``kvstores.frontend`` Rule 9); anything else (the popped element, an error such as
        ``WRONGTYPE``, a redirect) is the client's reply. ``BLMPOP``/``BZMPOP``'s attempt is
        simply ``LMPOP``/``ZMPOP`` (deterministic, null when every key is empty).
Rule 2: ``parse`` checks the arguments as redis-server does, with its error texts, before
        anything is proposed: arity, the timeout (a non-negative float, seconds; 0 waits for
        ever) and ``BLMOVE``'s directions.
Rule 3: the reply to a wait that timed out is redis-server's: a null array in RESP2, null in
        RESP3 (``timed_out``).
Rule 4: ``BlockedPop`` is one waiting client (``kvstores.frontend`` Rule 9): the owner of its
        attempts' slots, registered under its keys (``kvstores.watch`` Rule 2) while it waits.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kvstores.pipe import Slot, SlotOwner
from kvstores.redis_rules import Route, wrong_args
from kvstores.resp import encode_command, error, null_array
from kvstores.watch import KeyEvents

POP_SCRIPT = b"""for i = 1, #KEYS do
  local popped = redis.pcall(ARGV[1], KEYS[i])
  if type(popped) == 'table' and popped.err then return popped end
  if popped then return {KEYS[i], popped} end
end
return false"""
"""BLPOP/BRPOP's attempt: the first non-empty list's first (LPOP) or last (RPOP) element."""

ZPOP_SCRIPT = b"""redis.setresp(3)
for i = 1, #KEYS do
  local popped = redis.pcall(ARGV[1], KEYS[i])
  if popped.err then return popped end
  if #popped > 0 then return {KEYS[i], popped[1], popped[2]} end
end
return nil"""
"""BZPOPMIN/BZPOPMAX's attempt: the first non-empty sorted set's lowest (ZPOPMIN) or highest
(ZPOPMAX) member and its score, a double in RESP3 as the command answers it (``setresp(3)``)."""

MOVE_SCRIPT = b"""local moved = redis.pcall('LMOVE', KEYS[1], KEYS[2], ARGV[1], ARGV[2])
if type(moved) == 'table' and moved.err then return moved end
return moved"""
"""BLMOVE/BRPOPLPUSH's attempt: LMOVE, or null when the source is empty."""

_POPS = {b"BLPOP": (POP_SCRIPT, b"LPOP"), b"BRPOP": (POP_SCRIPT, b"RPOP"),
         b"BZPOPMIN": (ZPOP_SCRIPT, b"ZPOPMIN"), b"BZPOPMAX": (ZPOP_SCRIPT, b"ZPOPMAX")}
_FLOAT = re.compile(rb"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_DIRECTIONS = (b"LEFT", b"RIGHT")


@dataclass(frozen=True, slots=True)
class Blocking:
    """One parsed blocking pop: its attempt (bytes to propose), the keys whose writes may
    satisfy it, and how long to wait (0: for ever)."""

    attempt: bytes
    keys: tuple[bytes, ...]
    timeout_s: float


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
    if name in (b"BLPOP", b"BRPOP", b"BZPOPMIN", b"BZPOPMAX"):
        if len(args) < 3:
            return wrong_args(name)
        keys = args[1:-1]
        script, pop = _POPS[name]
        attempt = encode_command([b"EVAL", script, b"%d" % len(keys), *keys, pop])
    elif name == b"BLMPOP" or name == b"BZMPOP":  # timeout numkeys key [key ...] ...
        if len(args) < 5:
            return wrong_args(name)
        count = int(args[2]) if args[2].isdigit() else 0
        keys = args[3:3 + count]  # a bad rest of the command: the attempt answers its error
        attempt = encode_command([b"LMPOP" if name == b"BLMPOP" else b"ZMPOP", *args[2:]])
    elif name == b"BLMOVE" or name == b"BRPOPLPUSH":
        if len(args) != (6 if name == b"BLMOVE" else 4):
            return wrong_args(name)
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
    timeout = _timeout(args[1] if name in (b"BLMPOP", b"BZMPOP") else args[-1])
    if isinstance(timeout, bytes):
        return timeout
    return Blocking(attempt, tuple(keys), timeout)


def is_null(reply: bytes) -> bool:
    """Whether an attempt's reply says nothing was there (Rule 1)."""
    return reply in (b"$-1\r\n", b"*-1\r\n", b"_\r\n")


def timed_out(resp3: bool) -> bytes:
    """Rule 3."""
    return null_array(resp3)


class _Core(Protocol):
    """What a waiting client needs of the front end's core."""

    loop: asyncio.AbstractEventLoop
    keys: KeyEvents

    def submit(self, route: Route, data: bytes, slot: Slot, kind: int) -> None: ...


class BlockedPop(SlotOwner):
    """One client's blocking pop (Rule 4, ``kvstores.frontend`` Rule 9)."""

    def __init__(self, core: _Core, parsed: Blocking, slot: Slot, resp3: bool,
                 on_done: Callable[[], None]) -> None:
        self.core = core
        self.parsed = parsed
        self.slot = slot  # the client's reply
        self.resp3 = resp3
        self.on_done = on_done  # the connection goes on parsing
        self.in_flight = False  # an attempt is queued or proposed
        self.again = False  # woken while in flight
        self.expired = False
        self.done = False
        self.registered = False
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.parsed.timeout_s > 0:
            self._timer = self.core.loop.call_later(self.parsed.timeout_s, self._expire)
        self._attempt()

    def _attempt(self) -> None:
        if self.done:
            return
        self.in_flight, self.again = True, False
        keys = self.core.keys
        if keys.watchers:  # it may pop: WATCH must see it; it wakes nobody until it did
            keys.touch(list(self.parsed.keys))
        self.core.submit(Route.WRITE, self.parsed.attempt, Slot(self, False, True, self.resp3), 0)

    def slot_filled(self, slot: Slot) -> None:
        """An attempt's reply."""
        self.in_flight = False
        reply = slot.data
        assert reply is not None
        if self.done:
            return
        if not is_null(reply):
            self._finish(reply)
            if not reply.startswith(b"-"):
                self.core.keys.wake(self.parsed.keys)  # the next waiter may find more
        elif self.expired:
            self._finish(timed_out(self.resp3))
        elif self.again:
            self._attempt()
        elif not self.registered:
            self.registered = True
            self.core.keys.wait(self.parsed.keys, self)

    def wake(self) -> None:
        """A write to one of its keys is being submitted: try again after it."""
        if self.done:
            return
        if self.in_flight:
            self.again = True
            return
        self.in_flight = True
        self.core.loop.call_soon(self._attempt)

    def _expire(self) -> None:
        self._timer = None
        if self.in_flight:
            self.expired = True  # the attempt in flight decides (it may pop an element)
        elif not self.done:
            self._finish(timed_out(self.resp3))

    def _finish(self, reply: bytes) -> None:
        self.abandon()
        self.slot.fill(reply)
        self.on_done()

    def abandon(self) -> None:
        """Stop waiting (answered, or the client went away)."""
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.registered:
            self.registered = False
            self.core.keys.stop_waiting(self.parsed.keys, self)
