"""ExchangeNode's replicated order entry against an in-test consensus double.

The double keeps one shared log for several nodes and delivers committed entries to every node's
on_commit from a pump thread, as consensus.Replica does; it can be told to commit an entry and then
raise NotLeader (the ambiguous outcome the dedup table must absorb).
"""

import queue
import threading
import time

import pytest

from exchange.node import ExchangeNode, NotLeaderError, RequestRefused, ServerUnavailable
from exchange.state_machine import encode_instruments
from orderbook import AddOrder, CancelOrder, Side


class NotLeader(Exception):  # same name as consensus.NotLeader: the node maps by name
    def __init__(self, leader_id):
        super().__init__(f"not leader; leader is {leader_id}")
        self.leader_id = leader_id


class SharedLog:
    """One committed log; a pump thread per node applies it in order (like consensus's pump)."""

    def __init__(self, nodes: list[ExchangeNode]) -> None:
        self.entries: list[bytes] = []
        self.held: list[tuple[int, bytes]] = []
        self.leader = 1
        self.lock = threading.Lock()
        self.queues: list[queue.Queue] = [queue.Queue() for _ in nodes]
        self.pumps = [threading.Thread(target=self._pump, args=(n, q), daemon=True)
                      for n, q in zip(nodes, self.queues, strict=True)]
        for pump in self.pumps:
            pump.start()

    @staticmethod
    def _pump(node: ExchangeNode, entries: queue.Queue) -> None:
        while (item := entries.get()) is not None:
            node.on_commit(*item)

    def append(self, payload: bytes, deliver: bool = True) -> int:
        """Commit ``payload``; ``deliver=False`` keeps it from the pumps until ``deliver_held``
        (a commit the proposer does not learn of before it fails)."""
        with self.lock:
            self.entries.append(payload)
            index = len(self.entries)
            if not deliver:
                self.held.append((index, payload))
                return index
            for entries in self.queues:
                entries.put((index, payload))
        return index

    def deliver_held(self) -> None:
        with self.lock:
            held, self.held = self.held, []
            for item in held:
                for entries in self.queues:
                    entries.put(item)

    def close(self) -> None:
        for entries in self.queues:
            entries.put(None)
        for pump in self.pumps:
            pump.join(5)


class FakeReplica:
    def __init__(self, replica_id: int, log: SharedLog) -> None:
        self.replica_id = replica_id
        self.log = log
        self.commit_then_fail = False
        self.paused = False
        self.error = None
        self.recovery = None
        self.last_recovery = None
        self.leader_suspected = False

    @property
    def is_leader(self) -> bool:
        return self.log.leader == self.replica_id and not self.paused

    @property
    def leader_id(self):
        return self.log.leader

    @property
    def commit_index(self) -> int:
        return len(self.log.entries)

    def propose(self, payload: bytes, timeout_s: float = 1.0) -> int:
        if not self.is_leader:
            raise NotLeader(self.log.leader)
        if self.commit_then_fail:  # committed, but the leader fails before it learns so
            self.log.append(payload, deliver=False)
            raise NotLeader(None)
        return self.log.append(payload)

    def pause(self, announce: bool = True) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def stop(self) -> None:
        pass


@pytest.fixture
def trio():
    addresses = {1: "h:1", 2: "h:2", 3: "h:3"}
    nodes = [ExchangeNode(i, addresses, 3) for i in (1, 2, 3)]
    log = SharedLog(nodes)
    for node in nodes:
        node.attach(FakeReplica(node.replica_id, log))
    yield log, nodes
    log.close()


def _order(client: int, seq: int) -> AddOrder:
    return AddOrder(f"{client}.{seq}", "X", Side.BUY, 100, 10)


def test_leader_answers_after_apply_and_followers_redirect(trio):
    log, (n1, n2, _) = trio
    reply = n1.execute(5, 1, _order(5, 1))
    assert reply.log_index == 1 and [type(e).__name__ for e in reply.events] == ["Accepted"]
    with pytest.raises(NotLeaderError) as info:
        n2.execute(5, 2, _order(5, 2))
    assert info.value.leader_address == "h:1"


def test_committed_despite_not_leader_is_answered_from_dedup_after_failover(trio):
    log, (n1, n2, n3) = trio
    n1.replica.commit_then_fail = True  # type: ignore[union-attr]
    with pytest.raises(ServerUnavailable):  # NotLeader(None): no leader known
        n1.execute(6, 1, _order(6, 1))
    log.leader = 2
    log.deliver_held()
    for _ in range(200):  # let the pump threads apply entry 1 everywhere
        if all(n.state.applied_index == 1 for n in (n1, n2, n3)):
            break
        threading.Event().wait(0.01)
    retry = n2.execute(6, 1, _order(6, 1))
    assert retry.duplicate and retry.log_index == 1
    assert n2.state.executed_count == 1
    assert log.entries == [log.entries[0]]  # answered from the table: nothing proposed


