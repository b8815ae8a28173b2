"""Redis transactions (``MULTI`` ... ``EXEC``) on the replicated server: one log entry each.

Rule 1: between ``MULTI`` and ``EXEC`` a connection's commands are classified as usual
        (``redis_rules``: relative expiries already made absolute) and queued here, each answered
        ``+QUEUED``; a command the front end refuses or cannot queue is answered with its error
        and makes ``EXEC`` answer ``-EXECABORT``, as redis-server does for errors at queueing
        time. ``DISCARD`` drops the queue. Nothing reaches the local server before ``EXEC``.
Rule 2: ``EXEC`` turns the queue into one command block, ``MULTI``, the queued commands,
        ``EXEC``, which travels as one command: proposed as one log entry when any queued
        command writes (every replica's local server runs it as one transaction, in log order,
        so they stay identical), sent to the local server as one read otherwise. The local
        server answers such a block with ``2 + n`` replies (``+OK``, ``+QUEUED`` each, then
        ``EXEC``'s array); ``replies_in`` tells the pipe so, and only the last reaches the
        client.
Rule 3: ``keys`` collects the keys the queued writes may change (``redis_rules.written_keys``;
        None: any key), for the watchers of other connections (``WATCH`` is the front end's,
        ``kvstores.frontend`` Rule 7; inside a transaction it is an error that does not abort
        it, as in redis). Transactions do not nest (a nested ``MULTI`` is an error that leaves
        the transaction open, as in redis); ``HELLO`` and the front end's own ``KVSTORES``
        commands are refused inside one (errors, so ``EXEC`` aborts); ``QUIT`` closes the
        connection as anywhere.
Rule 4: a block larger than a log entry holds is refused at ``EXEC`` with ``-EXECABORT`` naming
        the sizes; nothing of it is applied.
"""

from __future__ import annotations

from kvstores.constants import COMMAND_BYTES_MAX, TRANSACTION_COMMANDS_MAX
from kvstores.redis_rules import Route, written_keys
from kvstores.resp import encode_command, error, parse_commands, simple

MULTI = encode_command([b"MULTI"])
EXEC = encode_command([b"EXEC"])
QUEUED = simple("QUEUED")
EMPTY = b"*0\r\n"
EXECABORT = error("EXECABORT Transaction discarded because of previous errors.")


def replies_in(command: bytes) -> int:
    """How many replies the local server sends for ``command`` (Rule 2): a block starting with
    ``MULTI`` answers once per command in it (counted by parsing it: an argument may hold any
    bytes); anything else once."""
    if not command.startswith(MULTI):
        return 1
    commands, _used = parse_commands(command, TRANSACTION_COMMANDS_MAX + 2)
    return len(commands)


class Transaction:
    """The queue of one connection between ``MULTI`` and ``EXEC`` (see module rules)."""

    __slots__ = ("commands", "writes", "failed", "keys")

    def __init__(self) -> None:
        self.commands: list[bytes] = []
        self.writes = False
        self.failed = False
        self.keys: list[bytes] | None = []  # Rule 3

    def queue(self, route: Route, data: bytes, args: list[bytes]) -> bytes:
        """Rule 1: the reply to a command sent inside the transaction (``data`` is what
        ``classify`` returned for it)."""
        if route is Route.REPLY and data.startswith(b"-"):
            self.failed = True
            return data
        if route is Route.REPLY or route is Route.READ or route is Route.WRITE:
            if len(self.commands) >= TRANSACTION_COMMANDS_MAX:
                self.failed = True
                return error(f"ERR kvstores: a transaction holds at most "
                             f"{TRANSACTION_COMMANDS_MAX} commands")
            # A command the front end answers itself outside a transaction (PING, ECHO,
            # SELECT 0, CLIENT SETNAME) is queued as sent: the local server answers it the same.
            self.commands.append(data if route is not Route.REPLY else encode_command(args))
            if route is Route.WRITE:
                self.writes = True
                if self.keys is not None:
                    written = written_keys(args)
                    self.keys = None if written is None else self.keys + written
            return QUEUED
        self.failed = True
        name = args[0].decode(errors="replace").upper()
        return error(f"ERR kvstores: '{name}' is not allowed inside a transaction")

    def block(self) -> tuple[Route, bytes]:
        """Rule 2 and 4: at ``EXEC``, (WRITE or READ, the block) to send, or (REPLY, a reply)."""
        if self.failed:
            return Route.REPLY, EXECABORT
        if not self.commands:
            return Route.REPLY, EMPTY
        block = b"".join((MULTI, *self.commands, EXEC))
        if len(block) > COMMAND_BYTES_MAX:
            return Route.REPLY, error(
                f"EXECABORT kvstores: this transaction of {len(self.commands)} commands is "
                f"{len(block)} bytes; a log entry holds at most {COMMAND_BYTES_MAX}")
        return (Route.WRITE if self.writes else Route.READ), block
