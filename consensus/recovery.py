"""Leader change: the Paxos prepare a new leader runs once, and catching followers up.

Rule 1 (design Rule 2): after a majority granted write permission, the new leader picks a proposal
        ``b`` above every ``min_proposal`` it reads (``b = round * 256 + id``), writes
        ``min_proposal = b`` on the majority, reads their logs from its own first undecided index,
        adopts for every slot the entry with the highest proposal, stops at the first slot nobody
        holds, and rewrites the adopted entries with proposal ``b``: locally, then on each follower
        (Rule 2). Only then is the tail committed and proposals served.
Rule 2 (design Rule 3): before a follower receives new entries, its log is rewritten with
        proposal ``b`` from its own first undecided index up to the leader's tail. A follower the
        leader cannot catch up (the leader's log no longer holds what it lacks) is given the
        last ``slots`` entries, so its pump reports ``LogOverrun`` instead of stalling.
Rule 3: a candidate that cannot be sure to read an entry that must be committed (a later wrap
        in any slot it needs, or an applied entry nobody holds) fails with ``LogOverrun``
        instead of leading: adopting a stale or shorter prefix would overwrite committed entries.
Rule 5: a leader that gains a follower (again) reads its ``min_proposal`` first and steps down
        if it is above its own proposal; it then raises it to its own. Every follower that ever
        received a leader's entries thus carries that leader's proposal, so a deposed leader that
        regains such a follower (say, while the new leader is paused) cannot overwrite entries
        the newer leader committed.
Rule 4: every function here runs with the role mutex held, and every remote write that fails drops
        that follower; fewer than a majority left means the prepare failed (the caller steps
        down).

Why it is safe: a follower grants permission only after revoking the previous holder (fabric Rule
4), so when the new leader reads a follower's log no older leader can still write it; any entry
committed by an older leader is on a majority, hence on one replica the new leader reads, with
the highest proposal among what it reads for that slot (Paxos), and is adopted unchanged.
"""

from __future__ import annotations

from consensus import constants as c
from consensus import log as log_mod
from consensus.errors import LogOverrun
from consensus.fabric.base import FabricError
from consensus.log import Entry
from consensus.state import LOGGER, Peer, ReplicaState


