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
