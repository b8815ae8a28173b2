"""Errors the consensus library raises on purpose (operating errors, not programmer errors).

Rule 1: every error says what happened and what to do, in one line.
Rule 2: ``NotLeader`` carries the current leader id when this replica knows it, else ``None``.
Rule 3: ``propose`` raises only ``NotLeader``, ``ProposalTimeout``, ``LogOverrun`` or
        ``ReplicaStopped``; none of them is ever raised for an entry that was reported committed.
"""

from __future__ import annotations


class ConsensusError(Exception):
    """Base class of every error of the consensus library."""


class NotLeader(ConsensusError):
    """This replica is not (or no longer) the leader; the entry was not reported committed."""

    def __init__(self, leader_id: int | None, detail: str = "") -> None:
        self.leader_id = leader_id
        where = f"the leader is replica {leader_id}" if leader_id else "no leader is known yet"
        super().__init__(f"not the leader ({where}){': ' + detail if detail else ''}")


class ProposalTimeout(ConsensusError, TimeoutError):
    """A proposal could not be replicated in time (the log is full of unapplied entries)."""


class LogOverrun(ConsensusError):
    """A replica fell further behind than the circular log holds; state transfer is needed."""

    def __init__(self, replica_id: int, index: int, found_index: int,
                 why: str | None = None) -> None:
        self.replica_id = replica_id
        self.index = index
        self.found_index = found_index
        super().__init__(
            f"replica {replica_id} fell behind by more than the log holds: it needs entry {index} "
            f"but {why or f'its slot already holds entry {found_index}'}; state transfer needed"
        )


class ReplicaStopped(ConsensusError):
    """The replica was stopped (or never started); it cannot propose."""