def choose_proposal(state: ReplicaState, granted: list[Peer]) -> int:
    """A proposal number above every ``min_proposal`` read, unique to this replica."""
    highest = log_mod.U64.unpack_from(state.log_buf, log_mod.MIN_PROPOSAL_OFFSET)[0]
    for peer in granted:
        value = log_mod.U64.unpack(peer.log.read(log_mod.MIN_PROPOSAL_OFFSET, 8))[0]
        highest = max(highest, value)
    proposal = (highest // c.PROPOSAL_ROUND_STRIDE + 1) * c.PROPOSAL_ROUND_STRIDE
    proposal += state.replica_id
    assert proposal > highest and proposal % c.PROPOSAL_ROUND_STRIDE == state.replica_id
    return int(proposal)


def _local_entry(state: ReplicaState, index: int) -> Entry | None:
    layout = state.layout
    return log_mod.read_entry(state.log_buf, layout.offset(index), index, layout.payload_size_max)


def _slot_index(state: ReplicaState, raw: bytes | memoryview, offset: int) -> int:
    return int(log_mod.U64.unpack_from(raw, offset)[0])


def adopt(state: ReplicaState, granted: list[Peer], start: int) -> list[Entry]:
    """Entries ``start..`` with the highest proposal among this replica and ``granted``.

    Raises ``LogOverrun`` (this replica is too far behind to lead) when an entry that must be
    committed may be missing from what it read: a slot holding a later wrap in any log read (a
    leader writes ``k + slots`` only after ``k`` was applied, so the entries read for ``k``
    may all be stale, even this replica's own), or no log holding an entry some replica applied.
    """
    applied_max = max([state.applied] + [first_undecided(peer) - 1 for peer in granted])
    adopted: list[Entry] = []
    for index in range(start, start + state.layout.slots):
        best = _local_entry(state, index)
        later = _slot_index(state, state.log_buf, state.layout.offset(index))
        for peer in granted:
            raw = peer.log.read(state.layout.offset(index), state.layout.slot_bytes)
            later = max(later, _slot_index(state, raw, 0))
            found = log_mod.read_entry(raw, 0, index, state.layout.payload_size_max)
            if found is not None and (best is None or found.proposal > best.proposal):
                best = found
        if later > index:  # the cluster applied ``index``; what we read may be stale
            raise LogOverrun(state.replica_id, index, later)
        if best is None:
            if index <= applied_max:
                raise LogOverrun(state.replica_id, index, applied_max)
            break
        assert best.index == index
        adopted.append(best)
    assert len(adopted) <= state.layout.slots
    return adopted


def first_undecided(peer: Peer) -> int:
    return int(log_mod.U64.unpack(peer.log.read(log_mod.FIRST_UNDECIDED_OFFSET, 8))[0])


class Deposed(Exception):
    """A follower's ``min_proposal`` is above this leader's proposal: a newer leader used it."""


def catch_up(state: ReplicaState, peer: Peer, tail: int, commit: int, start_at: int = 1) -> bool:
    """Rewrite ``peer``'s log from its first undecided index (or ``start_at``, when later: the
    entries before it were copied already) to ``tail`` with this leader's proposal (Rule 2);
    return False if a write failed (the caller drops the peer).

    Raises ``Deposed`` without writing anything when the peer's ``min_proposal`` is above this
    leader's proposal (Rule 5): holding its permission again does not make this leader current.
    """
    slots = state.layout.slots
    buf = bytearray(state.layout.slot_bytes)
    try:
        seen = log_mod.U64.unpack(peer.log.read(log_mod.MIN_PROPOSAL_OFFSET, 8))[0]
        if seen > state.proposal:
            raise Deposed(f"replica {peer.replica_id} has min_proposal {seen} > {state.proposal}")
        peer.log.write(log_mod.MIN_PROPOSAL_OFFSET, log_mod.U64.pack(state.proposal))
        start = max(first_undecided(peer), start_at, tail - slots + 1)
        for index in range(start, tail + 1):
            entry = _local_entry(state, index)
            if entry is None:
                if index <= state.applied:  # committed, and before this leader's log starts
                    peer.log.write(log_mod.FLOOR_OFFSET, log_mod.U64.pack(index + 1))
                    LOGGER.warning("leader %d: replica %d needs entry %d, which this leader's "
                                   "log no longer holds; told to fetch a snapshot (log Rule 5)",
                                   state.replica_id, peer.replica_id, index)
                    return False
                LOGGER.error("leader %d cannot catch up replica %d: entry %d is not in its log",
                             state.replica_id, peer.replica_id, index)
                return False
            length = log_mod.encode_entry(buf, index, state.proposal, commit, entry.payload)
            peer.log.write(state.layout.offset(index), memoryview(buf)[:length])
        word = log_mod.COMMIT_WORD.pack(state.proposal, commit, state.proposal)
        peer.log.write(log_mod.COMMIT_WORD_OFFSET, word)
    except FabricError as error:
        LOGGER.info("leader %d: catching up replica %d failed: %s", state.replica_id,
                    peer.replica_id, error)
        return False
    return True


def prepare(state: ReplicaState, granted: list[Peer]) -> bool:
    """Run Rule 1 with ``granted`` (peers that granted permission); on success the state is
    leading with the adopted tail committed. Caller holds role; returns False on failure."""
    assert state.campaigning and not state.leading
    try:
        proposal = choose_proposal(state, granted)
    except FabricError:
        return False
    ok = _write_to_majority(state, granted, log_mod.MIN_PROPOSAL_OFFSET,
                            log_mod.U64.pack(proposal))
    if ok is None:
        return False
    log_mod.U64.pack_into(state.log_buf, log_mod.MIN_PROPOSAL_OFFSET, proposal)
    state.proposal = proposal
    start = state.applied + 1
    try:
        adopted = adopt(state, ok, start)
    except FabricError:
        return False
    except LogOverrun as error:
        state.failure_pending = error
        return False
    tail = start - 1 + len(adopted)
    buf = bytearray(state.layout.slot_bytes)
    for entry in adopted:
        length = log_mod.encode_entry(buf, entry.index, proposal, 0, entry.payload)
        offset = state.layout.offset(entry.index)
        state.log_buf[offset : offset + length] = buf[:length]
    try:
        followers = [peer for peer in ok if catch_up(state, peer, tail, 0)]
    except Deposed as error:
        LOGGER.info("replica %d: prepare found a newer leader: %s", state.replica_id, error)
        return False
    if len(followers) + 1 < state.majority:
        return False
    return _install(state, followers, proposal, tail)


def _write_to_majority(
    state: ReplicaState, peers: list[Peer], offset: int, data: bytes
) -> list[Peer] | None:
    """Write ``data`` at ``offset`` of every peer's log; return the peers it landed on, or None
    when they and this replica together are no majority."""
    landed: list[Peer] = []
    for peer in peers:
        try:
            peer.log.write(offset, data)
        except FabricError:
            continue
        landed.append(peer)
    return landed if len(landed) + 1 >= state.majority else None


def _install(
    state: ReplicaState, followers: list[Peer], proposal: int, tail: int
) -> bool:
    """Commit the adopted tail everywhere and start serving."""
    word = log_mod.COMMIT_WORD.pack(proposal, tail, proposal)
    serving = _write_to_majority(state, followers, log_mod.COMMIT_WORD_OFFSET, word)
    if serving is None:
        return False
    state.log_buf[log_mod.COMMIT_WORD_OFFSET : log_mod.COMMIT_WORD_OFFSET + len(word)] = word
    state.followers = serving
    # Every peer not serving is asked again by the first upkeep (election Rule 4), not only the
    # granted ones: a peer that restarted on fresh memory during the campaign was reconnected
    # with its request forgotten (election Rule 7) and would never be asked otherwise.
    state.excluded = {p.replica_id for p in state.peers.values() if p not in serving}
    state.next_index = tail + 1
    state.commit_index = tail
    state.recycle_limit = 0
    state.leading = True
    state.campaigning = False
    LOGGER.info("replica %d leads with proposal %d from index %d (%d followers)",
                state.replica_id, proposal, tail + 1, len(serving))
    return True
