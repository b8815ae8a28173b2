"""Fixtures: real replicas (front end + private redis-server/memcached) as processes."""

import shutil
import subprocess
import time

import pytest

from kvstores.cluster import LocalKvCluster, redis_call


def need(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary} is not installed (bash scripts/setup.sh installs it)")


@pytest.fixture(scope="module")
def redis3():
    need("redis-server")
    need("redis-cli")
    with LocalKvCluster("redis", 3, name="t-redis") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def real_redis(tmp_path_factory):
    """A plain redis-server on a unix socket (its path): what the replicated server must answer
    like."""
    need("redis-server")
    path = tmp_path_factory.mktemp("real-redis") / "redis.sock"
    process = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(path),
                                "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not path.exists():
        assert process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.02)
    yield str(path)
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="module")
def memcached3():
    need("memcached")
    with LocalKvCluster("memcached", 3, name="t-mc") as cluster:
        yield cluster


def leader_write(cluster: LocalKvCluster, *args: bytes, give_up_s: float = 10.0) -> int:
    """Run a redis write on the current leader (following a leader change); its leader's id."""
    deadline = time.monotonic() + give_up_s
    while True:
        leader = cluster.wait_for_leader(give_up_s)
        reply = redis_call(cluster.addresses[leader], *args)
        if not reply.startswith((b"-MOVED", b"-TRYAGAIN")):
            assert not reply.startswith(b"-"), reply
            return leader
        assert time.monotonic() < deadline, reply
        time.sleep(0.01)
