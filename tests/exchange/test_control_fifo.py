"""The control FIFO: p pauses, r resumes, anything else is ignored; the FIFO is removed on close."""

import os
import threading
import time

import pytest

from exchange.control_fifo import ControlFifo, ControlFifoError, parse_command


def test_parse_command():
    assert parse_command("p\n") == "pause"
    assert parse_command(" PAUSE ") == "pause"
    assert parse_command("s") == "step-down"
    assert parse_command("r") == "resume"
    assert parse_command("resume") == "resume"
    assert parse_command("x") is None
    assert parse_command("pp") is None


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _recorder(calls: list, note=lambda name: name):  # type: ignore[no-untyped-def]
    """``record(name)`` makes a callback that appends ``note(name)`` to ``calls`` and releases
    the returned semaphore once."""
    seen = threading.Semaphore(0)

    def record(name: str):  # type: ignore[no-untyped-def]
        def callback() -> None:
            calls.append(note(name))
            seen.release()
        return callback

    return record, seen


def test_fifo_drives_callbacks_and_is_removed(tmp_path, caplog):
    path = str(tmp_path / "fifo-7")
    calls: list[str] = []
    record, seen = _recorder(calls)

    fifo = ControlFifo(path, record("pause"), record("resume"), record("step-down"))
    try:
        _write(path, b"p\n")
        assert seen.acquire(timeout=5)
        _write(path, b"bogus\n\nr\n")  # the unknown line is reported and ignored
        assert seen.acquire(timeout=5)
        _write(path, b"pa")  # a line split over two writes
        _write(path, b"use\n")
        assert seen.acquire(timeout=5)
        _write(path, b"s\n")
        assert seen.acquire(timeout=5)
    finally:
        fifo.close()
    assert calls == ["pause", "resume", "pause", "step-down"]
    assert not os.path.exists(path)
    assert any("ignored unknown command 'bogus'" in r.getMessage() for r in caplog.records)


def test_regular_file_in_the_way_is_a_clear_error(tmp_path):
    path = tmp_path / "fifo-8"
    path.write_text("not a fifo")
    with pytest.raises(ControlFifoError, match="not a FIFO"):
        ControlFifo(str(path), lambda: None, lambda: None)


@pytest.mark.parametrize("native", [True, False])
def test_through_a_relay_the_pause_is_held_before_python_sees_it(tmp_path, native):
    """Rule 4: with the native relay, ``on_pause`` finds the hold already set and ``r`` releases
    it before ``on_resume``; the callbacks are the same as without a relay. A relay that cannot
    start (None) leaves the FIFO read directly."""
    from consensus.native_beat import PauseRelay

    path = str(tmp_path / "fifo-9")
    relays: list[PauseRelay] = []

    def start_relay(fd: int) -> PauseRelay | None:
        relay = PauseRelay.start(fd) if native else None
        if relay is not None:
            relays.append(relay)
        return relay

    held_at: list[tuple[str, bool]] = []
    record, seen = _recorder(held_at, lambda name: (name, relays[0].held if relays else False))

    fifo = ControlFifo(path, record("pause"), record("resume"), start_relay=start_relay)
    if native and not relays:
        fifo.close()
        pytest.skip("no C compiler: the FIFO is read by Python (logged)")
    try:
        _write(path, b"p\n")
        assert seen.acquire(timeout=5)
        _write(path, b"r\n")
        assert seen.acquire(timeout=5)
    finally:
        fifo.close()
    assert held_at == ([("pause", True), ("resume", False)] if native else
                       [("pause", False), ("resume", False)])
    assert not os.path.exists(path)


def test_a_pause_runs_before_its_line_is_logged(tmp_path, caplog):
    """Rule 5: ``on_pause`` runs before the 'received' line is written (the write releases the
    GIL); a resume is logged first, as before."""
    import logging

    path = str(tmp_path / "fifo-10")
    order: list[str] = []
    seen = threading.Semaphore(0)

    class Mark(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "received" in record.getMessage():
                order.append("logged " + record.getMessage().rsplit("-> ", 1)[-1])
                seen.release()

    def called(name: str):  # type: ignore[no-untyped-def]
        return lambda: order.append("called " + name)

    handler = Mark()
    logging.getLogger("exchange.fifo").addHandler(handler)
    fifo = ControlFifo(path, called("pause"), called("resume"))
    try:
        _write(path, b"p\n")
        assert seen.acquire(timeout=5)
        _write(path, b"r\n")
        assert seen.acquire(timeout=5)
        deadline = time.monotonic() + 5
        while len(order) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        fifo.close()
        logging.getLogger("exchange.fifo").removeHandler(handler)
    assert order == ["called pause", "logged pause silently", "logged resume", "called resume"]
