"""The original's load clients: ``redis-puts-only|redis-gets-only|redis-puts-gets`` and the
memcached equivalents, ``<key_size> <value_size> <host> <port>``.

Rule 1: one connection, one request outstanding (closed loop); each request's latency (ns, from
        send to complete reply, retries included) goes to ``redis-cli.txt`` / ``memcached-cli.txt``,
        one number per line, as the original wrote them.
Rule 2: the client follows the leader: a redirect (redis ``-MOVED 0 host:port``, memcached
        ``SERVER_ERROR ... at host:port``) reconnects there and retries; ``TRYAGAIN`` / a paused or
        leaderless server is retried after ``RETRY_SLEEP_S``, at most ``RETRIES_MAX`` times.
        A retried write may be applied twice (docs/kvstores.md); puts are idempotent SETs.
Rule 3: keys and values come from ``random.Random(seed)``: ``keys`` distinct keys of exactly
        ``key_size`` bytes; gets-only first stores every key (not measured).
"""

from __future__ import annotations

import random
import re
import socket
import string
import time
from collections.abc import Callable
from dataclasses import dataclass

from kvstores import mctext, resp

RETRY_SLEEP_S = 0.002
RETRIES_MAX = 5000  # 10 s of TRYAGAIN: a failover takes tens of ms
KEYS_DEFAULT = 1000
REQUESTS_DEFAULT = 100_000
CONNECT_TIMEOUT_S = 5.0
MODES = ("puts-only", "gets-only", "puts-gets")
_ADDRESS = re.compile(rb"(?:MOVED \d+ |leader is server \d+ at )([^\s:]+:\d+)")


class LoadError(RuntimeError):
    """The load cannot go on (server gone, too many retries); the message says why."""


@dataclass(frozen=True, slots=True)
class LoadResult:
    latencies_ns: list[int]
    seconds: float
    retries: int
    redirects: int
    errors: int

    def percentile_us(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ns)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1000.0

    @property
    def ops_per_s(self) -> float:
        return len(self.latencies_ns) / self.seconds if self.seconds > 0 else 0.0


class _Connection:
    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.sock = socket.create_connection(address, CONNECT_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def call(self, request: bytes, framer: Callable[[bytearray, int], int]) -> bytes:
        self.sock.sendall(request)
        buf = self.buf
        while True:
            end = framer(buf, 0) if buf else -1
            if end >= 0:
                reply = bytes(buf[:end])
                del buf[:end]
                return reply
            chunk = self.sock.recv(65536)
            if not chunk:
                raise LoadError(f"server {self.address[0]}:{self.address[1]} closed the "
                                "connection")
            buf += chunk

    def close(self) -> None:
        self.sock.close()


def make_keys(seed: int, count: int, key_size: int) -> list[bytes]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits
    keys: set[bytes] = set()
    while len(keys) < count:
        keys.add("".join(rng.choices(alphabet, k=key_size)).encode())
    return sorted(keys)


def redis_request(put: bool, key: bytes, value: bytes) -> bytes:
    return resp.encode_command([b"SET", key, value] if put else [b"GET", key])


def memcached_request(put: bool, key: bytes, value: bytes) -> bytes:
    if put:
        return b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value)
    return b"get %s\r\n" % key


def _classify(protocol: str, reply: bytes) -> tuple[str, tuple[str, int] | None]:
    """("ok" | "redirect" | "retry" | "error", address for a redirect). "outcome unknown" is
    retried: the load's puts are SETs of a fixed value, applying one twice changes nothing."""
    if b"kvstores: outcome unknown" in reply[:40]:
        return "retry", None
    if protocol == "redis":
        if not reply.startswith(b"-"):
            return "ok", None
        if reply.startswith(b"-TRYAGAIN"):
            return "retry", None
    else:
        if not reply.startswith((b"SERVER_ERROR", b"CLIENT_ERROR", b"ERROR")):
            return "ok", None
        if b"kvstores:" in reply and b" is a follower; " not in reply:
            return "retry", None
    match = _ADDRESS.search(reply)
    if match is None:
        return "error", None
    host, _, port = match.group(1).decode().rpartition(":")
    return "redirect", (host, int(port))


