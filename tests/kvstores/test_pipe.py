"""The ordered pipe (kvstores.pipe) against a fake local server on a socketpair: routing by
target, tags and claims, log gaps, proven-lost entries, no-ops."""

import asyncio
import socket

import pytest

from kvstores.pipe import NOOP_TAG, LocalPipe, PipeFailed, Slot, SlotOwner, tag_entry
from kvstores.resp import reply_end
from kvstores.transaction import EXEC, MULTI, replies_in


class Owner(SlotOwner):
    def __init__(self):
        self.filled = []

    def slot_filled(self, slot):
        self.filled.append(slot.data)


def make_pipe(loop, resp3_wrap=None):
    ours, server = socket.socketpair()
    failures = []
    pipe = LocalPipe(ours, loop, lambda buf, pos, kind: reply_end(buf, pos), lambda data: 0,
                     failures.append, b"-ERR gone\r\n", resp3_wrap)
    return pipe, server, failures


async def settle():
    for _ in range(20):
        await asyncio.sleep(0.005)


def test_replies_follow_targets_and_tags_in_order():
    async def scenario():
        loop = asyncio.get_running_loop()
        pipe, server, _ = make_pipe(loop)
        owner = Owner()
        read = Slot(owner)
        claimed = Slot(owner)
        pipe.claim(tag=(1 << 48) + 5, slot=claimed)
        pipe.send(b"*1\r\n$3\r\nGET\r\n", read)
        pipe.apply(1, tag_entry((1 << 48) + 4, b"SET-A"))  # nobody claimed: dropped
        pipe.apply(2, tag_entry((1 << 48) + 5, b"SET-B"))
        pipe.apply(3, tag_entry(NOOP_TAG, b""))  # a no-op reaches no server
        await settle()
        assert server.recv(100) == b"*1\r\n$3\r\nGET\r\nSET-ASET-B"
        server.sendall(b"$1\r\nx\r\n+A\r\n+B\r\n")
        await settle()
        assert owner.filled == [b"$1\r\nx\r\n", b"+B\r\n"]
        assert pipe.applied_index == 3
        pipe.close()
        server.close()

    asyncio.run(scenario())


def test_a_gap_in_the_log_stops_the_pipe():
    async def scenario():
        loop = asyncio.get_running_loop()
        pipe, server, failures = make_pipe(loop)
        with pytest.raises(PipeFailed):
            pipe.apply(2, tag_entry(7, b"X"))
        await settle()
        assert failures and "arrived after 0" in failures[0]
        pipe.close()
        server.close()

    asyncio.run(scenario())


def test_an_index_taken_by_another_entry_proves_the_claimed_one_lost():
    async def scenario():
        loop = asyncio.get_running_loop()
        pipe, server, _ = make_pipe(loop)
        owner = Owner()
        ours, kept = (2 << 48) + 1, (2 << 48) + 2
        pipe.claim(ours, Slot(owner))
        pipe.claim(kept, Slot(owner))
        pipe.expect(1, [ours, kept], b"-TRYAGAIN lost\r\n")
        pipe.apply(1, tag_entry(NOOP_TAG, b""))  # the new leader's no-op took index 1
        pipe.apply(2, tag_entry(kept, b"CMD"))  # index 2 holds our second entry after all
        await settle()
        assert owner.filled == [b"-TRYAGAIN lost\r\n"]
        server.sendall(b"+OK\r\n")
        await settle()
        assert owner.filled == [b"-TRYAGAIN lost\r\n", b"+OK\r\n"]
        pipe.close()
        server.close()

    asyncio.run(scenario())


def test_a_snapshot_freezes_the_server_at_the_applied_index():
    """pipe Rule 7: the barrier follows exactly the entries up to the returned index; every later
    command (entries, reads) waits until end_snapshot, then leaves in order."""
    async def scenario():
        loop = asyncio.get_running_loop()
        pipe, server, _ = make_pipe(loop)
        owner = Owner()
        pipe.apply(1, tag_entry(7, b"E1"))
        pipe.apply(2, tag_entry(8, b"E2"))
        index = await loop.run_in_executor(
            None, pipe.begin_snapshot, b"PING", 0, Slot(owner))  # from another thread
        assert index == 2
        pipe.apply(3, tag_entry(9, b"E3"))  # the loop thread (a leader) does not block
        pipe.send(b"READ", Slot(owner))
        await settle()
        assert server.recv(100) == b"E1E2PING"
        server.sendall(b"+1\r\n+2\r\n+PONG\r\n")
        await settle()
        assert owner.filled == [b"+PONG\r\n"]
        await loop.run_in_executor(None, pipe.end_snapshot)
        await settle()
        assert server.recv(100) == b"E3READ"
        server.sendall(b"+3\r\n$1\r\nr\r\n")
        await settle()
        assert owner.filled == [b"+PONG\r\n", b"$1\r\nr\r\n"]
        assert pipe.applied_index == 3
        pipe.close()
        server.close()

    asyncio.run(scenario())


