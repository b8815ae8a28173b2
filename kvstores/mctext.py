"""The memcached text protocol, sans-IO: client commands in, replies framed, routes decided.

Rule 1: an allow-list decides, as for redis (``kvstores.redis_rules``): storage commands (``set
        add replace append prepend``), ``delete incr decr touch gat gats flush_all`` are writes;
        ``get gets version stats`` and ``lru_crawler metadump all|hash`` are reads; anything else is
        refused with ``CLIENT_ERROR`` naming the command (meta commands, admin, ``flush_all`` with a
        delay, ``verbosity``...). ``cas`` is ``Route.CAS``: each memcached numbers CAS uniques
        itself, and a replica restored from a snapshot cannot take its peers' numbers
        (kvstores.snapshot Rule 3), so a replicated ``cas`` could store on some replicas and
        not on others. The leader's front end decides it instead, against its own local
        server's unique (``kvstores.frontend`` Rule 8), and proposes a plain ``set``; ``gets``
        answers with the serving replica's numbers, so a ``cas`` needs a unique from the
        leader (from a follower it is answered ``EXISTS``).
Rule 2: a relative expiry (``exptime`` in 1..30 days) becomes an absolute unix time from the
        leader's clock before it is proposed, so every replica expires the item at the same
        moment; 0, negative and absolute expiries travel unchanged.
Rule 3: ``noreply`` is removed from what the local server sees (every forwarded command gets a
        reply there, so the pipe stays in step) and the front end drops the reply instead.
Rule 4: a line that cannot be parsed yields ``CLIENT_ERROR`` and the connection closes (its data
        block, if any, cannot be found); a well-formed command whose data block is too large for
        a log entry yields ``SERVER_ERROR object too large for cache`` and is skipped.
Rule 5: replies are framed by kind: ``LINE`` is one line; ``BLOCK`` is lines (``VALUE`` lines with
        their data) up to ``END`` or an error line.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from kvstores.constants import (
    COMMAND_BYTES_MAX,
    MEMCACHED_KEY_BYTES_MAX,
    MEMCACHED_LINE_BYTES_MAX,
    MEMCACHED_RELATIVE_EXPTIME_MAX_S,
)
from kvstores.redis_rules import Route

CRLF = b"\r\n"


class Framing(IntEnum):
    LINE = 0
    BLOCK = 1


class LineError(ValueError):
    """A command line that cannot be parsed; the message is memcached's CLIENT_ERROR text."""


@dataclass(frozen=True, slots=True)
class McCommand:
    route: Route
    data: bytes  # what to forward or propose, or the reply itself (Route.REPLY)
    framing: Framing
    noreply: bool


STORAGE = frozenset((b"set", b"add", b"replace", b"append", b"prepend", b"cas"))
_REFUSED_REASON = {
    b"mg": "meta commands are not replicated", b"ms": "meta commands are not replicated",
    b"md": "meta commands are not replicated", b"ma": "meta commands are not replicated",
    b"mn": "meta commands are not replicated", b"me": "meta commands are not replicated",
}
_ADMIN = "administrative commands would act on one replica only"


def client_error(text: str) -> bytes:
    return b"CLIENT_ERROR " + text.replace("\r", " ").replace("\n", " ").encode() + CRLF


def server_error(text: str) -> bytes:
    return b"SERVER_ERROR " + text.replace("\r", " ").replace("\n", " ").encode() + CRLF


def refuse(name: bytes, reason: str) -> bytes:
    return client_error(f"kvstores: '{name.decode(errors='replace')}' is not supported by the "
                        f"replicated server: {reason}")


def framing_of(payload: bytes) -> Framing:
    """The reply framing of a forwarded command (only gat/gats among writes return values)."""
    return Framing.BLOCK if payload[:3] in (b"gat", b"get", b"sta", b"lru") else Framing.LINE


def _absolute(exptime: bytes, now_s: int) -> bytes:
    try:
        value = int(exptime)
    except ValueError:
        raise LineError("bad command line format") from None
    if 0 < value <= MEMCACHED_RELATIVE_EXPTIME_MAX_S:
        return b"%d" % (now_s + value)
    return exptime


def _check_key(key: bytes) -> None:
    if len(key) > MEMCACHED_KEY_BYTES_MAX or any(byte < 33 or byte == 127 for byte in key):
        raise LineError("bad command line format")


def parse_one(buf: bytes | bytearray, pos: int, now_s: int) -> tuple[McCommand, int] | None:
    """The command at ``pos`` and where the next one starts, or None if it is incomplete.

    Raises ``LineError`` for a line that cannot be parsed (Rule 4).
    """
    eol = buf.find(b"\n", pos)
    if eol < 0:
        if len(buf) - pos > MEMCACHED_LINE_BYTES_MAX:
            raise LineError("line too long")
        return None
    line = bytes(buf[pos:eol]).rstrip(b"\r")
    words = line.split()
    end = eol + 1
    if not words:
        return McCommand(Route.REPLY, b"ERROR\r\n", Framing.LINE, False), end
    name = words[0]
    if name in STORAGE:
        return _storage(buf, words, end, now_s)
    return _other(name, words, now_s), end


