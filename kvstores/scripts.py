"""Lua scripts on the replicated redis server: which ones run, and where.

Rule 1: a script that may write runs on every replica in log order (``EVAL`` is proposed like a
        write), so it must do the same everywhere. ``check`` accepts it only when every
        ``redis.call``/``redis.pcall`` names its command with a string literal, and every
        command named has the same effect and reply on every replica holding the same data;
        otherwise the refusal names what is wrong: time (``TIME``), randomness
        (``RANDOMKEY``, ``SRANDMEMBER``, ``SPOP``, ``HRANDFIELD``, ``ZRANDMEMBER``), replies
        in an order each server picks (``KEYS``, ``SCAN``..., ``SMEMBERS``, ``HGETALL``,
        ``HKEYS``, ``HVALS``, ``SINTER``, ``SUNION``, ``SDIFF``), server state (``INFO``,
        ``OBJECT``, ...), ``XADD`` (its id may come from the clock), a computed command name,
        ``os.clock``. Relative expiries set or read inside a script (``EXPIRE``, ``PEXPIRE``,
        ``SET ... PX``, ``PTTL``) are evaluated where each replica applies the entry: the
        expiry times differ by the apply lag; the data never does.
Rule 2: ``EVAL_RO``/``EVALSHA_RO`` and a script whose shebang says ``flags=no-writes`` are local
        reads, unchecked (redis refuses their writes itself).
Rule 3: ``ScriptCache`` keeps the bodies the front end has seen (``EVAL``, ``SCRIPT LOAD``) by
        SHA1, the newest ``SCRIPTS_MAX``: ``EVALSHA`` becomes ``EVAL`` of the body before it is
        classified (a local server's script cache is not replicated, and is empty after a
        restart), and an unknown SHA1 answers redis's ``NOSCRIPT`` (clients then load the
        script, as they do with redis). ``SCRIPT EXISTS`` and ``SCRIPT FLUSH`` answer from it;
        ``SCRIPT LOAD`` also runs on the local server, which compiles the body.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict

SCRIPTS_MAX = 10_000
NOSCRIPT = b"-NOSCRIPT No matching script. Please use EVAL.\r\n"

_CALL = re.compile(rb"redis\s*\.\s*p?call\b")
_LITERAL_CALL = re.compile(rb"""redis\s*\.\s*p?call\s*\(\s*(['"])([A-Za-z_|-]+)\1""")
_ESCAPES = re.compile(rb"redis\s*\[|getfenv|setfenv|rawget|loadstring|\bload\s*\(|os\s*\.\s*clock")
_SHEBANG_FLAGS = re.compile(rb"#!lua[^\n]*\bflags=([^\s]*)")

_NONDETERMINISTIC: dict[bytes, str] = {
    **{name: "its reply is the server's clock" for name in (b"TIME",)},
    **{name: "its reply is random" for name in (
        b"RANDOMKEY", b"SRANDMEMBER", b"SPOP", b"HRANDFIELD", b"ZRANDMEMBER")},
    **{name: "its reply's order is each server's own" for name in (
        b"KEYS", b"SCAN", b"SSCAN", b"HSCAN", b"ZSCAN", b"SMEMBERS", b"HGETALL", b"HKEYS",
        b"HVALS", b"SINTER", b"SUNION", b"SDIFF")},
    **{name: "its reply describes one server" for name in (
        b"INFO", b"OBJECT", b"MEMORY", b"LASTSAVE", b"COMMAND", b"DEBUG", b"CONFIG",
        b"CLIENT", b"LATENCY", b"SLOWLOG")},
    b"XADD": "its id may come from each server's clock",
}


def sha1_hex(body: bytes) -> bytes:
    return hashlib.sha1(body).hexdigest().encode()


def reads_only(body: bytes) -> bool:
    """Rule 2: the shebang flags the script ``no-writes``."""
    if not body.startswith(b"#!"):
        return False
    match = _SHEBANG_FLAGS.match(body)
    return match is not None and b"no-writes" in match.group(1).split(b",")


def check(body: bytes, allowed: frozenset[bytes]) -> str:
    """Rule 1: why a writing script may not run replicated ("" when it may). ``allowed``: the
    commands whose effect and reply are the same on every replica."""
    if _ESCAPES.search(body):
        return "it reaches redis or the clock other than through redis.call with a literal name"
    calls = _CALL.findall(body)
    names = [match.group(2).upper() for match in _LITERAL_CALL.finditer(body)]
    if len(names) != len(calls):
        return "a redis.call names its command with something other than a string literal"
    for name in names:
        reason = _NONDETERMINISTIC.get(name)
        if reason is not None:
            return f"it calls {name.decode()}: {reason}"
        if name not in allowed:
            return f"it calls {name.decode()}, which is not replicated"
    return ""


class ScriptCache:
    """Rule 3: SHA1 -> body, the newest ``SCRIPTS_MAX``."""

    def __init__(self, limit: int = SCRIPTS_MAX) -> None:
        self._bodies: OrderedDict[bytes, bytes] = OrderedDict()
        self._limit = limit

    def add(self, body: bytes) -> bytes:
        sha = sha1_hex(body)
        self._bodies[sha] = body
        self._bodies.move_to_end(sha)
        while len(self._bodies) > self._limit:
            self._bodies.popitem(last=False)
        return sha

    def get(self, sha: bytes) -> bytes | None:
        return self._bodies.get(sha.lower())

    def exists(self, shas: list[bytes]) -> bytes:
        """SCRIPT EXISTS's reply."""
        return b"*%d\r\n" % len(shas) + b"".join(
            b":1\r\n" if sha.lower() in self._bodies else b":0\r\n" for sha in shas)

    def flush(self) -> None:
        self._bodies.clear()
