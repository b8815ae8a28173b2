"""``python -m exchange bench-rejoin``: how long a server killed with -9 takes to rejoin, and what
taking a snapshot costs order entry, against a book of many resting orders.

Rule 1: one 3-server cluster for the whole run. The baseline rejoin is measured first, on an
        empty book; then ``--orders`` resting orders (non-crossing limit orders on a few symbols,
        entered through order sessions) are placed and each round kills a follower (``kill -9``),
        restarts it with the same command and waits until it has caught up.
Rule 2: the rejoin time is the server's own measure (its "caught up ... in T ms" log line: from
        the replica's start to caught up: snapshot taken by a peer, streamed, installed, log
        caught up); the time from the kill (process start-up included) is printed beside it.
Rule 3: a probe trader sends immediate-or-cancel orders that never rest, closed loop, during the
        whole run; the longest order-entry latency while a follower served the snapshot is
        compared with the longest in an equally long window just before the kill (same run).
        The leader's stall is measured the same way while a snapshot is fetched from the
        leader itself (the worst case: rejoin prefers followers).
Rule 4: the snapshot's size per resting order comes from the same log line.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import threading
import time
from dataclasses import dataclass

from exchange.cluster import ClusterError, LocalCluster
from exchange.proto import exchange_pb2 as pb
from exchange.session import SESSION_IN_FLIGHT_MAX, SESSION_MESSAGE_ORDERS_MAX
from exchange.state_transfer import fetch_snapshot
from traders.client import ClusterConnection, TraderClient
from traders.session import SessionClient

ORDERS_DEFAULT = 100_000
ROUNDS_DEFAULT = 3
SESSIONS = 4
SYMBOLS = ("RJA", "RJB", "RJC", "RJD")
MID_TICKS = 50_000
LEVELS = 2_000  # price levels per side and symbol
REJOIN_TIMEOUT_S = 120.0
CAUGHT_UP = re.compile(r"caught up at index (\d+) in ([\d.]+) ms \(snapshot of index (\d+), "
                       r"(\d+) bytes from server (\d+)\)")
CLIENT_ID_BASE = 7_000_000


@dataclass(slots=True)
class Rejoin:
    server: int
    rejoin_ms: float  # the server's own measure (Rule 2)
    from_kill_ms: float
    snapshot_bytes: int
    stall_ms: float  # longest probe latency while it rejoined
    baseline_ms: float  # longest probe latency in the window before the kill


class Probe:
    """Rule 3: a closed-loop trader whose orders never rest; keeps (start, latency) samples."""

    def __init__(self, addresses: tuple[str, ...]) -> None:
        self.client = TraderClient(ClusterConnection(addresses), CLIENT_ID_BASE + 999)
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="probe", daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            self.client.submit(SYMBOLS[0], pb.BUY, 1, 1, immediate_or_cancel=True)
            self.samples.append((start, time.monotonic() - start))

    def longest_ms(self, start: float, end: float) -> float:
        inside = [latency for at, latency in self.samples if start <= at <= end]
        return max(inside, default=0.0) * 1000


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "bench-rejoin", help="rejoin time of a killed server against a large book; snapshot stall",
        description="Start 3 servers, measure a killed follower's rejoin on an empty book, fill "
        "the book with --orders resting orders, then per round kill -9 a follower, restart it "
        "with the same command and measure its rejoin (the server's own figure) and the longest "
        "order-entry latency meanwhile, each beside a same-run baseline.")
    parser.add_argument("--orders", type=int, default=ORDERS_DEFAULT,
                        help=f"resting orders to place (default {ORDERS_DEFAULT:,})")
    parser.add_argument("--rounds", type=int, default=ROUNDS_DEFAULT,
                        help=f"rejoins against the full book (default {ROUNDS_DEFAULT})")


def run(args: argparse.Namespace) -> int:
    if args.orders < 0 or args.rounds < 1:
        print("python -m exchange bench-rejoin: error: need --orders >= 0 and --rounds >= 1",
              file=sys.stderr)
        return 2
    cluster = LocalCluster(3, name="bench-rejoin", symbols=SYMBOLS)
    try:
        cluster.start()
        return _run(cluster, args)
    except ClusterError as exc:
        print(f"bench-rejoin: error: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()


def _run(cluster: LocalCluster, args: argparse.Namespace) -> int:
    probe = Probe(tuple(cluster.addresses.values()))
    probe.thread.start()
    try:
        time.sleep(1.0)
        baseline = _rejoin(cluster, probe)
        print(f"baseline (empty book): rejoin {baseline.rejoin_ms:.0f} ms (server's measure), "
              f"{baseline.from_kill_ms:.0f} ms from the kill", flush=True)
        started = time.monotonic()
        _fill(cluster, args.orders)
        print(f"placed {args.orders:,} resting orders in {time.monotonic() - started:.1f} s",
              flush=True)
        rounds = []
        for number in range(1, args.rounds + 1):
            time.sleep(1.0)
            rejoin = _rejoin(cluster, probe)
            rounds.append(rejoin)
            print(f"round {number}: server {rejoin.server} rejoined in {rejoin.rejoin_ms:.0f} ms "
                  f"({rejoin.from_kill_ms:.0f} ms from the kill), snapshot "
                  f"{rejoin.snapshot_bytes:,} bytes; longest order latency meanwhile "
                  f"{rejoin.stall_ms:.1f} ms (before the kill {rejoin.baseline_ms:.1f} ms)",
                  flush=True)
        leader_stall, leader_base, leader_bytes = _leader_snapshot_stall(cluster, probe)
    finally:
        probe.stop.set()
        probe.thread.join(10)
    _summary(args.orders, baseline, rounds, (leader_stall, leader_base, leader_bytes))
    return 0


def _fill(cluster: LocalCluster, orders: int) -> None:
    """Rule 1: non-crossing limit orders through ``SESSIONS`` order sessions in parallel."""
    addresses = tuple(cluster.addresses.values())
    share = [orders // SESSIONS + (1 if i < orders % SESSIONS else 0) for i in range(SESSIONS)]
    threads = [threading.Thread(target=_fill_one, args=(addresses, i, share[i]))
               for i in range(SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _fill_one(addresses: tuple[str, ...], number: int, count: int) -> None:
    session = SessionClient(ClusterConnection(addresses), CLIENT_ID_BASE + number)
    sent = 0
    while sent < count or session.in_flight:
        room = SESSION_IN_FLIGHT_MAX - session.in_flight
        size = min(SESSION_MESSAGE_ORDERS_MAX, count - sent, room)
        if size > 0:
            orders = []
            for i in range(sent, sent + size):
                symbol = SYMBOLS[(i + number) % len(SYMBOLS)]
                offset = 1 + (i // len(SYMBOLS)) % LEVELS
                buy = (i + number) % 2 == 0
                price = MID_TICKS - offset if buy else MID_TICKS + offset
                orders.append(session.submit_order(symbol, pb.BUY if buy else pb.SELL, price,
                                                   1 + i % 9))
            session.send(orders)
            sent += size
        else:
            session.receive()


def _rejoin(cluster: LocalCluster, probe: Probe) -> Rejoin:
    leader = cluster.wait_for_leader(30)
    server = next(i for i in sorted(cluster.addresses) if i != leader)
    log_path = cluster.servers[server].log_path
    seen = len(CAUGHT_UP.findall(log_path.read_text(errors="replace")))
    killed = time.monotonic()
    cluster.kill_server(server)
    cluster.start_server(server)
    cluster.wait_caught_up(server, REJOIN_TIMEOUT_S)
    caught_up = time.monotonic()
    deadline = caught_up + 10
    while True:
        found = CAUGHT_UP.findall(log_path.read_text(errors="replace"))
        if len(found) > seen:
            break
        if time.monotonic() > deadline:
            raise ClusterError(f"server {server} logged no 'caught up' line")
        time.sleep(0.05)
    _, took_ms, _, size, _ = found[-1]
    window = caught_up - killed
    return Rejoin(server, float(took_ms), window * 1000, int(size),
                  probe.longest_ms(killed, caught_up), probe.longest_ms(killed - window, killed))


def _leader_snapshot_stall(cluster: LocalCluster, probe: Probe) -> tuple[float, float, int]:
    """Rule 3's worst case: a snapshot served by the leader itself."""
    leader = cluster.wait_for_leader(30)
    started = time.monotonic()
    _, data = fetch_snapshot(cluster.addresses[leader], 0, lambda i, t: None, lambda d: None)
    ended = time.monotonic()
    time.sleep(0.2)
    window = ended - started
    return (probe.longest_ms(started, ended), probe.longest_ms(started - window, started),
            len(data))


