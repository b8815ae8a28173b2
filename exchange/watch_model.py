"""What the dashboard (``python -m exchange watch``) knows: the cluster as polled, the events it
derived, order rates, latencies, the trade tape. Pure state: no gRPC calls, no threads, no clock.

Rule 1: the model is fed, never fetches: ``observe`` takes one poll of every server (a ``Status``
        or the reason it did not answer) with the time of the poll; ``add_trade``,
        ``add_latencies`` and ``set_book`` take what the streams and probes received. The
        watcher calls them under its lock; times are monotonic nanoseconds passed in.
Rule 2: the leader is the server most answering, unpaused servers name, provided it answers as
        leader (or standalone) itself; a change from one leader to another is an event whose
        duration is bounded by the polls: the old leader was last seen leading at ``from_ns``, the
        new one first at ``to_ns``. The latency feed then tells what traders saw, once
        ``STALL_WATCH_S`` has passed: the longest wait of an order in flight across the window,
        and, when answers are dense (at least ``SILENCE_SAMPLES_MIN`` within ``STALL_WATCH_S``
        of it), the longest time without any answer around it: the failover as clients felt it.
Rule 3: every collection is bounded: ``EVENTS_MAX`` events, ``TAPE_TRADES_MAX`` trades per symbol
        and ``SYMBOLS_MAX`` symbols, ``HISTORY_BUCKETS`` buckets of history, ``DIGESTS_KEPT_MAX``
        digests per server.
Rule 4: digests are compared only between servers that reported the same applied index (the
        state after the same log prefix); the verdict names that index.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from exchange.proto import exchange_pb2 as pb

EVENTS_MAX = 64
TAPE_TRADES_MAX = 200
SYMBOLS_MAX = 64
BUCKET_S = 0.5  # one sparkline column
HISTORY_BUCKETS = 120  # 60 s of history
LATENCY_WINDOW_S = 5.0  # percentiles shown are over this many seconds of answers
LATENCY_SAMPLES_MAX = 200_000  # kept for the window; a Python trader load stays far below
DIGESTS_KEPT_MAX = 256
STALL_WATCH_S = 1.0  # answers this long around a leader change's window describe it
SILENCE_SAMPLES_MIN = 100  # fewer answers (a 10/s probe) cannot measure a silence of ms
LEADERLESS_EVENT_S = 1.0  # "no leader" becomes an event only after this long
GOOD_ROLES = frozenset({"leader", "follower", "standalone"})
LEADING_ROLES = frozenset({"leader", "standalone"})
SPARK_CHARS = " ▁▂▃▄▅▆▇█"

assert LATENCY_WINDOW_S < HISTORY_BUCKETS * BUCKET_S


@dataclass(slots=True)
class Event:
    """One line of the event log; ``stall_ns`` is filled in later for leader changes."""

    time_ns: int
    wall_s: float
    kind: str  # leader, noleader, pause, resume, down, up, restart, recovering, recovered,
    # failed, note
    text: str
    window_ns: tuple[int, int] = (0, 0)  # leader change: (old leader last seen, new first seen)
    stall_ns: int = 0  # longest wait of an order in flight across the window
    silence_ns: int = 0  # longest time without an answer around the window (dense feeds)

    def line(self) -> str:
        if self.kind != "leader" or not self.window_ns[1]:
            return self.text
        bound_ms = (self.window_ns[1] - self.window_ns[0]) / 1e6
        stall = ""
        if self.silence_ns:
            stall += f"; no order answered for {self.silence_ns / 1e6:.1f} ms"
        if self.stall_ns:
            stall += f"; longest order wait {self.stall_ns / 1e6:.1f} ms"
        return f"{self.text}: changed within {bound_ms:.0f} ms (between polls){stall}"


@dataclass(slots=True)
class ServerView:
    replica_id: int
    address: str
    status: pb.Status | None = None  # the last answer; None = never answered
    down: str = "not polled yet"  # why the last poll got no answer; "" = it answered
    digests: OrderedDict[int, str] = field(default_factory=OrderedDict)

    @property
    def role(self) -> str:
        if self.down:
            return "down"
        assert self.status is not None
        return self.status.role


@dataclass(frozen=True, slots=True)
class Trade:
    wall_s: float
    price: int
    quantity: int
    log_index: int


@dataclass(frozen=True, slots=True)
class DigestVerdict:
    index: int
    servers: tuple[int, ...]
    equal: bool


class ClusterModel:
    """See the module rules."""

    def __init__(self, addresses: dict[int, str], symbols: tuple[str, ...],
                 hidden_symbols: frozenset[str] = frozenset()) -> None:
        assert addresses, "at least one server"
        self.servers = {i: ServerView(i, a) for i, a in sorted(addresses.items())}
        self.leader: int | None = None  # the agreed leader now (None while there is none)
        self.last_leader: int | None = None  # the last agreed leader, kept across a gap
        self.leader_seen_ns = 0
        self.leaderless_since_ns = 0
        self.events: deque[Event] = deque(maxlen=EVENTS_MAX)
        self.hidden_symbols = hidden_symbols
        self.symbols: list[str] = list(dict.fromkeys(symbols))[:SYMBOLS_MAX]
        self.symbol_index = 0
        self.tape: dict[str, deque[Trade]] = {}
        self.book: pb.BookSnapshot | None = None
        self.book_source = ""
        self.digest_verdict: DigestVerdict | None = None
        self.latency_source = ""
        self._applied: deque[tuple[int, int]] = deque()  # (time_ns, orders applied), 60 s
        self._latencies: deque[tuple[int, int]] = deque()  # (end_ns, latency_ns)
        self._pending: list[Event] = []  # leader changes waiting for the answers around them
        self.now_ns = 0

    # ---- cluster polls -------------------------------------------------------------------

    def observe(self, now_ns: int, wall_s: float, answers: dict[int, pb.Status | str]) -> None:
        """One poll: a ``Status`` per server that answered, the reason for each that did not."""
        assert set(answers) <= set(self.servers), answers.keys()
        self.now_ns = now_ns
        for replica_id, answer in answers.items():
            self._observe_server(self.servers[replica_id], answer, now_ns, wall_s)
        self._observe_leader(now_ns, wall_s)
        self._observe_rates(now_ns)
        self._compare_digests()

    def _event(self, now_ns: int, wall_s: float, kind: str, text: str) -> Event:
        event = Event(now_ns, wall_s, kind, text)
        self.events.append(event)
        return event

    def note(self, now_ns: int, wall_s: float, text: str) -> None:
        """An event told by the caller (the demo's pause and resume commands)."""
        self._event(now_ns, wall_s, "note", text)

    def _observe_server(self, server: ServerView, answer: pb.Status | str, now_ns: int,
                        wall_s: float) -> None:
        name = f"server {server.replica_id}"
        before, old = server.role, server.status
        if isinstance(answer, str):
            if not server.down and old is not None:
                self._event(now_ns, wall_s, "down", f"{name} down ({answer})")
            server.down = answer
            return
        server.status, server.down = answer, ""
        role = answer.role
        if old is not None and (answer.orders_applied < old.orders_applied
                                or answer.applied_index < old.applied_index):
            self._event(now_ns, wall_s, "restart", f"{name} restarted (applied index "
                        f"{old.applied_index} -> {answer.applied_index})")
        elif before == "down" and old is not None:
            self._event(now_ns, wall_s, "up", f"{name} answers again as {role}")
        if role != before and old is not None:
            self._role_event(name, before, role, answer, now_ns, wall_s)
        if role != "recovering":
            server.digests[answer.applied_index] = answer.state_digest
            server.digests.move_to_end(answer.applied_index)
            while len(server.digests) > DIGESTS_KEPT_MAX:
                server.digests.popitem(last=False)
        for symbol in answer.symbols:
            self.add_symbol(symbol)

    def _role_event(self, name: str, before: str, role: str, status: pb.Status, now_ns: int,
                    wall_s: float) -> None:
        if role == "paused":
            self._event(now_ns, wall_s, "pause", f"{name} paused")
        elif before == "paused":
            self._event(now_ns, wall_s, "resume", f"{name} resumed, rejoins as {role}")
        elif role == "recovering":
            self._event(now_ns, wall_s, "recovering", f"{name} recovering (fetching a snapshot "
                        "and catching up the log)")
        elif before == "recovering" and role in GOOD_ROLES:
            self._event(now_ns, wall_s, "recovered", f"{name} recovered, now {role} at index "
                        f"{status.applied_index}")
        elif role == "failed":
            self._event(now_ns, wall_s, "failed", f"{name} failed: {status.error or 'no reason'}")

    def _agreed_leader(self) -> int | None:
        votes: dict[int, int] = {}
        for server in self.servers.values():
            status = server.status
            if server.down or status is None or status.role == "paused":
                continue
            if status.role == "standalone":
                return server.replica_id
            if status.leader_id:
                votes[status.leader_id] = votes.get(status.leader_id, 0) + 1
        if not votes:
            return None
        leader = max(votes, key=lambda i: (votes[i], -i))
        view = self.servers.get(leader)
        if view is None or view.down or view.status is None:
            return None
        return leader if view.status.role in LEADING_ROLES else None

    def _observe_leader(self, now_ns: int, wall_s: float) -> None:
        leader = self._agreed_leader()
        if leader is not None and leader == self.leader:
            self.leader_seen_ns = now_ns
            return
        if leader is None:
            if self.leader is not None:
                self.leaderless_since_ns = now_ns
                self.leader = None
            elif (self.leaderless_since_ns and now_ns - self.leaderless_since_ns
                  > LEADERLESS_EVENT_S * 1e9):
                self._event(now_ns, wall_s, "noleader", "no agreed leader for "
                            f"{(now_ns - self.leaderless_since_ns) / 1e9:.1f} s")
                self.leaderless_since_ns = 0
            return
        old = self.last_leader
        if old is None:
            self._event(now_ns, wall_s, "leader", f"leader is server {leader}")
        elif old != leader:
            event = self._event(now_ns, wall_s, "leader", f"leader {old} -> {leader}")
            event.window_ns = (self.leader_seen_ns, now_ns)
            self._pending.append(event)
        self.leader = self.last_leader = leader
        self.leader_seen_ns, self.leaderless_since_ns = now_ns, 0

    def _observe_rates(self, now_ns: int) -> None:
        applied = [s.status.orders_applied for s in self.servers.values()
                   if not s.down and s.status is not None]
        if applied:
            self._applied.append((now_ns, max(applied)))
        horizon = now_ns - int(HISTORY_BUCKETS * BUCKET_S * 1e9)
        while self._applied and self._applied[0][0] < horizon:
            self._applied.popleft()

    def _compare_digests(self) -> None:
        """Rule 4: the highest applied index two or more answering servers reported."""
        live = [s for s in self.servers.values() if not s.down and s.digests]
        best: DigestVerdict | None = None
        for index in sorted({i for s in live for i in s.digests}, reverse=True):
            holders = [s for s in live if index in s.digests]
            if len(holders) >= 2:
                digests = {s.digests[index] for s in holders}
                best = DigestVerdict(index, tuple(s.replica_id for s in holders),
                                     len(digests) == 1)
                break
        if best is not None:
            self.digest_verdict = best

    # ---- derived figures -------------------------------------------------------------------

    def commit_index(self) -> int:
        leader = self.servers.get(self.leader) if self.leader is not None else None
        if leader is not None and leader.status is not None and not leader.down:
            return int(leader.status.commit_index)
        return max((int(s.status.commit_index) for s in self.servers.values()
                    if s.status is not None and not s.down), default=0)

    def order_rates(self) -> list[float]:
        """Orders applied per second in each of the last ``HISTORY_BUCKETS`` buckets (NaN for
        a bucket without two observations), oldest first."""
        rates = [math.nan] * HISTORY_BUCKETS
        if len(self._applied) < 2:
            return rates
        width_ns = int(BUCKET_S * 1e9)
        end = self.now_ns
        firsts: dict[int, tuple[int, int]] = {}
        lasts: dict[int, tuple[int, int]] = {}
        previous: tuple[int, int] | None = None
        for point in self._applied:
            bucket = HISTORY_BUCKETS - 1 - (end - point[0]) // width_ns
            if 0 <= bucket < HISTORY_BUCKETS:
                firsts.setdefault(bucket, previous or point)
                lasts[bucket] = point
            previous = point
        for bucket, (t0, v0) in firsts.items():
            t1, v1 = lasts[bucket]
            if t1 > t0:
                rates[bucket] = max(0.0, (v1 - v0) / ((t1 - t0) / 1e9))
        return rates

    def orders_per_s(self) -> float:
        """Over the last second of polls."""
        points = [p for p in self._applied if p[0] >= self.now_ns - 1_000_000_000]
        if len(points) < 2 or points[-1][0] <= points[0][0]:
            return 0.0
        return max(0.0, (points[-1][1] - points[0][1]) / ((points[-1][0] - points[0][0]) / 1e9))

    # ---- latency feed ---------------------------------------------------------------------

    def add_latencies(self, samples: list[tuple[int, int]]) -> None:
        """``(end_ns, latency_ns)`` of answered orders, in any order."""
        for end_ns, latency_ns in samples:
            assert latency_ns >= 0, latency_ns
            if len(self._latencies) >= LATENCY_SAMPLES_MAX:
                self._latencies.popleft()
            self._latencies.append((end_ns, latency_ns))
        now = max(self.now_ns, self._latencies[-1][0] if self._latencies else 0)
        watch_ns = int(STALL_WATCH_S * 1e9)
        for event in [e for e in self._pending if now - e.window_ns[1] > watch_ns]:
            self._settle(event, watch_ns)
            self._pending.remove(event)
        horizon = now - int(HISTORY_BUCKETS * BUCKET_S * 1e9)
        while self._latencies and self._latencies[0][0] < horizon:
            self._latencies.popleft()

    def _settle(self, event: Event, watch_ns: int) -> None:
        """Rule 2: what the answers around a leader change's window say about it."""
        low, high = event.window_ns[0] - watch_ns, event.window_ns[1] + watch_ns
        ends = sorted(end for end, _ in self._latencies if low <= end <= high)
        event.stall_ns = max((lat for end, lat in self._latencies
                              if end >= event.window_ns[0] and end - lat <= event.window_ns[1]),
                             default=0)
        if len(ends) >= SILENCE_SAMPLES_MIN:
            event.silence_ns = max(b - a for a, b in zip(ends, ends[1:], strict=False))

    def latency_percentiles_us(self) -> tuple[int, float, float, float, float]:
        """(count, p50, p90, p99, max) over the last ``LATENCY_WINDOW_S``; zeros if none."""
        since = self.now_ns - int(LATENCY_WINDOW_S * 1e9)
        values = sorted(lat for end, lat in self._latencies if end >= since)
        if not values:
            return 0, 0.0, 0.0, 0.0, 0.0
        n = len(values)
        p50, p90, p99 = (values[max(1, math.ceil(q * n)) - 1] / 1e3 for q in (0.5, 0.9, 0.99))
        return n, p50, p90, p99, values[-1] / 1e3

    def p99_history_us(self) -> list[float]:
        buckets: list[list[int]] = [[] for _ in range(HISTORY_BUCKETS)]
        width_ns = int(BUCKET_S * 1e9)
        for end_ns, latency_ns in self._latencies:
            bucket = HISTORY_BUCKETS - 1 - (self.now_ns - end_ns) // width_ns
            if 0 <= bucket < HISTORY_BUCKETS:
                buckets[bucket].append(latency_ns)
        return [sorted(b)[max(1, math.ceil(0.99 * len(b))) - 1] / 1e3 if b else math.nan
                for b in buckets]

    # ---- symbols, tape, book --------------------------------------------------------------

    def add_symbol(self, symbol: str) -> None:
        if (symbol and symbol not in self.hidden_symbols and symbol not in self.symbols
                and len(self.symbols) < SYMBOLS_MAX):
            self.symbols.append(symbol)

    @property
    def symbol(self) -> str:
        return self.symbols[self.symbol_index] if self.symbols else ""

    def select_symbol(self, step: int = 0, number: int = 0) -> None:
        """Next/previous (``step`` +-1) or the ``number``-th (1-based) symbol."""
        if not self.symbols:
            return
        if number:
            if number <= len(self.symbols):
                self.symbol_index = number - 1
        else:
            self.symbol_index = (self.symbol_index + step) % len(self.symbols)
        if self.book is not None and self.book.symbol != self.symbol:
            self.book = None

    def add_trade(self, symbol: str, trade: Trade) -> None:
        if symbol in self.hidden_symbols:
            return
        self.add_symbol(symbol)
        tape = self.tape.get(symbol)
        if tape is None:
            if len(self.tape) >= SYMBOLS_MAX:
                return
            tape = self.tape[symbol] = deque(maxlen=TAPE_TRADES_MAX)
        tape.append(trade)

    def set_book(self, snapshot: pb.BookSnapshot, source: str) -> None:
        if snapshot.symbol == self.symbol:
            self.book, self.book_source = snapshot, source


def sparkline(values: list[float], width: int) -> str:
    """The last ``width`` values as block characters scaled to their maximum; NaN = blank."""
    assert width > 0, width
    shown = values[-width:]
    finite = [v for v in shown if not math.isnan(v)]
    top = max(finite, default=0.0)
    chars = []
    for value in shown:
        if math.isnan(value):
            chars.append(" ")
        elif top <= 0:
            chars.append(SPARK_CHARS[1])
        else:
            chars.append(SPARK_CHARS[1 + min(7, int(value / top * 7.999))])
    return "".join(chars).rjust(width)
