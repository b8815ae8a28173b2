"""Replicated redis with the real clients: redis-cli, redis-cli -c, redis-benchmark."""

import os
import signal
import subprocess
import sys
import time

import pytest

from kvstores.cluster import redis_call
from tests.kvstores.conftest import leader_write

pytestmark = pytest.mark.slow


def cli(address: str, *args: str, cluster_mode: bool = False) -> str:
    host, port = address.split(":")
    command = ["redis-cli", "-h", host, "-p", port] + (["-c"] if cluster_mode else []) + list(args)
    return subprocess.run(command, capture_output=True, text=True, timeout=20).stdout.strip()


def follower_of(cluster, leader: int) -> int:
    return max(i for i in cluster.addresses if i != leader)


def test_set_on_leader_get_on_follower_after_the_next_write(redis3):
    def set_on_leader() -> int:
        leader = redis3.wait_for_leader(10)
        return leader if cli(redis3.addresses[leader], "SET", "CH", "Bern") == "OK" else 0

    leader = eventually(set_on_leader)
    # The next write carries SET CH's commit to the followers (an idle leader also publishes it).
    cli(redis3.addresses[leader], "SET", "IT", "Rome")
    follower = follower_of(redis3, leader)
    deadline = time.monotonic() + 5
    while cli(redis3.addresses[follower], "GET", "CH") != "Bern":
        assert time.monotonic() < deadline, "follower never applied SET CH"
        time.sleep(0.02)


def eventually(attempt, give_up_s: float = 10.0):
    """``attempt()`` until it returns a true value; this shared 2-core machine sometimes moves
    leadership spuriously (docs/consensus.md), which a test must ride out."""
    deadline = time.monotonic() + give_up_s
    while not (result := attempt()):
        assert time.monotonic() < deadline, "gave up"
        time.sleep(0.05)
    return result


# The same calls on a plain redis-server and on the replicated one must give equal results.
CALLS = [
    ("hset", ("h",), {"mapping": {"f": "v", "g": "w"}}),
    ("hgetall", ("h",), {}),
    ("zadd", ("z", {"m": 1.5, "n": 2}), {}),
    ("zincrby", ("z", 1, "m"), {}),
    ("zrange", ("z", 0, -1), {"withscores": True}),
    ("zscore", ("z", "m"), {}),
    ("zpopmin", ("z",), {}),
    ("incrbyfloat", ("f", 1.25), {}),
    ("set", ("s", "v"), {"px": 100_000}),
    ("get", ("s",), {}),
    ("get", ("missing",), {}),
    ("xadd", ("st", {"f": "v"}), {"id": "1-1"}),
    ("xrange", ("st",), {}),
    ("xread", ({"st": "0-0"},), {"count": 5}),
    ("lpush", ("l", "a", "b"), {}),
    ("lpos", ("l", "a"), {}),
    ("exists", ("h", "missing"), {}),
    ("zmscore", ("z", ["m", "q"]), {}),
    ("sadd", ("ss", "b", "a", "c", "10", "9"), {}),
    ("sort", ("ss",), {"alpha": True}),
    ("sort", ("ss",), {"by": "nosort", "store": "sorted"}),  # redis sorts what it stores
    ("lrange", ("sorted", 0, -1), {}),
    ("sort", ("l",), {"alpha": True, "desc": True, "store": "l2"}),
    ("lrange", ("l2", 0, -1), {}),
    ("object", ("encoding", "ss"), {}),
    ("memory_usage", ("ss",), {}),
    ("geoadd", ("g", (13.36, 38.11, "palermo", 15.08, 37.50, "catania")), {}),
    ("georadius", ("g", 15, 37, 200, "km"), {"store_dist": "gd"}),
    ("zrange", ("gd", 0, -1), {"withscores": True}),
]


def on_real_and_leader(cluster, real_redis: str, protocol: int, run) -> tuple[list, int, list]:
    """``run(client)`` with redis-py speaking ``protocol`` on a plain redis-server and on the
    cluster's leader, each emptied first: (what redis-server gave, the leader, what it gave)."""
    import redis

    plain = redis.Redis(unix_socket_path=real_redis, protocol=protocol)
    plain.flushall()
    expected = run(plain)
    plain.close()

    def on_leader():
        leader = cluster.wait_for_leader(10)
        host, port = cluster.addresses[leader].split(":")
        client = redis.Redis(host=host, port=int(port), socket_timeout=10, protocol=protocol)
        try:
            client.flushall()
            return leader, run(client)
        except (redis.exceptions.MovedError, redis.exceptions.TryAgainError):
            return None  # leadership moved between the lookup and the calls
        finally:
            client.close()

    leader, results = eventually(on_leader)
    return expected, leader, results


