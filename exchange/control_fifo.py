"""The control FIFO (``/tmp/fifo-<id>``): ``echo p > /tmp/fifo-1`` pauses server 1, ``r`` resumes.

Rule 1: one command per line: ``p`` (or ``pause``) pauses silently, as Mu's ``p``: the server
        stops heartbeating and serving without announcing it, so its peers fail over by
        detecting the silence; ``s`` (or ``step``) steps down first (a cooperative hand-off,
        then paused the same way); ``r`` (or ``resume``) resumes; blank lines are skipped;
        anything else is logged as ignored and changes nothing.
Rule 2: the reader never busy-waits and never blocks shutdown: it holds its own write end open (so a
        writer closing the FIFO is not an endless EOF) and waits in ``select`` with a timeout.
Rule 3: the FIFO is created at start (an existing FIFO at the path is reused; any other file
        there is an error) and removed by ``close``. A line longer than ``LINE_BYTES_MAX`` is
        discarded.
Rule 4: given ``start_relay`` (``ReplicationHandle.start_pause_relay``), the FIFO is read
        through a relay: consensus's native ``PauseRelay``, whose C thread holds the heartbeat
        on a ``p`` line before this reader sees the line, so a silent pause takes effect
        within microseconds even when the interpreter is busy; ``r`` releases the hold before
        ``on_resume``. Without one (no C compiler, ``MU_NATIVE_HEARTBEAT=0``, an unreplicated
        server) the FIFO is read directly, and the pause takes effect when ``on_pause`` runs.
Rule 5: a pause runs before its line is logged: writing the log line releases the GIL, and
        under load taking it back can wait behind every runnable thread for milliseconds, while
        the paused server's waiting requests should be answered UNAVAILABLE at once.
"""

from __future__ import annotations

import logging
import os
import select
import stat
import threading
from collections.abc import Callable
from typing import Protocol

POLL_INTERVAL_S = 0.2  # how often the reader checks for shutdown while the FIFO is quiet
LINE_BYTES_MAX = 256
READ_CHUNK_BYTES = 4096

log = logging.getLogger("exchange.fifo")

PAUSE_WORDS = frozenset({"p", "pause"})
RESUME_WORDS = frozenset({"r", "resume"})
STEP_DOWN_WORDS = frozenset({"s", "step", "step-down"})


class FifoRelay(Protocol):
    """Rule 4: what relays the FIFO's bytes (``consensus.native_beat.PauseRelay``)."""

    @property
    def read_fd(self) -> int: ...

    def release(self) -> None: ...

    def stop(self) -> None: ...


class ControlFifoError(OSError):
    """The FIFO cannot be created at the configured path; the message says why."""


def parse_command(line: str) -> str | None:
    """``"pause"``, ``"step-down"``, ``"resume"`` or ``None`` (ignored) for one line of input."""
    word = line.strip().lower()
    if word in PAUSE_WORDS:
        return "pause"
    if word in STEP_DOWN_WORDS:
        return "step-down"
    if word in RESUME_WORDS:
        return "resume"
    return None


def create_fifo(path: str) -> None:
    """Create the FIFO at ``path`` (reusing an existing FIFO); ``ControlFifoError`` otherwise."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        try:
            os.mkfifo(path, 0o600)
        except OSError as exc:
            raise ControlFifoError(f"cannot create control FIFO {path}: {exc.strerror}") from None
        return
    if not stat.S_ISFIFO(mode):
        raise ControlFifoError(f"{path} exists and is not a FIFO; remove it or pass --fifo PATH")


class ControlFifo:
    """Reads commands from a FIFO on a background thread and calls ``on_pause``/``on_resume``/
    ``on_step_down`` (without one, ``s`` is logged as unsupported)."""

    def __init__(
        self, path: str, on_pause: Callable[[], None], on_resume: Callable[[], None],
        on_step_down: Callable[[], None] | None = None,
        start_relay: Callable[[int], FifoRelay | None] | None = None,
    ) -> None:
        self.path = path
        self._on_pause = on_pause
        self._on_resume = on_resume
        self._on_step_down = on_step_down
        self._stopping = threading.Event()
        create_fifo(path)
        # Reader first (non-blocking), then our own writer so EOF never happens (Rule 2).
        self._read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self._keep_fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        self._relay = None if start_relay is None else start_relay(self._read_fd)
        if self._relay is not None:
            os.set_blocking(self._relay.read_fd, False)
        self._source_fd = self._read_fd if self._relay is None else self._relay.read_fd
        self._thread = threading.Thread(target=self._run, name=f"fifo:{path}", daemon=True)
        self._thread.start()
        log.info("control FIFO ready: echo p > %s pauses silently (peers detect it%s), "
                 "s steps down (cooperative hand-off), r resumes", path,
                 "; the native heartbeat stops at once" if self._relay is not None else "")

    def _run(self) -> None:
        pending = b""
        while not self._stopping.is_set():
            ready, _, _ = select.select([self._source_fd], [], [], POLL_INTERVAL_S)
            if not ready:
                continue
            try:
                chunk = os.read(self._source_fd, READ_CHUNK_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                raise
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > LINE_BYTES_MAX:
                log.warning("control FIFO %s: discarding a line over %d bytes", self.path,
                            LINE_BYTES_MAX)
                pending = b""
            for raw in lines:
                self._handle(raw.decode("utf-8", errors="replace"))

    def _handle(self, line: str) -> None:
        if not line.strip():
            return
        command = parse_command(line)
        if command is None:
            log.warning("control FIFO %s: ignored unknown command %r (use p, s or r)", self.path,
                        line.strip()[:40])
            return
        meaning = {"pause": "pause silently", "step-down": "step down, then pause",
                   "resume": "resume"}[command]
        received = (self.path, line.strip(), meaning)
        if command != "pause":  # Rule 5: a pause runs first and is logged after
            log.warning("control FIFO %s: received %r -> %s", *received)
        try:
            if command == "pause":
                self._on_pause()
            elif command == "step-down":
                if self._on_step_down is None:
                    log.warning("control FIFO %s: step down is not supported here", self.path)
                else:
                    self._on_step_down()
            else:
                if self._relay is not None:
                    self._relay.release()
                self._on_resume()
        except Exception:
            log.exception("control FIFO %s: %s failed", self.path, command)
        if command == "pause":
            log.warning("control FIFO %s: received %r -> %s", *received)

    def close(self) -> None:
        """Stop the reader and remove the FIFO (idempotent)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._thread.join(POLL_INTERVAL_S * 5)
        if self._relay is not None:
            self._relay.stop()
        for fd in (self._read_fd, self._keep_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            if stat.S_ISFIFO(os.stat(self.path).st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
