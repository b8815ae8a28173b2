"""Invariant checkers, fed as the run goes (every delivery, acknowledgement and landed write).

Rule 1 (agreement): no two replicas deliver different payloads at the same log index.
Rule 2 (durability): a payload acknowledged to a proposer at index i is the payload every replica
        delivers at i, forever after; no payload acknowledged at i is delivered elsewhere.
Rule 3 (prefix order): each replica incarnation delivers consecutive indexes, each once; a
        replica's first incarnation starts at index 1, a restarted one starts no later than right
        after what that replica had already delivered.
Rule 4 (integrity): only proposed payloads are delivered, each at one index only (the simulator
        never proposes a payload twice, so a second index means the protocol duplicated it).
Rule 5 (exclusive writer): between two permission changes of a follower's log region, writes of
        at most one replica land there; no permission change ever leaves two writers granted.
Rule 6 (catch-up, checked at the end): every live replica has delivered every index that was
        acknowledged before the catch-up deadline, including a replica that fell behind the log
        or restarted on fresh memory (it recovers through a snapshot, by itself).
Rule 7 (snapshots): a replica incarnation that installs a snapshot of index ``S`` continues its
        deliveries at ``S + 1`` (it may start there: a fresh incarnation need not deliver 1..S);
        a snapshot never goes back before what that incarnation already delivered.
Rule 8 (state digests): every replica's application digest at index ``i`` (after a delivery or
        a snapshot install) equals every other replica's digest at ``i``.

A violation is reported once through ``report`` (the world ends the run with it); checkers never
change the system they watch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from consensus.fabric.base import ReplicaIdT
from consensus.sim.fabric import EXCLUSIVE_REGION_NAMES

PAYLOAD_SHOWN_BYTES = 24


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


Report = Callable[[Violation], None]


def show(payload: bytes) -> str:
    text = payload[:PAYLOAD_SHOWN_BYTES]
    return repr(text) + ("..." if len(payload) > PAYLOAD_SHOWN_BYTES else "")


class ExclusiveWriterChecker:
    """Rule 5, as a ``FabricObserver`` of the simulated fabric."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self._landed: dict[tuple[ReplicaIdT, str], set[ReplicaIdT]] = {}
        self.permission_changes = 0

    def permission_changed(
        self, owner: ReplicaIdT, name: str, writers: frozenset[ReplicaIdT], cause: str
    ) -> None:
        if name not in EXCLUSIVE_REGION_NAMES:
            return
        self.permission_changes += 1
        self._landed[(owner, name)] = set()
        if len(writers) > 1:
            self._report(
                Violation(
                    "exclusive-writer",
                    f"region {owner}.{name} grants {sorted(writers)} at once ({cause} change)",
                )
            )

    def write_landed(self, owner: ReplicaIdT, name: str, writer: ReplicaIdT) -> None:
        if name not in EXCLUSIVE_REGION_NAMES or writer == owner:
            return
        landed = self._landed.setdefault((owner, name), set())
        landed.add(writer)
        if len(landed) > 1:
            self._report(
                Violation(
                    "exclusive-writer",
                    f"writes of {sorted(landed)} landed on {owner}.{name} between two "
                    "permission changes",
                )
            )


@dataclass(slots=True)
class _Stream:
    """One replica incarnation's deliveries so far."""

    first: int
    last: int


