"""Every memory bound of an exchange server, in one place (issue 13), with its measured cost.

Rule 1: each bound is a named constant here; modules import it from here, and the error raised
        when it is reached names the constant (``limit_message``). A request that meets a bound
        is refused with RESOURCE_EXHAUSTED (gRPC) and changes no book.
Rule 2: bounds that decide the replicated state (resting orders per client and in total, the
        instrument list's length) are applied by the replicated state machine
        (exchange.state_machine), so every replica decides identically; the others (in-flight
        requests, sessions, market-data subscribers, message sizes) are per-server and checked
        by the server that receives the request.
Rule 3: the relations between bounds are asserted at import: a client can never have more
        requests in flight than the dedup table keeps replies for it, and the instrument list
        fits one consensus entry.

Memory at each bound is measured by ``scripts/limits_memory.py`` (figures in docs/exchange.md,
"Limits").
"""

from __future__ import annotations

from exchange.config import PAYLOAD_SIZE_MAX_BYTES
from exchange.dedup import DEDUP_SEQS_PER_CLIENT_MAX
from orderbook.constants import SYMBOL_BYTES_MAX

# -- replicated (decided by the state machine, identical on every replica) --------------------
RESTING_ORDERS_MAX = 500_000
"""Live orders (resting plus waiting stops) in the whole market; a new order that could rest is
refused beyond it. ~250 B each in the books (docs/exchange.md, "Limits")."""
RESTING_ORDERS_PER_CLIENT_MAX = 10_000
"""Live orders of one client; a new order of that client that could rest is refused beyond it
(an immediate-or-cancel order never rests and is always admitted)."""
SYMBOLS_MAX = 100
"""Instruments in the list (``--symbols``): the list travels in one consensus entry."""

# -- per server -----------------------------------------------------------------------------
IN_FLIGHT_PER_CLIENT_MAX = 100
"""Order-entry requests of one client waiting for their reply on one server, over its unary
calls and all its order sessions together (beyond it: RESOURCE_EXHAUSTED)."""
SESSION_IN_FLIGHT_MAX = 100
"""Requests sent on one order session and not yet answered (beyond it the session ends with
RESOURCE_EXHAUSTED)."""
SESSIONS_MAX_DEFAULT = 16
"""Open order sessions per server (each holds a gRPC worker thread); ``--grpc-workers`` / 2."""
SUBSCRIBERS_MAX_DEFAULT = 8
"""Concurrent market-data streams per server (each holds a gRPC worker thread);
``--grpc-workers`` / 4."""
SUBSCRIBER_QUEUE_MAX = 10_000
"""Trades queued for one market-data subscriber before it is cut off (RESOURCE_EXHAUSTED)."""
GRPC_REQUEST_BYTES_MAX = 256 * 1024
"""Largest gRPC request a server accepts (and a client of ours sends). The largest legitimate
request, a full order-session message, is about 10 KB (SESSION_MESSAGE_ORDERS_MAX orders of at
most ~200 bytes); a larger one is refused by gRPC with RESOURCE_EXHAUSTED before it is parsed."""
GRPC_RESPONSE_BYTES_MAX = 4 * 1024 * 1024
"""Largest gRPC response a server sends (and a client of ours accepts): a snapshot chunk
(exchange.state_transfer.CHUNK_BYTES, 1 MiB), a book snapshot (SNAPSHOT_LEVELS_MAX levels a
side) and a market-data batch fit well within it."""

assert IN_FLIGHT_PER_CLIENT_MAX < DEDUP_SEQS_PER_CLIENT_MAX
assert SESSION_IN_FLIGHT_MAX <= IN_FLIGHT_PER_CLIENT_MAX
assert RESTING_ORDERS_PER_CLIENT_MAX <= RESTING_ORDERS_MAX
# instruments entry: 11-byte header + per symbol a length byte and at most SYMBOL_BYTES_MAX bytes
assert 11 + SYMBOLS_MAX * (1 + SYMBOL_BYTES_MAX) <= PAYLOAD_SIZE_MAX_BYTES

GRPC_SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", GRPC_REQUEST_BYTES_MAX),
    ("grpc.max_send_message_length", GRPC_RESPONSE_BYTES_MAX),
)
"""gRPC server options applying the two message bounds."""
GRPC_CLIENT_OPTIONS = (
    ("grpc.max_send_message_length", GRPC_REQUEST_BYTES_MAX),
    ("grpc.max_receive_message_length", GRPC_RESPONSE_BYTES_MAX),
)
"""gRPC channel options applying the two message bounds (traders, peers fetching snapshots)."""


def limit_message(name: str, value: int, what: str) -> str:
    """The one-line error for a reached bound: names the constant and its value (Rule 1)."""
    return f"limit reached: {what} (at most {value:,}, {name})"