def test_concurrent_clients_all_answered_and_replicas_agree(trio):
    log, nodes = trio
    replies = {}

    def trader(client: int) -> None:
        for seq in range(1, 21):
            replies[(client, seq)] = nodes[0].execute(client, seq, _order(client, seq))

    threads = [threading.Thread(target=trader, args=(c,)) for c in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(replies) == 80
    assert sorted(r.log_index for r in replies.values()) == list(range(1, 81))
    for _ in range(200):
        if all(n.state.applied_index == 80 for n in nodes):
            break
        threading.Event().wait(0.01)
    assert len({n.state.state_digest() for n in nodes}) == 1


def test_paused_node_is_unavailable(trio):
    _, (n1, _, _) = trio
    n1.pause()
    with pytest.raises(ServerUnavailable, match="paused"):
        n1.execute(7, 1, _order(7, 1))
    n1.resume()
    assert n1.execute(7, 1, _order(7, 1)).log_index == 1


# ---- the instrument list (node Rule 9) and in-flight requests per client (Rule 10) ----------

def _wait_applied(nodes, index):
    for _ in range(500):
        if all(n.state.applied_index >= index for n in nodes):
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"not every node applied entry {index}")


def _trio_with(lists):
    addresses = {1: "h:1", 2: "h:2", 3: "h:3"}
    nodes = [ExchangeNode(i, addresses, 3, instruments=symbols)
             for i, symbols in zip((1, 2, 3), lists, strict=True)]
    log = SharedLog(nodes)
    for node in nodes:
        node.attach(FakeReplica(node.replica_id, log))
    return log, nodes


def test_leader_fixes_its_list_first_and_refuses_unknown_symbols():
    log, nodes = _trio_with([("X", "Y")] * 3)
    try:
        n1 = nodes[0]
        assert n1.execute(5, 1, _order(5, 1)).log_index == 2
        assert log.entries[0] == encode_instruments(("X", "Y"))
        with pytest.raises(RequestRefused, match="unknown symbol 'Z'") as info:
            n1.execute(5, 2, AddOrder("5.2", "Z", Side.BUY, 100, 10))
        assert info.value.code == "INVALID_ARGUMENT" and len(log.entries) == 2
        _wait_applied(nodes, 2)
        assert {n.state.instruments for n in nodes} == {frozenset({"X", "Y"})}
        assert len({n.state.state_digest() for n in nodes}) == 1
        assert all(n.status().instruments == ("X", "Y") and not n.status().warning
                   for n in nodes)
    finally:
        log.close()


def test_a_node_started_with_another_list_serves_the_clusters_and_says_so():
    log, nodes = _trio_with([("X", "Y"), ("X",), ("X", "Y")])
    try:
        nodes[0].execute(5, 1, _order(5, 1))
        _wait_applied(nodes, 2)
        n2 = nodes[1]
        assert "the cluster's list, fixed by log entry 1, is X,Y" in n2.status().warning
        log.leader = 2  # the odd one leads: it proposes no list of its own
        reply = n2.execute(5, 2, AddOrder("5.2", "Y", Side.BUY, 100, 10))
        assert reply.refusal == 0 and len(log.entries) == 3
        _wait_applied(nodes, 3)
        assert len({n.state.state_digest() for n in nodes}) == 1
    finally:
        log.close()


def test_unreplicated_node_applies_its_list_before_its_first_order():
    node = ExchangeNode(1, {1: "h:1"}, 1, instruments=("X",))
    assert node.execute(5, 1, _order(5, 1)).log_index == 2
    assert node.state.instruments_index == 1
    with pytest.raises(RequestRefused, match="unknown symbol 'Y'"):
        node.execute(5, 2, AddOrder("5.2", "Y", Side.BUY, 100, 10))
    with pytest.raises(RequestRefused, match="unknown symbol 'Q'"):
        node.execute(5, 3, CancelOrder("5.1", "Q"))
    assert node.in_flight_of(5) == 0


def test_in_flight_requests_per_client_are_bounded(monkeypatch):
    monkeypatch.setattr("exchange.node.IN_FLIGHT_PER_CLIENT_MAX", 2)
    log, nodes = _trio_with([("X",)] * 3)
    n1 = nodes[0]
    try:
        n1.execute(9, 1, _order(9, 1))  # the list is fixed
        gate = threading.Event()
        propose = n1.replica.propose  # type: ignore[union-attr]

        def slow_propose(payload, timeout_s=1.0):
            gate.wait(5)
            return propose(payload, timeout_s)

        n1.replica.propose = slow_propose  # type: ignore[union-attr]
        replies = []
        threads = [threading.Thread(target=lambda s=s: replies.append(
            n1.execute(7, s, _order(7, s)))) for s in (1, 2)]
        for thread in threads:
            thread.start()
        for _ in range(500):
            if n1.in_flight_of(7) == 2:
                break
            threading.Event().wait(0.01)
        with pytest.raises(RequestRefused, match="IN_FLIGHT_PER_CLIENT_MAX") as info:
            n1.execute(7, 3, _order(7, 3))
        assert info.value.code == "RESOURCE_EXHAUSTED" and "client 7" in str(info.value)
    finally:
        gate.set()
        for thread in threads:
            thread.join(5)
        log.close()
    assert len(replies) == 2 and n1.in_flight_of(7) == 0


