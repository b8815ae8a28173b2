"""RESP2 parsing and framing (kvstores.resp), including every split point of a stream."""

import random

import pytest

from kvstores.resp import ProtocolError, encode_command, parse_commands, reply_end


def test_multibulk_and_inline_commands_with_raw_bytes():
    data = encode_command([b"SET", b"k", b"v\r\nx"]) + b"GET k\r\n" + b"*0\r\n" + b"\r\n"
    commands, used = parse_commands(data, 100)
    assert used == len(data)
    assert [args for args, _ in commands] == [[b"SET", b"k", b"v\r\nx"], [b"GET", b"k"]]
    assert commands[0][1] == encode_command([b"SET", b"k", b"v\r\nx"])
    assert commands[1][1] == encode_command([b"GET", b"k"])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_split_point_yields_the_same_commands(seed):
    rng = random.Random(seed)
    print(f"seed {seed}")
    wanted = [[bytes(rng.choices(b"ab\r\n$*", k=rng.randrange(0, 6))) for _ in range(3)]
              for _ in range(6)]
    for args in wanted:
        args[0] = b"SET"
    stream = b"".join(encode_command(args) for args in wanted)
    for cut in range(len(stream)):
        first, used = parse_commands(stream[:cut], 1000)
        rest, used_rest = parse_commands(stream[used:], 1000)
        assert used + used_rest == len(stream)
        assert [a for a, _ in first + rest] == wanted


def test_limit_stops_early():
    stream = encode_command([b"PING"]) * 5
    commands, used = parse_commands(stream, 2)
    assert len(commands) == 2
    assert used == 2 * len(encode_command([b"PING"]))


@pytest.mark.parametrize("bad", [b"*x\r\n", b"*1\r\n:3\r\n", b"*1\r\n$-2\r\n",
                                 b"*1\r\n$1\r\nab\r\n"])
def test_malformed_commands_raise(bad):
    with pytest.raises(ProtocolError):
        parse_commands(bad, 10)


def test_reply_end_frames_every_type_and_waits_for_partial_replies():
    replies = [b"+OK\r\n", b"-ERR x\r\n", b":12\r\n", b"$-1\r\n", b"$3\r\na\r\n\r\n", b"*-1\r\n",
               b"*2\r\n$1\r\na\r\n*2\r\n:1\r\n$0\r\n\r\n", b"*0\r\n"]
    stream = b"".join(replies)
    pos = 0
    for reply in replies:
        for cut in range(pos, pos + len(reply)):
            assert reply_end(stream[:cut], pos) == -1
        end = reply_end(stream, pos)
        assert end == pos + len(reply)
        pos = end


def test_reply_end_frames_resp3_types_and_waits_for_partial_replies():
    """resp Rule 3: what a local redis-server sends a RESP3 client (pipe Rule 8)."""
    replies = [
        b"%2\r\n$1\r\nf\r\n$1\r\nv\r\n$1\r\ng\r\n*1\r\n,1.5\r\n",  # map, nested
        b"~2\r\n$1\r\nx\r\n:3\r\n",  # set
        b"_\r\n", b",-inf\r\n", b"#t\r\n", b"(3492890328409238509324850943850943825024385\r\n",
        b"=15\r\ntxt:Some string\r\n",  # verbatim string
        b"!21\r\nSYNTAX invalid syntax\r\n",  # blob error
        b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n",  # push
        b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*2\r\n:2039123\r\n:9543892\r\n",
        b"%0\r\n", b"~0\r\n", b"*2\r\n%1\r\n$1\r\nk\r\n_\r\n~1\r\n#f\r\n",
    ]
    stream = b"".join(replies)
    pos = 0
    for reply in replies:
        for cut in range(pos, pos + len(reply)):
            assert reply_end(stream[:cut], pos) == -1, (reply, cut - pos)
        end = reply_end(stream, pos)
        assert end == pos + len(reply), reply
        pos = end
