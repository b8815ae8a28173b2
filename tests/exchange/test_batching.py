"""The leader's group commit: idle requests go at once, concurrent ones share an entry, bounds."""

import threading
import time

from exchange.batching import CONTENDED_S, SMALL_BATCH, Batcher, Dropped, Pending
from exchange.config import BATCH_REQUESTS_MAX, PAYLOAD_SIZE_MAX_BYTES
from exchange.state_machine import BATCH_HEADER, ENTRY_HEADER, ExchangeStateMachine, Reply
from orderbook import AddOrder, Side, encode_command

WAIT_S = 5.0


class Sink:
    def __init__(self, cancelled: bool = False) -> None:
        self.cancelled = cancelled
        self.replies: list[Reply] = []
        self.errors: list[Exception] = []

    def deliver(self, reply: Reply) -> None:
        self.replies.append(reply)

    def fail(self, error: Exception) -> None:
        self.errors.append(error)


class Log:
    """A propose double: records entries and their proposing threads; can hold a proposal."""

    def __init__(self) -> None:
        self.entries: list[bytes] = []
        self.threads: list[str] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self.error: Exception | None = None

    def propose(self, payload: bytes) -> int:
        self.entered.set()
        assert self.hold.wait(WAIT_S)
        if self.error is not None:
            raise self.error
        self.entries.append(payload)
        self.threads.append(threading.current_thread().name)
        return len(self.entries)

    def counts(self) -> list[int]:
        out = []
        for payload in self.entries:
            client_id, _ = ENTRY_HEADER.unpack_from(payload, 0)
            out.append(BATCH_HEADER.unpack_from(payload, 0)[2] if client_id == 0 else 1)
        return out


def _pending(client: int, seq: int, sink: Sink | None = None, symbol: str = "AAPL") -> Pending:
    body = encode_command(AddOrder(f"{client}.{seq}", symbol, Side.BUY, 100, 1))
    return Pending(client, seq, body, sink or Sink())


def _failed(batch: list[Pending], exc: Exception) -> None:
    for item in batch:
        item.sink.fail(exc)


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def _hold_a_proposal(batcher: Batcher, log: Log) -> threading.Thread:
    """A thread whose request's proposal is in flight and held until ``log.hold`` is set."""
    log.hold.clear()
    log.entered.clear()
    holder = threading.Thread(target=batcher.submit, args=([_pending(1, 1)],))
    holder.start()
    assert log.entered.wait(WAIT_S)
    return holder


def test_an_idle_request_is_proposed_at_once_in_its_own_thread_as_a_single_entry():
    log = Log()
    batcher = Batcher(log.propose, _failed, BATCH_REQUESTS_MAX, PAYLOAD_SIZE_MAX_BYTES)
    for seq in (1, 2, 3):
        batcher.submit([_pending(5, seq)])
        assert len(log.entries) == seq  # proposed before submit returned
    assert log.counts() == [1, 1, 1]
    assert set(log.threads) == {threading.current_thread().name}
    assert log.entries[0] == ENTRY_HEADER.pack(5, 1) + _pending(5, 1).body  # format 0
    batcher.stop()


def test_requests_arriving_during_a_proposal_share_the_next_entry_in_order():
    log = Log()
    batcher = Batcher(log.propose, _failed, BATCH_REQUESTS_MAX, PAYLOAD_SIZE_MAX_BYTES)
    first = _hold_a_proposal(batcher, log)
    for seq in range(1, 11):  # queued behind the held proposal: submit returns at once
        batcher.submit([_pending(2, seq)])
    assert log.entries == []
    log.hold.set()
    first.join(WAIT_S)
    _wait_for(lambda: sum(log.counts()) == 11, "the queued requests were never proposed")
    assert log.counts() == [1, 10]
    assert log.threads[1] == "proposer"
    sm = ExchangeStateMachine()
    replies = [a.reply for i, p in enumerate(log.entries, 1) for a in sm.apply_entry(i, p)]
    assert [(r.client_id, r.seq) for r in replies] == [(1, 1)] + [(2, s) for s in range(1, 11)]
    batcher.stop()


def test_batches_are_bounded_by_count_and_fill_a_log_slot_by_bytes():
    for requests_max, symbol in ((4, "AAPL"), (BATCH_REQUESTS_MAX, "S" * 16)):
        log = Log()
        batcher = Batcher(log.propose, _failed, requests_max, PAYLOAD_SIZE_MAX_BYTES)
        first = _hold_a_proposal(batcher, log)
        queued = [_pending(10**15 + n, 10**12 + n, symbol=symbol) for n in range(100)]
        batcher.submit(queued)
        log.hold.set()
        first.join(WAIT_S)
        _wait_for(lambda log=log: sum(log.counts()) == 101, "not everything was proposed")
        assert all(len(p) <= PAYLOAD_SIZE_MAX_BYTES for p in log.entries)
        counts = log.counts()[1:]
        if requests_max == 4:
            assert counts == [4] * 25
        else:  # long ids and symbols: the byte bound binds first; each entry is full
            assert max(counts) < requests_max
            item = queued[0].size
            for payload in log.entries[1:-1]:
                assert len(payload) + item > PAYLOAD_SIZE_MAX_BYTES, len(payload)
        batcher.stop()


