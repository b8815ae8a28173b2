"""Which redis commands are replicated, served, rewritten or refused (kvstores.redis_rules)."""

import pytest

from kvstores.redis_rules import READS, REFUSED, WRITES, Route, classify
from kvstores.resp import encode_command

NOW_MS = 1_700_000_000_000


def route(*args: bytes) -> tuple[Route, bytes]:
    command = list(args)
    return classify(command, encode_command(command), NOW_MS)


def test_plain_writes_and_reads_travel_unchanged_in_any_case():
    raw = encode_command([b"set", b"k", b"v"])
    assert classify([b"set", b"k", b"v"], raw, NOW_MS) == (Route.WRITE, raw)
    assert route(b"INCR", b"k")[0] is Route.WRITE
    assert route(b"GET", b"k")[0] is Route.READ
    assert route(b"hgetall", b"k")[0] is Route.READ


@pytest.mark.parametrize("name, reason", [
    (b"SPOP", "random"), (b"BLPOP", "blocking"), (b"EVAL", "scripts"), (b"CONFIG", "admin"),
    (b"MULTI", "per-connection"), (b"GETEX", "expiry"), (b"SUBSCRIBE", "per-connection")])
def test_nondeterministic_commands_are_refused_naming_the_command(name, reason):
    result, reply = route(name, b"x", b"1")
    assert result is Route.REPLY
    assert reply.startswith(b"-ERR kvstores: '" + name + b"'")
    assert reason.encode() in reply.lower()


def test_unknown_command_is_refused_by_name():
    assert route(b"FROBNICATE")[1] == b"-ERR kvstores: unknown or unsupported command " \
                                      b"'FROBNICATE'\r\n"


def test_relative_expiries_become_absolute():
    assert route(b"SET", b"k", b"v", b"EX", b"10")[1] == encode_command(
        [b"SET", b"k", b"v", b"PXAT", b"%d" % (NOW_MS + 10_000)])
    assert route(b"SET", b"k", b"v", b"NX", b"px", b"5")[1] == encode_command(
        [b"SET", b"k", b"v", b"NX", b"PXAT", b"%d" % (NOW_MS + 5)])
    assert route(b"EXPIRE", b"k", b"3", b"NX")[1] == encode_command(
        [b"PEXPIREAT", b"k", b"%d" % (NOW_MS + 3000), b"NX"])
    assert route(b"PSETEX", b"k", b"7", b"v")[1] == encode_command(
        [b"SET", b"k", b"v", b"PXAT", b"%d" % (NOW_MS + 7)])
    # An invalid amount travels unchanged: every replica's redis refuses it the same way.
    assert route(b"SET", b"k", b"v", b"EX", b"zero")[1] == encode_command(
        [b"SET", b"k", b"v", b"EX", b"zero"])


def test_xadd_needs_an_explicit_id():
    assert route(b"XADD", b"s", b"*", b"f", b"v")[0] is Route.REPLY
    assert route(b"XADD", b"s", b"MAXLEN", b"~", b"10", b"1-*", b"f", b"v")[0] is Route.REPLY
    assert route(b"XADD", b"s", b"NOMKSTREAM", b"5-1", b"f", b"v")[0] is Route.WRITE


def test_local_answers_and_status():
    assert route(b"PING") == (Route.REPLY, b"+PONG\r\n")
    assert route(b"SELECT", b"0") == (Route.REPLY, b"+OK\r\n")
    assert route(b"SELECT", b"1")[1].startswith(b"-ERR kvstores: 'SELECT'")
    assert route(b"QUIT")[0] is Route.QUIT
    assert route(b"KVSTORES", b"STATUS")[0] is Route.STATUS
    assert route(b"KVSTORES", b"DIGEST") == (Route.READ, encode_command([b"DEBUG", b"DIGEST"]))
    assert route(b"KVSTORES", b"FORWARDER") == (Route.FORWARDER, b"+OK\r\n")


def test_hello_answers_resp2_and_refuses_resp3_saying_how_to_connect():
    """redis_rules Rule 6: redis-py sends HELLO on every connect (protocol 3 since 8.0)."""
    for args in ((b"HELLO",), (b"HELLO", b"2"), (b"hello", b"2", b"SETNAME", b"me")):
        kind, reply = route(*args)
        assert kind is Route.REPLY
        assert reply.startswith(b"*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n")
        assert b"$5\r\nproto\r\n:2\r\n" in reply and reply.endswith(b"$7\r\nmodules\r\n*0\r\n")
    refused = route(b"HELLO", b"3")[1]
    assert refused.startswith(b"-NOPROTO kvstores:") and b"protocol=2" in refused
    assert route(b"HELLO", b"4")[1] == b"-NOPROTO unsupported protocol version\r\n"
    assert route(b"HELLO", b"x")[1].startswith(b"-ERR Protocol version")
    assert route(b"HELLO", b"2", b"AUTH", b"u", b"p")[1].startswith(b"-ERR kvstores: 'HELLO AUTH'")
    assert route(b"HELLO", b"2", b"BOGUS")[1] == b"-ERR Syntax error in HELLO option 'BOGUS'\r\n"


def test_tables_are_disjoint():
    assert not WRITES & READS
    assert not set(REFUSED) & (WRITES | READS)
