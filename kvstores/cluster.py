"""A cluster of kvstores replicas on this host, as subprocesses (benchmark, check, tests), and
the queries that inspect a replica (status, data-set digest).

Rule 1: ``LocalKvCluster`` owns what it starts: server processes (each stopped by its own pid),
        their FIFOs, logs and latency dumps in a private work directory (their working
        directory), the cluster's shared memory; ``stop`` removes all of it, also after a failed
        start. Servers exit by themselves when the
        launching process dies (``--parent-pid``), and their local servers with them.
Rule 2: every cluster gets a fresh cluster id and fresh ports.
Rule 3: ``start`` returns only when every server answers and (replicated) one leader is named by
        all; otherwise ``ClusterError`` with the tail of the servers' logs.
Rule 4: ``digest`` reads a replica's whole data set through its front end (followers serve reads
        from their own local server): redis ``KVSTORES DIGEST`` (the local server's ``DEBUG
        DIGEST``), memcached ``lru_crawler metadump all`` then ``get`` of every key, hashed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from kvstores import mctext, resp

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
QUERY_TIMEOUT_S = 2.0
POLL_INTERVAL_S = 0.02
LOG_TAIL_LINES = 15
DIGEST_GET_BATCH = 100  # keys per memcached get while digesting


class ClusterError(RuntimeError):
    """The cluster did not start or reach the expected state; the message says why."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports the kernel just reported free on 127.0.0.1."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _exchange(address: str, request: bytes, done: object) -> bytes:
    """Send ``request``; read until ``done(buf)`` returns an end >= 0; return the reply."""
    assert callable(done)
    with socket.create_connection(_split(address), QUERY_TIMEOUT_S) as sock:
        sock.settimeout(QUERY_TIMEOUT_S * 5)
        sock.sendall(request)
        buf = bytearray()
        while True:
            end = done(buf) if buf else -1
            if end >= 0:
                return bytes(buf[:end])
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError(f"{address} closed the connection")
            buf += chunk


def redis_call(address: str, *args: bytes) -> bytes:
    """One redis command; the raw RESP reply."""
    return _exchange(address, resp.encode_command(list(args)),
                     lambda buf: resp.reply_end(buf, 0))


def memcached_call(address: str, line: bytes, block: bool) -> bytes:
    framing = mctext.Framing.BLOCK if block else mctext.Framing.LINE
    return _exchange(address, line, lambda buf: mctext.reply_end(buf, 0, framing))


def status(kind: str, address: str) -> dict[str, str]:
    """A replica's ``KVSTORES STATUS`` / ``kvstores status`` as a dict."""
    if kind == "redis":
        reply = redis_call(address, b"KVSTORES", b"STATUS")
        if not reply.startswith(b"$"):
            raise ConnectionError(f"{address}: {reply[:200]!r}")
        body = reply.split(b"\r\n", 1)[1]
        pairs = [line.split(":", 1) for line in body.decode().splitlines() if ":" in line]
        return {key: value for key, value in pairs}
    reply = memcached_call(address, b"kvstores status\r\n", True)
    result: dict[str, str] = {}
    for line in reply.decode().splitlines():
        words = line.split(" ", 2)
        if len(words) == 3 and words[0] == "STAT":
            result[words[1]] = "" if words[2] == "-" else words[2]
    return result


def digest(kind: str, address: str) -> tuple[str, int]:
    """(hex digest of the replica's data set, key count) read through its front end (Rule 4)."""
    if kind == "redis":
        reply = redis_call(address, b"KVSTORES", b"DIGEST")
        size = redis_call(address, b"DBSIZE")
        if not reply.startswith(b"+") or not size.startswith(b":"):
            raise ConnectionError(f"{address}: digest failed: {reply[:200]!r} {size[:80]!r}")
        return reply[1:].strip().decode(), int(size[1:])
    dump = memcached_call(address, b"lru_crawler metadump all\r\n", True)
    keys = sorted(
        urllib.parse.unquote_to_bytes(line.split(b" ", 1)[0][4:])
        for line in dump.split(b"\n") if line.startswith(b"key="))
    hasher = hashlib.sha256()
    for start in range(0, len(keys), DIGEST_GET_BATCH):
        batch = keys[start : start + DIGEST_GET_BATCH]
        reply = memcached_call(address, b"get " + b" ".join(batch) + b"\r\n", True)
        if not reply.endswith(b"END\r\n"):
            raise ConnectionError(f"{address}: get failed: {reply[:200]!r}")
        hasher.update(reply)
    return hasher.hexdigest(), len(keys)


@dataclass(slots=True)
class ServerProcess:
    replica_id: int
    address: str
    fifo_path: str
    log_path: Path
    process: subprocess.Popen[bytes]


