"""RESP2 and RESP3, sans-IO: client commands in, replies framed, errors encoded. No sockets here.

Rule 1: ``parse_commands`` consumes only complete commands and reports how far it got, so the
        caller keeps the rest for the next read; a malformed command raises ``ProtocolError``
        (the front end answers ``-ERR Protocol error: ...`` and closes, as redis-server does).
Rule 2: a command arrives as multibulk (``*N\\r\\n$len\\r\\narg\\r\\n...``, what every client
        library sends) or inline (``SET k v\\r\\n``, telnet style); both yield the arguments and
        the exact RESP bytes to forward, so an unchanged command is never re-encoded.
Rule 3: ``reply_end`` frames one complete reply of any RESP2 or RESP3 type (nested aggregates
        and attributes included) without decoding it; replies are forwarded to clients byte for
        byte. RESP3 replies come from the local server only while a RESP3 client's command is
        run there (``kvstores.pipe`` Rule 8).

Cost: O(bytes) per command, one ``find`` per line.
"""

from __future__ import annotations

from kvstores.constants import ARGS_MAX, INLINE_BYTES_MAX

CRLF = b"\r\n"
_STAR = 42  # '*'
_DOLLAR = 36  # '$'


class ProtocolError(ValueError):
    """The client sent bytes that are not RESP; the message says what (redis's wording)."""


def encode_command(args: list[bytes]) -> bytes:
    """The multibulk RESP encoding of ``args``."""
    assert args
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n" % len(arg))
        parts.append(arg)
        parts.append(CRLF)
    return b"".join(parts)


def error(message: str) -> bytes:
    """An error reply; ``message`` starts with its code (``ERR``, ``MOVED``, ``TRYAGAIN``...)."""
    text = message.replace("\r", " ").replace("\n", " ")
    return b"-" + text.encode("utf-8", errors="replace") + CRLF


def simple(text: str) -> bytes:
    return b"+" + text.encode() + CRLF


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def null_array(resp3: bool) -> bytes:
    """What redis answers for "no array" (an EXEC aborted by WATCH, a blocking pop that timed
    out): ``*-1`` in RESP2, ``_`` in RESP3."""
    return b"_\r\n" if resp3 else b"*-1\r\n"


def _int_field(buf: bytes | bytearray, start: int, end: int, what: str) -> int:
    try:
        return int(buf[start:end])
    except ValueError:
        raise ProtocolError(f"invalid {what}") from None


def _parse_multibulk(buf: bytes | bytearray, pos: int) -> tuple[list[bytes], int] | None:
    """(args, end) of the multibulk command at ``pos``, or None when incomplete."""
    eol = buf.find(CRLF, pos)
    if eol < 0:
        if len(buf) - pos > INLINE_BYTES_MAX:
            raise ProtocolError("too big mbulk count string")
        return None
    count = _int_field(buf, pos + 1, eol, "multibulk length")
    if count > ARGS_MAX:
        raise ProtocolError("invalid multibulk length")
    pos = eol + 2
    args: list[bytes] = []
    size = len(buf)
    for _ in range(count):
        if pos >= size:
            return None
        if buf[pos] != _DOLLAR:
            raise ProtocolError(f"expected '$', got '{chr(buf[pos])}'")
        eol = buf.find(CRLF, pos)
        if eol < 0:
            return None
        length = _int_field(buf, pos + 1, eol, "bulk length")
        if length < 0:
            raise ProtocolError("invalid bulk length")
        start = eol + 2
        end = start + length
        if end + 2 > size:
            return None
        if buf[end : end + 2] != CRLF:
            raise ProtocolError("bulk argument not terminated by CRLF")
        args.append(bytes(buf[start:end]))
        pos = end + 2
    return args, pos


