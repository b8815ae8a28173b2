"""A cluster of kvstores replicas on this host, as subprocesses (benchmark, check, tests), and
the queries that inspect a replica (status, data-set digest).

Rule 1: launching, waiting, killing (``kill_server``: -9) and cleaning up are
        ``exchange.launcher``'s (its Rules 1-3); the servers' working directory is the
        cluster's private work directory, where their logs, FIFOs and ``dump-<id>.txt`` are.
Rule 2: a server's status is its ``KVSTORES STATUS`` / ``kvstores status`` (``status``).
Rule 3: ``digest`` reads a replica's whole data set through its front end (followers serve reads
        from their own local server): redis ``KVSTORES DIGEST`` (the local server's ``DEBUG
        DIGEST``), memcached ``lru_crawler metadump hash`` (every live item, see
        kvstores.snapshot Rule 3) then ``get`` of every key, hashed.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import time
import urllib.parse

from exchange.launcher import ClusterError, ProcessCluster, ServerProcess, View, free_ports
from kvstores import mctext, resp

QUERY_TIMEOUT_S = 2.0
DIGEST_GET_BATCH = 100  # keys per memcached get while digesting

__all__ = ["ClusterError", "LocalKvCluster", "ServerProcess", "digest", "free_ports",
           "memcached_call", "redis_call", "status"]


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _exchange(address: str, request: bytes, done: object,
              timeout_s: float = QUERY_TIMEOUT_S) -> bytes:
    """Send ``request``; read until ``done(buf)`` returns an end >= 0; return the reply."""
    assert callable(done)
    with socket.create_connection(_split(address), timeout_s) as sock:
        sock.settimeout(timeout_s * 5)
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


def redis_call(address: str, *args: bytes, timeout_s: float = QUERY_TIMEOUT_S) -> bytes:
    """One redis command; the raw RESP reply."""
    return _exchange(address, resp.encode_command(list(args)),
                     lambda buf: resp.reply_end(buf, 0), timeout_s)


def memcached_call(address: str, line: bytes, block: bool,
                   timeout_s: float = QUERY_TIMEOUT_S) -> bytes:
    framing = mctext.Framing.BLOCK if block else mctext.Framing.LINE
    return _exchange(address, line, lambda buf: mctext.reply_end(buf, 0, framing), timeout_s)


def status(kind: str, address: str, timeout_s: float = QUERY_TIMEOUT_S) -> dict[str, str]:
    """A replica's ``KVSTORES STATUS`` / ``kvstores status`` as a dict (Rule 2)."""
    if kind == "redis":
        reply = redis_call(address, b"KVSTORES", b"STATUS", timeout_s=timeout_s)
        if not reply.startswith(b"$"):
            raise ConnectionError(f"{address}: {reply[:200]!r}")
        body = reply.split(b"\r\n", 1)[1]
        pairs = [line.split(":", 1) for line in body.decode().splitlines() if ":" in line]
        return {key: value for key, value in pairs}
    reply = memcached_call(address, b"kvstores status\r\n", True, timeout_s)
    result: dict[str, str] = {}
    for line in reply.decode().splitlines():
        words = line.split(" ", 2)
        if len(words) == 3 and words[0] == "STAT":
            result[words[1]] = "" if words[2] == "-" else words[2]
    return result


def digest(kind: str, address: str) -> tuple[str, int]:
    """(hex digest of the replica's data set, key count) read through its front end (Rule 3)."""
    if kind == "redis":
        reply = redis_call(address, b"KVSTORES", b"DIGEST")
        size = redis_call(address, b"DBSIZE")
        if not reply.startswith(b"+") or not size.startswith(b":"):
            raise ConnectionError(f"{address}: digest failed: {reply[:200]!r} {size[:80]!r}")
        return reply[1:].strip().decode(), int(size[1:])
    dump = memcached_call(address, b"lru_crawler metadump hash\r\n", True)
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


class LocalKvCluster(ProcessCluster[dict[str, str]]):
    """``replicas`` front ends of ``kind`` on 127.0.0.1 (1 = the unreplicated front end)."""

    query_errors = (OSError, ValueError)
    query_timeout_s = QUERY_TIMEOUT_S
    env_drop = ("SID", "IDS")

    def __init__(self, kind: str, replicas: int = 3, name: str = "kv",
                 extra_args: tuple[str, ...] = ()) -> None:
        assert kind in ("redis", "memcached")
        super().__init__(replicas, name, extra_args, workdir_prefix="kvstores")
        self.kind = kind
        self.server_cwd = self.workdir  # dump-<id>.txt lands beside the logs

    def command(self, replica_id: int, fifo_path: str) -> list[str]:
        command_name = ("redis-server-replicated" if self.kind == "redis"
                        else "memcached-replicated")
        return [
            sys.executable, "-m", "kvstores", command_name, "--id", str(replica_id),
            "--ids", ",".join(map(str, self.addresses)), "--replicas", str(self.replicas),
            "--port", self.addresses[replica_id].rpartition(":")[2],
            "--cluster-id", self.cluster_id, "--fifo", fifo_path,
            "--parent-pid", str(os.getpid()), *self.extra_args,
        ]

    def query(self, replica_id: int, timeout_s: float) -> dict[str, str]:
        return status(self.kind, self.addresses[replica_id], timeout_s)

    def view(self, status: dict[str, str]) -> View:
        applied = int(status.get("applied") or 0)
        leader = status.get("leader") or ""
        return View(int(status["id"]), status["role"], int(leader) if leader else None,
                    applied, applied)

    def status(self, replica_id: int) -> dict[str, str] | None:
        return self.answer(replica_id)

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
