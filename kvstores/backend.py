"""The real server behind a front end: a private ``redis-server`` or ``memcached`` child process.

Rule 1: each start is a fresh process with an empty data set, in a private directory
        (``/tmp/kvstores-local-<cluster>-<id>-<pid>``) holding its unix socket and log; it has
        no TCP port, persists nothing (redis: no RDB, no AOF) and never evicts (redis
        ``maxmemory 0``, memcached ``-M``: an out-of-memory store fails the same way everywhere
        instead of evicting by each replica's own access pattern).
Rule 2: the child dies with its parent (``PR_SET_PDEATHSIG``), so a front end killed with -9
        leaves no server behind; a directory left by any dead front end is removed at the next
        start of any front end.
Rule 3: ``start`` returns only once the server accepts connections on its socket, else raises
        ``BackendError`` with the reason (binary missing, early exit with its log's last line,
        timeout).
Rule 4: the server runs in the C locale, so that comparing strings (redis compares with
        ``strcoll``: ``SORT ... ALPHA``, Lua's ``<``, hence the deterministic ``SPOP`` of
        ``kvstores.redis_rules`` Rule 2) orders bytes alike on every replica, whatever locale
        each host's environment sets.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from kvstores.constants import (
    BACKEND_START_S_MAX,
    BACKEND_STOP_S_MAX,
    MEMCACHED_MEMORY_MB,
    SIDE_CALL_TIMEOUT_S,
)

KINDS = ("redis", "memcached")
DIRECTORY_ROOT = "/tmp"
DIRECTORY_PREFIX = "kvstores-local-"  # + <cluster>-<id>-<front end pid>
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("kvstores.backend")


class BackendError(RuntimeError):
    """The local server cannot be started; the message says why."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_dirs() -> None:
    for path in glob.glob(os.path.join(DIRECTORY_ROOT, f"{DIRECTORY_PREFIX}*-*")):
        pid_text = path.rsplit("-", 1)[-1]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(path, ignore_errors=True)


def command_line(kind: str, directory: str, socket_path: str) -> list[str]:
    """The argv of a private server (Rule 1)."""
    if kind == "redis":
        return [
            "redis-server", "--port", "0", "--unixsocket", socket_path, "--unixsocketperm", "700",
            "--dir", directory, "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--maxmemory", "0", "--enable-debug-command", "local", "--protected-mode", "no",
            "--logfile", os.path.join(directory, "server.log"), "--databases", "1",
        ]
    assert kind == "memcached"
    argv = ["memcached", "-s", socket_path, "-a", "0700", "-m", str(MEMCACHED_MEMORY_MB), "-M",
            "-t", "1", "-c", "4096"]
    if os.geteuid() == 0:
        argv += ["-u", "root"]
    return argv


@dataclass(slots=True)
class Backend:
    kind: str
    directory: str
    socket_path: str
    process: subprocess.Popen[bytes]

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.socket_path)
        return sock

    def call(self, request: bytes, framer: Callable[[bytearray], int]) -> bytes:
        """One request on a new connection; the reply (``framer(buf)`` >= 0 is its end)."""
        with self.connect() as sock:
            sock.settimeout(SIDE_CALL_TIMEOUT_S)
            sock.sendall(request)
            buf = bytearray()
            while (end := framer(buf) if buf else -1) < 0:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("the local server closed the connection")
                buf += chunk
            return bytes(buf[:end])

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory. Idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(BACKEND_STOP_S_MAX)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(BACKEND_STOP_S_MAX)
        shutil.rmtree(self.directory, ignore_errors=True)


def start(kind: str, cluster_id: str, replica_id: int) -> Backend:
    """Start a private ``kind`` server for this front end (Rules 1-3)."""
    assert kind in KINDS
    binary = "redis-server" if kind == "redis" else "memcached"
    if shutil.which(binary) is None:
        raise BackendError(f"{binary} is not installed (bash scripts/setup.sh installs it)")
    _remove_stale_dirs()
    directory = os.path.join(DIRECTORY_ROOT,
                             f"{DIRECTORY_PREFIX}{cluster_id}-{replica_id}-{os.getpid()}")
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory, mode=0o700)
    socket_path = os.path.join(directory, f"{kind}.sock")
    output = open(os.path.join(directory, "output.log"), "wb")  # noqa: SIM115
    with output:
        process = subprocess.Popen(
            command_line(kind, directory, socket_path), stdin=subprocess.DEVNULL,
            stdout=output, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, cwd=directory,
            env={**os.environ, "LC_ALL": "C"},  # Rule 4: byte-order string comparison
        )
    backend = Backend(kind, directory, socket_path, process)
    deadline = time.monotonic() + BACKEND_START_S_MAX
    while True:
        if process.poll() is not None:
            reason = _last_line(directory)
            backend.stop()
            raise BackendError(f"{binary} exited at start ({process.returncode}): {reason}")
        with contextlib.suppress(OSError):
            backend.connect().close()
            log.info("%s started: pid %d, socket %s", binary, process.pid, socket_path)
            return backend
        if time.monotonic() > deadline:
            backend.stop()
            raise BackendError(f"{binary} did not accept connections within "
                               f"{BACKEND_START_S_MAX} s")
        time.sleep(0.01)


def _last_line(directory: str) -> str:
    lines: list[str] = []
    for name in ("output.log", "server.log"):
        with contextlib.suppress(OSError), open(os.path.join(directory, name), "rb") as file:
            lines += file.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no output"
