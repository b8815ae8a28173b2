"""Which redis commands are replicated, served, rewritten or refused (kvstores.redis_rules)."""

import pytest

from kvstores.redis_rules import (
    READS,
    REFUSED,
    SPOP_SCRIPT,
    WRITES,
    Route,
    classify,
    hello,
    woken_keys,
    written_keys,
)
from kvstores.resp import encode_command, reply_end

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
    (b"FCALL", "functions"), (b"WAITAOF", "blocking"), (b"FUNCTION", "functions"),
    (b"CONFIG", "admin"),
    (b"RESET", "per-connection"), (b"AUTH", "per-connection")])
def test_nondeterministic_commands_are_refused_naming_the_command(name, reason):
    result, reply = route(name, b"x", b"1")
    assert result is Route.REPLY
    assert reply.startswith(b"-ERR kvstores: '" + name + b"'")
    assert reason.encode() in reply.lower()


def test_spop_becomes_the_deterministic_script():
    spop = route(b"spop", b"s", b"3")
    assert spop == (Route.WRITE, encode_command([b"EVAL", SPOP_SCRIPT, b"1", b"s", b"3"]))
    assert route(b"SPOP", b"s")[1] == encode_command([b"EVAL", SPOP_SCRIPT, b"1", b"s"])
    # What a forwarding follower sends is accepted as it is (SMEMBERS in it: sorted).
    args = [b"EVAL", SPOP_SCRIPT, b"1", b"s", b"3"]
    assert classify(args, spop[1], NOW_MS) == spop


def test_scripts_run_replicated_only_when_they_act_the_same_everywhere():
    """kvstores.scripts Rules 1-2."""
    lock_release = (b"if redis.call('get', KEYS[1]) == ARGV[1] then "
                    b"return redis.call(\"DEL\", KEYS[1]) end return 0")
    assert route(b"EVAL", lock_release, b"1", b"k", b"token")[0] is Route.WRITE
    for body, named in ((b"return redis.call('TIME')", b"TIME"),
                        (b"local m = redis.call('smembers', KEYS[1])", b"SMEMBERS"),
                        (b"return redis.pcall('SRANDMEMBER', KEYS[1])", b"SRANDMEMBER"),
                        (b"return redis.call(ARGV[1], KEYS[1])", b"string literal"),
                        (b"local c = redis.call; return c('GET', 'k')", b"string literal"),
                        (b"return redis.call('FLUSHALL') .. os.clock()", b"clock")):
        result, reply = route(b"EVAL", body, b"0")
        assert result is Route.REPLY and reply.startswith(b"-ERR kvstores: 'EVAL'"), body
        assert named in reply, (body, reply)
    reads = b"#!lua flags=no-writes\nreturn redis.call('TIME')"
    assert route(b"EVAL", reads, b"0")[0] is Route.READ
    assert route(b"EVAL_RO", b"return redis.call('TIME')", b"0")[0] is Route.READ
    assert route(b"EVAL", b"return 1")[1] == (
        b"-ERR wrong number of arguments for 'eval' command\r\n")
    assert route(b"evalsha", b"abc", b"0")[0] is Route.EVALSHA
    assert route(b"SCRIPT", b"load", b"return 1")[0] is Route.SCRIPT
    assert route(b"SCRIPT", b"KILL")[1].startswith(b"-ERR kvstores: 'SCRIPT KILL'")


@pytest.mark.parametrize("args, reply", [
    ((), b"-ERR wrong number of arguments for 'spop' command\r\n"),
    ((b"s", b"1", b"2"), b"-ERR syntax error\r\n"),
    ((b"s", b"-1"), b"-ERR value is out of range, must be positive\r\n"),
    ((b"s", b"+1"), b"-ERR value is out of range, must be positive\r\n"),
    ((b"s", b" 1"), b"-ERR value is out of range, must be positive\r\n"),
    ((b"s", b"01"), b"-ERR value is out of range, must be positive\r\n"),
    ((b"s", b"9223372036854775808"), b"-ERR value is out of range, must be positive\r\n")])
def test_spop_argument_errors_are_answered_as_redis_server_answers_them(args, reply):
    assert route(b"SPOP", *args) == (Route.REPLY, reply)


def test_sort_and_georadius_are_writes_only_when_they_store():
    assert route(b"SORT", b"l", b"ALPHA")[0] is Route.READ
    assert route(b"sort", b"l", b"BY", b"nosort", b"store", b"d")[0] is Route.WRITE
    assert route(b"GEORADIUS", b"g", b"15", b"37", b"200", b"km")[0] is Route.READ
    assert route(b"GEORADIUSBYMEMBER", b"g", b"m", b"9", b"km", b"STOREDIST", b"d")[0] \
        is Route.WRITE
    assert route(b"OBJECT", b"ENCODING", b"k")[0] is Route.READ
    assert route(b"MEMORY", b"usage", b"k")[0] is Route.READ
    assert route(b"MEMORY", b"PURGE")[1].startswith(b"-ERR kvstores: 'MEMORY PURGE'")


