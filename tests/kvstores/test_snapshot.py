"""Snapshots of a local server (kvstores.snapshot): the byte format, and real redis-server /
memcached processes read and restored (same digest, same items, absolute expiries kept)."""

import hashlib
import random
import time

import pytest

from kvstores import backend, snapshot
from kvstores.resp import decode_reply, encode_command, reply_end
from kvstores.snapshot import Record, SnapshotError, decode, encode, restore_commands
from tests.kvstores.conftest import need


def random_records(rng: random.Random, count: int) -> list[Record]:
    return [Record(rng.randbytes(rng.randrange(1, 40)), rng.randrange(1 << 32),
                   rng.choice([0, rng.randrange(1, 1 << 40)]), rng.randbytes(rng.randrange(0, 300)))
            for _ in range(count)]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("kind", ["redis", "memcached"])
def test_bytes_round_trip(kind, seed):
    print(f"seed {seed}")
    rng = random.Random(seed)
    records = random_records(rng, rng.randrange(0, 50))
    if kind == "redis":
        records = [Record(r.key, 0, r.expire_at, r.value) for r in records]
    index = rng.randrange(1 << 40)
    assert decode(kind, encode(kind, index, records)) == (index, records)


@pytest.mark.parametrize("seed", range(5))
def test_every_damage_is_refused(seed):
    print(f"seed {seed}")
    rng = random.Random(seed)
    data = encode("memcached", 9, random_records(rng, 10))
    position = rng.randrange(len(data))
    damaged = data[:position] + bytes([data[position] ^ 0x40]) + data[position + 1 :]
    for bad in (damaged, data[:position], data + b"x"):
        with pytest.raises(SnapshotError):
            decode("memcached", bad)
    with pytest.raises(SnapshotError, match="kind"):
        decode("redis", data)


def call(server: backend.Backend, *args: bytes) -> object:
    reply = server.call(encode_command(list(args)), lambda buf: reply_end(buf, 0))
    return decode_reply(reply, 0)[0]


def run_all(server: backend.Backend, commands: list[bytes], framer) -> list[bytes]:
    return [server.call(command, framer) for command in commands]


def test_redis_dump_and_restore_keep_types_values_and_expiry_instants():
    need("redis-server")
    source = backend.start("redis", "t-snapshot", 1)
    target = backend.start("redis", "t-snapshot", 2)
    try:
        expire_at_ms = int(time.time() * 1000) + 3_600_000
        call(source, b"SET", b"s", b"v", b"PXAT", b"%d" % expire_at_ms)
        call(source, b"RPUSH", b"l", b"a", b"b")
        call(source, b"HSET", b"h", b"f", b"1")
        call(source, b"ZADD", b"z", b"1.5", b"m")
        call(source, b"SADD", b"set", b"x", b"y")
        call(source, b"XADD", b"stream", b"1-1", b"f", b"v")
        call(target, b"SET", b"stale", b"gone after the restore")
        records = snapshot.read_redis(source)
        assert {r.key for r in records} == {b"s", b"l", b"h", b"z", b"set", b"stream"}
        assert next(r for r in records if r.key == b"s").expire_at == expire_at_ms
        framer = lambda buf: reply_end(buf, 0)  # noqa: E731
        replies = run_all(target, restore_commands("redis", records), framer)
        assert set(replies) == {b"+OK\r\n"}
        assert call(target, b"DEBUG", b"DIGEST") == call(source, b"DEBUG", b"DIGEST")
        assert call(target, b"PEXPIRETIME", b"s") == expire_at_ms
        assert call(target, b"EXISTS", b"stale") == 0
    finally:
        source.stop()
        target.stop()


def memcached_items(server: backend.Backend) -> str:
    records = snapshot.read_memcached(server)
    return hashlib.sha256(repr(sorted((r.key, r.flags, r.expire_at, r.value)
                                      for r in records)).encode()).hexdigest()


def test_memcached_items_restore_with_flags_values_and_absolute_expiry():
    need("memcached")
    source = backend.start("memcached", "t-snapshot", 1)
    target = backend.start("memcached", "t-snapshot", 2)
    line = lambda buf: -1 if b"\r\n" not in buf else buf.index(b"\r\n") + 2  # noqa: E731
    try:
        expire_at = int(time.time()) + 3600
        source.call(b"set a 5 0 3\r\nabc\r\n", line)
        source.call(b"set b 7 %d 2\r\nxy\r\n" % expire_at, line)
        source.call(b"set n 0 0 2\r\n41\r\n", line)
        source.call(b"incr n 1\r\n", line)
        target.call(b"set stale 0 0 1\r\nz\r\n", line)
        records = snapshot.read_memcached(source)
        by_key = {r.key: r for r in records}
        assert by_key[b"a"] == Record(b"a", 5, 0, b"abc")
        assert by_key[b"b"] == Record(b"b", 7, expire_at, b"xy")
        assert by_key[b"n"].value == b"42"
        replies = run_all(target, restore_commands("memcached", records), line)
        assert set(replies) <= {b"OK\r\n", b"STORED\r\n"}
        assert memcached_items(target) == memcached_items(source)
    finally:
        source.stop()
        target.stop()
