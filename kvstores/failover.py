"""``python -m kvstores failover-check``: the issue's "done when", run and checked.

Rule 1: redis: 3 replicas (``--follower-writes forward``); ``redis-benchmark -t set,get -n N``
        against a follower; when half of its SETs were applied the leader is paused through its
        FIFO and resumed ``--pause-s`` later (a failover in the middle); redis-benchmark must exit
        0, and every replica's ``KVSTORES DIGEST`` (the local redis's ``DEBUG DIGEST``) must be
        equal at the end.
Rule 2: memcached: 3 replicas (redirects); ``--clients`` pymemcache clients run set/get/incr/
        delete for ``--seconds``, following the leader (a redirect names it; ``unavailable`` is
        retried); the leader is paused at half time and resumed ``--pause-s`` later; every
        replica's data set (metadump keys + values) must be equal at the end.
Rule 3: the exit status is 0 only if both checks passed; each prints its figures.
"""

from __future__ import annotations

import argparse
import random
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field

from kvstores.cluster import ClusterError, LocalKvCluster

EQUAL_WAIT_S = 20.0
BENCHMARK_TIMEOUT_S = 900.0
RETRY_SLEEP_S = 0.002
MEMCACHED_KEYS = 2000
# A silent leader is dead after 100 ms instead of 20: on a shared, overloaded host a process that
# is not scheduled for 20 ms loses leadership spuriously, which is not the failover under test.
# The FIFO pause is a step-down that consensus notices within milliseconds either way.
STABLE = ("--dead-after-us", "100000")
MEMCACHED_LEADER = re.compile(r"leader is server \d+ at ([^\s:]+):(\d+)")  # in a redirect


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "failover-check", help="redis-benchmark and a pymemcache load across a failover; "
        "checks that every replica's data is identical",
        description="Starts 3 redis replicas, runs redis-benchmark -t set,get -n N against a "
        "follower (which forwards writes to the leader), pauses the leader in the middle and "
        "resumes it; then 3 memcached replicas under a leader-following pymemcache load with "
        "the same failover. Exit 0 only if every replica's data set is identical at the end.")
    parser.add_argument("--requests", type=int, default=100_000,
                        help="redis-benchmark -n (default 100000)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="memcached load duration (default 10)")
    parser.add_argument("--clients", type=int, default=4,
                        help="pymemcache clients (default 4)")
    parser.add_argument("--pause-s", type=float, default=1.0,
                        help="how long the leader stays paused (default 1.0)")
    parser.add_argument("--only", choices=("redis", "memcached"), default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.set_defaults(run=run)


def _digest_table(cluster: LocalKvCluster) -> bool:
    digests = cluster.wait_equal(EQUAL_WAIT_S)
    statuses = cluster.statuses()
    for replica_id, value in digests.items():
        status = statuses.get(replica_id) or {}
        shown = "unreadable" if value is None else f"{value[0][:16]}... {value[1]} keys"
        print(f"  replica {replica_id}: role {status.get('role', '?'):9} applied "
              f"{status.get('applied', '?'):>7}  data {shown}")
    equal = len(set(digests.values())) == 1 and None not in digests.values()
    print(f"  data identical on every replica: {'YES' if equal else 'NO'}")
    return equal


def _applied(cluster: LocalKvCluster) -> int:
    values = [int(s["applied"]) for s in cluster.statuses().values() if s]
    return max(values, default=0)


def check_redis(args: argparse.Namespace) -> bool:
    print(f"== redis: 3 replicas, redis-benchmark -t set,get -n {args.requests} against a "
          "follower, leader paused in the middle")
    with LocalKvCluster("redis", 3, name="fcheck",
                        extra_args=("--follower-writes", "forward", *STABLE)) as cluster:
        leader = cluster.wait_for_leader(10.0)
        target = max(i for i in cluster.addresses if i != leader)
        host, port = cluster.addresses[target].split(":")
        command = ["redis-benchmark", "-h", host, "-p", port, "-t", "set,get", "-n",
                   str(args.requests), "-r", "100000", "-d", "32", "-q"]
        print(f"  leader {leader}; running: {' '.join(command)}  (server {target})")
        started = time.monotonic()
        bench = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        while _applied(cluster) < args.requests // 2 and bench.poll() is None:
            time.sleep(0.02)
        paused_at = time.monotonic() - started
        leader = cluster.wait_for_leader(10.0)
        if leader == target:
            print(f"  leadership moved to server {target}, the benchmark's own server: pausing "
                  "it stops the benchmark's server (the check then fails)")
        cluster.control(leader, "p")
        new_leader = cluster.wait_for_leader(10.0, exclude=leader)
        took = time.monotonic() - started - paused_at
        print(f"  {paused_at:.1f} s: paused leader {leader} at {_applied(cluster)} applied "
              f"writes; server {new_leader} leads {took * 1000:.0f} ms later")
        time.sleep(args.pause_s)
        cluster.control(leader, "r")
        print(f"  {time.monotonic() - started:.1f} s: resumed server {leader} (a follower now)")
        out, err = bench.communicate(timeout=BENCHMARK_TIMEOUT_S)
        lines = [line.strip() for line in out.replace("\r", "\n").splitlines()
                 if line.strip() and "rps=" not in line]
        for line in lines[-2:]:
            print(f"  redis-benchmark: {line}")
        for line in err.strip().splitlines()[-3:]:
            print(f"  redis-benchmark stderr: {line}")
        print(f"  redis-benchmark exit status {bench.returncode}")
        equal = _digest_table(cluster)
        return equal and bench.returncode == 0


@dataclass
class _Counts:
    ops: int = 0
    redirects: int = 0
    retries: int = 0
    unknown: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _memcached_worker(cluster: LocalKvCluster, number: int, seed: int, stop: threading.Event,
                      counts: _Counts) -> None:
    from pymemcache.client.base import Client
    from pymemcache.exceptions import MemcacheServerError

    rng = random.Random(seed * 1000 + number)
    address = cluster.addresses[1].split(":")
    client = Client((address[0], int(address[1])), default_noreply=False, connect_timeout=2,
                    timeout=5)
    counter = f"counter-{number}"
    ops = redirects = retries = unknown = 0
    first = True
    while not stop.is_set():
        key = f"key-{rng.randrange(MEMCACHED_KEYS)}"
        choice = rng.random()
        try:
            if first:
                client.set(counter, b"0")
                first = False
            elif choice < 0.5:
                client.set(key, f"value-{number}-{ops}".encode())
            elif choice < 0.8:
                client.get(key)
            elif choice < 0.9:
                client.incr(counter, 1)
            else:
                client.delete(key)
            ops += 1
        except MemcacheServerError as exc:
            text = str(exc)
            match = MEMCACHED_LEADER.search(text)
            if match is not None:
                client.close()
                client = Client((match.group(1), int(match.group(2))), default_noreply=False,
                                connect_timeout=2, timeout=5)
                redirects += 1
            elif "outcome unknown" in text:
                unknown += 1
            else:
                retries += 1
                time.sleep(RETRY_SLEEP_S)
        except Exception as exc:
            with counts.lock:
                counts.failures.append(f"client {number}: {type(exc).__name__}: {exc}")
            return
    client.close()
    with counts.lock:
        counts.ops += ops
        counts.redirects += redirects
        counts.retries += retries
        counts.unknown += unknown


def check_memcached(args: argparse.Namespace) -> bool:
    print(f"== memcached: 3 replicas, {args.clients} pymemcache clients (set/get/incr/delete) "
          f"for {args.seconds:.0f} s, leader paused at half time")
    with LocalKvCluster("memcached", 3, name="fcheck", extra_args=STABLE) as cluster:
        leader = cluster.wait_for_leader(10.0)
        stop = threading.Event()
        counts = _Counts()
        workers = [threading.Thread(target=_memcached_worker,
                                    args=(cluster, n, args.seed, stop, counts))
                   for n in range(args.clients)]
        for worker in workers:
            worker.start()
        time.sleep(args.seconds / 2)
        cluster.control(leader, "p")
        started = time.monotonic()
        new_leader = cluster.wait_for_leader(10.0, exclude=leader)
        print(f"  paused leader {leader}; server {new_leader} leads "
              f"{(time.monotonic() - started) * 1000:.0f} ms later")
        time.sleep(args.pause_s)
        cluster.control(leader, "r")
        print(f"  resumed server {leader} (a follower now)")
        time.sleep(max(0.0, args.seconds / 2 - args.pause_s))
        stop.set()
        for worker in workers:
            worker.join(30)
        print(f"  {counts.ops} operations, {counts.redirects} redirects followed, "
              f"{counts.retries} retries (paused/no leader), {counts.unknown} outcome unknown, "
              f"{len(counts.failures)} clients failed")
        for failure in counts.failures:
            print(f"  {failure}")
        equal = _digest_table(cluster)
        return equal and not counts.failures and counts.ops > 0


def run(args: argparse.Namespace) -> int:
    from kvstores.bench import raise_priority

    print(f"failover-check: seed {args.seed}; {raise_priority()}")
    results = []
    try:
        if args.only in (None, "redis"):
            results.append(check_redis(args))
        if args.only in (None, "memcached"):
            results.append(check_memcached(args))
    except ClusterError as exc:
        print(f"failover-check: cluster error: {exc}")
        return 1
    passed = all(results)
    print(f"failover-check: {'PASSED' if passed else 'FAILED'}")
    return 0 if passed else 1