def test_pub_sub_routes():
    assert route(b"PUBLISH", b"c", b"m")[0] is Route.WRITE  # pubsub Rule 1: every replica's
    assert route(b"SPUBLISH", b"c", b"m")[0] is Route.WRITE
    assert route(b"psubscribe", b"p*")[0] is Route.SUBSCRIBE
    assert route(b"UNSUBSCRIBE")[0] is Route.READ  # subscribed to nothing: an answer only
    assert route(b"PUBSUB", b"NUMSUB", b"c")[0] is Route.READ


def test_xread_is_a_read_unless_it_blocks():
    assert route(b"XREAD", b"COUNT", b"2", b"STREAMS", b"block", b"0")[0] is Route.READ
    refused = route(b"xread", b"block", b"10", b"STREAMS", b"s", b"$")
    assert refused[0] is Route.REPLY and refused[1].startswith(b"-ERR kvstores: 'XREAD BLOCK'")


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
    assert route(b"GETEX", b"k", b"ex", b"2") == (Route.WRITE, encode_command(
        [b"GETEX", b"k", b"PXAT", b"%d" % (NOW_MS + 2000)]))
    for absolute in ((b"GETEX", b"k"), (b"GETEX", b"k", b"PERSIST"),
                     (b"GETEX", b"k", b"EXAT", b"99")):
        assert route(*absolute) == (Route.WRITE, encode_command(list(absolute)))


def test_xadd_ids_the_server_would_generate_take_the_leaders_clock():
    """Rule 2: '*' becomes '<leader ms>-*'; '<ms>-*' and explicit ids travel unchanged."""
    assert route(b"XADD", b"s", b"*", b"f", b"v") == (Route.WRITE, encode_command(
        [b"XADD", b"s", b"%d-*" % NOW_MS, b"f", b"v"]))
    assert route(b"XADD", b"s", b"MAXLEN", b"~", b"10", b"*", b"f", b"v")[1] == encode_command(
        [b"XADD", b"s", b"MAXLEN", b"~", b"10", b"%d-*" % NOW_MS, b"f", b"v"])
    for kept in ((b"XADD", b"s", b"MAXLEN", b"~", b"10", b"1-*", b"f", b"v"),
                 (b"XADD", b"s", b"NOMKSTREAM", b"5-1", b"f", b"v")):
        assert route(*kept) == (Route.WRITE, encode_command(list(kept)))


def test_config_get_is_a_local_read_and_the_rest_of_config_is_refused():
    assert route(b"CONFIG", b"GET", b"save") == (Route.READ, encode_command(
        [b"CONFIG", b"GET", b"save"]))
    for refused in ((b"CONFIG", b"SET", b"maxmemory", b"1"), (b"CONFIG", b"REWRITE"),
                    (b"CONFIG", b"GET")):
        assert route(*refused)[1].startswith(b"-ERR kvstores: 'CONFIG'"), refused


def test_local_answers_and_status():
    assert route(b"PING") == (Route.REPLY, b"+PONG\r\n")
    assert route(b"SELECT", b"0") == (Route.REPLY, b"+OK\r\n")
    assert route(b"SELECT", b"1")[1].startswith(b"-ERR kvstores: 'SELECT'")
    assert route(b"QUIT")[0] is Route.QUIT
    assert route(b"KVSTORES", b"STATUS")[0] is Route.STATUS
    assert route(b"KVSTORES", b"DIGEST") == (Route.READ, encode_command([b"DEBUG", b"DIGEST"]))
    assert route(b"KVSTORES", b"FORWARDER") == (Route.FORWARDER, b"+OK\r\n")


