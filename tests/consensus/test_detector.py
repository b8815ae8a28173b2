from consensus.detector import FailureDetector

MS = 1_000_000


def make() -> FailureDetector:
    detector = FailureDetector(peers=(2, 3), dead_after_ns=4 * MS, gap_cap_ns=1 * MS,
                               startup_grace_ns=50 * MS)
    detector.reset(0, grace=False)
    return detector


def test_silent_peer_dies_after_threshold_and_revives_on_beat():
    detector = make()
    now = 0
    for beat in range(10):
        now += MS // 2
        gap = detector.begin_scan(now)
        detector.observe(2, beat, gap)
        detector.observe(3, 7, gap)  # never changes
    assert detector.is_alive(2, now)
    assert not detector.is_alive(3, now)
    gap = detector.begin_scan(now + MS // 2)
    detector.observe(3, 8, gap)
    assert detector.is_alive(3, now)


def test_scanner_stall_does_not_kill_everyone():
    detector = make()
    detector.observe(2, 1, detector.begin_scan(MS))
    gap = detector.begin_scan(100 * MS)  # the scanner itself was stalled for 99 ms
    detector.observe(2, 1, gap)
    assert detector.is_alive(2, 100 * MS)


def test_startup_grace():
    detector = FailureDetector(peers=(2,), dead_after_ns=4 * MS, gap_cap_ns=MS,
                               startup_grace_ns=50 * MS)
    detector.reset(0, grace=True)
    for step in range(1, 20):
        detector.observe(2, 0, detector.begin_scan(step * MS))
    assert detector.is_alive(2, 19 * MS)  # not yet seen beating, within grace
    for step in range(20, 80):
        detector.observe(2, 0, detector.begin_scan(step * MS))
    assert not detector.is_alive(2, 80 * MS)


def test_silent_says_whether_a_counter_stood_still_in_the_last_scan():
    """election Rule 9 scans fast while any peer is silent: unread, unreadable or unchanged."""
    detector = make()
    assert detector.silent(2), "never read yet"
    detector.observe(2, 5, detector.begin_scan(MS))
    assert not detector.silent(2)
    detector.observe(2, 5, detector.begin_scan(2 * MS))
    assert detector.silent(2)
    detector.observe(2, 6, detector.begin_scan(3 * MS))
    assert not detector.silent(2)
    detector.observe(2, -2, detector.begin_scan(4 * MS))  # the read failed (FabricError)
    assert detector.silent(2)
