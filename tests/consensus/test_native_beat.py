"""The native heartbeat: beats while enabled and touched, stops when disabled, stuck or stopped."""

import struct
import time

import pytest

from consensus import constants as c
from consensus.native_beat import NativeBeat


def _word(buf: memoryview) -> int:
    return int(struct.unpack_from("<Q", buf, 8)[0])


def _moves(buf: memoryview, wait_s: float = 0.05) -> bool:
    before = _word(buf)
    time.sleep(wait_s)
    return _word(buf) != before


def test_beats_only_while_enabled_and_the_token_is_fresh():
    buf = memoryview(bytearray(64))
    beat = NativeBeat.start(buf, 8)
    if beat is None:
        pytest.skip("no C compiler: the Python heartbeat is used (logged)")
    try:
        assert not _moves(buf), "starts disabled"
        beat.enable(True)
        beat.touch()
        assert _moves(buf)
        beat.enable(False)
        time.sleep(0.01)
        assert not _moves(buf), "disable is immediate"
        beat.enable(True)
        time.sleep(c.NATIVE_TOKEN_TTL_US / 1e6 * 2)  # no touch: a stuck interpreter
        assert not _moves(buf), "a stale token stops the beat (fate sharing)"
        beat.touch()
        assert _moves(buf)
    finally:
        beat.stop()
    assert not _moves(buf), "stop joins the thread"


def _in_thread(target):  # type: ignore[no-untyped-def]
    import threading

    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(target()))
    thread.start()
    thread.join(10)
    return result[0]


def test_raise_thread_priority_moves_only_the_calling_thread():
    """Rule 6: SCHED_FIFO for the caller (refused without privilege: False, logged)."""
    import os

    from consensus.native_beat import raise_thread_priority

    def raise_and_read() -> tuple[bool, int]:
        done = raise_thread_priority(c.BACKGROUND_RT_PRIORITY, "test thread")
        return done, os.sched_getscheduler(0)

    done, policy = _in_thread(raise_and_read)
    if not done:
        pytest.skip("SCHED_FIFO not permitted here")
    assert policy == os.SCHED_FIFO
    assert os.sched_getscheduler(0) != os.SCHED_FIFO, "the test's own thread is unchanged"


def test_background_priority_follows_the_environment(monkeypatch):
    from consensus.native_beat import background_priority

    monkeypatch.delenv("MU_BACKGROUND_RT", raising=False)
    assert background_priority() == c.BACKGROUND_RT_PRIORITY
    monkeypatch.setenv("MU_BACKGROUND_RT", "0")
    assert background_priority() == 0


def _thread_policies(name_prefix: str) -> list[int]:
    import os

    policies = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as comm:
                name = comm.read().strip()
            if name.startswith(name_prefix):
                policies.append(os.sched_getscheduler(int(tid)))
        except OSError:
            continue
    return policies


@pytest.mark.parametrize("env", ["1", "0"])
def test_a_replicas_background_thread_is_real_time_with_the_real_time_beat(monkeypatch, env):
    """replica Rule 4: with the native beat at SCHED_FIFO, the background activity (scanner,
    election) runs at SCHED_FIFO too, unless MU_BACKGROUND_RT=0."""
    import os

    from tests.consensus.cluster_util import Cluster, wait_until

    monkeypatch.setenv("MU_BACKGROUND_RT", env)
    cluster = Cluster(1)
    try:
        replica = cluster.replicas[1]
        beat = replica._state.native_beat if replica._state is not None else None
        if beat is None or not beat.realtime:
            pytest.skip("no real-time native beat here (no compiler or no privilege)")
        wait_until(lambda: bool(_thread_policies("background-1")), what="the background thread")
        expected = os.SCHED_FIFO if env == "1" else os.SCHED_OTHER
        assert _thread_policies("background-1") == [expected]
        assert _thread_policies("pump-1") == [os.SCHED_OTHER]
    finally:
        cluster.stop()


class _MappedRegion:
    """A stand-in for an shm remote region: ``pin_u64`` exports a word of a local buffer."""

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf

    def pin_u64(self, offset: int):
        import ctypes

        return ctypes.c_uint64.from_buffer(self.buf, offset)