def test_hello_is_answered_in_the_protocol_it_selects_and_switches_the_connection():
    """redis_rules Rule 6: redis-py sends HELLO 3 on every connect (its default since 8.0)."""
    assert route(b"HELLO", b"3")[0] is Route.HELLO
    resp2_head = b"*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n"
    resp3_head = b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"
    for args, before, after, head in (
            ((b"HELLO",), 2, 2, resp2_head), ((b"HELLO",), 3, 3, resp3_head),
            ((b"HELLO", b"2"), 3, 2, resp2_head), ((b"HELLO", b"3"), 2, 3, resp3_head),
            ((b"hello", b"3", b"SETNAME", b"me"), 2, 3, resp3_head)):
        protocol, reply = hello(list(args), before)
        assert protocol == after, args
        assert reply.startswith(head), (args, reply)
        assert b"$5\r\nproto\r\n:%d\r\n" % after in reply
        assert reply.endswith(b"$7\r\nmodules\r\n*0\r\n")
        assert reply_end(reply, 0) == len(reply)
    for args, answer in (
            ((b"HELLO", b"4"), b"-NOPROTO unsupported protocol version\r\n"),
            ((b"HELLO", b"2", b"BOGUS"), b"-ERR Syntax error in HELLO option 'BOGUS'\r\n")):
        assert hello(list(args), 3) == (3, answer)  # an error keeps the protocol
    assert hello([b"HELLO", b"x"], 2)[1].startswith(b"-ERR Protocol version")
    protocol, refused = hello([b"HELLO", b"3", b"AUTH", b"u", b"p"], 2)
    assert protocol == 2 and refused.startswith(b"-ERR kvstores: 'HELLO AUTH'")


def test_transaction_and_watch_statements_are_routed_to_the_connection():
    """redis_rules Rules 3 and 7, kvstores.transaction."""
    assert route(b"MULTI")[0] is Route.MULTI
    assert route(b"exec")[0] is Route.EXEC
    assert route(b"DISCARD")[0] is Route.DISCARD
    assert route(b"MULTI", b"x")[1] == b"-ERR wrong number of arguments for 'multi' command\r\n"
    assert route(b"UNWATCH")[0] is Route.WATCH
    assert route(b"watch", b"k", b"l")[0] is Route.WATCH
    assert route(b"WATCH")[1] == b"-ERR wrong number of arguments for 'watch' command\r\n"


@pytest.mark.parametrize("args, keys", [
    ((b"SET", b"k", b"v", b"EX", b"1"), [b"k"]),
    ((b"mset", b"a", b"1", b"b", b"2"), [b"a", b"b"]),
    ((b"DEL", b"a", b"b", b"c"), [b"a", b"b", b"c"]),
    ((b"RENAME", b"a", b"b"), [b"a", b"b"]),
    ((b"SUNIONSTORE", b"d", b"s1", b"s2"), [b"d"]),  # the sources are only read
    ((b"BITOP", b"AND", b"d", b"x", b"y"), [b"d"]),
    ((b"COPY", b"src", b"dst"), [b"dst"]),
    ((b"LMPOP", b"2", b"l1", b"l2", b"LEFT"), [b"l1", b"l2"]),
    ((b"SORT", b"l", b"ALPHA", b"STORE", b"d"), [b"d"]),
    ((b"EVAL", SPOP_SCRIPT, b"1", b"s", b"2"), [b"s"]),
    ((b"PUBLISH", b"c", b"m"), []),
    ((b"FLUSHALL",), None),  # every key
    ((b"LMPOP", b"x", b"l1"), None),  # not understood: every key
])
def test_written_keys_name_what_a_write_may_change(args, keys):
    assert written_keys(list(args)) == keys


def test_a_script_wakes_only_its_declared_keys_but_counts_for_every_key():
    args = [b"EVAL", b"return redis.call('RPUSH', KEYS[1], 'x')", b"1", b"q", b"arg"]
    assert written_keys(args) is None and woken_keys(args, None) == [b"q"]
    assert woken_keys([b"FLUSHALL"], None) is None
    assert woken_keys([b"RPUSH", b"q", b"x"], [b"q"]) == [b"q"]


def test_every_write_has_a_written_keys_rule():
    everything = {b"FLUSHALL", b"FLUSHDB"}
    for name in WRITES - everything:
        args = [name, b"1", b"k", b"MIN"] if name in (b"LMPOP", b"ZMPOP") else [name, b"k", b"v"]
        assert written_keys(args) is not None, name


def test_client_setname_and_setinfo_are_accepted_other_client_commands_refused():
    """What client libraries send on connect (redis-py: CLIENT SETINFO, client_name=...)."""
    assert route(b"CLIENT", b"SETNAME", b"me") == (Route.REPLY, b"+OK\r\n")
    assert route(b"client", b"setinfo", b"LIB-NAME", b"redis-py") == (Route.REPLY, b"+OK\r\n")
    for args in ((b"CLIENT", b"KILL", b"ID", b"3"), (b"CLIENT", b"SETNAME"), (b"CLIENT",),
                 (b"CLIENT", b"TRACKING", b"on")):
        kind, reply = route(*args)
        assert kind is Route.REPLY and reply.startswith(b"-ERR kvstores: 'CLIENT"), args


def test_tables_are_disjoint():
    assert not WRITES & READS
    assert not set(REFUSED) & (WRITES | READS)
