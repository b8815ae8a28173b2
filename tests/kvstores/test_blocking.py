"""Blocking pops' arguments and attempts (kvstores.blocking), without a server."""

import pytest

from kvstores.blocking import (
    MOVE_SCRIPT,
    POP_SCRIPT,
    ZPOP_SCRIPT,
    Blocking,
    is_null,
    parse,
    timed_out,
)
from kvstores.resp import encode_command


def test_attempts_pop_like_the_command_and_name_the_keys_they_wait_on():
    assert parse([b"blpop", b"a", b"b", b"1.5"]) == Blocking(
        encode_command([b"EVAL", POP_SCRIPT, b"2", b"a", b"b", b"LPOP"]), (b"a", b"b"), 1.5)
    assert parse([b"BRPOP", b"a", b"0"]).attempt.endswith(b"$4\r\nRPOP\r\n")
    assert parse([b"BLMPOP", b"0.5", b"2", b"a", b"b", b"LEFT", b"COUNT", b"3"]) == Blocking(
        encode_command([b"LMPOP", b"2", b"a", b"b", b"LEFT", b"COUNT", b"3"]), (b"a", b"b"), 0.5)
    assert parse([b"bzmpop", b"0", b"1", b"z", b"MAX"]).attempt == encode_command(
        [b"ZMPOP", b"1", b"z", b"MAX"])
    assert parse([b"bzpopmax", b"z", b"0"]).attempt == encode_command(
        [b"EVAL", ZPOP_SCRIPT, b"1", b"z", b"ZPOPMAX"])
    assert parse([b"BLMOVE", b"s", b"d", b"right", b"LEFT", b".5"]) == Blocking(
        encode_command([b"EVAL", MOVE_SCRIPT, b"2", b"s", b"d", b"RIGHT", b"LEFT"]),
        (b"s", b"d"), 0.5)
    assert parse([b"BRPOPLPUSH", b"s", b"d", b"1e1"]) == Blocking(
        encode_command([b"EVAL", MOVE_SCRIPT, b"2", b"s", b"d", b"RIGHT", b"LEFT"]),
        (b"s", b"d"), 10.0)


@pytest.mark.parametrize("args, reply", [
    ([b"BLPOP", b"k"], b"-ERR wrong number of arguments for 'blpop' command\r\n"),
    ([b"BLMOVE", b"a", b"b", b"LEFT", b"0"],
     b"-ERR wrong number of arguments for 'blmove' command\r\n"),
    ([b"BLPOP", b"k", b"x"], b"-ERR timeout is not a float or out of range\r\n"),
    ([b"BLPOP", b"k", b"inf"], b"-ERR timeout is not a float or out of range\r\n"),
    ([b"BLPOP", b"k", b"-0.5"], b"-ERR timeout is negative\r\n"),
    ([b"BLMOVE", b"a", b"b", b"UP", b"LEFT", b"0"], b"-ERR syntax error\r\n")])
def test_argument_errors_are_redis_servers(args, reply):
    assert parse(args) == reply


def test_null_attempts_and_timeouts_in_both_protocols():
    assert is_null(b"$-1\r\n") and is_null(b"_\r\n") and is_null(b"*-1\r\n")
    assert not is_null(b"*2\r\n$1\r\nk\r\n$1\r\nv\r\n") and not is_null(b"-WRONGTYPE x\r\n")
    assert timed_out(False) == b"*-1\r\n" and timed_out(True) == b"_\r\n"