class HistoryChecker:
    """Rules 1-4 and 6 over the deliveries, proposals and acknowledgements of one run."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self.decided: dict[int, bytes] = {}
        self._index_of: dict[bytes, int] = {}
        self._proposed: set[bytes] = set()
        self.acked: dict[int, bytes] = {}
        self._streams: dict[tuple[ReplicaIdT, int], _Stream] = {}
        self._high: dict[ReplicaIdT, int] = {}
        self.deliveries = 0
        self.installs = 0

    def proposed(self, payload: bytes) -> None:
        assert payload not in self._proposed, "the simulator proposes each payload once"
        self._proposed.add(payload)

    def acknowledged(self, index: int, payload: bytes) -> None:
        known = self.acked.get(index)
        if known is not None and known != payload:
            self._fail("durability", f"index {index} acknowledged twice: {show(known)} and "
                       f"{show(payload)}")
        self.acked[index] = payload
        self._settle(index, payload, "acknowledged")

    def delivered(self, replica: ReplicaIdT, incarnation: int, index: int, payload: bytes) -> None:
        self.deliveries += 1
        self._check_order(replica, incarnation, index)
        if payload not in self._proposed:
            self._fail("integrity", f"replica {replica} delivered {show(payload)} at {index}, "
                       "which nobody proposed")
        self._settle(index, payload, f"delivered by replica {replica}")

    def _check_order(self, replica: ReplicaIdT, incarnation: int, index: int) -> None:
        key = (replica, incarnation)
        stream = self._streams.get(key)
        if stream is None:
            high = self._high.get(replica, 0)
            if incarnation == 1 and index != 1:
                self._fail("prefix", f"replica {replica} delivered index {index} first (not 1)")
            elif index > high + 1:
                self._fail("prefix", f"replica {replica} (incarnation {incarnation}) resumed "
                           f"delivering at {index}, skipping {high + 1}..{index - 1}")
            self._streams[key] = _Stream(index, index)
        else:
            if index != stream.last + 1:
                self._fail("prefix", f"replica {replica} delivered index {index} right after "
                           f"{stream.last}")
            stream.last = index
        self._high[replica] = max(self._high.get(replica, 0), index)

    def _settle(self, index: int, payload: bytes, source: str) -> None:
        known = self.decided.get(index)
        if known is None:
            self.decided[index] = payload
        elif known != payload:
            self._fail("agreement", f"index {index}: {show(payload)} {source}, but "
                       f"{show(known)} was decided there before")
        other = self._index_of.setdefault(payload, index)
        if other != index:
            self._fail("integrity", f"{show(payload)} {source} at index {index}, but it is "
                       f"already at index {other}")

    def snapshot_installed(self, replica: ReplicaIdT, incarnation: int, index: int) -> None:
        """Rule 7: ``replica``'s incarnation installed a snapshot of ``index``."""
        key = (replica, incarnation)
        stream = self._streams.get(key)
        if stream is None:
            self._streams[key] = _Stream(index + 1, index)
        else:
            if index < stream.last:
                self._fail("snapshot", f"replica {replica} installed a snapshot of index {index} "
                           f"after delivering through {stream.last}")
            stream.last = index
        self.installs += 1
        self._high[replica] = max(self._high.get(replica, 0), index)

    def last_delivered(self, replica: ReplicaIdT, incarnation: int) -> int:
        stream = self._streams.get((replica, incarnation))
        return 0 if stream is None else stream.last

    def check_caught_up(self, live: Iterable[tuple[ReplicaIdT, int]], acked_upto: int) -> None:
        """Rule 6: every (replica, incarnation) in ``live`` delivered through ``acked_upto``."""
        for replica, incarnation in live:
            last = self.last_delivered(replica, incarnation)
            if last < acked_upto:
                self._fail("catch-up", f"replica {replica} (incarnation {incarnation}) delivered "
                           f"only through {last}, but {acked_upto} was acknowledged long before "
                           "the end")

    def _fail(self, rule: str, detail: str) -> None:
        self._report(Violation(rule, detail))


class DigestChecker:
    """Rule 8: one application digest per index across every replica and incarnation."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self.digest_at: dict[int, tuple[bytes, ReplicaIdT]] = {}
        self.checked = 0

    def state(self, replica: ReplicaIdT, index: int, digest: bytes, how: str) -> None:
        """``replica``'s application reached ``digest`` at ``index`` (``how``: delivered or
        installed)."""
        self.checked += 1
        known = self.digest_at.get(index)
        if known is None:
            self.digest_at[index] = (digest, replica)
        elif known[0] != digest:
            self._report(Violation(
                "digest", f"replica {replica} {how} index {index} with digest "
                f"{digest.hex()[:16]}, replica {known[1]} had {known[0].hex()[:16]} there"))
