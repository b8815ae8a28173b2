"""The fail-over benchmark's per-phase breakdown (bench_cluster Rule 4), from synthetic events."""

from __future__ import annotations

from consensus import bench_cluster as bc
from consensus.state import PHASES

MS = 1_000_000


def test_phase_event_names_are_the_replicas_phases():
    assert bc.PHASE_EVENTS == PHASES


def test_timing_takes_the_new_leaders_milestones_after_the_stop():
    stop = 100 * MS
    first = bc.Event("first-commit", 2, stop + 5 * MS)
    seen = [
        bc.Event("campaign", 2, stop - 50 * MS),  # an earlier election: ignored
        bc.Event("suspect", 3, stop + 2 * MS),  # another follower: not the new leader's view
        bc.Event("suspect", 1, stop + 1 * MS),  # the stopped leader itself: ignored
        bc.Event("suspect", 2, stop + 3 * MS),
        bc.Event("campaign", 2, stop + 3 * MS + 100_000),
        bc.Event("granted", 2, stop + 4 * MS),
        bc.Event("leading", 2, stop + 4 * MS + 500_000),
    ]
    timing = bc._timing(stop, first, seen, leader=1)
    assert timing == bc.FailoverTiming(5 * MS, 3 * MS, 3 * MS + 100_000, 4 * MS,
                                       4 * MS + 500_000)
    assert bc.phase_durations(timing) == (3 * MS, 100_000, 900_000, 500_000, 500_000)


def test_a_missing_milestone_leaves_its_phases_unknown():
    timing = bc.FailoverTiming(6 * MS, None, 4 * MS, 5 * MS, None)
    assert bc.phase_durations(timing) == (None, None, 1 * MS, None, None)


def test_breakdown_names_the_slowest_fail_overs_phase_by_phase():
    fast = bc.FailoverTiming(4 * MS, 3 * MS, 3 * MS, 3 * MS + 500_000, 4 * MS - 100_000)
    slow = bc.FailoverTiming(20 * MS, 15 * MS, 16 * MS, 18 * MS, 19 * MS)
    lines = bc.breakdown([fast, slow, fast], slowest=1)
    assert lines[0].startswith("phases, ms p50/p90/max: detect 3.00/15.00/15.00;")
    assert lines[1] == ("slow: 20.00 ms = detect 15.00, to campaign 1.00, permissions 2.00, "
                        "prepare 1.00, first commit 1.00")
    assert len(lines) == 2
    only_missing = bc.breakdown([bc.FailoverTiming(2 * MS, None, None, None, None)])
    assert "detect n/a" in only_missing[0]
