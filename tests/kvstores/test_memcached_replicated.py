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
