"""A subscriber's relay (kvstores.pubsub) against a scripted local server: replies in command
order, pushes passed on, the front end's own replies in their place, at every cut of the
server's bytes."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from kvstores import resp
from kvstores.pubsub import HELLO3, Relay, context_error, is_push
from kvstores.redis_rules import OK


def _array(*items: bytes) -> bytes:
    return b"*%d\r\n" % len(items) + b"".join(resp.bulk(item) for item in items)


SUB_A = b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"
SUB_B = b"*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n"
UNSUB_A = b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n"
UNSUB_B = b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n"
PONG = _array(b"pong", b"")
MESSAGE = _array(b"message", b"a", b"hello")


def test_messages_are_told_from_replies_in_both_protocols():
    assert is_push(MESSAGE, 0)
    assert is_push(b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nx\r\n", 0)
    assert is_push(_array(b"pmessage", b"p*", b"pa", b"x"), 0)
    assert not is_push(SUB_A, 0) and not is_push(PONG, 0) and not is_push(b"+PONG\r\n", 0)
    assert not is_push(b"*1\r\n:1\r\n", 0) and not is_push(b"-ERR x\r\n", 0)


class _Client:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def relay(self, data: bytes) -> None:
        assert not self.closed
        self.out += data

    def relay_closed(self) -> None:
        self.closed = True


async def _run(seed: int, resp3: bool) -> tuple[_Client, bytes, int]:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    client = _Client()
    relay = Relay(client, resp3, loop, lambda: ours)
    commands = [
        ([b"SUBSCRIBE", b"a", b"b"], SUB_A + SUB_B),
        ([b"GET", b"k"], None),  # refused by the front end, after the two confirmations
        ([b"PING"], PONG),
        ([b"UNSUBSCRIBE"], UNSUB_A + UNSUB_B),  # names none: one reply per channel held
        ([b"SET", b"k", b"v"], None),  # still refused after unsubscribing from everything
        ([b"UNSUBSCRIBE"], b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"),  # none held: one
        ([b"QUIT"], None),
    ]
    expected = bytearray()
    script = bytearray(b"+hello-3-map-stand-in\r\n" if resp3 else b"")
    rng = random.Random(seed)
    messages = 0
    for args, answer in commands:
        relay.command(args, resp.encode_command(args))
        if answer is None:
            expected += OK if args[0] == b"QUIT" else context_error(args[0])
            continue
        expected += answer
        if rng.random() < 0.5:  # a message published meanwhile: passed on as it comes
            script += MESSAGE
            messages += 1
        script += answer
    sent = bytearray()
    pos = 0
    while pos < len(script):  # the server's bytes, cut anywhere
        await asyncio.sleep(0)
        try:
            sent += theirs.recv(65536)
        except BlockingIOError:
            pass
        cut = min(len(script), pos + rng.randrange(1, 40))
        theirs.send(bytes(script[pos:cut]))
        pos = cut
    for _ in range(50):
        await asyncio.sleep(0.005)
        if client.closed:
            break
    theirs.close()
    return client, bytes(expected), messages


@pytest.mark.parametrize("resp3", [False, True], ids=["resp2", "resp3"])
def test_the_relay_keeps_command_order_at_every_cut(seed, resp3):
    for round_number in range(20):
        client, expected, messages = asyncio.run(_run(seed + round_number, resp3))
        assert client.out.count(MESSAGE) == messages
        assert client.out.replace(MESSAGE, b"") == expected
        assert client.closed  # QUIT closes, after every reply before it


def test_hello_3_is_sent_first_for_a_resp3_client():
    async def first_bytes() -> bytes:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        relay = Relay(_Client(), True, loop, lambda: ours)
        relay.command([b"SUBSCRIBE", b"a"], resp.encode_command([b"SUBSCRIBE", b"a"]))
        await asyncio.sleep(0.05)
        data = theirs.recv(65536)
        relay.close()
        theirs.close()
        return data

    assert asyncio.run(first_bytes()) == HELLO3 + resp.encode_command([b"SUBSCRIBE", b"a"])
