"""Replicated memcached with pymemcache."""

import time

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError, MemcacheServerError

from kvstores.cluster import memcached_call

pytestmark = pytest.mark.slow


def client(cluster, replica_id: int) -> Client:
    host, port = cluster.addresses[replica_id].split(":")
    return Client((host, int(port)), default_noreply=False, connect_timeout=5, timeout=10)


def on_leader(cluster, operation, give_up_s: float = 10.0):
    """Run ``operation(client)`` on the leader, again if leadership moved meanwhile."""
    deadline = time.monotonic() + give_up_s
    while True:
        leader = cluster.wait_for_leader(give_up_s)
        connection = client(cluster, leader)
        try:
            return operation(connection)
        except MemcacheServerError as exc:
            assert b"follower" in str(exc).encode() or "unavailable" in str(exc), exc
            assert time.monotonic() < deadline
        finally:
            connection.close()


def test_set_get_delete_incr(memcached3):
    assert on_leader(memcached3, lambda c: c.set("a", b"1")) is True
    assert on_leader(memcached3, lambda c: c.get("a")) == b"1"
    assert on_leader(memcached3, lambda c: c.incr("a", 41)) == 42
    assert on_leader(memcached3, lambda c: c.add("a", b"x")) is False
    assert on_leader(memcached3, lambda c: c.delete("a")) is True
    assert on_leader(memcached3, lambda c: c.get("a")) is None
    assert on_leader(memcached3, lambda c: c.set("b", b"v", noreply=True)) is True
    assert on_leader(memcached3, lambda c: c.get("b")) == b"v"


def test_follower_names_the_leader_and_serves_reads(memcached3):
    on_leader(memcached3, lambda c: c.set("seen", b"yes"))
    leader = memcached3.wait_for_leader(10)
    follower = max(i for i in memcached3.addresses if i != leader)
    connection = client(memcached3, follower)
    with pytest.raises(MemcacheServerError) as error:
        connection.set("c", b"1")
    assert f"the leader is server {leader} at {memcached3.addresses[leader]}" in str(error.value)
    deadline = time.monotonic() + 5
    while connection.get("seen") != b"yes":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    connection.close()


def test_refused_commands(memcached3):
    leader = memcached3.wait_for_leader(10)
    reply = memcached_call(memcached3.addresses[leader], b"mg key v\r\n", False)
    assert reply.startswith(b"CLIENT_ERROR kvstores: 'mg'")
    with pytest.raises(MemcacheClientError):
        on_leader(memcached3, lambda c: c.flush_all(delay=5))


def test_every_replica_holds_the_same_data(memcached3):
    for number in range(50):
        on_leader(memcached3, lambda c, n=number: c.set(f"k{n}", f"v{n}".encode(), expire=300))
    digests = memcached3.wait_equal(10)
    assert len(set(digests.values())) == 1 and None not in digests.values(), digests


def test_cas_stores_only_over_the_unique_the_leader_gave(memcached3):
    """kvstores.frontend Rule 8: gets/cas with pymemcache: STORED over the current unique,
    EXISTS after another client's write, NOT_FOUND without an item; replicas equal."""
    def run(connection):
        connection.set("ck", b"1")
        value, unique = connection.gets("ck")
        stored = connection.cas("ck", b"2", unique)
        value2, unique2 = connection.gets("ck")
        connection.set("ck", b"other")  # another write: the old unique is stale
        stale = connection.cas("ck", b"3", unique2)
        missing = connection.cas("no-such-key", b"x", b"1")
        return value, stored, value2, stale, missing, connection.get("ck")

    assert on_leader(memcached3, run) == (b"1", True, b"2", False, None, b"other")
    digests = memcached3.wait_equal(10)
    assert len(set(digests.values())) == 1 and None not in digests.values(), digests


def test_cas_increments_from_many_clients_lose_nothing(memcached3):
    """Four threads x 30 gets/cas increments of one counter, retried on EXISTS, end at 120; a
    cas that stored over a stale unique would lose some."""
    import threading

    leader = memcached3.wait_for_leader(10)
    on_leader(memcached3, lambda c: c.set("counter", b"0"))
    retries = []

    def worker() -> None:
        connection = client(memcached3, leader)
        tries = 0
        for _ in range(30):
            while True:
                tries += 1
                value, unique = connection.gets("counter")
                if connection.cas("counter", b"%d" % (int(value) + 1), unique):
                    break
        retries.append(tries - 30)
        connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert on_leader(memcached3, lambda c: c.get("counter")) == b"120"
    assert sum(retries) > 0, "no two increments ever overlapped: the test proved nothing"
    digests = memcached3.wait_equal(10)
    assert len(set(digests.values())) == 1, digests


def test_a_cas_sent_to_a_follower_is_forwarded_and_decided_by_the_leader():
    """With --follower-writes forward the cas itself travels (never a set decided by the
    follower): STORED over the leader's unique, EXISTS over a stale one."""
    from kvstores.cluster import LocalKvCluster

    with LocalKvCluster("memcached", 3, name="t-mcfwd",
                        extra_args=("--follower-writes", "forward")) as cluster:
        leader = cluster.wait_for_leader(10)
        follower = max(i for i in cluster.addresses if i != leader)
        at_leader, at_follower = client(cluster, leader), client(cluster, follower)
        try:
            assert at_leader.set("fk", b"1") is True
            _value, unique = at_leader.gets("fk")
            assert at_follower.cas("fk", b"2", unique) is True
            assert at_follower.cas("fk", b"3", unique) is False  # stale now
            assert at_leader.get("fk") == b"2"
        finally:
            at_leader.close()
            at_follower.close()
        digests = cluster.wait_equal(10)
        assert len(set(digests.values())) == 1, digests
