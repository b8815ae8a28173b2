"""Fixtures for the consensus tests: a fresh shm cluster id (cleaned up afterwards), a real
memcached server on a free loopback port (the seed fixture is in ``tests/conftest.py``)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

MEMCACHED_START_TIMEOUT_S = 5.0
MEMCACHED_CANDIDATES = ("/usr/bin/memcached", "/usr/local/bin/memcached")


@pytest.fixture
def cluster_id() -> Iterator[str]:
    """A cluster id no other test uses; its shared-memory objects are removed afterwards."""
    from consensus.fabric.shm import cleanup

    name = f"t{os.getpid()}-{uuid.uuid4().hex[:10]}"
    cleanup(name)
    yield name
    cleanup(name)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _find_memcached() -> str | None:
    for candidate in MEMCACHED_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    return shutil.which("memcached")


@pytest.fixture(scope="session")
def memcached_address() -> Iterator[str]:
    """``127.0.0.1:PORT`` of a memcached server started for this test session."""
    binary = _find_memcached()
    if binary is None:
        pytest.skip("memcached is not installed (scripts/setup.sh installs the Debian package)")
    port = _free_port()
    command = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "16"]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "root"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + MEMCACHED_START_TIMEOUT_S
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    error = process.stderr.read().decode() if process.stderr else ""
                    pytest.fail(f"memcached did not start on port {port}: {error.strip()}")
                time.sleep(0.005)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
