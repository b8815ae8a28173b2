"""The replicated deduplication table that makes order entry exactly-once.

Rule 1: the table is part of the replicated state: it changes only when a committed log entry is
        applied, and only as a function of that entry and the table itself, so every replica that
        applied the same prefix of the log holds the same table (no clock, no randomness).
Rule 2: a (client_id, seq) that is in the table is never executed again; its stored reply is
        returned instead. This is what makes a retry exactly-once, also after a failover, and also
        when a proposal that raised NotLeader was committed after all and is proposed again.
Rule 3: the table is bounded. Per client it keeps the replies of the last ``seqs_per_client_max``
        sequence numbers (oldest inserted evicted first) and remembers the highest evicted seq as
        the client's *floor*: a seq at or below the floor that is not in the table is refused as
        too old (it might have executed) and never executed. Clients beyond ``clients_max`` are
        evicted least recently used first (by apply order). A client must keep fewer than
        ``seqs_per_client_max`` requests in flight.
Rule 4: the table's whole state is its limits plus, per client in LRU order (least recently
        applied first), the floor and the replies in insertion order, plus the evicted clients'
        floors in eviction order; ``records`` and ``evicted_floors`` read exactly that and
        ``restore`` rebuilds it (exchange.snapshot), so a restored table evicts exactly as the
        original would.
Rule 5: an evicted client keeps its floor: the highest seq it had stored (or its floor, if
        higher) goes to a bounded map of evicted clients' floors (``evicted_floors_max``,
        oldest eviction forgotten first), so a late retry of an evicted client is refused as
        too old instead of executing again; when the client comes back its floor comes with it.
        Only a client evicted from both (``clients_max + evicted_floors_max`` other clients
        applied since) is forgotten entirely.

Cost: ``lookup`` and ``record`` are O(1) amortized (an eviction is O(seqs_per_client_max)).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

DEDUP_SEQS_PER_CLIENT_MAX = 128  # replies kept per client: far more than a client keeps in flight
DEDUP_CLIENTS_MAX = 4_096  # distinct clients remembered; least recently applied evicted first.
# Memory at the limit (scripts/dedup_memory.py measures ~414 B per stored reply of a resting
# order, ~156 B per evicted floor): 4,096 x 128 x 414 B + 131,072 x 156 B = ~237 MB (goal: 256).
DEDUP_EVICTED_FLOORS_MAX = 131_072  # evicted clients whose floor is kept (Rule 5): ~156 B each

ReplyT = TypeVar("ReplyT")


class _ClientRecord(Generic[ReplyT]):
    """One client's stored replies. A written-out slotted class, not a slotted generic
    dataclass: mypyc compiles this module (orderbook.build Rule 4) and rejects that one."""

    __slots__ = ("floor_seq", "replies")

    def __init__(self, floor_seq: int, replies: OrderedDict[int, ReplyT]) -> None:
        self.floor_seq = floor_seq  # every seq <= floor_seq not in replies has been evicted
        self.replies = replies


class DedupTable(Generic[ReplyT]):
    """``(client_id, seq) -> reply`` with deterministic, bounded eviction (see the module rules)."""

    def __init__(
        self,
        seqs_per_client_max: int = DEDUP_SEQS_PER_CLIENT_MAX,
        clients_max: int = DEDUP_CLIENTS_MAX,
        evicted_floors_max: int = DEDUP_EVICTED_FLOORS_MAX,
    ) -> None:
        assert seqs_per_client_max >= 1, seqs_per_client_max
        assert clients_max >= 1, clients_max
        assert evicted_floors_max >= 0, evicted_floors_max
        self.seqs_per_client_max = seqs_per_client_max
        self.clients_max = clients_max
        self.evicted_floors_max = evicted_floors_max
        self._clients: OrderedDict[int, _ClientRecord[ReplyT]] = OrderedDict()
        self._evicted: OrderedDict[int, int] = OrderedDict()  # client id -> floor (Rule 5)

    def __len__(self) -> int:
        return sum(len(record.replies) for record in self._clients.values())

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def lookup(self, client_id: int, seq: int) -> ReplyT | None:
        """The stored reply of ``(client_id, seq)``, or ``None``. Read-only (no LRU update)."""
        record = self._clients.get(client_id)
        if record is None:
            return None
        return record.replies.get(seq)

    def probe(self, client_id: int, seq: int) -> tuple[ReplyT | None, bool]:
        """``(lookup(...), is_too_old(...))`` in one look-up (the apply path asks both)."""
        record = self._clients.get(client_id)
        if record is None:  # an evicted client keeps its floor (Rule 5)
            return None, seq <= self._evicted.get(client_id, 0)
        reply = record.replies.get(seq)
        if reply is not None:
            return reply, False
        return None, seq <= record.floor_seq

    def is_too_old(self, client_id: int, seq: int) -> bool:
        """True when ``seq`` is at or below the client's floor and not stored (Rule 3)."""
        record = self._clients.get(client_id)
        if record is None:
            return seq <= self._evicted.get(client_id, 0)
        return seq <= record.floor_seq and seq not in record.replies

    def record(self, client_id: int, seq: int, reply: ReplyT) -> None:
        """Store the reply of a request just executed. Precondition: not stored, not too old."""
        record = self._clients.get(client_id)
        if record is None:
            record = _ClientRecord(self._evicted.pop(client_id, 0), OrderedDict())
            self._clients[client_id] = record
            if len(self._clients) > self.clients_max:
                self._evict_client()
        else:
            self._clients.move_to_end(client_id)
        assert seq not in record.replies, (client_id, seq)
        record.replies[seq] = reply
        if len(record.replies) > self.seqs_per_client_max:
            evicted_seq, _ = record.replies.popitem(last=False)
            record.floor_seq = max(record.floor_seq, evicted_seq)
        assert len(record.replies) <= self.seqs_per_client_max

    def _evict_client(self) -> None:
        """Drop the least recently applied client, keeping its floor (Rule 5)."""
        client_id, record = self._clients.popitem(last=False)
        floor = max(record.floor_seq, max(record.replies, default=0))
        if self.evicted_floors_max == 0:
            return
        self._evicted[client_id] = floor
        if len(self._evicted) > self.evicted_floors_max:
            self._evicted.popitem(last=False)

    def evicted_floors(self) -> Iterator[tuple[int, int]]:
        """``(client_id, floor_seq)`` of evicted clients, oldest eviction first (Rule 4)."""
        return iter(self._evicted.items())

    def records(self) -> Iterator[tuple[int, int, OrderedDict[int, ReplyT]]]:
        """``(client_id, floor_seq, replies)`` per client, least recently applied first, replies
        oldest first (Rule 4). The caller must not mutate what it gets. O(1) per client."""
        for client_id, record in self._clients.items():
            yield client_id, record.floor_seq, record.replies

    @classmethod
    def restore(
        cls,
        seqs_per_client_max: int,
        clients_max: int,
        records: Iterable[tuple[int, int, OrderedDict[int, ReplyT]]],
        evicted_floors_max: int = DEDUP_EVICTED_FLOORS_MAX,
        evicted: Iterable[tuple[int, int]] = (),
    ) -> DedupTable[ReplyT]:
        """A table holding ``records`` and ``evicted`` as ``records()`` and ``evicted_floors()``
        yield them (Rule 4); takes ownership of the reply dicts. Preconditions (the snapshot
        decoder checks them): client ids distinct, at most ``clients_max`` of them, at most
        ``seqs_per_client_max`` replies each, at most ``evicted_floors_max`` evicted clients,
        none of them also a stored client."""
        table: DedupTable[ReplyT] = cls(seqs_per_client_max, clients_max, evicted_floors_max)
        clients = table._clients
        for client_id, floor_seq, replies in records:
            assert client_id not in clients, client_id
            assert len(replies) <= seqs_per_client_max, (client_id, len(replies))
            clients[client_id] = _ClientRecord(floor_seq, replies)
        assert len(clients) <= clients_max
        table._evicted.update(evicted)
        assert len(table._evicted) <= evicted_floors_max
        assert not any(client_id in clients for client_id in table._evicted)
        return table