def run_calls(client) -> list:
    return [getattr(client, name)(*args, **kwargs) for name, args, kwargs in CALLS]


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_gets_what_redis_server_answers_in_either_protocol(redis3, real_redis, protocol):
    """redis_rules Rule 6 and pipe Rule 8 with the real client: redis-py 8 speaks RESP3 by
    default (HELLO 3 on every connect); both protocols get redis-server's replies, writes on the
    leader (replicated) and reads on every replica."""
    import redis

    expected, _leader, results = on_real_and_leader(redis3, real_redis, protocol, run_calls)
    assert results == expected
    digests = redis3.wait_equal(10)
    assert len(set(digests.values())) == 1, digests
    for address in redis3.addresses.values():
        host, port = address.split(":")
        client = redis.Redis(host=host, port=int(port), socket_timeout=10, protocol=protocol)
        assert client.hgetall("h") == expected[1]
        assert client.zrange("z", 0, -1, withscores=True) == [expected[4][1]]
        connection = client.connection_pool.get_connection()
        assert connection.get_protocol() == protocol  # HELLO 3 was accepted, not skipped
        client.connection_pool.release(connection)
        client.close()


def test_resp2_and_resp3_clients_pipelining_together_each_get_their_own_protocol(redis3):
    """pipe Rule 8: the wrap of a RESP3 client's command never lets a RESP2 client's command,
    sent in the same event-loop turn on the shared connection, answer in RESP3 (or the
    reverse)."""
    import socket

    from kvstores.resp import encode_command, reply_end

    leader = leader_write(redis3, b"HSET", b"mixed", b"f", b"v")
    host, port = redis3.addresses[leader].split(":")
    rounds = 300
    clients = {}
    for protocol in (2, 3):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(encode_command([b"HELLO", b"%d" % protocol]))
        clients[protocol] = sock
    batch = (encode_command([b"HGETALL", b"mixed"]) + encode_command([b"ZINCRBY", b"mz", b"1",
                                                                        b"m"])) * rounds
    for sock in clients.values():
        sock.sendall(batch)
    for protocol, sock in clients.items():
        buf = bytearray()
        replies = []
        while len(replies) < 1 + 2 * rounds:
            chunk = sock.recv(65536)
            assert chunk, "connection closed"
            buf += chunk
            while (end := reply_end(buf, 0)) >= 0:
                replies.append(bytes(buf[:end]))
                del buf[:end]
        sock.close()
        hello, maps, scores = replies[0], replies[1::2], replies[2::2]
        assert hello.startswith(b"%7\r\n" if protocol == 3 else b"*14\r\n")
        if protocol == 3:
            assert set(maps) == {b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"}, set(maps)
            assert all(score.startswith(b",") for score in scores), scores[:3]
        else:
            assert set(maps) == {b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n"}, set(maps)
            assert all(score.startswith(b"$") for score in scores), scores[:3]


def run_transactions(client) -> list:
    """redis-py pipelines (MULTI/EXEC by default): a writing one, a reading one, one with a
    runtime error inside (the others in it still apply, as in redis)."""
    import redis

    results = []
    with client.pipeline() as pipe:
        pipe.set("t", "1").incr("t").hset("th", mapping={"x": "1"}).hgetall("th")
        pipe.zadd("tz", {"m": 1.5}).zincrby("tz", 1, "m").get("t")
        results.append(pipe.execute())
    with client.pipeline() as pipe:
        results.append(pipe.get("t").hgetall("th").zscore("tz", "m").execute())
    with client.pipeline() as pipe:
        tricky = "v\r\n*1\r\n$4\r\nEXEC\r\n"  # RESP inside a value: counted by parsing
        pipe.set(tricky, tricky).lpush("t", "x").incr("t").get(tricky)
        results.append([type(item).__name__ if isinstance(item, redis.exceptions.RedisError)
                        else item for item in pipe.execute(raise_on_error=False)])
    return results


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_transactions_give_what_redis_server_gives_on_every_replica(
        redis3, real_redis, protocol):
    """kvstores.transaction: a MULTI/EXEC block is one log entry, so every replica runs it
    whole; a transaction with a refused command applies nothing (EXECABORT)."""
    import redis

    expected, leader, results = on_real_and_leader(redis3, real_redis, protocol,
                                                   run_transactions)
    assert results == expected
    host, port = redis3.addresses[leader].split(":")
    client = redis.Redis(host=host, port=int(port), socket_timeout=10, protocol=protocol)
    with client.pipeline() as pipe:
        pipe.set("aborted", "1").execute_command("WAIT", "0", "0")
        with pytest.raises(redis.exceptions.ResponseError, match="'WAIT' is not supported"):
            pipe.execute()  # redis-py raises the queueing error; EXEC answered EXECABORT
    assert client.get("aborted") is None
    client.close()
    digests = redis3.wait_equal(10)
    assert len(set(digests.values())) == 1, digests
    follower = follower_of(redis3, leader)
    host, port = redis3.addresses[follower].split(":")
    client = redis.Redis(host=host, port=int(port), socket_timeout=10, protocol=protocol)
    # A read block, served by the follower (its local server has applied everything: equal
    # digests above); t was incremented to 3 by the third transaction.
    assert client.pipeline().get("t").hgetall("th").execute() == [b"3", expected[1][1]]
    with pytest.raises(redis.exceptions.MovedError):  # a write block is redirected
        client.pipeline().set("t", "2").execute()
    client.close()


def test_a_resp3_write_forwarded_by_a_follower_gets_a_resp3_reply():
    """forward Rule 6: with --follower-writes forward, a RESP3 client's write sent to a
    follower is answered by the leader in RESP3 (a double, not RESP2's bulk string); so is a
    transaction."""
    import redis

    from kvstores.cluster import LocalKvCluster

    with LocalKvCluster("redis", 3, name="t-fwd3",
                        extra_args=("--follower-writes", "forward")) as cluster:
        leader = cluster.wait_for_leader(10)
        follower = follower_of(cluster, leader)
        host, port = cluster.addresses[follower].split(":")
        client = redis.Redis(host=host, port=int(port), socket_timeout=10, protocol=3)
        try:
            assert eventually(lambda: client.zadd("fz", {"m": 1}) == 1)
            assert client.zincrby("fz", 1.5, "m") == 2.5
            raw = redis_call(cluster.addresses[follower], b"ZINCRBY", b"fz", b"1", b"m")
            assert raw == b"$3\r\n3.5\r\n"  # a RESP2 connection still gets RESP2
            assert client.hset("fh", mapping={"a": "1"}) == 1
            # A SPOP arrives at the leader already rewritten (redis_rules Rule 3).
            assert client.sadd("fs", "b", "a", "c") == 3
            assert client.spop("fs") == b"a" and client.spop("fs", 5) == [b"b", b"c"]
            assert eventually(lambda: client.hgetall("fh")) == {b"a": b"1"}
            # A transaction sent to a follower is forwarded whole (MULTI ... EXEC: n + 2
            # replies on the forwarding connection, pipe Rule 9).
            assert client.pipeline().zincrby("fz", 1, "m").hset("fh", "b", "2").execute() == [
                4.5, 1]
        finally:
            client.close()


def run_spops(client) -> list:
    """SPOP where any choice is the only one (one member, all members, none), its argument
    errors and a key of another type: redis-server's answers must come back unchanged."""
    import redis

    client.sadd("one", "m")
    client.sadd("three", "a", "b", "c")
    client.set("str", "v")
    results = [client.spop("one"), client.spop("one"), client.spop("missing"),
               client.spop("missing", 2), client.spop("three", 0),
               sorted(client.spop("three", 5)), client.exists("three")]
    for args in (("str",), ("str", 2), ("three", "-1"), ("three", "x"), ("three", "1", "2"),
                 ("three", "05"), ()):
        try:
            results.append(client.execute_command("SPOP", *args))
        except redis.exceptions.ResponseError as exc:
            results.append(str(exc))
    results.append(client.pipeline().sadd("t", "x").spop("t").scard("t").execute())
    return results


@pytest.mark.parametrize("protocol", [2, 3])
def test_spop_answers_as_redis_server_and_pops_the_same_members_everywhere(redis3, real_redis,
                                                                          protocol):
    """redis_rules Rule 2: SPOP runs as a script that pops the smallest members in byte order,
    so every replica pops the same ones; its replies and errors are redis-server's."""
    import redis

    expected, leader, results = on_real_and_leader(redis3, real_redis, protocol, run_spops)
    assert results == expected
    host, port = redis3.addresses[leader].split(":")
    client = redis.Redis(host=host, port=int(port), socket_timeout=10, protocol=protocol)
    try:
        members = [b"m%02d" % n for n in range(40)] + [b"\xff", b"B", b"a b"]
        client.sadd("many", *members)
        assert client.spop("many") == b"B"  # byte order, whatever the host's locale
        assert client.spop("many", 2) == [b"a b", b"m00"]
        assert sorted(client.smembers("many")) == sorted(members)[3:]
    finally:
        client.close()
    digests = redis3.wait_equal(10)
    assert len(set(digests.values())) == 1, digests


def test_redis_benchmark_default_suite_runs_whole_on_the_leader(redis3):
    """``redis-benchmark`` with no ``-t`` runs every test of its default suite (SPOP among them)
    and stops at the first error reply; every replica ends equal."""
    def run_on_leader():
        leader = redis3.wait_for_leader(10)
        host, port = redis3.addresses[leader].split(":")
        done = subprocess.run(["redis-benchmark", "-h", host, "-p", port, "-n", "2000", "-q"],
                              capture_output=True, text=True, timeout=300)
        return done if "MOVED" not in done.stderr + done.stdout else None

    done = eventually(run_on_leader, 60)
    assert done.returncode == 0 and "Error" not in done.stderr, done.stderr
    for test in ("SET:", "SPOP:", "ZPOPMIN:", "LRANGE_600", "MSET"):
        assert test in done.stdout, done.stdout
    digests = redis3.wait_equal(20)
    assert len(set(digests.values())) == 1, digests


def run_watches(client) -> list:
    """WATCH through redis-py: untouched, touched by another connection (a write, a
    transaction, MSET's second key, DEL, SPOP), by the watching connection itself, another key
    touched, UNWATCH; "aborted" where EXEC answered null."""
    import redis

    def attempt(key, meanwhile, unwatch: bool = False):
        with client.pipeline() as pipe:
            pipe.watch(key)
            pipe.exists(key)
            meanwhile(pipe)
            if unwatch:
                pipe.unwatch()
            pipe.multi()
            pipe.set(key, "mine")
            try:
                return pipe.execute()
            except redis.exceptions.WatchError:
                return "aborted"

    client.sadd("w7", "a", "b")
    client.set("w6", "x")  # a DEL of a missing key changes nothing: redis does not abort then,
    # this front end does (it counts what a write may change: kvstores.frontend Rule 7)
    return [
        attempt("w1", lambda pipe: None),
        attempt("w2", lambda pipe: client.set("w2", "other")),
        attempt("w3", lambda pipe: client.set("unrelated", "x")),
        attempt("w4", lambda pipe: client.pipeline().incr("w4").execute()),
        attempt("w5", lambda pipe: client.mset({"a5": "1", "w5": "2"})),
        attempt("w6", lambda pipe: client.delete("w6", "w5")),
        attempt("w7", lambda pipe: client.spop("w7")),
        attempt("w8", lambda pipe: pipe.set("w8", "own")),  # immediate mode: this connection
        attempt("w9", lambda pipe: client.set("w9", "other"), unwatch=True),
        client.mget(*(f"w{n}" for n in range(1, 10))),
    ]


@pytest.mark.parametrize("protocol", [2, 3])
def test_watch_aborts_exec_where_redis_server_aborts_it(redis3, real_redis, protocol):
    """redis_rules Rule 7: optimistic locking, compared call for call with redis-server."""
    expected, _leader, results = on_real_and_leader(redis3, real_redis, protocol, run_watches)
    assert results == expected
    assert results.count("aborted") == 6
    digests = redis3.wait_equal(10)
    assert len(set(digests.values())) == 1, digests


def test_a_watch_on_a_follower_aborts_once_any_write_was_applied_there(redis3):
    """pipe Rule 10: a follower does not know which keys the leader's entries change, so any
    entry applied after the WATCH aborts the (read-only) EXEC there; none applied, it runs."""
    import redis

    leader = redis3.wait_for_leader(10)
    follower = follower_of(redis3, leader)

    def client(replica: int):
        host, port = redis3.addresses[replica].split(":")
        return redis.Redis(host=host, port=int(port), socket_timeout=10)

    writer, reader = client(leader), client(follower)
    writer.set("fw", "1")
    writer.set("fw-tick", "0")
    assert eventually(lambda: reader.get("fw-tick") == b"0")  # every write applied there
    with reader.pipeline() as pipe:
        pipe.watch("fw")
        pipe.multi()
        pipe.get("fw")
        assert pipe.execute() == [b"1"]  # nothing applied in between
    with reader.pipeline() as pipe:
        pipe.watch("fw")
        writer.set("elsewhere", "x")
        writer.set("fw-tick", "1")  # carries the commit of the write before it
        assert eventually(lambda: reader.get("elsewhere") == b"x")
        pipe.multi()
        pipe.get("fw")
        with pytest.raises(redis.exceptions.WatchError):
            pipe.execute()
    writer.close()
    reader.close()


def test_optimistic_increments_from_many_clients_lose_nothing(redis3):
    """The reason WATCH exists: read, compute, write back in MULTI/EXEC, retried on abort. Four
    threads x 40 such increments of one counter end at 160 exactly; a WATCH that missed a
    concurrent write would lose some."""
    import threading

    import redis

    leader = redis3.wait_for_leader(10)
    host, port = redis3.addresses[leader].split(":")
    client = redis.Redis(host=host, port=int(port), socket_timeout=10)
    client.set("optimistic", 0)
    aborts = []

    def increment(pipe) -> None:
        value = int(pipe.get("optimistic"))
        pipe.multi()
        pipe.set("optimistic", value + 1)

    def worker() -> None:
        tries = 0
        for _ in range(40):
            def counted(pipe) -> None:
                nonlocal tries
                tries += 1
                increment(pipe)
            client.transaction(counted, "optimistic")
        aborts.append(tries - 40)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert int(client.get("optimistic")) == 160
    assert sum(aborts) > 0, "no two increments ever overlapped: the test proved nothing"
    client.close()


def run_blocking_pops(client) -> list:
    """Blocking pops that need no wait (an element is there), that time out, and their errors."""
    import redis

    client.rpush("bl", "a", "b", "c")
    client.set("str", "v")
    results = [client.blpop(["none", "bl"], 0), client.brpop(["bl"], 0),
               client.blmove("bl", "bl2", 0, "LEFT", "RIGHT"), client.brpoplpush("bl2", "bl3", 0),
               client.blpop(["empty"], 0.05), client.blmove("empty", "x", 0.05),
               client.lrange("bl3", 0, -1), client.exists("bl", "bl2")]
    client.zadd("bz", {"a": 1.5, "b": 2, "c": 0.1})
    results += [client.bzpopmin(["none", "bz"], 0), client.bzpopmax(["bz"], 0),
                client.bzpopmin(["emptyz"], 0.05), client.zrange("bz", 0, -1, withscores=True)]
    client.rpush("bm", "a", "b", "c")
    client.zadd("bzm", {"x": 1, "y": 2})
    results += [client.blmpop(0, 2, "none", "bm", direction="RIGHT", count=2),
                client.bzmpop(0, 1, ["bzm"], max=True, count=5),
                client.blmpop(0.05, 1, "emptym", direction="LEFT")]
    for args in (("BLPOP",), ("BLPOP", "k", "x"), ("BLPOP", "k", "-1"), ("BLPOP", "str", "0"),
                 ("BZPOPMAX", "str", "0"), ("BLMPOP", "0", "x", "l", "LEFT"),
                 ("BLMPOP", "0", "1", "l", "UP"), ("BZMPOP", "-1", "1", "z", "MIN"),
                 ("BLMOVE", "a", "b", "UP", "LEFT", "0"), ("BRPOPLPUSH", "str", "d", "0")):
        try:
            results.append(client.execute_command(*args))
        except redis.exceptions.ResponseError as exc:
            results.append(str(exc))
    return results


@pytest.mark.parametrize("protocol", [2, 3])
def test_blocking_pops_answer_as_redis_server_when_they_need_not_wait(redis3, real_redis,
                                                                     protocol):
    """kvstores.blocking: an attempt pops what is there, times out as redis does, and argument
    errors are redis-server's."""
    expected, _leader, results = on_real_and_leader(redis3, real_redis, protocol,
                                                    run_blocking_pops)
    assert results == expected
    digests = redis3.wait_equal(10)
    assert len(set(digests.values())) == 1, digests


def test_blocked_clients_are_served_first_come_first_served_and_wait_in_order(redis3):
    """frontend Rule 9: three clients block on one list; each push serves the longest waiting;
    a command pipelined behind a blocking pop runs after it."""
    import socket
    import threading

    import redis

    leader = redis3.wait_for_leader(10)
    host, port = redis3.addresses[leader].split(":")
    pusher = redis.Redis(host=host, port=int(port), socket_timeout=10)
    pusher.delete("jobs", "after")
    got: dict[int, object] = {}

    def waiter(number: int) -> None:
        client = redis.Redis(host=host, port=int(port), socket_timeout=20)
        got[number] = client.blpop(["jobs"], 15)
        client.close()

    threads = []
    for number in range(3):
        threads.append(threading.Thread(target=waiter, args=(number,)))
        threads[-1].start()
        time.sleep(0.3)  # so that they block in this order
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(b"BLPOP other 0\r\nSET after done\r\n")
        time.sleep(0.3)
        assert pusher.get("after") is None  # the SET waits behind the blocked pop
        for job in ("j0", "j1", "j2"):
            pusher.rpush("jobs", job)
            time.sleep(0.3)
        for thread in threads:
            thread.join(20)
        assert got == {n: (b"jobs", b"j%d" % n) for n in range(3)}
        pusher.rpush("other", "o")
        assert _raw_exchange(raw, b"", 2) == b"*2\r\n$5\r\nother\r\n$1\r\no\r\n+OK\r\n"
    assert pusher.get("after") == b"done"
    pusher.close()


def _woken_by(cluster, wait, write) -> list:
    """What ``wait(client)``, a blocking pop started first on the leader, returns once
    ``write(client)`` ran on another connection."""
    import threading

    import redis

    leader = cluster.wait_for_leader(10)
    host, port = cluster.addresses[leader].split(":")
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(wait(redis.Redis(
        host=host, port=int(port), socket_timeout=20))))
    waiter.start()
    time.sleep(0.3)
    writer = redis.Redis(host=host, port=int(port), socket_timeout=10)
    write(writer)
    waiter.join(20)
    writer.close()
    return got


def test_a_script_that_pushes_to_its_declared_key_wakes_a_blocked_client(redis3):
    """kvstores.watch Rule 3: a script wakes the waiters of the keys it declares."""
    got = _woken_by(redis3, lambda client: client.blpop(["sq"], 15),
                    lambda client: client.eval("return redis.call('RPUSH', KEYS[1], ARGV[1])",
                                               1, "sq", "v"))
    assert got == [(b"sq", b"v")] or got == [[b"sq", b"v"]], got


def test_a_waiting_bzmpop_gets_what_a_later_zadd_adds(redis3):
    """The same wait for the sorted-set pops (their attempt is ZMPOP itself)."""
    got = _woken_by(redis3, lambda client: client.bzmpop(15, 1, ["prio"], min=True),
                    lambda client: client.zadd("prio", {"urgent": 1}))
    assert got == [[b"prio", [[b"urgent", b"1"]]]], got  # RESP2: the score as redis sent it


def test_a_work_queue_with_blocking_consumers_delivers_every_job_once(redis3):
    """The pattern blocking pops exist for: a producer pushes 150 jobs, three consumers BRPOP
    them; every job is delivered exactly once and every replica ends equal."""
    import threading

    import redis

    leader = redis3.wait_for_leader(10)
    host, port = redis3.addresses[leader].split(":")
    delivered: list[bytes] = []
    lock = threading.Lock()

    def consumer() -> None:
        client = redis.Redis(host=host, port=int(port), socket_timeout=10)
        while (job := client.brpop(["work"], 1)) is not None:
            with lock:
                delivered.append(job[1])
        client.close()

    consumers = [threading.Thread(target=consumer) for _ in range(3)]
    for thread in consumers:
        thread.start()
    producer = redis.Redis(host=host, port=int(port), socket_timeout=10)
    for number in range(150):
        producer.lpush("work", f"job-{number}")
    for thread in consumers:
        thread.join(30)
    assert sorted(delivered) == sorted(b"job-%d" % n for n in range(150))
    assert producer.llen("work") == 0
    producer.close()
    digests = redis3.wait_equal(10)
    assert len(set(digests.values())) == 1, digests


def test_a_client_blocked_on_a_leader_that_is_paused_is_told_to_retry_at_once():
    """frontend Rule 9: a pause wakes every waiter; its next attempt is refused (TRYAGAIN)
    instead of leaving the client blocked on a server that no longer serves."""
    import socket

    from kvstores.cluster import LocalKvCluster

    with LocalKvCluster("redis", 3, name="t-blpause") as cluster:
        leader = cluster.wait_for_leader(10)
        host, port = cluster.addresses[leader].split(":")
        with socket.create_connection((host, int(port))) as blocked:
            blocked.sendall(b"BLPOP q 0\r\n")
            time.sleep(0.3)
            cluster.control(leader, "p")
            reply = _raw_exchange(blocked, b"", 1)
            assert reply.startswith(b"-TRYAGAIN") and b"paused" in reply, reply
        cluster.control(leader, "r")


def test_a_follower_redirects_a_blocking_pop(redis3):
    leader = redis3.wait_for_leader(10)
    reply = redis_call(redis3.addresses[follower_of(redis3, leader)], b"BLPOP", b"q", b"0")
    assert reply == f"-MOVED 0 {redis3.addresses[leader]}\r\n".encode()


def run_scripts(client) -> list:
    """redis-py's scripting and locks: register_script (EVALSHA, NOSCRIPT, SCRIPT LOAD),
    EVAL, EVAL_RO, SCRIPT EXISTS and FLUSH, and Lock's acquire, extend and release scripts."""
    import redis

    results = []
    incr_by = client.register_script(
        "local v = redis.call('INCRBY', KEYS[1], ARGV[1]) redis.call('SET', KEYS[2], v) return v")
    results.append(incr_by(keys=["c", "copy"], args=[5]))
    results.append(incr_by(keys=["c", "copy"], args=[2]))
    results += [client.get("copy"), client.script_exists(incr_by.sha, "0" * 40),
                client.eval("return {KEYS[1], ARGV[1], 3}", 1, "k", "a"),
                client.eval_ro("return redis.call('GET', KEYS[1])", 1, "copy")]
    try:
        client.evalsha("0" * 40, 0)
    except redis.exceptions.NoScriptError:
        results.append("noscript")
    lock = client.lock("resource", timeout=10)
    results += [lock.acquire(blocking=False),
                client.lock("resource", timeout=1).acquire(blocking=False),
                lock.extend(5), lock.release(), client.exists("resource")]
    client.script_flush()
    results.append(client.script_exists(incr_by.sha))
    return results


@pytest.mark.parametrize("protocol", [2, 3])
def test_deterministic_scripts_and_redis_py_locks_answer_as_redis_server(redis3, real_redis,
                                                                        protocol):
    """kvstores.scripts: a script that writes runs on every replica in log order; EVALSHA
    goes through the front end's cache; redis-py's Lock works."""
    expected, _leader, results = on_real_and_leader(redis3, real_redis, protocol, run_scripts)
    assert results == expected
    assert results[0:2] == [5, 7] and results[6] == "noscript"
    digests = redis3.wait_equal(10)
    assert len(set(digests.values())) == 1, digests


def _raw_exchange(sock, request: bytes, replies: int) -> bytes:
    """Send ``request``; read until ``replies`` complete replies came back."""
    from kvstores.resp import reply_end

    sock.settimeout(10)
    sock.sendall(request)
    buf = b""
    while True:
        pos, count = 0, 0
        while count < replies and (end := reply_end(buf, pos)) >= 0:
            pos, count = end, count + 1
        if count == replies:
            return buf
        chunk = sock.recv(65536)
        assert chunk, buf
        buf += chunk


def test_a_subscriber_gets_redis_servers_replies_in_command_order(redis3, real_redis):
    """pubsub Rules 2-3: the subscribe family, PING and refusals on a subscriber connection,
    pipelined after a write, answer byte for byte as redis-server answers them."""
    import socket

    request = (b"SET k v\r\nSUBSCRIBE a\r\nPING\r\nGET k\r\nPSUBSCRIBE p*\r\n"
               b"PUNSUBSCRIBE x\r\nSUBSCRIBE\r\nPING a b\r\nSSUBSCRIBE s\r\nUNSUBSCRIBE\r\n"
               b"UNSUBSCRIBE\r\nPING\r\n")
    with socket.socket(socket.AF_UNIX) as plain:
        plain.connect(real_redis)
        expected = _raw_exchange(plain, request, 12)

    def on_leader():
        leader = redis3.wait_for_leader(10)
        host, port = redis3.addresses[leader].split(":")
        with socket.create_connection((host, int(port))) as sock:
            got = _raw_exchange(sock, request, 12)
        return got if b"MOVED" not in got else None

    assert eventually(on_leader) == expected


@pytest.mark.parametrize("protocol", [2, 3])
def test_subscribers_on_every_replica_get_what_the_leader_publishes(redis3, protocol):
    """pubsub Rule 1: PUBLISH is replicated, so a subscriber on a follower gets it too, in
    order; the reply counts the leader's own subscribers. A subscriber connection refuses
    writes even after unsubscribing from everything (Rule 2)."""
    import redis

    def client(replica: int):
        host, port = redis3.addresses[replica].split(":")
        return redis.Redis(host=host, port=int(port), socket_timeout=10, protocol=protocol)

    leader = redis3.wait_for_leader(10)
    follower = follower_of(redis3, leader)
    subscribers = {}
    for replica in (leader, follower):
        pubsub = client(replica).pubsub()
        pubsub.subscribe("news")
        pubsub.psubscribe("n*")
        subscribers[replica] = pubsub
    for pubsub in subscribers.values():
        for _ in range(2):  # the two confirmations
            assert pubsub.get_message(timeout=5)["type"] in ("subscribe", "psubscribe")
    publisher = client(leader)
    assert eventually(lambda: publisher.publish("news", "m0") == 2)  # leader: channel + pattern
    for number in range(1, 20):
        publisher.publish("news", f"m{number}")
    publisher.set("after", "1")  # carries the last commit to the followers
    for replica, pubsub in subscribers.items():
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 40 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
            if message is not None:
                got.append((message["type"], message["data"]))
        plain = [data for kind, data in got if kind == "message"]
        assert plain == [b"m%d" % n for n in range(20)], (replica, got)
        assert len(got) == 40, (replica, got)
        pubsub.unsubscribe()
        pubsub.punsubscribe()
        connection = pubsub.connection
        connection.send_command("SET", "sneaky", "1")
        with pytest.raises(redis.exceptions.ResponseError, match="allowed in this context"):
            while True:  # the unsubscribe confirmations come first
                connection.read_response()
        pubsub.close()
    assert publisher.get("sneaky") is None
    assert publisher.pubsub_numsub("news") == [(b"news", 0)]
    publisher.close()
    with pytest.raises(redis.exceptions.ResponseError, match="inside a transaction"):
        client(leader).pipeline().execute_command("SUBSCRIBE", "x").execute()
    digests = redis3.wait_equal(10)
    assert len(set(digests.values())) == 1, digests


def test_server_generated_stream_ids_and_relative_getex_expiries_replicate_equal(redis3):
    """redis_rules Rule 2 with the real client: redis-py's xadd (id '*' by default) and
    getex(ex=...) on the leader leave identical data on every replica."""
    import redis

    def on_leader():
        leader = redis3.wait_for_leader(10)
        host, port = redis3.addresses[leader].split(":")
        client = redis.Redis(host=host, port=int(port), socket_timeout=10)
        try:
            ids = [client.xadd("events", {"n": str(n)}) for n in range(50)]
            client.set("session", "s")
            return ids, client.getex("session", ex=100), client.pttl("session")
        except (redis.exceptions.MovedError, redis.exceptions.TryAgainError):
            return None
        finally:
            client.close()

    ids, value, ttl_ms = eventually(on_leader)
    assert len(set(ids)) == 50 and ids == sorted(ids, key=lambda i: tuple(map(int, i.split(b"-"))))
    assert value == b"s" and 90_000 < ttl_ms <= 100_000
    digests = redis3.wait_equal(10)
    assert len(set(digests.values())) == 1, digests
    for address in redis3.addresses.values():
        host, port = address.split(":")
        client = redis.Redis(host=host, port=int(port), socket_timeout=10)
        assert [entry_id for entry_id, _ in client.xrange("events")][-50:] == ids
        client.close()


def test_follower_redirects_writes_to_the_leader(redis3):
    def redirected():
        leader = redis3.wait_for_leader(10)
        follower = follower_of(redis3, leader)
        reply = redis_call(redis3.addresses[follower], b"SET", b"x", b"1").decode()
        return reply == f"-MOVED 0 {redis3.addresses[leader]}\r\n"

    eventually(redirected)

    def cluster_mode_follows():
        # redis-cli in cluster mode follows the redirect to the leader.
        follower = follower_of(redis3, redis3.wait_for_leader(10))
        return cli(redis3.addresses[follower], "SET", "y", "2", cluster_mode=True) == "OK"

    eventually(cluster_mode_follows)


@pytest.mark.parametrize("command", [["EVAL", "return redis.call('TIME')", "0"],
                                     ["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">"],
                                     ["AUTH", "secret"], ["CONFIG", "SET", "maxmemory", "1"],
                                     ["WAIT", "0", "0"], ["LATENCY", "RESET"]])
def test_nondeterministic_commands_are_refused(redis3, command):
    output = cli(redis3.addresses[1], *command)
    assert "kvstores" in output and f"'{command[0]}'" in output, output


def test_every_replica_holds_the_same_data(redis3):
    for number in range(50):
        leader_write(redis3, b"SET", b"key-%d" % number, b"value-%d" % number)
    leader_write(redis3, b"INCRBY", b"counter", b"7")
    leader_write(redis3, b"SET", b"ttl", b"v", b"EX", b"100")
    digests = redis3.wait_equal(10)
    assert len(set(digests.values())) == 1 and None not in digests.values(), digests
    assert next(iter(digests.values()))[1] >= 52


def test_sigusr1_dumps_replication_latencies(redis3):
    leader = leader_write(redis3, b"SET", b"dump", b"me")
    server = redis3.servers[leader]
    path = redis3.workdir / f"dump-{leader}.txt"
    os.kill(server.process.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, "no dump file"
        time.sleep(0.02)
    latencies = [int(line) for line in path.read_text().split()]
    assert latencies and all(value > 0 for value in latencies)


def test_a_killed_follower_restarts_and_serves_what_it_missed(redis3):
    leader = redis3.wait_for_leader(10)
    victim = follower_of(redis3, leader)
    redis3.kill_server(victim)
    leader_write(redis3, b"SET", b"after-kill", b"1")
    redis3.start_server(victim)  # the same command line
    redis3.wait_caught_up(victim, 90)  # a restart under this shared machine's load: seconds
    assert redis_call(redis3.addresses[victim], b"GET", b"after-kill") == b"$1\r\n1\r\n"
    leader_write(redis3, b"SET", b"after-restart", b"2")


def test_bad_configuration_is_one_line_and_status_2():
    env = {k: v for k, v in os.environ.items() if k not in ("SID", "IDS")}
    command = [sys.executable, "-m", "kvstores", "redis-server-replicated", "--port", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "SID" in done.stderr
