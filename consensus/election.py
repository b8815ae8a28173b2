"""The background plane: heartbeats, failure detection, the leader rule and permission switching.

Rule 1 (switcher): a request from member ``r`` in this replica's ctrl is granted when nobody holds
        this replica's log, ``r`` already holds it, the holder is dead or is not leading, or the
        holder is this replica and it is not leading (it yields to a lower-id candidate even while
        campaigning). Granting revokes every other writer first (fabric Rule 4), then grants
        ``r``, records it as the holder, answers into ``r``'s ctrl and only then records the
        request as answered: a crash or a failed write between the grant and the answer leaves
        the request pending, so the next turn (or the restarted incarnation) grants it again
        (``r`` is the holder then) and answers. A live, leading holder is never preempted: a
        spurious suspicion by one replica cannot depose a working leader.
Rule 2 (leader rule): a replica campaigns only when no live peer is leading and it is the lowest
        id among the live replicas (itself included). This is Mu's rule ("lowest live id") with
        one deviation: a resumed or restarted replica with a lower id does not preempt a live
        leader; it follows it (docs/consensus.md). Leaders are judged dead with
        ``dead_after_us``; for the lowest-live-id test, peers are judged with the shorter
        ``candidate_dead_after_us``: wrongly skipping a non-leader cannot depose anyone (Rule 1
        protects a live leader, candidates yield to lower ids), so a leader that stepped down
        (pause hook, stop) is replaced fast while a silent *leading* replica gets the full time.
Rule 3 (campaign): grant itself, write a fresh request number to every peer, wait (bounded) for a
        majority of answers while still serving the switcher, run the prepare
        (``recovery.prepare``) under the role mutex, then lead. Any failure steps down and backs
        off a random time before the next attempt.
Rule 4 (leader upkeep): a peer the leader lost (a write failed: permission revoked, even
        transiently) is asked again with a fresh request number; a peer that grants this leader
        later is caught up before it receives entries (design Rule 3); an idle leader publishes
        its commit word. A peer that moved on to another live leader refuses (Rule 1). The
        catch-up runs in two passes: the bulk (every entry up to the tail as it was) without the
        role mutex, so proposals go on meanwhile (in the demo, a leader back from a 3.6 s pause
        is such a peer: the longest silence traders saw after it fell from 44-128 ms to 36-42
        ms), then, under the mutex, only the entries proposed since, and the peer joins the
        followers. The bulk writes only entries this leader proposed, with its proposal, to
        a peer whose permission it holds: a peer that moved on fails the writes, and a leader
        that stepped down meanwhile wrote nothing another leader could not read as its own
        accepted values.
Rule 5: nothing here runs while paused: no answers, no campaign (also when the pause came
        while a turn was under way: a campaign begins under the role mutex only if not paused;
        found by simulator seed 12345533); the heartbeat activity stops beating too (fate
        sharing also stops it when a proposal is stuck). A failed replica (``LogOverrun``)
        neither beats nor campaigns but still answers requests: its log remains a valid
        acceptor for a majority, it just cannot deliver or lead.
Rule 6: a leader also reads every peer's ``holder`` word in its scan and steps down once fewer
        than a majority name it: an idle deposed leader (stopped, then continued, after another
        replica took over) learns it within a scan instead of at its next write, so it stops
        reporting itself leader. Stepping down is always safe; nothing else depends on it.
Rule 7: a peer whose regions were replaced (it restarted on fresh memory: reads raise
        ``RegionClosed``) is re-mapped from the registry, at most every
        ``reconnect_interval_us``, under ``role``: it leaves ``followers`` and, while this replica
        leads, is asked again with a fresh request (Rule 4) and caught up like any late grant.
Rule 8: while recovering (``consensus.rejoin``) a replica never campaigns, and while amnesiac its
        switcher grants only what rejoin Rule 1 allows; peers whose ``leading`` word says they
        recover are left out of the lowest-live-id test (they will not campaign).
Rule 9: the background activity runs every ``scan_interval_us`` while all is calm (this
        replica leads, or a leader is known and its counter moved in the last scan) and every
        ``scan_fast_interval_us`` otherwise, so a process may scan rarely and still detect a
        silent leader, and answer a candidate's request, within a fraction of a millisecond of
        the threshold. A silent peer that does not lead keeps nobody fast: after a fail-over the
        old leader stays silent, and fast scans at real-time priority for as long as it is
        down took a sixth of a core per replica from the new leader's order entry. With
        adaptive scanning on (``scan_fast_interval_us`` set), a leader scans every
        ``LEADER_CALM_FACTOR`` calm periods: nothing it does there is urgent (answering a
        spurious candidate, dropping or catching up followers, the idle commit flush), and its
        wake-ups take the GIL from the order entry it serves.
Rule 10: ``leader_suspected`` says that the leader this replica follows has been silent for more
        than two of its beats (with the native beat, 300 us apart, one silent scan), before the
        detector may declare it dead. It changes nothing in consensus; the application uses it
        to hold a request that it would otherwise redirect to a leader that is likely gone
        (exchange node Rule 4).
Rule 11 (``MU_CALM_WAIT=0`` turns it off): a follower that is calm (Rule 9) and runs the
        native beat waits for its next scan in C (native_beat Rule 7) instead of sleeping:
        it polls the leader's heartbeat word every ``scan_interval_us`` without the GIL and
        returns when it stood still for one
        period, when the leader's ``leading`` word or one of this replica's request slots
        changed, or after ``CALM_WAIT_MAX_US``. A wait that ends on a still heartbeat hands
        the value it saw to the detector before the scan that follows, so that scan counts one
        capped gap of silence (detector Rule 1), what a Python scan one period earlier would
        have counted. Its exact, GIL-free polls notice a held-up leader beat more often than
        Python's scans did; until the standby beat (native_beat Rule 9) kept a live leader
        beating when its beat thread's vCPU stalls, that deposed live leaders, and the wait was
        off by default (docs/consensus.md). Calm periods then take the GIL from nobody:
        at one Python scan a millisecond they cost an idle follower 8% of a core, taken from
        the pump and the application (with the wait 2.7%; docs/consensus.md). Without a
        mapped leader region (the verbs fabric, the simulator) the activity sleeps and scans
        as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from consensus import ctrl as ctrl_mod
from consensus.constants import (
    CALM_WAIT_MAX_US,
    CAMPAIGN_BACKOFF_US_MAX,
    LEADER_CALM_FACTOR,
    NATIVE_BEAT_INTERVAL_US,
)
from consensus.detector import FailureDetector
from consensus.fabric.base import FabricError, RegionClosed, RevokeStalled
from consensus.native_beat import WAIT_STILL, calm_wait_enabled
from consensus.recovery import Deposed, catch_up, prepare
from consensus.replication import flush_commit
from consensus.state import (
    LEADING_CAMPAIGN,
    LEADING_CATCHING_UP,
    LEADING_RECOVERING,
    LEADING_YES,
    LOGGER,
    PHASE_CAMPAIGN,
    PHASE_GRANTED,
    PHASE_LEADING,
    PHASE_SUSPECT,
    Peer,
    ReplicaState,
)

if TYPE_CHECKING:
    from consensus.rejoin import Rejoin

NS_PER_US = 1000


class Background:
    """The switcher, scanner and leader rule of one replica (one activity)."""

    def __init__(self, state: ReplicaState, on_leader_change: Callable[[int | None, bool], None]
                 | None) -> None:
        self.state = state
        cfg = state.config
        self.detector = FailureDetector(
            peers=cfg.peers, dead_after_ns=cfg.dead_after_us * NS_PER_US,
            gap_cap_ns=cfg.scan_gap_cap_us * NS_PER_US,
            startup_grace_ns=cfg.startup_grace_us * NS_PER_US)
        self.on_leader_change = on_leader_change
        self._scan_buf = memoryview(bytearray(ctrl_mod.SCAN.size))
        self._reported: int | None = -1
        self._backoff_until_ns = 0
        self._last_commit = 0
        self._commit_since_ns = 0
        self._flushed = 0
        self._candidate_dead_after_ns = cfg.candidate_dead_after_us * NS_PER_US
        self._alive_quick: frozenset[int] = frozenset()
        self._reconnect_at_ns: dict[int, int] = {}
        self.rejoin: Rejoin | None = None  # set by the replica (Rule 8)
        self._calm_wait = calm_wait_enabled()  # Rule 11 (MU_CALM_WAIT=0: off)

    # --- the activity ---------------------------------------------------------------------------
    def run(self) -> None:
        state = self.state
        runtime = state.runtime
        self.detector.reset(runtime.now_ns(), grace=True)
        interval_s = state.config.scan_interval_us / 1e6
        fast_s = state.config.scan_fast_us / 1e6
        adaptive = state.config.scan_fast_interval_us != 0
        leading_s = interval_s * LEADER_CALM_FACTOR if adaptive else interval_s  # Rule 9
        while not state.stopping:
            if state.paused:
                runtime.sleep(interval_s)
                continue
            if state.resumed:
                state.resumed = False
                self.detector.reset(runtime.now_ns(), grace=False)
            if state.failure is not None:
                self.switch()  # a failed replica stays a passive acceptor (Rule 5)
                self.scan()
            else:
                self.step()
            if state.leading:
                runtime.sleep(leading_s)
            elif not self._calm():
                runtime.sleep(fast_s)
            elif not self._wait_calm(interval_s):
                runtime.sleep(interval_s)

    def step(self) -> None:
        """One turn: answer requests, scan, then lead, follow or campaign."""
        state = self.state
        self.switch()
        self.scan()
        if state.leading:
            self.upkeep()
        elif self._should_campaign():
            self.campaign()
        self._report_leader()

    # --- scanning -------------------------------------------------------------------------------
    def scan(self) -> None:
        """Read every peer's (heartbeat, leading) pair and update the detector."""
        state = self.state
        now = state.runtime.now_ns()
        gap = self.detector.begin_scan(now)
        words = self._scan_buf
        for peer in state.peers.values():
            try:
                peer.ctrl.read_into(ctrl_mod.HEARTBEAT_OFFSET, words)
            except FabricError as error:
                self.detector.observe(peer.replica_id, -2, gap)
                if isinstance(error, RegionClosed):
                    self._reconnect(peer)
                continue
            beat, leading, applied, holder = ctrl_mod.SCAN.unpack_from(words, 0)
            self.detector.observe(peer.replica_id, beat, gap)
            state.peer_leading[peer.replica_id] = leading
            state.peer_applied[peer.replica_id] = applied
            state.peer_holder[peer.replica_id] = holder
        alive = self.detector.alive(now)
        if alive != state.alive:
            if any(state.peer_leading.get(p) == LEADING_YES for p in state.alive - alive):
                state.phase(PHASE_SUSPECT)
            LOGGER.info("replica %d: live peers %s -> %s", state.replica_id, sorted(state.alive),
                        sorted(alive))
        state.alive = alive
        self._alive_quick = self.detector.alive(now, self._candidate_dead_after_ns)

    def _calm(self) -> bool:
        """Rule 9, for a replica that does not lead: a leader is known and its counter moved in
        the last scan. A silent peer that does not lead (a crashed follower, the old leader once
        a new one is elected) leaves the scan calm: nothing fast depends on it."""
        leader = self._live_leader()
        return leader is not None and not self.detector.silent(leader)

    def _wait_calm(self, period_s: float) -> bool:
        """Rule 11: wait for the next scan in C; False if this replica cannot (then sleep)."""
        state = self.state
        beat = state.native_beat
        if beat is None or not self._calm_wait:
            return False
        leader = self._live_leader()
        if leader is None or leader not in state.peers:
            return False
        layout = state.ctrl_layout
        waited = beat.calm_wait(
            state.peers[leader].ctrl, ctrl_mod.HEARTBEAT_OFFSET, ctrl_mod.LEADING_OFFSET,
            state.ctrl_buf, [layout.request(p.position) for p in state.peers.values()],
            int(period_s * 1e9), CALM_WAIT_MAX_US * NS_PER_US)
        if waited is None:
            return False
        outcome, seen = waited
        if outcome == WAIT_STILL:
            self.detector.observe(leader, seen, 0)
        return True

    def leader_suspected(self) -> bool:
        """Rule 10: this replica follows a leader whose counter has stood still for longer
        than two of its beats (one silent scan with the native beat)."""
        state = self.state
        leader = state.leader_view
        if state.leading or leader is None or leader == state.replica_id:
            return False
        # peers run what this replica runs: the native beat where it started here
        beat_us = NATIVE_BEAT_INTERVAL_US if state.native_beat is not None else \
            state.config.heartbeat_interval_us
        return self.detector.silence_ns(leader) > 2 * beat_us * NS_PER_US

    def _reconnect(self, peer: Peer) -> None:
        """Rule 7."""
        state = self.state
        now = state.runtime.now_ns()
        if now < self._reconnect_at_ns.get(peer.replica_id, 0):
            return
        interval_ns = state.config.reconnect_interval_us * NS_PER_US
        self._reconnect_at_ns[peer.replica_id] = now + interval_ns
        try:
            log = state.fabric.connect(peer.replica_id, "log", 0.0)
            ctrl = state.fabric.connect(peer.replica_id, "ctrl", 0.0)
        except FabricError:
            return  # not registered again yet
        with state.role:
            old = (peer.log, peer.ctrl)
            peer.log, peer.ctrl = log, ctrl
            state.followers = [p for p in state.followers if p is not peer]
            if state.leading:
                state.excluded.add(peer.replica_id)
            state.requests.pop(peer.replica_id, None)
        LOGGER.warning("replica %d: replica %d restarted; connected to its new regions",
                       state.replica_id, peer.replica_id)
        for region in old:
            close = getattr(region, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # a read still holds a view of it: the GC unmaps it later
                    pass

    def _live_leader(self) -> int | None:
        state = self.state
        leaders = [p for p in state.alive if state.peer_leading.get(p) == LEADING_YES]
        if not leaders:
            return None
        holder = state.holder
        return holder if holder in leaders else min(leaders)

    def _should_campaign(self) -> bool:
        state = self.state
        if state.campaigning or state.runtime.now_ns() < self._backoff_until_ns:
            return False
        if state.recovery is not None or state.amnesiac:  # Rule 8
            return False
        if self._live_leader() is not None:
            return False
        candidates = {p for p in self._alive_quick
                      if state.peer_leading.get(p) not in (LEADING_RECOVERING, LEADING_CATCHING_UP)}
        return min(candidates | {state.replica_id}) == state.replica_id

    def _report_leader(self) -> None:
        state = self.state
        view = state.replica_id if state.leading else self._live_leader()
        state.leader_view = view
        if view != self._reported:
            self._reported = view
            if self.on_leader_change is not None:
                self.on_leader_change(view, view == state.replica_id)

    # --- switcher -------------------------------------------------------------------------------
    def switch(self) -> None:
        """Grant pending permission requests that Rule 1 allows."""
        state = self.state
        layout = state.ctrl_layout
        for peer in state.peers.values():
            request = state.word(layout.request(peer.position))
            if request == 0 or request == state.word(layout.answered(peer.position)):
                continue
            if self._may_grant(peer.replica_id):
                self._grant(peer, request)

    def _may_grant(self, requester: int) -> bool:
        state = self.state
        if state.amnesiac:  # Rule 8
            return self.rejoin is not None and self.rejoin.may_grant(requester)
        holder = state.holder
        if holder in (0, requester):
            return True
        if holder == state.replica_id:
            if state.leading:
                return False
            return not state.campaigning or requester < state.replica_id
        return holder not in state.alive or state.peer_leading.get(holder) != LEADING_YES

    def _revoke_all_but(self, keep: int) -> None:
        state = self.state
        for other in state.config.peers:
            if other != keep:
                state.log.revoke_write(other)

    def _grant(self, peer: Peer, request: int) -> None:
        state = self.state
        with state.role:
            if state.leading or state.campaigning:
                state.step_down_locked(f"granted replica {peer.replica_id} its log")
            try:
                self._revoke_all_but(peer.replica_id)
            except RevokeStalled as error:
                LOGGER.warning("replica %d: revoke stalled (%s); will retry", state.replica_id,
                               error)
                return
            state.log.grant_write(peer.replica_id)
            state.set_word(ctrl_mod.HOLDER_OFFSET, peer.replica_id)
        try:
            peer.ctrl.write(state.ctrl_layout.answer(state.position), ctrl_mod.U64.pack(request))
        except FabricError as error:
            LOGGER.info("replica %d: answering replica %d failed: %s", state.replica_id,
                        peer.replica_id, error)
            return
        # Recorded only once the answer is out (Rule 1): a crash (or a failed write) between the
        # grant and the answer leaves the request pending, so it is granted and answered again.
        state.set_word(state.ctrl_layout.answered(peer.position), request)

    # --- campaign -------------------------------------------------------------------------------
    def campaign(self) -> None:
        """Rule 3."""
        state = self.state
        request = self._begin_campaign()
        if request == 0:
            return
        granted = self._collect_answers(request)
        if granted is not None:
            state.phase(PHASE_GRANTED)
        with state.role:
            if granted is not None and state.campaigning and prepare(state, granted):
                state.set_word(ctrl_mod.LEADING_OFFSET, LEADING_YES)
                state.phase(PHASE_LEADING)
                return
            state.step_down_locked("campaign failed")
        pending, state.failure_pending = state.failure_pending, None
        if pending is not None:
            state.fail(pending)
            return
        rng = state.runtime.rng()
        wait_ns = int(rng.random() * CAMPAIGN_BACKOFF_US_MAX * NS_PER_US)
        self._backoff_until_ns = state.runtime.now_ns() + wait_ns

    def _begin_campaign(self) -> int:
        state = self.state
        with state.role:
            assert not state.leading
            if state.paused or state.stopping:  # Rule 5: the pause came after this turn began
                return 0
            try:
                self._revoke_all_but(state.replica_id)
            except RevokeStalled:
                return 0
            state.campaigning = True
            state.set_word(ctrl_mod.LEADING_OFFSET, LEADING_CAMPAIGN)
            state.set_word(ctrl_mod.HOLDER_OFFSET, state.replica_id)
            request = self._new_request()
            state.request = request
            state.requests = {peer: request for peer in state.peers}
        LOGGER.info("replica %d campaigns (request %d)", state.replica_id, request)
        state.phase(PHASE_CAMPAIGN)
        packed = ctrl_mod.U64.pack(request)
        for peer in state.peers.values():
            try:
                peer.ctrl.write(state.ctrl_layout.request(state.position), packed)
            except FabricError:
                continue
        return request

    def _new_request(self) -> int:
        """The next request number of this replica, persisted in its ctrl (ctrl Rule 3)."""
        state = self.state
        request = ctrl_mod.next_request(state.replica_id, state.word(ctrl_mod.MY_REQUEST_OFFSET))
        state.set_word(ctrl_mod.MY_REQUEST_OFFSET, request)
        return request

    def _deposed(self) -> bool:
        """Rule 6: fewer than a majority (this replica included) name this replica as the holder
        of their log in the last scan, so no entry this leader writes can commit any more."""
        state = self.state
        me = state.replica_id
        holding = 1 + sum(1 for holder in state.peer_holder.values() if holder == me)
        return holding < state.majority

    def _granted(self) -> list[Peer]:
        """Peers whose answer matches the request this replica last sent them."""
        state = self.state
        layout = state.ctrl_layout
        return [p for p in state.peers.values()
                if state.word(layout.answer(p.position)) == state.requests.get(p.replica_id, -1)]

    def _repeat_requests(self) -> None:
        """Rewrite the pending request to every peer that has not answered it (its first copy
        may have been rejected, e.g. before that peer opened its ctrl region). Idempotent."""
        state = self.state
        layout = state.ctrl_layout
        for peer in state.peers.values():
            if peer in state.followers or peer.replica_id in state.excluded:
                continue
            request = state.requests.get(peer.replica_id, 0)
            if request == 0 or state.word(layout.answer(peer.position)) == request:
                continue
            try:
                peer.ctrl.write(layout.request(state.position), ctrl_mod.U64.pack(request))
            except FabricError:
                continue

    def _ask_again(self) -> None:
        """Rule 4: a fresh request to every peer this leadership lost (caller holds role)."""
        state = self.state
        for replica_id in sorted(state.excluded):
            peer = state.peers[replica_id]
            request = self._new_request()
            state.requests[replica_id] = request
            try:
                peer.ctrl.write(state.ctrl_layout.request(state.position),
                                ctrl_mod.U64.pack(request))
            except FabricError:
                continue
        state.excluded.clear()

    def _collect_answers(self, request: int) -> list[Peer] | None:
        """Wait for a majority of answers to ``request``; None if the campaign ended."""
        state = self.state
        runtime = state.runtime
        deadline = runtime.now_ns() + state.config.permission_wait_us * NS_PER_US
        interval_s = state.config.scan_fast_us / 1e6 / 4  # Rule 9: nothing is calm now
        while not state.stopping and not state.paused and state.failure is None:
            granted = self._granted()
            if len(granted) + 1 >= state.majority:
                return granted
            self.switch()
            if not state.campaigning:
                return None
            self.scan()
            if self._live_leader() is not None or runtime.now_ns() >= deadline:
                return None
            runtime.sleep(interval_s)
        return None

    # --- leader upkeep --------------------------------------------------------------------------
    def _bulk_catch_up(self, late: list[Peer]) -> dict[int, int]:
        """Rule 4's first pass, without the role mutex: each late peer's log up to the tail as
        it was; {peer id: the index copied through} for those whose copy succeeded."""
        state = self.state
        copied: dict[int, int] = {}
        for peer in late:
            with state.role:
                if not state.leading or state.paused:
                    return copied
                tail, commit = state.next_index - 1, state.commit_index
            try:
                if catch_up(state, peer, tail, commit):
                    copied[peer.replica_id] = tail
            except Deposed:
                return copied  # the second pass, under the mutex, meets it again and steps down
        return copied

    def upkeep(self) -> None:
        """Rule 4: take in late grants, publish the commit word when idle; Rule 6."""
        state = self.state
        if self._deposed():
            with state.role:
                if state.leading:
                    state.step_down_locked("a majority granted write permission to another "
                                           "replica")
            return
        late = [p for p in self._granted()
                if p not in state.followers and p.replica_id not in state.excluded]
        copied = self._bulk_catch_up(late)
        now = state.runtime.now_ns()
        with state.role:
            if state.leading:
                self._ask_again()
                self._repeat_requests()
                for peer in late:
                    tail = state.next_index - 1
                    try:
                        caught_up = catch_up(state, peer, tail, state.commit_index,
                                             copied.get(peer.replica_id, 0) + 1)
                    except Deposed as error:
                        state.step_down_locked(str(error))
                        return
                    if caught_up:
                        state.followers = [*state.followers, peer]
                        LOGGER.info("leader %d: replica %d caught up to %d and follows",
                                    state.replica_id, peer.replica_id, tail)
                    else:
                        state.excluded.add(peer.replica_id)
                if len(state.followers) + 1 < state.majority:
                    state.step_down_locked("fewer than a majority still grant permission")
        commit = state.commit_index
        if commit != self._last_commit:
            self._last_commit = commit
            self._commit_since_ns = now
        elif commit != self._flushed and now - self._commit_since_ns >= (
                state.config.commit_flush_idle_us * NS_PER_US):
            with state.role:
                if state.leading:
                    flush_commit(state)
                    self._flushed = commit
