"""kvstores.scripts: which scripts may run replicated, and the front end's script cache."""

from kvstores.scripts import NOSCRIPT, ScriptCache, check, reads_only, sha1_hex

SAFE = frozenset((b"GET", b"SET", b"DEL", b"PEXPIRE", b"PTTL", b"INCR", b"HSET"))


def test_literal_deterministic_calls_pass_and_the_refusal_names_the_rest():
    assert check(b"return redis.call('GET', KEYS[1])", SAFE) == ""
    assert check(b'redis.pcall("pexpire", KEYS[1], ARGV[1]) return redis.call("PTTL", KEYS[1])',
                 SAFE) == ""
    assert check(b"return 1 + 2", SAFE) == ""  # no call at all
    assert "TIME" in check(b"return redis.call('time')", SAFE)
    assert "HGETALL" in check(b"return redis.call('HGETALL', KEYS[1])", SAFE)
    assert "not replicated" in check(b"return redis.call('BGSAVE')", SAFE)
    assert "literal" in check(b"local name = 'GET' return redis.call(name, 'k')", SAFE)
    assert "literal" in check(b"return pcall(redis.call, 'TIME')", SAFE)
    assert check(b"return redis['call']('TIME')", SAFE) != ""
    assert check(b"return loadstring('return 1')()", SAFE) != ""


def test_no_writes_shebang():
    assert reads_only(b"#!lua flags=no-writes,allow-stale\nreturn 1")
    assert not reads_only(b"#!lua\nreturn 1")
    assert not reads_only(b"return 1 -- flags=no-writes")


def test_the_cache_answers_by_sha1_keeps_the_newest_and_flushes():
    cache = ScriptCache(limit=2)
    first = cache.add(b"return 1")
    assert first == b"e0e1f9fabfc9d4800c877a703b823ac0578ff8db"  # redis-server's SCRIPT LOAD
    assert cache.get(first.upper()) == b"return 1"
    cache.add(b"return 2")
    cache.add(b"return 1")  # used again: the newest
    cache.add(b"return 3")  # over the limit: "return 2" goes
    assert cache.get(sha1_hex(b"return 2")) is None and cache.get(first) == b"return 1"
    assert cache.exists([first, b"0" * 40]) == b"*2\r\n:1\r\n:0\r\n"
    cache.flush()
    assert cache.get(first) is None
    assert NOSCRIPT.startswith(b"-NOSCRIPT ")
