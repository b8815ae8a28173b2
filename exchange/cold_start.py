"""The start gate of a durable server: join a running cluster, or cold-start only at the maximum.

Rule 1 (why): with ``sync`` durability an order is acknowledged once it is committed (in the
        memory of a majority) and on the disk of the leader that acknowledged it; the followers
        journal it a moment later. When every server stops at once the memories are gone, so an
        acknowledged order may be on one disk only, and that can be any member's (leaders
        change). Consensus restarted on fresh regions would elect from whatever states the
        first majority holds: a leader behind an acknowledged order would give its index to
        another order.
Rule 2 (warm): a server that restarts from its disk while a peer answers as ``leader`` joins
        the running cluster at once: consensus starts with the local state's index ``J``
        (``Replica(initial_applied=J)``, amnesiac) and catches up the log from ``J + 1``, or
        fetches a snapshot if the leader's log no longer holds it. Every leader in this
        cluster came out of Rule 3 or was elected by consensus from such members, so it holds
        every acknowledged order.
Rule 3 (cold): otherwise the server starts consensus only once EVERY member answers (a starting
        server reports the index of the state it loaded from disk; a running one its applied
        index) and its own state is at the highest index reported: a server behind fetches that
        peer's snapshot (``FetchSnapshot``), stores it, and asks again. Every member then enters
        consensus at the same index ``M``, which is at least every acknowledged order's index,
        with empty logs, so whichever leader is elected continues from ``M + 1``.
Rule 4: a member that never answers keeps the others waiting (they say so once, then every
        ``WAITING_LOG_S``): serving without its disk could lose the orders only it stored. The
        operator who knows that disk is gone restarts that server with an empty data directory
        (it reports 0): the cluster then serves what the remaining disks hold (see
        docs/exchange.md, "Durability", for what that can lose).
Rule 5: while a peer answers as running consensus (follower, recovering) but none as leader, the
        server waits up to ``LEADER_WAIT_S`` for a leader (a restart during an election) before
        applying Rule 3 (safe either way; Rule 2 avoids a snapshot).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import grpc

from exchange.node import ExchangeNode
from exchange.proto import exchange_pb2 as pb
from exchange.proto import exchange_pb2_grpc as pb_grpc
from exchange.state_transfer import TransferFailed, fetch_snapshot
from exchange.tls import ClientTls, open_channel

POLL_INTERVAL_S = 0.05
STATUS_TIMEOUT_S = 0.5
LEADER_WAIT_S = 1.0
WAITING_LOG_S = 10.0
RUNNING_ROLES = ("follower", "recovering", "failed", "paused")

log = logging.getLogger("exchange.cold_start")


class GateStopped(Exception):
    """The server was asked to stop while waiting at the gate."""


def _statuses(channels: dict[int, grpc.Channel]) -> dict[int, pb.Status]:
    found: dict[int, pb.Status] = {}
    for replica_id, channel in channels.items():
        stub = pb_grpc.ExchangeStub(channel)  # type: ignore[no-untyped-call]
        with contextlib.suppress(grpc.RpcError):
            found[replica_id] = stub.GetStatus(pb.StatusRequest(), timeout=STATUS_TIMEOUT_S)
    return found


def pass_gate(node: ExchangeNode, stopping: Callable[[], bool],
              tls: ClientTls | None = None) -> str:
    """Block until this server may start consensus (module rules); return ``"warm"`` or
    ``"cold"``. Peers are asked over TLS with ``tls`` (exchange.tls Rule 5). Raises
    ``GateStopped``."""
    peers = {i: a for i, a in node.addresses.items() if i != node.replica_id}
    channels = {i: open_channel(a, tls) for i, a in peers.items()}
    try:
        return _wait(node, peers, channels, stopping, tls)
    finally:
        for channel in channels.values():
            channel.close()


def _wait(node: ExchangeNode, peers: dict[int, str], channels: dict[int, grpc.Channel],
          stopping: Callable[[], bool], tls: ClientTls | None) -> str:
    first_seen = time.monotonic()
    logged_at = 0.0
    running_since: float | None = None
    while not stopping():
        statuses = _statuses(channels)
        if any(s.role == "leader" for s in statuses.values()):
            log.warning("server %d: joining the running cluster with local state at index %d",
                        node.replica_id, node.state.applied_index)
            return "warm"
        now = time.monotonic()
        if len(statuses) == len(peers):
            running = any(s.role in RUNNING_ROLES for s in statuses.values())
            if running and running_since is None:
                running_since = now
            if not running or now - (running_since or now) >= LEADER_WAIT_S:
                if _at_maximum(node, peers, statuses, tls):
                    return "cold"
                continue
        elif now - logged_at >= WAITING_LOG_S:
            logged_at = now
            missing = sorted(set(peers) - set(statuses))
            log.warning("server %d: cold start: waiting for server(s) %s to report their "
                        "durable index (%.0f s so far); no server serves until every member's "
                        "disk is accounted for", node.replica_id, missing, now - first_seen)
        time.sleep(POLL_INTERVAL_S)
    raise GateStopped("stopped at the start gate")


def _at_maximum(node: ExchangeNode, peers: dict[int, str], statuses: dict[int, pb.Status],
                tls: ClientTls | None) -> bool:
    """Rule 3: True once this server's state is at the highest index reported; else fetch it."""
    own = node.state.applied_index
    best = max(statuses, key=lambda i: (statuses[i].applied_index, -i))
    top = statuses[best].applied_index
    if top <= own:
        log.warning("server %d: cold start at index %d (members report %s)", node.replica_id,
                    own, {i: s.applied_index for i, s in sorted(statuses.items())})
        return True
    log.warning("server %d: cold start: server %d holds index %d, this server %d; fetching its "
                "snapshot", node.replica_id, best, top, own)
    try:
        index, data = fetch_snapshot(peers[best], node.replica_id, _no_begin, _no_advance,
                                     tls=tls)
        node.install_snapshot(index, data)
    except (TransferFailed, ValueError) as exc:  # SnapshotError is a ValueError
        log.warning("server %d: snapshot from server %d failed: %s; asking again",
                    node.replica_id, best, exc)
        time.sleep(POLL_INTERVAL_S)
    return False


def _no_begin(index: int, total_bytes: int) -> None:
    pass


def _no_advance(done_bytes: int) -> None:
    pass
