"""The failure detector: which peers' heartbeat counters still move. Pure (time is passed in).

Rule 1: a peer is dead once its counter stayed unchanged for ``dead_after_ns`` of *observed*
        time: each scan adds the gap since the previous scan, capped at ``gap_cap_ns``, so a
        scanner that was itself stalled (GC, descheduled) never declares everyone dead at once.
Rule 2: a counter that changed makes the peer alive at once (and resets its silence).
Rule 3: a peer never seen beating is presumed alive for ``startup_grace_ns`` after ``reset``,
        so a cluster starting up does not elect around a replica that is still importing.
Rule 4: callers may ask with a shorter threshold (the election uses one for peers that do not
        lead: misjudging a non-leader costs nothing, see ``election`` Rule 2).
Rule 5: ``reset`` (start, resume) forgets all history: a resumed replica does not judge its peers
        by the time it spent paused. Only a start grants the grace of Rule 3.

This is Mu's score-based detector with the score replaced by observed silence: Python's scheduling
jitter makes a per-scan score twitchy; silence measured in capped scan gaps degrades gracefully.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class _PeerState:
    counter: int = -1
    silent_ns: int = 0
    seen_beating: bool = False


@dataclass(slots=True)
class FailureDetector:
    peers: tuple[int, ...]
    dead_after_ns: int
    gap_cap_ns: int
    startup_grace_ns: int
    _state: dict[int, _PeerState] = field(default_factory=dict)
    _last_scan_ns: int = 0
    _reset_ns: int = 0
    _started: bool = False

    def __post_init__(self) -> None:
        assert 0 < self.gap_cap_ns < self.dead_after_ns
        assert self.startup_grace_ns >= 0

    def reset(self, now_ns: int, grace: bool) -> None:
        """Forget all history; with ``grace``, presume silent peers alive for a while (Rule 3)."""
        self._state = {peer: _PeerState() for peer in self.peers}
        self._last_scan_ns = now_ns
        self._reset_ns = now_ns if grace else now_ns - self.startup_grace_ns
        self._started = True

    def begin_scan(self, now_ns: int) -> int:
        """Start a scan at ``now_ns``; return the observed gap to count for unchanged peers."""
        assert self._started, "reset() first"
        gap = min(max(now_ns - self._last_scan_ns, 0), self.gap_cap_ns)
        self._last_scan_ns = now_ns
        return gap

    def observe(self, peer: int, counter: int, gap_ns: int) -> None:
        """Record ``peer``'s counter as read in the current scan."""
        state = self._state[peer]
        if counter != state.counter:
            if state.counter != -1:
                state.seen_beating = True
            state.counter = counter
            state.silent_ns = 0
        else:
            state.silent_ns += gap_ns

    def is_alive(self, peer: int, now_ns: int, dead_after_ns: int | None = None) -> bool:
        """Whether ``peer`` beat within ``dead_after_ns`` (default: the detector's threshold)."""
        state = self._state[peer]
        if not state.seen_beating and now_ns - self._reset_ns < self.startup_grace_ns:
            return state.silent_ns < self.startup_grace_ns
        threshold = self.dead_after_ns if dead_after_ns is None else dead_after_ns
        return state.silent_ns < threshold

    def silence_ns(self, peer: int) -> int:
        """How long ``peer``'s counter has stood still, in observed (capped) scan time."""
        return self._state[peer].silent_ns

    def silent(self, peer: int) -> bool:
        """Whether ``peer``'s counter stood still in the last scan (or it was unreadable)."""
        return self._state[peer].silent_ns > 0 or self._state[peer].counter < 0

    def alive(self, now_ns: int, dead_after_ns: int | None = None) -> frozenset[int]:
        return frozenset(p for p in self.peers if self.is_alive(p, now_ns, dead_after_ns))