class LeaderFollowingClient:
    """A closed-loop client that follows redirects and retries TRYAGAIN (Rule 2)."""

    def __init__(self, protocol: str, host: str, port: int) -> None:
        assert protocol in ("redis", "memcached")
        self.protocol = protocol
        self.conn = _Connection((host, port))
        self.retries = 0
        self.redirects = 0
        self.errors = 0
        if protocol == "redis":
            self._framer: Callable[[bytearray, int], int] = resp.reply_end
        else:
            self._framer = self._memcached_framer

    @staticmethod
    def _memcached_framer(buf: bytearray, pos: int) -> int:
        framing = mctext.Framing.BLOCK if buf.startswith(b"VALUE") else mctext.Framing.LINE
        return mctext.reply_end(buf, pos, framing)

    def call(self, request: bytes) -> bytes:
        for _ in range(RETRIES_MAX):
            try:
                reply = self.conn.call(request, self._framer)
            except OSError as exc:
                raise LoadError(f"server {self.conn.address}: {exc}") from None
            outcome, address = _classify(self.protocol, reply)
            if outcome == "ok":
                return reply
            if outcome == "error":
                self.errors += 1
                return reply
            if outcome == "redirect" and address is not None:
                self.redirects += 1
                self.conn.close()
                self.conn = _Connection(address)
                continue
            self.retries += 1
            time.sleep(RETRY_SLEEP_S)
        raise LoadError(f"gave up after {RETRIES_MAX} retries; last reply {reply[:120]!r}")

    def close(self) -> None:
        self.conn.close()


def run_load(
    protocol: str, mode: str, key_size: int, value_size: int, host: str, port: int,
    requests: int = REQUESTS_DEFAULT, keys: int = KEYS_DEFAULT, seed: int = 1,
) -> LoadResult:
    """One closed-loop run (Rules 1-3); the latencies are returned, not written."""
    assert mode in MODES
    if key_size < 1 or value_size < 0 or requests < 1 or keys < 1:
        raise LoadError("need key_size >= 1, value_size >= 0, requests >= 1, keys >= 1")
    key_list = make_keys(seed, keys, key_size)
    rng = random.Random(seed + 1)
    value = bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=value_size))
    encode = redis_request if protocol == "redis" else memcached_request
    client = LeaderFollowingClient(protocol, host, port)
    try:
        if mode == "gets-only":
            for key in key_list:
                client.call(encode(True, key, value))
        latencies: list[int] = []
        clock = time.perf_counter_ns
        started = time.perf_counter()
        for number in range(requests):
            key = key_list[rng.randrange(len(key_list))]
            put = mode == "puts-only" or (mode == "puts-gets" and number % 2 == 0)
            request = encode(put, key, value)
            begin = clock()
            client.call(request)
            latencies.append(clock() - begin)
        seconds = time.perf_counter() - started
    finally:
        client.close()
    return LoadResult(latencies, seconds, client.retries, client.redirects, client.errors)


def write_latencies(path: str, latencies_ns: list[int]) -> None:
    with open(path, "w") as file:
        file.write("\n".join(map(str, latencies_ns)))
        file.write("\n")


def summary(result: LoadResult) -> str:
    return (f"{len(result.latencies_ns)} requests in {result.seconds:.2f} s: "
            f"{result.ops_per_s:,.0f} ops/s; latency p50 {result.percentile_us(0.5):.1f} us, "
            f"p90 {result.percentile_us(0.9):.1f} us, p99 {result.percentile_us(0.99):.1f} us; "
            f"retries {result.retries}, redirects {result.redirects}, errors {result.errors}")