def _execute_in_thread(node: ExchangeNode, client: int, seq: int) -> tuple[threading.Thread, list]:
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(node.execute(client, seq, _order(client, seq)))
        except Exception as exc:  # the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_request_during_an_election_waits_and_runs_where_the_election_ended(trio):
    """Rule 4: no leader known -> the request waits; this server won -> it executes here."""
    log, (_, n2, _) = trio
    log.leader = None
    thread, outcome = _execute_in_thread(n2, 7, 1)
    thread.join(0.02)
    assert thread.is_alive() and not outcome  # held, not bounced round the servers
    log.leader = 2
    n2.leader_changed()
    thread.join(2)
    assert not thread.is_alive() and outcome[0].log_index == 1
    assert n2.state.executed_count == 1


def test_a_request_during_an_election_is_redirected_to_the_winner(trio):
    log, (_, n2, _) = trio
    log.leader = None
    thread, outcome = _execute_in_thread(n2, 8, 1)
    thread.join(0.02)
    assert thread.is_alive()
    log.leader = 3
    n2.leader_changed()
    thread.join(2)
    assert isinstance(outcome[0], NotLeaderError) and outcome[0].leader_address == "h:3"
    assert log.entries == []


def test_a_request_for_a_suspected_leader_is_held_until_the_election_ends(trio):
    """Rule 4: the known leader has gone silent -> hold, not redirect to it; this server wins
    the election -> the request executes here."""
    log, (_, n2, _) = trio
    log.leader = 1
    n2.replica.leader_suspected = True  # type: ignore[union-attr]
    thread, outcome = _execute_in_thread(n2, 10, 1)
    thread.join(0.02)
    assert thread.is_alive() and not outcome
    log.leader = 2
    n2.replica.leader_suspected = False  # type: ignore[union-attr]
    n2.leader_changed()
    thread.join(2)
    assert not thread.is_alive() and outcome[0].log_index == 1


def test_a_request_for_a_leader_whose_beat_resumes_is_redirected_to_it(trio):
    log, (_, n2, _) = trio
    log.leader = 1
    n2.replica.leader_suspected = True  # type: ignore[union-attr]
    thread, outcome = _execute_in_thread(n2, 11, 1)
    thread.join(0.02)
    assert thread.is_alive()
    n2.replica.leader_suspected = False  # type: ignore[union-attr]  # only the re-check sees it
    thread.join(2)
    assert isinstance(outcome[0], NotLeaderError) and outcome[0].leader_address == "h:1"
    assert log.entries == []


def test_a_request_waits_for_an_election_only_so_long(trio):
    from exchange.node import LEADER_WAIT_S

    log, (_, n2, _) = trio
    log.leader = None
    begun = time.monotonic()
    with pytest.raises(ServerUnavailable, match="no leader is known"):
        n2.execute(9, 1, _order(9, 1))
    assert time.monotonic() - begun >= LEADER_WAIT_S * 0.9
    assert log.entries == []


def test_a_pause_answers_the_requests_waiting_on_the_leader_at_once(trio):
    """Rule 11: a request queued behind a proposal in flight when its leader is paused gets
    ServerUnavailable now, not when that proposal ends; it is never proposed, and a retry of
    it elsewhere executes it once."""
    log, (n1, n2, _) = trio
    n1.execute(9, 1, _order(9, 1))
    gate = threading.Event()
    propose = n1.replica.propose  # type: ignore[union-attr]

    def stuck_propose(payload, timeout_s=1.0):
        gate.wait(5)  # the followers have not revoked this leader yet
        return propose(payload, timeout_s)

    n1.replica.propose = stuck_propose  # type: ignore[union-attr]
    first, first_outcome = _execute_in_thread(n1, 12, 1)  # proposes, in its own thread
    for _ in range(500):
        if n1.in_flight_of(12):
            break
        threading.Event().wait(0.01)
    queued, queued_outcome = _execute_in_thread(n1, 13, 1)  # waits behind that proposal
    for _ in range(500):
        if n1.in_flight_of(13):
            break
        threading.Event().wait(0.01)
    n1.pause()
    queued.join(1.0)
    assert not queued.is_alive() and isinstance(queued_outcome[0], ServerUnavailable)
    assert "paused before answering" in str(queued_outcome[0])
    gate.set()  # the proposal in flight ends (here: refused, the replica is paused)
    first.join(2)
    assert isinstance(first_outcome[0], ServerUnavailable), first_outcome
    assert n1.in_flight_of(12) == 0 and n1.in_flight_of(13) == 0
    log.leader = 2
    n2.leader_changed()
    assert n2.execute(13, 1, _order(13, 1)).log_index == 2
    assert len(log.entries) == 2  # 9.1, then 13.1 proposed once, by n2 (12.1 was refused)