class LocalKvCluster:
    """``replicas`` front ends of ``kind`` on 127.0.0.1 (1 = the unreplicated front end)."""

    def __init__(self, kind: str, replicas: int = 3, name: str = "kv",
                 extra_args: tuple[str, ...] = ()) -> None:
        assert kind in ("redis", "memcached")
        assert replicas == 1 or replicas >= 3, replicas
        self.kind = kind
        self.replicas = replicas
        self.cluster_id = f"{name}-{os.getpid()}-{time.monotonic_ns() % 10**9}"
        self.extra_args = extra_args
        self.workdir = Path(tempfile.mkdtemp(prefix=f"kvstores-{name}-"))
        ports = free_ports(replicas)
        self.addresses = {i + 1: f"127.0.0.1:{port}" for i, port in enumerate(ports)}
        self.servers: dict[int, ServerProcess] = {}

    def __enter__(self) -> LocalKvCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        _cleanup_shared_memory(self.cluster_id)
        for replica_id in self.addresses:
            self.start_server(replica_id)
        deadline = time.monotonic() + timeout_s
        for replica_id in self.addresses:
            self._wait_answering(replica_id, deadline)
        if self.replicas > 1:
            self.wait_for_leader(deadline - time.monotonic())

    def start_server(self, replica_id: int) -> ServerProcess:
        """Start (or restart) server ``replica_id``."""
        fifo_path = str(self.workdir / f"fifo-{replica_id}")
        log_path = self.workdir / f"server-{replica_id}.log"
        command_name = ("redis-server-replicated" if self.kind == "redis"
                        else "memcached-replicated")
        command = [
            sys.executable, "-m", "kvstores", command_name, "--id", str(replica_id),
            "--ids", ",".join(map(str, self.addresses)), "--replicas", str(self.replicas),
            "--port", self.addresses[replica_id].rpartition(":")[2],
            "--cluster-id", self.cluster_id, "--fifo", fifo_path,
            "--parent-pid", str(os.getpid()), *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if k not in ("SID", "IDS")}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            with open(log_path, "ab") as log_file:
                process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, env=env, cwd=self.workdir,
                                           start_new_session=True)
            server = ServerProcess(replica_id, self.addresses[replica_id], fifo_path, log_path,
                                   process)
            self.servers[replica_id] = server
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return server

    def status(self, replica_id: int) -> dict[str, str] | None:
        try:
            return status(self.kind, self.addresses[replica_id])
        except (OSError, ValueError):
            return None

    def statuses(self) -> dict[int, dict[str, str] | None]:
        return {replica_id: self.status(replica_id) for replica_id in self.addresses}

    def _wait_answering(self, replica_id: int, deadline: float) -> None:
        server = self.servers[replica_id]
        while self.status(replica_id) is None:
            if server.process.poll() is not None:
                raise ClusterError(f"server {replica_id} exited with status "
                                   f"{server.process.returncode}\n{self.log_tail(replica_id)}")
            if time.monotonic() >= deadline:
                raise ClusterError(f"server {replica_id} did not answer within "
                                   f"{START_TIMEOUT_S:.0f} s\n{self.log_tail(replica_id)}")
            time.sleep(POLL_INTERVAL_S)

    def wait_for_leader(self, timeout_s: float, exclude: int | None = None) -> int:
        """Wait until one leader (not ``exclude``) is named by every live, unpaused server."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            last = self.statuses()
            live = [s for s in last.values() if s is not None and s["role"] != "paused"]
            leaders = {int(s["id"]) for s in live if s["role"] == "leader"}
            if len(leaders) == 1:
                leader = leaders.pop()
                if leader != exclude and all(s["leader"] == str(leader) for s in live):
                    return leader
            if time.monotonic() >= deadline:
                roles = {i: (s["role"], s["leader"]) if s else None for i, s in last.items()}
                raise ClusterError(f"no agreed leader within {timeout_s:.1f} s: {roles}\n"
                                   + "\n".join(self.log_tail(i) for i in self.addresses))
            time.sleep(POLL_INTERVAL_S)

    def control(self, replica_id: int, command: str) -> None:
        """Write one line (``p`` or ``r``) into server ``replica_id``'s control FIFO."""
        fd = os.open(self.servers[replica_id].fifo_path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, command.encode() + b"\n")
        finally:
            os.close(fd)

    def digests(self) -> dict[int, tuple[str, int] | None]:
        result: dict[int, tuple[str, int] | None] = {}
        for replica_id, address in self.addresses.items():
            try:
                result[replica_id] = digest(self.kind, address)
            except (OSError, ValueError):
                result[replica_id] = None
        return result

    def wait_equal(self, timeout_s: float) -> dict[int, tuple[str, int] | None]:
        """Wait until every replica reports the same data-set digest; return the digests
        (unequal ones if the time ran out: the caller reports them)."""
        deadline = time.monotonic() + timeout_s
        while True:
            digests = self.digests()
            values = set(digests.values())
            if len(values) == 1 and None not in values:
                return digests
            if time.monotonic() >= deadline:
                return digests
            time.sleep(0.1)

    def log_tail(self, replica_id: int, lines: int = LOG_TAIL_LINES) -> str:
        server = self.servers.get(replica_id)
        if server is None or not server.log_path.exists():
            return f"(no log for server {replica_id})"
        text = server.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- server {replica_id} log tail ---\n" + "\n".join(text)

    def stop_server(self, replica_id: int, sig: int = signal.SIGTERM) -> None:
        server = self.servers.get(replica_id)
        if server is None or server.process.poll() is not None:
            return
        server.process.send_signal(sig)
        try:
            server.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(STOP_TIMEOUT_S)

    def stop(self, keep_logs: bool = False) -> None:
        """Stop every server; remove FIFOs, shared memory and (unless ``keep_logs``) logs."""
        for server in self.servers.values():
            if server.process.poll() is None:
                server.process.send_signal(signal.SIGTERM)
        for replica_id in list(self.servers):
            self.stop_server(replica_id)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.servers[replica_id].fifo_path)
        _cleanup_shared_memory(self.cluster_id)
        if not keep_logs:
            for path in self.workdir.glob("*"):  # logs, FIFOs, dump-<id>.txt
                with contextlib.suppress(OSError):
                    path.unlink()
            with contextlib.suppress(OSError):
                self.workdir.rmdir()


def _cleanup_shared_memory(cluster_id: str) -> None:
    try:
        from consensus.fabric.shm import cleanup
    except ImportError:
        return
    with contextlib.suppress(OSError, ValueError):
        cleanup(cluster_id)
