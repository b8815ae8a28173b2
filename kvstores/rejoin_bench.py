"""``python -m kvstores bench-rejoin``: how long a replica killed with -9 takes to serve again.

Rule 1: per store and round, one 3-replica cluster: a follower is killed with -9 and restarted
        with the same command line twice, first with an empty data set (the baseline: process
        start, registry, consensus rejoin of an empty snapshot) and then after ``--keys`` keys of
        ``--value-bytes`` were written through the leader (real clients' protocol, pipelined).
Rule 2: measured: wall time from the restart to the replica answering as a caught-up follower
        (``ProcessCluster.wait_caught_up``), the time from its ``recovering`` role to
        ``follower`` (its own log), the snapshot's bytes, how long the provider held its local
        server's later commands back (``kvstores.snapshot`` Rule 1) and the install time; each
        with the ratio to the baseline of the same round (not for the size), median and spread
        over rounds.
Rule 3: after each restart every replica's data digest must be equal, else the run fails (exit 1).
Rule 4: like the other benchmarks it runs at nice -10 (``MU_BENCH_NICE=0`` disables).
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import time
from dataclasses import dataclass

from kvstores import mctext, resp
from kvstores.cluster import ClusterError, LocalKvCluster
from kvstores.constants import COMMAND_BYTES_MAX

CATCH_UP_TIMEOUT_S = 300.0
EQUAL_TIMEOUT_S = 60.0
FILL_BATCH = 1000  # pipelined writes per round trip while filling
FILL_ATTEMPTS_MAX = 20  # passes over the writes a leader change refused
VALUE_BYTES_MAX = COMMAND_BYTES_MAX - 64  # the SET / set line around the value fits in 64 B
STABLE = ("--dead-after-us", "100000")  # kvstores.failover says why
_TIME = r"(\d\d):(\d\d):(\d\d)\.(\d\d\d)"
_ROLE = re.compile(_TIME + r" WARNING kvstores\.server: server \d+: role (\S+) -> (\S+)")
_HELD = re.compile(r"took a snapshot of index \d+: (\d+) keys, (\d+) bytes, local server held "
                   r"for ([\d.]+) ms")
_INSTALLED = re.compile(r"installed a snapshot of index \d+: \d+ keys, (\d+) bytes in ([\d.]+) ms")


@dataclass(frozen=True, slots=True)
class Rejoin:
    wall_s: float  # restart -> caught-up follower (process start included)
    recovering_ms: float  # role recovering -> follower, from the replica's own log
    snapshot_bytes: int
    held_ms: float  # the provider's local server held back (0 if not found)
    install_ms: float


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "bench-rejoin", help="time for a replica killed with -9 to catch up by snapshot",
        description="Kills a follower of a 3-replica cluster with -9 and restarts it with the "
        "same command line, once on an empty data set (baseline) and once after --keys keys "
        "were written; prints the time to serve again, snapshot size, how long the provider "
        "held its local server, install time, and ratios to the baseline. Redis and memcached.")
    parser.add_argument("--keys", type=int, default=20_000, help="keys written (default 20000)")
    parser.add_argument("--value-bytes", type=int, default=100, help="value size (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--only", choices=("redis", "memcached"), default=None)
    parser.set_defaults(run=run)


def _commands(kind: str, keys: int, value_bytes: int) -> list[bytes]:
    value = b"v" * value_bytes
    if kind == "redis":
        return [resp.encode_command([b"SET", b"key:%08d" % n, value]) for n in range(keys)]
    return [b"set key:%08d 0 0 %d\r\n%s\r\n" % (n, value_bytes, value) for n in range(keys)]


def _replies(kind: str, sock: socket.socket, count: int) -> list[bytes]:
    """``count`` replies from ``sock`` (redis: RESP; memcached: one line each)."""
    buf = bytearray()
    replies: list[bytes] = []
    pos = 0
    while len(replies) < count:
        end = (resp.reply_end(buf, pos) if kind == "redis"
               else mctext.reply_end(buf, pos, mctext.Framing.LINE)) if pos < len(buf) else -1
        if end >= 0:
            replies.append(bytes(buf[pos:end]))
            pos = end
            continue
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ClusterError("a server closed the connection while filling")
        buf += chunk
    return replies


def _fill(cluster: LocalKvCluster, keys: int, value_bytes: int) -> None:
    """Write ``keys`` keys through the leader, ``FILL_BATCH`` per round trip; a write the
    leader did not store (it lost leadership: redirect, TRYAGAIN, outcome unknown) is sent
    again to the then leader (setting a fixed value twice changes nothing)."""
    ok = b"+OK\r\n" if cluster.kind == "redis" else b"STORED\r\n"
    pending = _commands(cluster.kind, keys, value_bytes)
    for _ in range(FILL_ATTEMPTS_MAX):
        host, _, port = cluster.addresses[cluster.wait_for_leader(30)].rpartition(":")
        failed: list[bytes] = []
        with socket.create_connection((host, int(port)), 10) as sock:
            sock.settimeout(60)
            for start in range(0, len(pending), FILL_BATCH):
                batch = pending[start : start + FILL_BATCH]
                sock.sendall(b"".join(batch))
                replies = _replies(cluster.kind, sock, len(batch))
                failed += [c for c, r in zip(batch, replies, strict=True) if r != ok]
        if not failed:
            return
        pending = failed
    raise ClusterError(f"{len(pending)} writes not stored after {FILL_ATTEMPTS_MAX} attempts")


def _seconds(match: re.Match[str]) -> float:
    hours, minutes, seconds, millis = (int(match.group(i)) for i in range(1, 5))
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def _recovering_ms(log_text: str) -> float:
    """From this incarnation's first ``-> recovering`` to its ``recovering -> follower``."""
    began = ended = None
    for match in _ROLE.finditer(log_text):
        if match.group(6) == "recovering":
            began, ended = _seconds(match), None
        elif match.group(5) == "recovering" and match.group(6) == "follower" and began:
            ended = _seconds(match)
    return 0.0 if began is None or ended is None else (ended - began) * 1000