def test_the_calm_wait_returns_on_silence_on_a_change_and_on_its_timeout():
    """native_beat Rule 7: a beating word keeps the wait going (no return before the timeout);
    a word that stops returns within a period or two; and the regions are released afterwards
    (a buffer export left behind would keep them from being unmapped)."""
    from consensus.native_beat import WAIT_STILL, WAIT_TIMEOUT

    leader = memoryview(bytearray(64))  # the leader's ctrl: its heartbeat at 8, leading at 16
    own = memoryview(bytearray(64))  # this replica's ctrl: request slots at 32, 40
    beat = NativeBeat.start(leader, 8)
    if beat is None:
        pytest.skip("no C compiler: the Python heartbeat is used (logged)")
    region = _MappedRegion(leader)
    period_ns = 2_000_000  # 2 ms: the beat (300 us) lands in every period even under load
    try:
        beat.enable(True)
        beat.touch()
        started = time.monotonic()
        outcome, seen = beat.calm_wait(region, 8, 16, own, [32, 40], period_ns, 60_000_000)
        assert outcome == WAIT_TIMEOUT and time.monotonic() - started >= 0.06
        assert seen > 0
        beat.enable(False)  # the leader goes silent
        started = time.monotonic()
        outcome, seen = beat.calm_wait(region, 8, 16, own, [32, 40], period_ns, 1_000_000_000)
        assert outcome == WAIT_STILL and time.monotonic() - started < 0.5
        assert seen == _word(leader)
    finally:
        beat.stop()
    region = None
    leader.release()  # raises BufferError if a wait had left a word of it exported


def test_the_calm_wait_wakes_when_a_watched_word_changes():
    from consensus.native_beat import WAIT_CHANGED

    leader = memoryview(bytearray(64))
    own = memoryview(bytearray(64))
    beat = NativeBeat.start(memoryview(bytearray(64)), 8)  # this replica's own (unused) beat
    if beat is None:
        pytest.skip("no C compiler: the Python heartbeat is used (logged)")
    import threading

    stop = threading.Event()

    def keep_beating() -> None:  # the leader's heartbeat keeps moving
        while not stop.is_set():
            struct.pack_into("<Q", leader, 8, _word(leader) + 1)
            time.sleep(0.0002)

    beater = threading.Thread(target=keep_beating)
    beater.start()
    try:
        for offset, buf in ((16, leader), (40, own)):  # the leading word; a request slot
            waker = threading.Timer(0.03, lambda b=buf, o=offset: struct.pack_into("<Q", b, o, 9))
            waker.start()
            started = time.monotonic()
            outcome, _ = beat.calm_wait(_MappedRegion(leader), 8, 16, own, [32, 40], 5_000_000,
                                        2_000_000_000)
            waker.join()
            assert outcome == WAIT_CHANGED, offset
            assert 0.02 < time.monotonic() - started < 1.0
    finally:
        stop.set()
        beater.join()
        beat.stop()


def _fifo(tmp_path):  # type: ignore[no-untyped-def]
    import os

    path = tmp_path / "fifo"
    os.mkfifo(path)
    read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    write_fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    return read_fd, write_fd


def _relayed(relay, want: int) -> bytes:  # type: ignore[no-untyped-def]
    import os
    import select

    out = b""
    deadline = time.monotonic() + 5
    while len(out) < want and time.monotonic() < deadline:
        if select.select([relay.read_fd], [], [], 0.1)[0]:
            out += os.read(relay.read_fd, 4096)
    return out


def test_pause_relay_holds_on_a_pause_line_before_forwarding_it(tmp_path):
    """Rule 8: exactly ``p``/``pause`` lines (blanks and case ignored, as the Python parser)
    set ``held`` before the bytes reach the pipe; every byte arrives, unchanged and in order."""
    import os

    from consensus.native_beat import PauseRelay

    read_fd, write_fd = _fifo(tmp_path)
    relay = PauseRelay.start(read_fd)
    if relay is None:
        pytest.skip("no C compiler: the FIFO is read by Python (logged)")
    try:
        not_pauses = b"r\nxp\npp\n" + b"p" * 100 + b"\ns\nstep\n"
        os.write(write_fd, not_pauses)
        assert _relayed(relay, len(not_pauses)) == not_pauses
        assert not relay.held and relay.pauses == 0
        os.write(write_fd, b"pa")  # half a line: nothing yet
        assert _relayed(relay, 2) == b"pa"
        assert not relay.held
        os.write(write_fd, b"use\n")
        assert _relayed(relay, 4) == b"use\n"
        assert relay.held, "held before the line was forwarded"
        relay.release()
        assert not relay.held
        os.write(write_fd, b"  P \r\n")
        assert _relayed(relay, 6) == b"  P \r\n"
        assert relay.held and relay.pauses == 2
    finally:
        relay.stop()
        os.close(read_fd)
        os.close(write_fd)
    relay.stop()  # idempotent