def test_an_installed_snapshot_moves_the_log_to_its_index():
    async def scenario():
        loop = asyncio.get_running_loop()
        pipe, server, failures = make_pipe(loop)
        pipe.apply(1, tag_entry(7, b"E1"))
        pipe.installed(40)
        pipe.apply(41, tag_entry(8, b"E41"))
        with pytest.raises(PipeFailed):
            pipe.apply(43, tag_entry(9, b"E43"))
        await settle()
        assert failures and "43 arrived after 41" in failures[0]
        pipe.close()
        server.close()

    asyncio.run(scenario())


def test_the_protocol_switches_only_where_a_read_reply_needs_the_other_one():
    """pipe Rule 8: a RESP3 client's read, and an applied entry a RESP3 slot claimed, run after
    HELLO 3; a RESP2 client's after HELLO 2; an entry nobody claimed in whatever is on. The
    HELLO replies (a RESP3 map, a RESP2 array) are framed and dropped."""
    async def scenario():
        loop = asyncio.get_running_loop()
        pipe, server, _ = make_pipe(loop, (b"<3>", b"<2>"))
        owner = Owner()
        resp3_write = Slot(owner, resp3=True)
        pipe.claim(tag=(1 << 48) + 7, slot=resp3_write)
        pipe.send(b"R2", Slot(owner))
        pipe.send(b"R3", Slot(owner, resp3=True))
        pipe.apply(1, tag_entry((1 << 48) + 6, b"W-UNCLAIMED"))
        pipe.apply(2, tag_entry((1 << 48) + 7, b"W3"))
        pipe.send(b"R3", Slot(owner, resp3=True))
        pipe.send(b"R2", Slot(owner))
        pipe.send(b"R2", Slot(owner))
        await settle()
        assert server.recv(200) == b"R2<3>R3W-UNCLAIMEDW3R3<2>R2R2"
        hello3, hello2 = b"%1\r\n$5\r\nproto\r\n:3\r\n", b"*2\r\n$5\r\nproto\r\n:2\r\n"
        server.sendall(b"$1\r\na\r\n" + hello3 + b"_\r\n" + b"+OK\r\n" + b",2.5\r\n"
                       + b"%0\r\n" + hello2 + b"*0\r\n" + b"$-1\r\n")
        await settle()
        assert owner.filled == [b"$1\r\na\r\n", b"_\r\n", b",2.5\r\n", b"%0\r\n",
                                b"*0\r\n", b"$-1\r\n"]
        assert pipe.sent_count == 7 and pipe.failed is None
        pipe.close()
        server.close()

    asyncio.run(scenario())


def test_a_snapshots_restores_run_in_resp2():
    """pipe Rule 8: send_many (a snapshot's restores, another thread) switches back first."""
    async def scenario():
        loop = asyncio.get_running_loop()
        pipe, server, _ = make_pipe(loop, (b"<3>", b"<2>"))
        owner = Owner()
        pipe.send(b"R3", Slot(owner, resp3=True))
        await loop.run_in_executor(None, pipe.send_many, [b"A", b"B"], [Slot(owner), Slot(owner)])
        await settle()
        assert server.recv(200) == b"<3>R3<2>AB"
        pipe.close()
        server.close()

    asyncio.run(scenario())


def test_without_a_wrap_every_command_goes_plainly():
    """A memcached pipe has no RESP3 wrap: the resp3 mark means nothing there."""
    async def scenario():
        loop = asyncio.get_running_loop()
        pipe, server, _ = make_pipe(loop)
        pipe.send(b"R3", Slot(Owner(), resp3=True))
        await settle()
        assert server.recv(100) == b"R3"
        pipe.close()
        server.close()

    asyncio.run(scenario())


def test_a_command_answered_several_times_routes_only_its_last_reply():
    """pipe Rule 9: a transaction block (MULTI, n commands, EXEC) gets n + 2 replies."""
    async def scenario():
        loop = asyncio.get_running_loop()
        ours, server = socket.socketpair()
        pipe = LocalPipe(ours, loop, lambda buf, pos, kind: reply_end(buf, pos), lambda data: 0,
                         lambda reason: None, b"-ERR gone\r\n", (b"<3>", b"<2>"),
                         (MULTI, replies_in))
        owner = Owner()
        block = MULTI + b"*1\r\n$4\r\nPING\r\n" + EXEC
        claimed = Slot(owner)
        pipe.claim(tag=(1 << 48) + 1, slot=claimed)
        pipe.send(block, Slot(owner))
        pipe.apply(1, tag_entry((1 << 48) + 1, block))
        pipe.send(b"*1\r\n$4\r\nPING\r\n", Slot(owner))
        await settle()
        assert server.recv(200) == block + block + b"*1\r\n$4\r\nPING\r\n"
        answers = b"+OK\r\n+QUEUED\r\n*1\r\n+PONG\r\n"
        server.sendall(answers + answers + b"+PONG\r\n")
        await settle()
        assert owner.filled == [b"*1\r\n+PONG\r\n", b"*1\r\n+PONG\r\n", b"+PONG\r\n"]
        pipe.close()
        server.close()

    asyncio.run(scenario())
