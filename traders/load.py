"""The load generator: N traders sending orders for a fixed time, then a report.

Rule 1: every trader has its own client id and seeded workload; closed loop (the next
        request goes out when the previous is answered) when ``rate_per_s`` is 0, open loop
        otherwise (each trader sends on a fixed schedule and latency counts from the scheduled time,
        so a stall shows up in the figures instead of being hidden by coordinated omission).
Rule 2: a request counts as *acked* when the exchange answered it with no reject event, *rejected*
        when the engine rejected it (reject, cancel_reject, replace_reject), *invalid* on
        INVALID_ARGUMENT, *failed* when no server answered within the give-up time; *retried* counts
        requests that needed more than one attempt (redirects, failovers).
Rule 3: per-request samples are kept in memory (bounded by ``SAMPLES_MAX`` per trader) and can be
        dumped to a file, one request per line.
Rule 4: with ``stream`` each trader runs one OrderSession (``traders.aio_session``; every
        session of the run is a coroutine of one event loop, on the thread ``traders-loop``):
        it keeps up to ``window`` order lists of ``batch`` orders unanswered (closed loop over
        the window), and a request's latency runs from the send of its list to the arrival of
        its answer. A request answered after a reconnect counts as retried. Without ``stream``
        each trader is a thread making unary calls.
Rule 5: a refusal of the caller itself (PERMISSION_DENIED: a client id its certificate does not
        allow; UNAUTHENTICATED) stops the whole run at once (``refused``): every other request
        would be refused the same way.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from exchange.proto import exchange_pb2 as pb
from exchange.session import SESSION_IN_FLIGHT_MAX, SESSION_MESSAGE_ORDERS_MAX
from exchange.tls import ClientTls
from traders.aio_session import AsyncSessionClient, LoopChannels
from traders.client import ClusterConnection, ExchangeUnreachable, RequestRejected, TraderClient
from traders.stats import LatencySummary, longest_silence_ns, merge_intervals, summarize
from traders.workload import Cancel, Replace, Request, Submit, Workload

CALLER_REFUSALS = ("PERMISSION_DENIED", "UNAUTHENTICATED")  # Rule 5

SAMPLES_MAX = 2_000_000  # per trader; far above what a Python trader sends in a long run
PROGRESS_INTERVAL_S = 0.1
STREAM_WINDOW_DEFAULT = 4  # session messages a trader keeps unanswered
DRAIN_S = 5.0  # how long a session trader waits for its last answers after the deadline
CLOSE_JOIN_S = 5.0  # how long close() lets in-flight requests finish before closing channels
REJECT_KINDS = frozenset({"reject", "cancel_reject", "replace_reject"})
ACKED, REJECTED, INVALID, FAILED = range(4)
OUTCOME_NAMES = ("acked", "rejected", "invalid", "failed")


@dataclass(frozen=True, slots=True)
class Sample:
    start_ns: int  # when the request was due (open loop) or sent (closed loop)
    end_ns: int
    attempts: int
    first_failure_ns: int
    outcome: int
    replica: str  # the server that answered

    @property
    def latency_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass(frozen=True, slots=True)
class LoadConfig:
    addresses: tuple[str, ...]
    traders: int
    rate_per_s: float  # total over all traders; 0 = closed loop
    test_ms: int
    seed: int
    symbols: tuple[str, ...]
    client_id_base: int = 0  # 0 = random (client ids must not repeat across runs)
    client_ids: tuple[int, ...] = ()  # one per trader (a certificate's ids); () = from the base
    first_seq: int = 1  # fixed client ids reused across runs need a higher start each run
    tls: ClientTls | None = None  # exchange.tls; None = plaintext
    stream: bool = False  # OrderSession instead of unary calls (Rule 4)
    batch: int = 1  # orders per session message
    window: int = STREAM_WINDOW_DEFAULT  # session messages unanswered per trader

    def check(self) -> str:
        """Why this configuration cannot run ("" when it can)."""
        if not 1 <= self.batch <= SESSION_MESSAGE_ORDERS_MAX:
            return f"--batch {self.batch}: must be in 1..{SESSION_MESSAGE_ORDERS_MAX}"
        if self.window < 1 or self.window * self.batch > SESSION_IN_FLIGHT_MAX:
            return (f"--window {self.window} x --batch {self.batch}: at most "
                    f"{SESSION_IN_FLIGHT_MAX} orders may be unanswered per session")
        if self.stream and self.rate_per_s:
            return "--rate: sessions run closed loop over their window; drop --rate"
        return ""


@dataclass(slots=True)
class LoadReport:
    samples: list[Sample]
    started_ns: int
    ended_ns: int
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return (self.ended_ns - self.started_ns) / 1e9

    @property
    def retried(self) -> int:
        return sum(1 for s in self.samples if s.attempts > 1)

    def latency(self, start_ns: int = 0, end_ns: int = 2**63) -> LatencySummary:
        """Latency of answered requests (acked or rejected) due in ``[start_ns, end_ns)``."""
        return summarize(
            s.latency_ns for s in self.samples
            if s.outcome in (ACKED, REJECTED) and start_ns <= s.start_ns < end_ns
        )

    def failover_gaps_ns(self) -> list[tuple[int, int]]:
        return merge_intervals(
            (s.first_failure_ns, s.end_ns) for s in self.samples if s.first_failure_ns
        )

    def longest_silence_ns(self) -> int:
        done = [s.end_ns for s in self.samples if s.outcome in (ACKED, REJECTED)]
        if len(done) < 2:
            return 0
        return longest_silence_ns(done, min(done), max(done))

    def lines(self) -> list[str]:
        answered = self.counts.get("acked", 0) + self.counts.get("rejected", 0)
        out = [
            f"requests sent {len(self.samples)}, acked {self.counts.get('acked', 0)}, "
            f"rejected by the engine {self.counts.get('rejected', 0)}, invalid "
            f"{self.counts.get('invalid', 0)}, failed {self.counts.get('failed', 0)}, "
            f"retried {self.retried}",
            f"throughput {answered / max(self.duration_s, 1e-9):,.0f} answers/s over "
            f"{self.duration_s:.1f} s",
            f"latency {self.latency().line()}",
        ]
        gaps = self.failover_gaps_ns()
        if gaps:
            shown = ", ".join(
                f"{(a - self.started_ns) / 1e9:.2f}s+{(b - a) / 1e6:.1f}ms" for a, b in gaps[:8]
            )
            out.append(f"failover gaps seen by clients: {len(gaps)} ({shown})")
        else:
            out.append("failover gaps seen by clients: none")
        if answered < 2:
            out.append("longest time without any answer: n/a (fewer than 2 answers)")
        else:
            out.append("longest time without any answer: "
                       f"{self.longest_silence_ns() / 1e6:.1f} ms")
        return out

    def dump(self, path: str) -> None:
        """One line per request: due time (us since start), latency (us), attempts, outcome."""
        with open(path, "w", encoding="utf-8") as out:
            out.write("# start_us latency_us attempts outcome server\n")
            for s in sorted(self.samples, key=lambda s: s.start_ns):
                out.write(
                    f"{(s.start_ns - self.started_ns) // 1000} {s.latency_ns // 1000} "
                    f"{s.attempts} {OUTCOME_NAMES[s.outcome]} {s.replica}\n"
                )


def _outcome(reply: pb.OrderReply) -> int:
    return _judge(reply, 0)[0]


def _judge(reply: pb.OrderReply, quantity: int) -> tuple[int, bool]:
    """``(outcome, still resting)`` of a reply, in one pass over its events (each event read
    from a protobuf list builds a Python object): REJECTED if any event is a refusal, else
    ACKED; resting if no cancel or reject of the order itself and fewer than ``quantity``
    filled."""
    outcome, gone, filled = ACKED, False, 0
    order_id = reply.order_id
    for event in reply.events:
        kind = event.kind
        if kind in REJECT_KINDS:
            outcome = REJECTED
        if kind in _ORDER_END_KINDS and event.order_id == order_id:
            if kind == "fill":
                filled += event.quantity
            else:
                gone = True
    return outcome, not gone and filled < quantity


_ORDER_END_KINDS = frozenset({"cancel", "reject", "fill"})  # what _judge reads of the order


class LoadRun:
    """One load run; ``start``, then ``wait`` (or ``stop``), then ``report``."""

    def __init__(self, config: LoadConfig) -> None:
        assert config.traders >= 1, config.traders
        assert config.test_ms > 0, config.test_ms
        assert not config.check(), config.check()
        self.config = config
        self.connection = ClusterConnection(config.addresses, config.tls)
        base = config.client_id_base or (random.SystemRandom().getrandbits(40) << 16)
        ids = config.client_ids or tuple(base + i + 1 for i in range(config.traders))
        assert len(ids) == config.traders, (len(ids), config.traders)
        self.clients = [TraderClient(self.connection, client_id, first_seq=config.first_seq)
                        for client_id in ids]
        self._samples: list[list[Sample]] = [[] for _ in range(config.traders)]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started_ns = 0
        self.deadline_ns = 0
        self.errors: list[str] = []
        self.unsolicited = 0  # fills of resting orders reported on sessions
        self.refused = ""  # Rule 5: the first refusal of the caller itself

    @property
    def answered(self) -> int:
        return sum(len(samples) for samples in self._samples)

    def elapsed_s(self) -> float:
        return (time.monotonic_ns() - self.started_ns) / 1e9

    def last_server(self) -> str:
        """The server that answered the most recent request (the leader as traders see it)."""
        latest: tuple[int, str] = (0, "")
        for samples in self._samples:
            if samples:
                sample = samples[-1]
                if sample.replica and sample.end_ns > latest[0]:
                    latest = (sample.end_ns, sample.replica)
        return latest[1]

    def samples_since(self, cursors: list[int]) -> list[Sample]:
        """The samples recorded since the last call with the same ``cursors`` (one position per
        trader, updated in place; start with ``[]``), for a live view of a running load."""
        cursors.extend(0 for _ in range(len(self._samples) - len(cursors)))
        fresh: list[Sample] = []
        for index, samples in enumerate(self._samples):
            end = len(samples)  # traders only append; a later append is picked up next time
            fresh.extend(samples[cursors[index]:end])
            cursors[index] = end
        return fresh

    def start(self) -> None:
        self.started_ns = time.monotonic_ns()
        self.deadline_ns = self.started_ns + self.config.test_ms * 1_000_000
        if self.config.stream:  # Rule 4: one event loop carries every session
            thread = threading.Thread(target=self._run_sessions, name="traders-loop",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()
            return
        for index in range(self.config.traders):
            thread = threading.Thread(target=self._trade, args=(index,), name=f"trader-{index}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        self._stop.set()

    def wait(self, tick: Callable[[int], None] | None = None) -> None:
        """Wait for every trader; call ``tick(answered)`` every ``PROGRESS_INTERVAL_S``."""
        while any(t.is_alive() for t in self._threads):
            for thread in self._threads:
                thread.join(PROGRESS_INTERVAL_S)
                if tick is not None:
                    tick(self.answered)
                if thread.is_alive():
                    break

    def report(self) -> LoadReport:
        samples = [s for per_trader in self._samples for s in per_trader]
        ended = max((s.end_ns for s in samples), default=self.started_ns)
        counts = {name: 0 for name in OUTCOME_NAMES}
        for s in samples:
            counts[OUTCOME_NAMES[s.outcome]] += 1
        return LoadReport(samples, self.started_ns, max(ended, self.deadline_ns), counts)

    def close(self) -> None:
        """Stop the traders, let in-flight requests end (bounded), then close the channels: a
        trader must never call into a closed channel (Ctrl-C in the demo)."""
        self._stop.set()
        deadline = time.monotonic() + CLOSE_JOIN_S
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.connection.close()

    def _rejected(self, error: RequestRejected) -> None:
        """Record a refused request; a refusal of the caller stops the run (Rule 5)."""
        text = str(error)
        self.errors.append(text)
        if text.startswith(CALLER_REFUSALS) and not self.refused:
            self.refused = text
            self._stop.set()

    def _trade(self, index: int) -> None:
        config = self.config
        client = self.clients[index]
        workload = Workload(config.seed * 1_000_003 + index, config.symbols)
        samples = self._samples[index]
        interval_ns = int(config.traders * 1e9 / config.rate_per_s) if config.rate_per_s else 0
        due_ns = self.started_ns + (interval_ns * index) // config.traders
        while not self._stop.is_set() and len(samples) < SAMPLES_MAX:
            now = time.monotonic_ns()
            if interval_ns:
                if due_ns > now:
                    time.sleep((due_ns - now) / 1e9)
                start_ns, due_ns = due_ns, due_ns + interval_ns
            else:
                start_ns = now
            if start_ns >= self.deadline_ns:
                return
            try:
                samples.append(self._one(client, workload, start_ns))
            except ValueError:  # grpc: "Cannot invoke RPC on closed channel"
                if self._stop.is_set():
                    return  # shut down while this request was in flight
                raise

    def _one(self, client: TraderClient, workload: Workload, start_ns: int) -> Sample:
        request = workload.next_request()
        try:
            if isinstance(request, Submit):
                result = client.submit(request.symbol, request.side, request.price,
                                       request.quantity,
                                       immediate_or_cancel=request.immediate_or_cancel)
                if request.price and _judge(result.reply, request.quantity)[1]:
                    workload.remember(result.reply.order_id, request.symbol)
            elif isinstance(request, Cancel):
                result = client.cancel(request.order_id, request.symbol)
            else:
                assert isinstance(request, Replace)
                result = client.replace(request.order_id, request.quantity_delta,
                                        request.new_price, request.symbol)
        except RequestRejected as exc:
            self._rejected(exc)
            return Sample(start_ns, time.monotonic_ns(), 1, 0, INVALID, "")
        except ExchangeUnreachable as exc:
            self.errors.append(str(exc))
            return Sample(start_ns, time.monotonic_ns(), 0, 0, FAILED, "")
        end_ns = time.monotonic_ns()
        return Sample(start_ns, end_ns, result.attempts, result.first_failure_ns,
                      _outcome(result.reply), result.server)

    def _run_sessions(self) -> None:
        """Rule 4: every session trader of the run, as coroutines of one event loop."""
        asyncio.run(self._sessions())

    async def _sessions(self) -> None:
        channels = LoopChannels(self.config.addresses, self.config.tls,
                                self.connection.leader_guess)
        try:
            await asyncio.gather(*(self._trade_stream(index, channels)
                                   for index in range(self.config.traders)))
        finally:
            await channels.close()

    async def _trade_stream(self, index: int, channels: LoopChannels) -> None:
        """One trader over an OrderSession (Rule 4)."""
        config = self.config
        client = self.clients[index]
        session = AsyncSessionClient(channels, client.client_id, give_up_s=client.give_up_s,
                                     first_seq=self.config.first_seq)
        workload = Workload(config.seed * 1_000_003 + index, config.symbols)
        samples = self._samples[index]
        sent: dict[int, tuple[int, int, Request]] = {}  # seq -> (send ns, reconnects, request)
        window_orders = config.window * config.batch
        try:
            while not self._stop.is_set() and len(samples) < SAMPLES_MAX:
                now = time.monotonic_ns()
                sending = now < self.deadline_ns
                while sending and session.in_flight + config.batch <= window_orders:
                    await session.send(self._order_list(session, workload, sent, now))
                if not session.in_flight:
                    return
                if not sending and now > self.deadline_ns + int(DRAIN_S * 1e9):
                    return
                self._absorb(session, await session.receive(), workload, sent, samples)
        except (RequestRejected, ExchangeUnreachable) as exc:
            if isinstance(exc, RequestRejected):
                self._rejected(exc)
            else:
                self.errors.append(str(exc))
            end_ns = time.monotonic_ns()
            outcome = INVALID if isinstance(exc, RequestRejected) else FAILED
            samples.extend(Sample(start, end_ns, 0, 0, outcome, "")
                           for start, _, _ in sent.values())
        finally:
            session.close()

    def _order_list(self, session: AsyncSessionClient, workload: Workload,
                    sent: dict[int, tuple[int, int, Request]], now_ns: int) -> pb.SessionRequest:
        """The next ``batch`` requests of ``workload``, built in place (traders.session Rule 5)
        into one order list, each noted in ``sent``."""
        orders = session.order_list()
        for _ in range(self.config.batch):
            request = workload.next_request()
            if isinstance(request, Submit):
                session.submit_order(request.symbol, request.side, request.price,
                                     request.quantity,
                                     immediate_or_cancel=request.immediate_or_cancel, into=orders)
            elif isinstance(request, Cancel):
                session.cancel_order(request.order_id, request.symbol, into=orders)
            else:
                session.replace_order(request.order_id, request.quantity_delta,
                                      request.new_price, request.symbol, into=orders)
            sent[session.last_seq] = (now_ns, session.reconnects, request)
        return orders

    def _absorb(self, session: AsyncSessionClient, reports: list[pb.OrderReply],
                workload: Workload, sent: dict[int, tuple[int, int, Request]],
                samples: list[Sample]) -> None:
        """Turn one message's reports into samples (Rule 2) and remember resting orders."""
        end_ns = time.monotonic_ns()
        server = session.target
        for report in reports:
            if report.unsolicited:
                self.unsolicited += 1
                continue
            entry = sent.pop(report.seq, None)
            if entry is None:
                continue
            start_ns, reconnects, request = entry
            retried = session.reconnects - reconnects
            # a limit order may rest: its quantity; anything else never rests (0)
            quantity = request.quantity if isinstance(request, Submit) and request.price else 0
            outcome, resting = _judge(report, quantity)
            if report.log_index == 0 and any(e.kind == "rejected" for e in report.events):
                outcome = INVALID
            # A retried order's first failure: when the outage it lived through began (a cold
            # start may take seconds of failed reconnects), or its send if that came later.
            first_failure_ns = max(start_ns, session.outage_started_ns) if retried else 0
            samples.append(Sample(start_ns, end_ns, 1 + retried, first_failure_ns, outcome,
                                  server))
            if resting:  # a quantity of 0 never rests
                workload.remember(report.order_id, request.symbol)