def test_a_beat_following_the_relay_stops_at_a_pause_line_until_released(tmp_path):
    """Rule 8: the beat stops on the C thread's hold, with nothing done by Python in between."""
    import os

    from consensus.native_beat import PauseRelay

    buf = memoryview(bytearray(64))
    beat = NativeBeat.start(buf, 8)
    read_fd, write_fd = _fifo(tmp_path)
    relay = PauseRelay.start(read_fd)
    if beat is None or relay is None:
        pytest.skip("no C compiler: the Python heartbeat is used (logged)")
    try:
        beat.enable(True)
        beat.touch()
        beat.follow(relay)
        assert _moves(buf)
        os.write(write_fd, b"p\n")  # nobody reads the pipe: only the C thread acts
        deadline = time.monotonic() + 5
        while not relay.held and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.002)
        assert not _moves(buf), "held: no beat"
        relay.release()
        assert _moves(buf)
        relay.stop()
        os.write(write_fd, b"p\n")
        assert _moves(buf), "a stopped relay holds nothing"
        beat.follow(None)
        assert _moves(buf)
    finally:
        beat.stop()
        relay.stop()
        os.close(read_fd)
        os.close(write_fd)


def _starve_cpu(cpu: int, seconds: float, probe):  # type: ignore[no-untyped-def]
    """Run a SCHED_FIFO 50 busy loop pinned to ``cpu`` (the beat threads run at 10, so nothing
    of theirs pinned there runs meanwhile); ``probe()`` (a tuple of counters) before and after
    it, read by the busy thread itself. Skips when the priority is refused."""
    import os

    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    refused: list[str] = []

    def hog() -> None:
        try:
            os.sched_setaffinity(0, {cpu})
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
        except OSError as error:
            refused.append(str(error))
            return
        try:
            before = probe()
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                pass
            seen.append((before, probe()))
        finally:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))

    _in_thread(lambda: hog())
    if refused:
        pytest.skip(f"SCHED_FIFO refused here: {refused[0]}")
    return seen[0]


def test_the_standby_beats_while_the_beat_threads_cpu_does_not_run():
    """Rule 9: starve the CPU the beat thread is pinned to: it gives no beat meanwhile, and the
    standby, pinned to another CPU, keeps the word moving about once a period."""
    import os

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: no standby")
    buf = memoryview(bytearray(64))
    beat = NativeBeat.start(buf, 8)
    if beat is None:
        pytest.skip("no C compiler: the Python heartbeat is used (logged)")
    try:
        assert beat.cpus is not None and beat.cpus[0] != beat.cpus[1]
        beat.enable(True)
        beat.touch()
        assert _moves(buf)
        before, after = _starve_cpu(beat.cpus[0], 0.05,
                                    lambda: (_word(buf), beat.beats, beat.standby_beats))
        word, main, standby = (b - a for a, b in zip(before, after, strict=True))
        assert main <= 1, f"the pinned beat thread beat {main} times on a starved CPU"
        assert word >= 10, f"the word moved {word} times in 50 ms"
        # The three counts are read one after another, not at one instant: a beat between the
        # reads (at either end) puts the counters one ahead of the word (CI saw 47 vs 1 + 47).
        assert standby >= 10 and abs(word - (main + standby)) <= 2
        assert _moves(buf)
    finally:
        beat.stop()


def test_no_standby_when_disabled(monkeypatch):
    """``MU_NATIVE_STANDBY=0``: one thread, not pinned."""
    monkeypatch.setenv("MU_NATIVE_STANDBY", "0")
    buf = memoryview(bytearray(64))
    beat = NativeBeat.start(buf, 8)
    if beat is None:
        pytest.skip("no C compiler: the Python heartbeat is used (logged)")
    try:
        assert beat.cpus is None
        beat.enable(True)
        beat.touch()
        assert _moves(buf) and beat.standby_beats == 0
    finally:
        beat.stop()


def test_word_sized_calls_keep_the_gil_and_blocking_calls_release_it():
    """Rule 10: a call that only loads or stores a word keeps the GIL (no re-take behind other
    threads: a pause must not wait for one); a call that blocks or joins releases it."""
    import ctypes

    from consensus import native_beat

    lib = native_beat.load()
    if lib is None:
        pytest.skip("no C compiler: the Python heartbeat is used (logged)")
    keeps = ctypes._FUNCFLAG_PYTHONAPI  # type: ignore[attr-defined]  # PyDLL's calls
    for name in ("nb_touch", "nb_enable", "nb_stale", "nf_held", "nf_release", "nb_set_hold"):
        assert getattr(lib, name)._flags_ & keeps, name
    for name in ("nb_wait_calm", "nb_stop", "nf_stop", "nb_start", "nf_start"):
        assert not getattr(lib, name)._flags_ & keeps, name