def _rejoin(cluster: LocalKvCluster, victim: int) -> Rejoin:
    logs = {i: len(cluster.servers[i].log_path.read_text()) for i in cluster.addresses}
    cluster.kill_server(victim)
    cluster.wait_for_leader(30, exclude=victim)
    started = time.monotonic()
    cluster.start_server(victim)
    cluster.wait_caught_up(victim, CATCH_UP_TIMEOUT_S)
    wall_s = time.monotonic() - started
    digests = cluster.wait_equal(EQUAL_TIMEOUT_S)
    if None in digests.values() or len(set(digests.values())) != 1:
        raise ClusterError(f"replicas differ after the rejoin: {digests}")
    new = {i: cluster.servers[i].log_path.read_text()[logs[i]:] for i in cluster.addresses}
    held = [float(m.group(3)) for i in cluster.addresses for m in _HELD.finditer(new[i])]
    installed = _INSTALLED.search(new[victim])
    return Rejoin(wall_s, _recovering_ms(new[victim]),
                  int(installed.group(1)) if installed else 0, max(held, default=0.0),
                  float(installed.group(2)) if installed else 0.0)


def _round(kind: str, args: argparse.Namespace) -> tuple[Rejoin, Rejoin]:
    with LocalKvCluster(kind, 3, name="brejoin", extra_args=STABLE) as cluster:
        leader = cluster.wait_for_leader(30)
        victim = max(i for i in cluster.addresses if i != leader)
        empty = _rejoin(cluster, victim)
        _fill(cluster, args.keys, args.value_bytes)
        leader = cluster.wait_for_leader(30)
        full = _rejoin(cluster, max(i for i in cluster.addresses if i != leader))
    return empty, full


def _line(name: str, unit: str, empty: list[float], full: list[float],
          ratio: bool = True) -> str:
    ratios = [f / e for e, f in zip(empty, full, strict=True) if e > 0] if ratio else []
    shown = (f"x{statistics.median(ratios):.2f} (rounds x{min(ratios):.2f}-x{max(ratios):.2f})"
             if ratios else "-")
    return (f"    {name:<24} empty {statistics.median(empty):10.1f} {unit:<3} "
            f"full {statistics.median(full):10.1f} {unit:<3} full/empty {shown}")


def run(args: argparse.Namespace) -> int:
    from kvstores.bench import raise_priority

    if args.keys < 1 or args.value_bytes < 1 or args.rounds < 1:
        print("bench-rejoin: need --keys, --value-bytes and --rounds >= 1")
        return 2
    if args.value_bytes > VALUE_BYTES_MAX:
        print(f"bench-rejoin: --value-bytes {args.value_bytes}: a write must fit one log entry "
              f"(at most {VALUE_BYTES_MAX})")
        return 2
    print(f"kvstores bench-rejoin: {raise_priority()}")
    for kind in ("redis", "memcached"):
        if args.only not in (None, kind):
            continue
        print(f"== {kind}: {args.rounds} rounds; a follower killed with -9 and restarted, "
              f"empty vs {args.keys} keys of {args.value_bytes} B")
        results: list[tuple[Rejoin, Rejoin]] = []
        try:
            for number in range(args.rounds):
                results.append(_round(kind, args))
                print(f"  round {number + 1}/{args.rounds} done", flush=True)
        except ClusterError as exc:
            print(f"bench-rejoin: {kind}: {exc}")
            return 1
        empty, full = [r[0] for r in results], [r[1] for r in results]
        print(_line("restart -> caught up", "s", [r.wall_s for r in empty],
                    [r.wall_s for r in full]))
        print(_line("recovering -> follower", "ms", [r.recovering_ms for r in empty],
                    [r.recovering_ms for r in full]))
        print(_line("snapshot size", "B", [r.snapshot_bytes for r in empty],
                    [r.snapshot_bytes for r in full], ratio=False))
        print(_line("provider held its server", "ms", [r.held_ms for r in empty],
                    [r.held_ms for r in full]))
        print(_line("install", "ms", [r.install_ms for r in empty],
                    [r.install_ms for r in full]))
        print("    data identical on every replica after each restart: YES")
    return 0