def parse_commands(
    buf: bytes | bytearray, limit: int
) -> tuple[list[tuple[list[bytes], bytes]], int]:
    """Parse up to ``limit`` complete commands from ``buf``: ([(args, raw), ...], consumed).

    ``raw`` is the command's RESP encoding (the bytes received for multibulk commands). Empty
    commands (``*0``, blank inline lines) are skipped, as redis-server does.
    """
    assert limit > 0
    commands: list[tuple[list[bytes], bytes]] = []
    pos = 0
    size = len(buf)
    while pos < size and len(commands) < limit:
        if buf[pos] == _STAR:
            parsed = _parse_multibulk(buf, pos)
            if parsed is None:
                break
            args, end = parsed
            if args:
                commands.append((args, bytes(buf[pos:end])))
            pos = end
            continue
        eol = buf.find(b"\n", pos)
        if eol < 0:
            if size - pos > INLINE_BYTES_MAX:
                raise ProtocolError("too big inline request")
            break
        line = bytes(buf[pos:eol]).rstrip(b"\r")
        pos = eol + 1
        words = line.split()
        if words:
            commands.append((words, encode_command(words)))
    return commands, pos


_LENGTH_PREFIXED = frozenset(b"$=!")  # bulk string, verbatim string, blob error
_AGGREGATES = frozenset(b"*~>")  # array, set, push: <count> values follow
_MAP = 37  # '%': <count> key/value pairs follow
_ATTRIBUTE = 124  # '|': <count> key/value pairs, then the reply they describe


def reply_end(buf: bytes | bytearray, pos: int) -> int:
    """The end of the complete RESP2 or RESP3 reply starting at ``pos``, or -1 if it is
    incomplete (Rule 3)."""
    need = 1
    size = len(buf)
    while need:
        if pos >= size:
            return -1
        eol = buf.find(CRLF, pos)
        if eol < 0:
            return -1
        kind = buf[pos]
        if kind in _LENGTH_PREFIXED:
            length = int(buf[pos + 1 : eol])
            pos = eol + 2 if length < 0 else eol + 4 + length
            if pos > size:
                return -1
        elif kind in _AGGREGATES:
            count = int(buf[pos + 1 : eol])
            pos = eol + 2
            if count > 0:
                need += count
        elif kind == _MAP:
            need += 2 * int(buf[pos + 1 : eol])
            pos = eol + 2
        elif kind == _ATTRIBUTE:
            need += 2 * int(buf[pos + 1 : eol])
            pos = eol + 2
            continue  # the reply the attribute describes is still needed
        else:
            pos = eol + 2  # + - : and RESP3's _ , # (
        need -= 1
    return pos


class ReplyError(Exception):
    """An error reply (``-ERR ...``) decoded by ``decode_reply``; the message is its text."""


class IncompleteReply(ValueError):
    """``decode_reply`` reached the end of the buffer inside a reply: read more, then retry."""


def decode_reply(buf: bytes | bytearray, pos: int) -> tuple[object, int]:
    """Decode the RESP2 reply at ``pos``: ``(value, end)``; ``IncompleteReply`` when the buffer
    ends inside it. Values: ``bytes`` (simple and bulk strings), ``int``, ``None`` (nil),
    ``list`` (arrays), ``ReplyError`` (error replies, returned, not raised). O(reply bytes)."""
    eol = buf.find(CRLF, pos)
    if eol < 0:
        raise IncompleteReply
    kind = buf[pos]
    line = bytes(buf[pos + 1 : eol])
    if kind == _DOLLAR:
        length = int(line)
        if length < 0:
            return None, eol + 2
        end = eol + 4 + length
        if end > len(buf):
            raise IncompleteReply
        return bytes(buf[eol + 2 : end - 2]), end
    if kind == _STAR:
        count = int(line)
        if count < 0:
            return None, eol + 2
        items: list[object] = []
        pos = eol + 2
        for _ in range(count):
            item, pos = decode_reply(buf, pos)
            items.append(item)
        return items, pos
    if kind == ord(":"):
        return int(line), eol + 2
    if kind == ord("-"):
        return ReplyError(line.decode(errors="replace")), eol + 2
    return line, eol + 2
