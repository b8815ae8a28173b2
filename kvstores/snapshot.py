"""Snapshots of a replica's local server at one applied log index: taken for a rejoining peer,
installed by a replica that lost its data or fell behind the log (consensus rejoin; see
docs/kvstores.md, "A restarted replica").

Rule 1: a snapshot covers exactly one applied index (pipe Rule 7): once the pipe's barrier is
        answered, the local server has executed the log up to that index and nothing after it,
        and later commands stay held back until the snapshot has been read on a separate
        connection. One snapshot at a time per replica; nobody blocks meanwhile.
Rule 2: redis: every key (``SCAN``), its ``DUMP`` and absolute expiry (``PEXPIRETIME``, unix
        ms), restored with ``RESTORE key <ms> <dump> ABSTTL REPLACE`` after ``FLUSHALL``: the
        same types, values and expiry instants, so the restored server's ``DEBUG DIGEST`` is
        the provider's.
Rule 3: memcached: the keys and absolute expiries (unix s) of ``lru_crawler metadump hash``
        and the flags and values of ``get``, restored with ``set`` after ``flush_all``. The
        hash-table walk, not ``all``: the LRU walk skips an item another thread holds at that
        instant (memcached's LRU maintainer keeps moving items between its LRUs, even with no
        client traffic), the hash walk skips only items being freed and blocks the table's
        expansion, so it sees every live item of a frozen server. CAS
        uniques cannot be carried over (memcached 1.6.18 has no way to set one: the meta
        protocol's ``E`` flag is refused), so each server numbers them itself; that is why the
        front end refuses ``cas`` (kvstores.mctext Rule 1). A shadow copy kept by the front end
        was not chosen: it would re-implement memcached's semantics (expiry, incr on text,
        append) beside the real server and double every replica's memory.
Rule 4: the bytes are ``MAGIC``, kind, index, record count, the records, then a CRC-32 of all
        before it; ``decode`` checks every part before anything changes (``SnapshotError``).
        An install sends the flush and the restores through the pipe (so they precede every
        log entry applied after them), waits for every reply, and only then moves the pipe to
        the snapshot's index. A failed install leaves the pipe's index as it was, and reads
        stay refused while the replica recovers; the next attempt flushes again.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kvstores import mctext, resp
from kvstores.backend import Backend
from kvstores.constants import (
    METADUMP_ATTEMPTS_MAX,
    METADUMP_RETRY_S,
    SIDE_CALL_TIMEOUT_S,
    SNAPSHOT_BARRIER_WAIT_S,
    SNAPSHOT_BATCH_KEYS,
    SNAPSHOT_INSTALL_WAIT_S,
)
from kvstores.pipe import LocalPipe, PipeFailed, Slot, SlotOwner

MAGIC = b"KVS1"
KIND_CODES = {"redis": 1, "memcached": 2}
_HEAD = struct.Struct("<4sBQI")  # magic, kind, index, records
_REDIS_RECORD = struct.Struct("<HqI")  # key bytes, expiry (unix ms, 0 = none), dump bytes
_MEMCACHED_RECORD = struct.Struct("<HIqI")  # key bytes, flags, expiry (unix s, 0 = none), value
_CRC = struct.Struct("<I")
_BUSY = (b"BUSY", b"ERROR", b"NOTSTARTED", b"BADCLASS", b"CLIENT_ERROR", b"SERVER_ERROR")

log = logging.getLogger("kvstores.snapshot")


class SnapshotError(ValueError):
    """A snapshot cannot be taken, decoded or installed; the message says why."""


@dataclass(frozen=True, slots=True)
class Record:
    key: bytes
    flags: int  # memcached flags; 0 for redis
    expire_at: int  # redis: unix ms; memcached: unix s; 0 = never
    value: bytes  # redis: the DUMP payload; memcached: the value


# -- bytes (Rule 4) -----------------------------------------------------------------------------

def encode(kind: str, index: int, records: list[Record]) -> bytes:
    """The snapshot bytes of ``records`` at ``index``. O(total bytes)."""
    assert kind in KIND_CODES
    assert index >= 0
    parts = [_HEAD.pack(MAGIC, KIND_CODES[kind], index, len(records))]
    for record in records:
        if kind == "redis":
            parts.append(_REDIS_RECORD.pack(len(record.key), record.expire_at, len(record.value)))
        else:
            parts.append(_MEMCACHED_RECORD.pack(len(record.key), record.flags, record.expire_at,
                                                len(record.value)))
        parts.append(record.key)
        parts.append(record.value)
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


def decode(kind: str, data: bytes) -> tuple[int, list[Record]]:
    """``(index, records)`` of snapshot bytes; ``SnapshotError`` if anything is off."""
    if len(data) < _HEAD.size + _CRC.size:
        raise SnapshotError(f"{len(data)} bytes are too short for a snapshot")
    body = memoryview(data)[: -_CRC.size]
    if _CRC.unpack_from(data, len(body))[0] != zlib.crc32(body):
        raise SnapshotError("checksum mismatch")
    magic, code, index, count = _HEAD.unpack_from(body)
    if magic != MAGIC:
        raise SnapshotError(f"not a kvstores snapshot (magic {bytes(magic)!r})")
    if code != KIND_CODES[kind]:
        raise SnapshotError(f"a snapshot of kind {code}, this server is {kind}")
    records: list[Record] = []
    pos = _HEAD.size
    head = _REDIS_RECORD if kind == "redis" else _MEMCACHED_RECORD
    for _ in range(count):
        if pos + head.size > len(body):
            raise SnapshotError(f"record {len(records)} is cut short")
        if kind == "redis":
            key_bytes, expire_at, value_bytes = _REDIS_RECORD.unpack_from(body, pos)
            flags = 0
        else:
            key_bytes, flags, expire_at, value_bytes = _MEMCACHED_RECORD.unpack_from(body, pos)
        pos += head.size
        end = pos + key_bytes + value_bytes
        if end > len(body):
            raise SnapshotError(f"record {len(records)} is cut short")
        records.append(Record(bytes(body[pos : pos + key_bytes]), flags, expire_at,
                              bytes(body[pos + key_bytes : end])))
        pos = end
    if pos != len(body):
        raise SnapshotError(f"{len(body) - pos} bytes after the last record")
    return index, records


# -- reading the local server ------------------------------------------------------------------

class _Side:
    """A blocking connection to the local server for a snapshot's reads (replies in order)."""

    def __init__(self, backend: Backend) -> None:
        self.sock = backend.connect()
        self.sock.settimeout(SIDE_CALL_TIMEOUT_S)
        self.buf = bytearray()

    def replies(self, request: bytes, count: int,
                framer: Callable[[bytearray, int], int]) -> list[bytes]:
        """Send ``request`` (``count`` pipelined commands); their ``count`` replies."""
        self.sock.sendall(request)
        replies: list[bytes] = []
        pos = 0
        while len(replies) < count:
            end = framer(self.buf, pos) if pos < len(self.buf) else -1
            if end >= 0:
                replies.append(bytes(self.buf[pos:end]))
                pos = end
                continue
            self._receive()
        del self.buf[:pos]
        return replies

    def values(self, request: bytes, count: int) -> list[object]:
        """Send ``request`` (``count`` pipelined redis commands); their decoded replies (an
        error reply raises ``SnapshotError``)."""
        self.sock.sendall(request)
        values: list[object] = []
        pos = 0
        while len(values) < count:
            try:
                value, pos = resp.decode_reply(self.buf, pos)
            except resp.IncompleteReply:
                self._receive()
                continue
            if isinstance(value, resp.ReplyError):
                raise SnapshotError(f"the local redis-server answered: {value}")
            values.append(value)
        del self.buf[:pos]
        return values

    def _receive(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise SnapshotError("the local server closed the snapshot connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def _batches(keys: list[bytes]) -> Iterator[list[bytes]]:
    for start in range(0, len(keys), SNAPSHOT_BATCH_KEYS):
        yield keys[start : start + SNAPSHOT_BATCH_KEYS]


def _redis_keys(side: _Side) -> list[bytes]:
    """Every key, by ``SCAN`` pages of ``SNAPSHOT_BATCH_KEYS`` (one ``KEYS *`` reply of a large
    data set would be decoded again at every partial read); a frozen server's full iteration
    returns every key at least once."""
    keys: set[bytes] = set()
    cursor = b"0"
    while True:
        page = side.values(resp.encode_command([b"SCAN", cursor, b"COUNT",
                                                b"%d" % SNAPSHOT_BATCH_KEYS]), 1)[0]
        assert isinstance(page, list) and len(page) == 2
        cursor, found = page
        assert isinstance(cursor, bytes) and isinstance(found, list)
        keys.update(key for key in found if isinstance(key, bytes))
        if cursor == b"0":
            return sorted(keys)


def read_redis(backend: Backend) -> list[Record]:
    """Every key of the local redis-server (Rule 2). The caller froze it (Rule 1)."""
    side = _Side(backend)
    try:
        records: list[Record] = []
        for batch in _batches(_redis_keys(side)):
            request = b"".join(resp.encode_command([b"DUMP", key])
                               + resp.encode_command([b"PEXPIRETIME", key]) for key in batch)
            values = side.values(request, 2 * len(batch))
            for key, dump, expire_at in zip(batch, values[::2], values[1::2], strict=True):
                if not isinstance(dump, bytes) or not isinstance(expire_at, int) \
                        or expire_at == -2:
                    continue  # expired while being read
                records.append(Record(key, 0, max(expire_at, 0), dump))
        return records
    finally:
        side.close()


def _metadump_end(buf: bytearray, pos: int) -> int:
    """The end of a metadump reply (lines end with LF, the final END with CRLF) or of the one
    line memcached answers instead (BUSY, ERROR...)."""
    if buf.startswith(_BUSY, pos):
        eol = buf.find(b"\r\n", pos)
        return -1 if eol < 0 else eol + 2
    if buf.endswith(b"END\r\n") and (len(buf) - pos == 5 or buf[-6:-5] == b"\n"):
        return len(buf)
    return -1


def _metadump(backend: Backend) -> bytes:
    for _ in range(METADUMP_ATTEMPTS_MAX):
        side = _Side(backend)
        try:
            dump = side.replies(b"lru_crawler metadump hash\r\n", 1, _metadump_end)[0]
        finally:
            side.close()
        if not dump.startswith(_BUSY):
            return dump
        time.sleep(METADUMP_RETRY_S)  # another metadump (a digest) is running
    raise SnapshotError(f"lru_crawler metadump hash stayed busy: {dump[:80]!r}")


def read_memcached(backend: Backend) -> list[Record]:
    """Every item of the local memcached (Rule 3). The caller froze it (Rule 1)."""
    expiries: dict[bytes, int] = {}
    for line in _metadump(backend).split(b"\n"):
        if not line.startswith(b"key="):
            continue
        fields = dict(field.split(b"=", 1) for field in line.split(b" ") if b"=" in field)
        expiries[urllib.parse.unquote_to_bytes(fields[b"key"])] = max(int(fields[b"exp"]), 0)
    side = _Side(backend)
    records: list[Record] = []
    try:
        for batch in _batches(sorted(expiries)):
            reply = side.replies(b"get " + b" ".join(batch) + b"\r\n", 1, lambda buf, pos:
                                 mctext.reply_end(buf, pos, mctext.Framing.BLOCK))[0]
            records += _values(reply, expiries)
    finally:
        side.close()
    return records


def _values(reply: bytes, expiries: dict[bytes, int]) -> list[Record]:
    """The records of one ``get`` reply (keys that expired meanwhile are simply missing)."""
    records: list[Record] = []
    pos = 0
    while reply.startswith(b"VALUE ", pos):
        eol = reply.index(b"\r\n", pos)
        _word, key, flags, size = reply[pos:eol].split(b" ")[:4]
        start = eol + 2
        records.append(Record(key, int(flags), expiries[key], reply[start : start + int(size)]))
        pos = start + int(size) + 2
    if not reply.startswith(b"END\r\n", pos):
        raise SnapshotError(f"the local memcached answered get with {reply[pos:pos + 80]!r}")
    return records


# -- taking and installing -----------------------------------------------------------------------

class _Waiter(SlotOwner):
    """Counts the replies to ``expected`` slots; keeps the first one that is not ``good``."""

    def __init__(self, expected: int, good: tuple[bytes, ...]) -> None:
        self.left = expected
        self.good = good
        self.bad: bytes | None = None
        self.done = threading.Event()
        if expected == 0:
            self.done.set()

    def slot_filled(self, slot: Slot) -> None:  # loop thread
        data = slot.data
        assert data is not None
        if data not in self.good and self.bad is None:
            self.bad = data
        self.left -= 1
        if self.left == 0:
            self.done.set()


class Snapshots:
    """Takes (for a peer) and installs (from a peer) snapshots of one replica's local server."""

    def __init__(self, kind: str, pipe: LocalPipe, backend: Backend) -> None:
        assert kind in KIND_CODES
        self.kind = kind
        self.pipe = pipe
        self.backend = backend
        self._one = threading.Lock()

    def take(self) -> tuple[int, bytes]:
        """``(index, bytes)``, consistent with each other (Rule 1). Any thread but the loop's."""
        redis = self.kind == "redis"
        barrier = resp.encode_command([b"PING"]) if redis else b"version\r\n"
        with self._one:
            waiter = _Waiter(1, (b"+PONG\r\n",) if redis else ())
            started = time.monotonic()
            try:
                index = self.pipe.begin_snapshot(barrier, mctext.Framing.LINE, Slot(waiter))
            except PipeFailed as exc:
                raise SnapshotError(f"the local server is unusable: {exc}") from None
            try:
                if not waiter.done.wait(SNAPSHOT_BARRIER_WAIT_S):
                    raise SnapshotError("the local server did not answer the barrier within "
                                        f"{SNAPSHOT_BARRIER_WAIT_S} s")
                if redis and waiter.bad is not None:
                    raise SnapshotError(f"the barrier was answered {waiter.bad[:80]!r}")
                records = read_redis(self.backend) if redis else read_memcached(self.backend)
            finally:
                self.pipe.end_snapshot()
        data = encode(self.kind, index, records)
        log.warning("took a snapshot of index %d: %d keys, %d bytes, local server held for "
                    "%.1f ms", index, len(records), len(data), (time.monotonic() - started) * 1e3)
        return index, data

    def install(self, index: int, data: bytes) -> None:
        """Replace the local server's data with the snapshot ``data`` of ``index`` (Rule 4).
        Runs on consensus's pump thread, under its delivery lock."""
        announced = index
        started = time.monotonic()
        index, records = decode(self.kind, data)
        if index != announced:
            raise SnapshotError(f"the snapshot covers index {index}, announced {announced}")
        commands = restore_commands(self.kind, records)
        redis = self.kind == "redis"
        waiter = _Waiter(len(commands), (b"+OK\r\n",) if redis else (b"OK\r\n", b"STORED\r\n"))
        for start in range(0, len(commands), SNAPSHOT_BATCH_KEYS):  # the pipe's buffer stays
            batch = commands[start : start + SNAPSHOT_BATCH_KEYS]  # bounded (pipe Rule 3)
            self.pipe.send_many(batch, [Slot(waiter) for _ in batch], mctext.Framing.LINE)
        wait_s = SNAPSHOT_INSTALL_WAIT_S + len(data) / 1e6  # plus 1 s per MB
        if not waiter.done.wait(wait_s):
            raise SnapshotError(f"the local server did not restore the snapshot within "
                                f"{wait_s:.0f} s ({waiter.left} replies missing)")
        if waiter.bad is not None:
            raise SnapshotError(f"the local server refused a restore: {waiter.bad[:120]!r}")
        self.pipe.installed(index)
        log.warning("installed a snapshot of index %d: %d keys, %d bytes in %.1f ms", index,
                    len(records), len(data), (time.monotonic() - started) * 1e3)


def restore_commands(kind: str, records: list[Record]) -> list[bytes]:
    """The commands that make an empty-or-not local server hold exactly ``records`` (Rules 2-3).
    """
    if kind == "redis":
        commands = [resp.encode_command([b"FLUSHALL"])]
        commands += [resp.encode_command([b"RESTORE", record.key, b"%d" % record.expire_at,
                                          record.value, b"ABSTTL", b"REPLACE"])
                     for record in records]
        return commands
    commands = [b"flush_all\r\n"]
    commands += [b"set %s %d %d %d\r\n%s\r\n" % (record.key, record.flags, record.expire_at,
                                                 len(record.value), record.value)
                 for record in records]
    return commands
