"""The issue's "done when", small: redis-benchmark and pymemcache load across a leader pause,
then identical data on every replica (kvstores.failover)."""

import argparse

import pytest

from kvstores import failover
from tests.kvstores.conftest import need

pytestmark = pytest.mark.slow


def arguments(**overrides):
    values = {"requests": 2000, "seconds": 2.0, "clients": 2, "pause_s": 0.3, "only": None,
              "seed": 7}
    values.update(overrides)
    return argparse.Namespace(**values)


def test_redis_benchmark_across_a_failover_leaves_equal_replicas():
    need("redis-benchmark")
    assert failover.check_redis(arguments())


def test_pymemcache_load_across_a_failover_leaves_equal_replicas():
    need("memcached")
    print("seed 7")
    assert failover.check_memcached(arguments())
