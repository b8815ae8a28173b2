"""The memcached text protocol (kvstores.mctext): routes, rewrites, framing."""

import pytest

from kvstores.mctext import Framing, LineError, parse_one, reply_end, written_keys
from kvstores.redis_rules import Route

NOW_S = 1_700_000_000


def parse(data: bytes):
    result = parse_one(data, 0, NOW_S)
    assert result is not None
    return result


def test_storage_with_noreply_and_relative_expiry():
    command, end = parse(b"set k 5 100 3 noreply\r\nabc\r\nget k\r\n")
    assert end == len(b"set k 5 100 3 noreply\r\nabc\r\n")
    assert command.route is Route.WRITE and command.noreply
    assert command.data == b"set k 5 %d 3\r\nabc\r\n" % (NOW_S + 100)
    absolute = NOW_S + 10**8
    command, _ = parse(b"append k 0 %d 1\r\nx\r\n" % absolute)
    assert command.data == b"append k 0 %d 1\r\nx\r\n" % absolute


def test_cas_is_the_front_ends_with_absolute_expiry_and_noreply_removed():
    command, end = parse(b"cas k 7 100 1 42 noreply\r\nx\r\nget k\r\n")
    assert command.route is Route.CAS and command.noreply
    assert command.data == b"cas k 7 %d 1 42\r\nx\r\n" % (NOW_S + 100)
    assert end == len(b"cas k 7 100 1 42 noreply\r\nx\r\n")
    with pytest.raises(LineError):
        parse(b"cas k 0 0 1 x42\r\nx\r\n")


@pytest.mark.parametrize("data, keys", [
    (b"set k 0 0 1\r\nx\r\n", [b"k"]), (b"delete k\r\n", [b"k"]), (b"incr k 1\r\n", [b"k"]),
    (b"gat 100 a b\r\n", [b"a", b"b"]), (b"flush_all\r\n", None)])
def test_written_keys(data, keys):
    assert written_keys(data) == keys


def test_incomplete_data_block_waits():
    assert parse_one(b"set k 0 0 3\r\nab", 0, NOW_S) is None
    assert parse_one(b"get k", 0, NOW_S) is None


@pytest.mark.parametrize("line", [b"set k 0 0\r\n", b"set k 0 0 x\r\n", b"incr k\r\n",
                                  b"get " + b"k" * 251 + b"\r\n"])
def test_bad_lines_raise(line):
    with pytest.raises(LineError):
        parse_one(line, 0, NOW_S)


def test_routes_of_other_commands():
    assert parse(b"get a b\r\n")[0].route is Route.READ
    assert parse(b"incr k 5\r\n")[0].data == b"incr k 5\r\n"
    assert parse(b"touch k 10\r\n")[0].data == b"touch k %d\r\n" % (NOW_S + 10)
    gat = parse(b"gat 10 a b\r\n")[0]
    assert gat.route is Route.WRITE and gat.framing is Framing.BLOCK
    assert parse(b"flush_all\r\n")[0].route is Route.WRITE
    assert parse(b"lru_crawler metadump all\r\n")[0].route is Route.SIDE
    command = parse(b"lru_crawler metadump hash\r\n")[0]
    assert command.route is Route.SIDE and command.data == b"lru_crawler metadump hash\r\n"
    assert parse(b"kvstores status\r\n")[0].route is Route.STATUS
    assert parse(b"kvstores forwarder\r\n")[0].route is Route.FORWARDER


@pytest.mark.parametrize("line, word", [(b"mg k v\r\n", b"'mg'"), (b"flush_all 5\r\n", b"delayed"),
                                        (b"verbosity 1\r\n", b"'verbosity'"),
                                        (b"frob\r\n", b"'frob'")])
def test_refused_commands_name_themselves(line, word):
    command = parse(line)[0]
    assert command.route is Route.REPLY
    assert command.data.startswith(b"CLIENT_ERROR kvstores: ")
    assert word in command.data


def test_reply_framing():
    values = b"VALUE a 0 3\r\nEND\r\nVALUE b 1 0\r\n\r\nEND\r\n"
    assert reply_end(values, 0, Framing.BLOCK) == len(b"VALUE a 0 3\r\nEND\r\nVALUE b 1 0\r\n\r\n"
                                                      b"END\r\n")
    assert reply_end(values[:20], 0, Framing.BLOCK) == -1
    assert reply_end(b"STORED\r\nEND\r\n", 0, Framing.LINE) == 8
    dump = b"key=a exp=-1\nkey=b exp=-1\nEND\r\n"
    assert reply_end(dump, 0, Framing.BLOCK) == len(dump)
    assert reply_end(b"SERVER_ERROR x\r\n", 0, Framing.BLOCK) == 16