def _spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.0f} ms (min {min(values):.0f}, max " \
           f"{max(values):.0f}, {len(values)} rounds)"


def _summary(orders: int, baseline: Rejoin, rounds: list[Rejoin],
             leader: tuple[float, float, int]) -> None:
    rejoin = [r.rejoin_ms for r in rounds]
    print("\n== rejoin of a server killed with -9 and restarted with the same command")
    print(f"book of {orders:,} resting orders: rejoin {_spread(rejoin)}; x"
          f"{statistics.median(rejoin) / max(baseline.rejoin_ms, 1e-3):.1f} the empty book's "
          f"{baseline.rejoin_ms:.0f} ms (goal <= 1000 ms: "
          f"{'met' if statistics.median(rejoin) <= 1000 else 'NOT met'})")
    from_kill = [r.from_kill_ms for r in rounds]
    print(f"from the kill (process start-up included): {_spread(from_kill)}")
    if orders:
        per_order = statistics.median(r.snapshot_bytes for r in rounds) / orders
        print(f"snapshot size: {per_order:.0f} bytes per resting order (goal <= 300: "
              f"{'met' if per_order <= 300 else 'NOT met'})")
    stall = [r.stall_ms for r in rounds]
    base = [r.baseline_ms for r in rounds]
    print(f"longest order-entry latency while a follower served the snapshot: {_spread(stall)}; "
          f"in the same-length window before the kill: {_spread(base)}")
    stall_ms, base_ms, size = leader
    print(f"worst case, snapshot served by the leader ({size:,} bytes): longest order-entry "
          f"latency {stall_ms:.1f} ms against {base_ms:.1f} ms just before")