def _storage(
    buf: bytes | bytearray, words: list[bytes], end: int, now_s: int
) -> tuple[McCommand, int] | None:
    """set/add/replace/append/prepend key flags exptime bytes [cas] [noreply] + data block."""
    name = words[0]
    fields = 6 if name == b"cas" else 5
    noreply = len(words) == fields + 1 and words[-1] == b"noreply"
    if len(words) != fields + noreply:
        raise LineError("bad command line format")
    _check_key(words[1])
    try:
        length = int(words[4])
        int(words[2])
    except ValueError:
        raise LineError("bad command line format") from None
    if length < 0:
        raise LineError("bad data chunk")
    data_end = end + length + 2
    if data_end > len(buf):
        return None
    if buf[data_end - 2 : data_end] != CRLF:
        raise LineError("bad data chunk")
    if name == b"cas" and not words[5].isdigit():
        raise LineError("bad command line format")
    head = words[:fields]
    head[3] = _absolute(words[3], now_s)
    payload = b" ".join(head) + CRLF + bytes(buf[end:data_end])
    if len(payload) > COMMAND_BYTES_MAX:
        reply = server_error("object too large for cache")
        return McCommand(Route.REPLY, reply, Framing.LINE, noreply), data_end
    route = Route.CAS if name == b"cas" else Route.WRITE  # Rule 1
    return McCommand(route, payload, Framing.LINE, noreply), data_end


def written_keys(data: bytes) -> list[bytes] | None:
    """The keys the write ``data`` (as proposed) may change; None: every key (``flush_all``).
    For a pending ``cas`` check (``kvstores.frontend`` Rule 8)."""
    words = data[:data.find(CRLF)].split()
    if words[0] == b"flush_all":
        return None
    return words[2:] if words[0] in (b"gat", b"gats") else words[1:2]


def _write(words: list[bytes], noreply: bool) -> McCommand:
    return McCommand(Route.WRITE, b" ".join(words) + CRLF, framing_of(words[0]), noreply)


def _other(name: bytes, words: list[bytes], now_s: int) -> McCommand:
    noreply = words[-1] == b"noreply" and len(words) > 1
    body = words[:-1] if noreply else words
    if name in (b"get", b"gets") and len(body) > 1:
        for key in body[1:]:
            _check_key(key)
        return McCommand(Route.READ, b" ".join(body) + CRLF, Framing.BLOCK, False)
    if name in (b"delete", b"incr", b"decr", b"touch"):
        count = 2 if name == b"delete" else 3
        if len(body) != count and not (name == b"delete" and body[2:] == [b"0"]):
            raise LineError("bad command line format")
        _check_key(body[1])
        if name == b"touch":
            body = [body[0], body[1], _absolute(body[2], now_s)]
        return _write(body[:count], noreply)
    if name in (b"gat", b"gats") and len(body) > 2:
        for key in body[2:]:
            _check_key(key)
        return _write([name, _absolute(body[1], now_s), *body[2:]], False)
    if name == b"flush_all":
        if len(body) > 1:
            return McCommand(Route.REPLY, refuse(name, "a delayed flush depends on each "
                                                 "replica's clock"), Framing.LINE, noreply)
        return _write(body, noreply)
    return _read_or_local(name, body, noreply)


def _read_or_local(name: bytes, body: list[bytes], noreply: bool) -> McCommand:
    if name == b"version" or (name == b"stats" and len(body) == 1):
        return McCommand(Route.READ, b" ".join(body) + CRLF, framing_of(name), False)
    if body[:2] == [b"lru_crawler", b"metadump"] and body[2:] in ([b"all"], [b"hash"]):
        # memcached refuses a metadump pipelined behind other commands: it runs on a side
        # connection once every command before it has been answered.
        return McCommand(Route.SIDE, b" ".join(body) + CRLF, Framing.BLOCK, False)
    if name == b"quit":
        return McCommand(Route.QUIT, b"", Framing.LINE, True)
    if name == b"kvstores" and body[1:] == [b"status"]:
        return McCommand(Route.STATUS, b"", Framing.BLOCK, False)
    if name == b"kvstores" and body[1:] == [b"forwarder"]:
        return McCommand(Route.FORWARDER, b"OK\r\n", Framing.LINE, False)
    reason = _REFUSED_REASON.get(name, _ADMIN if name in _ADMIN_NAMES else "")
    if reason:
        return McCommand(Route.REPLY, refuse(name, reason), Framing.LINE, noreply)
    if name in (b"get", b"gets", b"gat", b"gats"):
        return McCommand(Route.REPLY, b"ERROR\r\n", Framing.LINE, False)
    text = name.decode(errors="replace")[:40]
    return McCommand(Route.REPLY, client_error(f"kvstores: unknown or unsupported command "
                                               f"'{text}'"), Framing.LINE, noreply)


_ADMIN_NAMES = frozenset(
    (b"stats", b"verbosity", b"lru_crawler", b"slabs", b"lru", b"watch", b"shutdown",
     b"cache_memlimit", b"misbehave", b"debugtime", b"extstore", b"debug", b"verbose")
)


def reply_end(buf: bytes | bytearray, pos: int, framing: Framing) -> int:
    """The end of the complete reply at ``pos`` with ``framing``, or -1 if incomplete."""
    size = len(buf)
    if framing is Framing.LINE:
        eol = buf.find(CRLF, pos)
        return -1 if eol < 0 else eol + 2
    while True:
        eol = buf.find(CRLF, pos)
        if eol < 0:
            return -1
        if buf.startswith(b"VALUE ", pos):
            fields = bytes(buf[pos:eol]).split()
            pos = eol + 2 + int(fields[3]) + 2
            if pos > size:
                return -1
            continue
        line_start = pos
        pos = eol + 2
        if buf.startswith((b"END\r\n", b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"), line_start):
            return pos
        # metadump ends its lines with a bare LF: its END follows the last one.
        if eol - 4 >= line_start and buf[eol - 4 : eol] == b"\nEND":
            return pos