def test_a_failed_proposal_fails_its_requests_and_drops_cancelled_ones():
    log = Log()
    batcher = Batcher(log.propose, _failed, BATCH_REQUESTS_MAX, PAYLOAD_SIZE_MAX_BYTES)
    log.error = RuntimeError("not leader")
    sinks = [Sink(), Sink()]
    batcher.submit([_pending(3, 1, sinks[0]), _pending(3, 2, sinks[1])])
    assert [len(s.errors) for s in sinks] == [1, 1]
    log.error = None
    cancelled, live = Sink(cancelled=True), Sink()
    batcher.submit([_pending(4, 1, cancelled), _pending(4, 2, live)])
    assert log.counts() == [1]  # only the live request was proposed
    assert [type(e) for e in cancelled.errors] == [Dropped] and not live.errors
    assert ENTRY_HEADER.unpack_from(log.entries[0], 0) == (4, 2)
    batcher.stop()


def _contend(batcher: Batcher, log: Log) -> None:
    """Make the batcher contended (Rule 5): a request queued behind a held proposal."""
    before = sum(log.counts())
    first = _hold_a_proposal(batcher, log)
    batcher.submit([_pending(2, 1)])  # queued behind it: contention
    log.hold.set()
    first.join(WAIT_S)
    _wait_for(lambda: sum(log.counts()) == before + 2, "the contended requests were not proposed")


def test_a_contended_small_batch_yields_once_so_runnable_handlers_join_its_entry():
    """Rule 5: the yield lets a handler that was ready queue behind the proposer, and both
    requests leave in one entry; uncontended, nothing yields."""
    log = Log()
    yields: list[int] = []
    batcher: Batcher

    def yield_gil() -> None:  # stands for the GIL hand-off: another handler submits meanwhile
        yields.append(len(log.entries))
        other = threading.Thread(target=batcher.submit, args=([_pending(4, len(yields))], True))
        other.start()
        other.join(WAIT_S)

    batcher = Batcher(log.propose, _failed, BATCH_REQUESTS_MAX, PAYLOAD_SIZE_MAX_BYTES,
                      yield_gil)
    batcher.submit([_pending(3, 1)])
    assert yields == [] and log.counts() == [1]  # idle: at once, no yield
    _contend(batcher, log)
    assert yields == []  # neither the first submitter (uncontended then) nor the queued one
    batcher.submit([_pending(3, 2)], pipelined=True)
    assert yields == [3]
    assert log.counts()[-1] == 2  # this request and the one queued during the yield
    sm = ExchangeStateMachine()
    replies = [a.reply for i, p in enumerate(log.entries, 1) for a in sm.apply_entry(i, p)]
    assert [(r.client_id, r.seq) for r in replies][-2:] == [(3, 2), (4, 1)]
    batcher.stop()


def test_no_yield_for_a_unary_call_a_large_batch_or_old_contention():
    log = Log()
    yields: list[int] = []
    batcher = Batcher(log.propose, _failed, BATCH_REQUESTS_MAX, PAYLOAD_SIZE_MAX_BYTES,
                      lambda: yields.append(1))
    _contend(batcher, log)
    batcher.submit([_pending(5, seq) for seq in range(1, SMALL_BATCH + 1)],
                   pipelined=True)  # an order list
    assert yields == []
    batcher.submit([_pending(6, 1)])
    assert yields == []  # a unary call never yields
    batcher.submit([_pending(6, 2)], pipelined=True)
    assert yields == [1]  # still contended, a small batch of a session
    time.sleep(CONTENDED_S * 2)
    batcher.submit([_pending(6, 3)], pipelined=True)
    assert yields == [1]  # contention is over
    batcher.stop()


def test_requests_queued_in_one_loop_turn_leave_as_one_entry_at_its_end():
    """Rule 6: submit_later schedules one flush per turn; everything queued before it runs is
    one batch; nothing is proposed before the flush."""
    log = Log()
    batcher = Batcher(log.propose, _failed, BATCH_REQUESTS_MAX, PAYLOAD_SIZE_MAX_BYTES)
    scheduled: list = []
    for client in (1, 2, 3):
        batcher.submit_later([_pending(client, 1), _pending(client, 2)], scheduled.append)
    assert len(scheduled) == 1 and log.entries == []
    scheduled.pop()()  # the loop runs the flush
    assert log.counts() == [6]
    batcher.submit_later([_pending(4, 1)], scheduled.append)  # the next turn: a new flush
    assert len(scheduled) == 1
    scheduled.pop()()
    assert log.counts() == [6, 1]  # a lone request is a single-request entry (Rule 2)
    batcher.stop()


def test_a_flush_that_finds_a_proposal_in_flight_leaves_the_queue_to_its_proposer():
    log = Log()
    batcher = Batcher(log.propose, _failed, BATCH_REQUESTS_MAX, PAYLOAD_SIZE_MAX_BYTES)
    thread = _hold_a_proposal(batcher, log)
    scheduled: list = []
    batcher.submit_later([_pending(2, 1), _pending(3, 1)], scheduled.append)
    assert scheduled == []  # no flush: the proposer in flight takes the queue (Rule 1)
    log.hold.set()
    thread.join(WAIT_S)
    _wait_for(lambda: len(log.entries) == 2, "the queued requests were proposed")
    assert log.counts() == [1, 2]
    batcher.stop()
