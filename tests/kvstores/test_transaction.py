"""Redis transactions as one block (kvstores.transaction), without servers."""

from kvstores.constants import COMMAND_BYTES_MAX, TRANSACTION_COMMANDS_MAX
from kvstores.redis_rules import Route, classify
from kvstores.resp import encode_command
from kvstores.transaction import EMPTY, EXEC, EXECABORT, MULTI, QUEUED, Transaction, replies_in

NOW_MS = 1_700_000_000_000


def queue(transaction: Transaction, *args: bytes) -> bytes:
    command = list(args)
    route, data = classify(command, encode_command(command), NOW_MS)
    return transaction.queue(route, data, command)


def test_a_transaction_with_a_write_is_one_block_proposed_with_rewritten_expiries():
    transaction = Transaction()
    assert queue(transaction, b"GET", b"a") == QUEUED
    assert queue(transaction, b"SET", b"a", b"1", b"EX", b"10") == QUEUED
    assert queue(transaction, b"PING") == QUEUED  # answered by the local server inside EXEC
    route, block = transaction.block()
    assert route is Route.WRITE
    assert block == (MULTI + encode_command([b"GET", b"a"])
                     + encode_command([b"SET", b"a", b"1", b"PXAT", b"%d" % (NOW_MS + 10_000)])
                     + encode_command([b"PING"]) + EXEC)
    assert replies_in(block) == 5  # +OK, three +QUEUED, EXEC's array


def test_a_read_only_transaction_is_a_read_and_an_empty_one_answers_an_empty_array():
    transaction = Transaction()
    queue(transaction, b"HGETALL", b"h")
    assert transaction.block()[0] is Route.READ
    assert Transaction().block() == (Route.REPLY, EMPTY)


def test_a_refused_command_aborts_the_transaction_at_exec():
    transaction = Transaction()
    assert queue(transaction, b"SET", b"a", b"1") == QUEUED
    assert queue(transaction, b"BZPOPMIN", b"z", b"0").startswith(
        b"-ERR kvstores: 'BZPOPMIN' is not allowed")
    assert queue(transaction, b"HELLO", b"3").startswith(b"-ERR kvstores: 'HELLO' is not allowed")
    assert queue(transaction, b"KVSTORES", b"STATUS").startswith(b"-ERR kvstores: 'KVSTORES'")
    assert transaction.block() == (Route.REPLY, EXECABORT)


def test_a_block_larger_than_a_log_entry_is_refused_naming_the_sizes():
    transaction = Transaction()
    value = b"v" * 1000
    for number in range(COMMAND_BYTES_MAX // 1000 + 1):
        assert queue(transaction, b"SET", b"k%d" % number, value) == QUEUED
    route, reply = transaction.block()
    assert route is Route.REPLY
    assert reply.startswith(b"-EXECABORT kvstores:") and b"%d" % COMMAND_BYTES_MAX in reply


def test_the_command_count_is_bounded():
    transaction = Transaction()
    for _ in range(TRANSACTION_COMMANDS_MAX):
        assert queue(transaction, b"INCR", b"n") == QUEUED
    assert queue(transaction, b"INCR", b"n").startswith(b"-ERR kvstores: a transaction holds")
    assert transaction.block() == (Route.REPLY, EXECABORT)


def test_replies_are_counted_by_parsing_so_argument_bytes_cannot_fool_the_count():
    """pipe Rule 9 relies on this count: a wrong one would misroute every later reply."""
    tricky = b"x\r\n*1\r\n$4\r\nEXEC\r\n*"
    block = MULTI + encode_command([b"SET", tricky, tricky]) + EXEC
    assert replies_in(block) == 3
    assert replies_in(encode_command([b"SET", b"MULTI", b"v"])) == 1
    assert replies_in(encode_command([b"GET", b"k"])) == 1
