"""Pub/sub for the redis clients of a replicated front end.

Rule 1: ``PUBLISH`` and ``SPUBLISH`` are replicated writes (``redis_rules.WRITES``): every
        replica's local server publishes the message to its own subscribers when it applies the
        entry, so a subscriber connected to any replica gets every message published through
        the leader, in log order. The reply counts the leader's own subscribers only (as a
        redis cluster node counts its own). A replica that catches up the log after a restart
        delivers the messages it replays to whoever subscribed to it meanwhile; one restored
        from a snapshot skips them. ``PUBSUB ...`` reads the local server.
Rule 2: a client's first ``SUBSCRIBE``, ``PSUBSCRIBE`` or ``SSUBSCRIBE`` makes its connection a
        subscriber for good: the front end opens a dedicated connection to the local server
        for it (``HELLO 3`` first for a RESP3 client) and relays what that connection sends.
        From then on only the subscribe family, ``PING`` and ``QUIT`` are accepted, and they
        travel on the dedicated connection; anything else is answered with redis's "only ...
        allowed in this context" error, also after the client unsubscribed from everything
        (where redis would serve it): the dedicated connection must never run a write, which
        would change one replica only.
Rule 3: replies stay in command order. The relay splits what the local server sends into
        replies: ``message``, ``pmessage`` and ``smessage`` are pushes, passed on as they come;
        any other reply answers the oldest command sent on the dedicated connection. A
        command's number of replies is known when it is sent: one per channel it names; for a
        subscribe naming none, one (an error); for an unsubscribe naming none, one per channel
        of its kind then subscribed, or one. A reply the front end makes itself (a refusal,
        ``QUIT``'s OK) waits for every command before it. The client's connection relays
        nothing before the replies to its commands from before its first subscribe.
Rule 4: the dedicated connection lives as long as the client's: either one closing closes the
        other. While the client's transport asks to pause writing (a slow subscriber), the
        relay stops reading the local server; redis then buffers, and drops the dedicated
        connection past its own pub/sub output limit, which closes the client's too.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kvstores import resp
from kvstores.redis_rules import OK

log = logging.getLogger("kvstores.pubsub")

# command -> (the kind of channel it concerns, whether it subscribes)
FAMILY: dict[bytes, tuple[bytes, bool]] = {
    b"SUBSCRIBE": (b"", True), b"UNSUBSCRIBE": (b"", False),
    b"PSUBSCRIBE": (b"P", True), b"PUNSUBSCRIBE": (b"P", False),
    b"SSUBSCRIBE": (b"S", True), b"SUNSUBSCRIBE": (b"S", False),
}
PUSH_KINDS = frozenset((b"message", b"pmessage", b"smessage"))
HELLO3 = resp.encode_command([b"HELLO", b"3"])


def context_error(name: bytes) -> bytes:
    """Redis's own refusal of a command on a subscriber connection (Rule 2)."""
    text = name.decode(errors="replace").lower()
    return resp.error(f"ERR Can't execute '{text}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / "
                      "PING / QUIT / RESET are allowed in this context")


def is_push(buf: bytes | bytearray, pos: int) -> bool:
    """Whether the complete reply at ``pos`` is a published message (Rule 3)."""
    if buf[pos] not in b"*>":
        return False
    first = buf.find(b"\r\n", pos) + 2
    if buf[first] != ord("$"):
        return False
    eol = buf.find(b"\r\n", first)
    length = int(buf[first + 1:eol])
    return bytes(buf[eol + 2:eol + 2 + length]) in PUSH_KINDS


class Client(Protocol):
    """The client connection a relay writes to."""

    def relay(self, data: bytes) -> None: ...

    def relay_closed(self) -> None: ...


@dataclass(slots=True)
class _Due:
    """Rule 3: a command sent on the dedicated connection (``replies`` still to come), or a
    reply the front end makes itself (``own``; ``close`` after it for QUIT)."""

    replies: int
    own: bytes | None = None
    close: bool = False


class Relay(asyncio.Protocol):
    """One subscriber client's dedicated connection to the local server (see module rules)."""

    def __init__(self, client: Client, resp3: bool, loop: asyncio.AbstractEventLoop,
                 connect: Callable[[], socket.socket]) -> None:
        self._client = client
        self._transport: asyncio.Transport | None = None
        self._closed = False
        self._unsent = bytearray()  # commands sent before the connection is made
        self._buf = bytearray()  # bytes from the local server not yet split into replies
        self._due: deque[_Due] = deque()  # Rule 3: per command sent or answered, in order
        self._channels: dict[bytes, set[bytes]] = {b"": set(), b"P": set(), b"S": set()}
        self._skip = 0  # replies to drop (HELLO 3's)
        if resp3:
            self._skip = 1
            self._unsent += HELLO3
        try:
            sock = connect()
        except OSError as exc:
            log.warning("pub/sub: cannot reach the local server: %s", exc)
            self._closed = True
            loop.call_soon(client.relay_closed)
            return
        sock.setblocking(False)
        loop.create_task(self._connect(loop, sock))

    async def _connect(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        try:
            await loop.create_unix_connection(lambda: self, sock=sock)
        except OSError as exc:
            log.warning("pub/sub: cannot reach the local server: %s", exc)
            sock.close()
            self.connection_lost(exc)

    # -- commands from the client (Rule 2) -------------------------------------------------------
    def command(self, args: list[bytes], raw: bytes) -> None:
        name = args[0].upper()
        family = FAMILY.get(name)
        if family is not None:
            kind, subscribes = family
            channels = self._channels[kind]
            named = args[1:]
            if subscribes:
                replies = max(1, len(named))
                channels.update(named)
            else:
                replies = len(named) or max(1, len(channels))
                if named:
                    channels.difference_update(named)
                else:
                    channels.clear()
            self._send(raw, replies)
        elif name == b"PING":
            self._send(raw, 1)
        elif name == b"QUIT":
            self._own(OK, close=True)
        else:
            self._own(context_error(name))

    def _send(self, raw: bytes, replies: int) -> None:
        self._due.append(_Due(replies))
        if self._transport is not None:
            self._transport.write(raw)
        else:
            self._unsent += raw

    def _own(self, reply: bytes, close: bool = False) -> None:
        self._due.append(_Due(0, reply, close))
        self._release()

    def _release(self) -> None:
        """Pass on the front end's own replies that no command before them still waits for."""
        due = self._due
        while due and due[0].replies == 0:
            done = due.popleft()
            if done.own is not None:
                self._client.relay(done.own)
            if done.close:
                self.close()
                self._client.relay_closed()
                return

    # -- the local server's side -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if self._closed:
            transport.close()
            return
        self._transport = transport
        if self._unsent:
            transport.write(bytes(self._unsent))
            self._unsent.clear()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        out: list[bytes] = []
        due = self._due
        while pos < len(buf):
            end = resp.reply_end(buf, pos)
            if end < 0:
                break
            if self._skip:
                self._skip -= 1
                pos = end
                continue
            out.append(bytes(buf[pos:end]))
            if due and not is_push(buf, pos):  # a reply: the oldest command's
                due[0].replies -= 1
                if due[0].replies == 0:
                    due.popleft()
                    if due and due[0].replies == 0:  # own replies next: after these
                        self._client.relay(b"".join(out))
                        out = []
                        self._release()
                        if self._closed:
                            return
            pos = end
        del buf[:pos]
        if out:
            self._client.relay(b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self._closed:
            self._closed = True
            self._client.relay_closed()

    # -- the client's side (Rule 4) --------------------------------------------------------------
    def pause(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()
            self._transport = None
