"""The registries against their real backends: the embedded file registry, and memcached started
by the ``memcached_address`` fixture on a free loopback port."""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Callable, Iterator
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import pytest

from consensus.registry import (
    InProcessRegistry,
    Registry,
    RegistryError,
    RegistryTimeout,
    open_registry,
)
from consensus.registry.embedded import EmbeddedRegistry, remove_cluster
from consensus.registry.memcached import MemcachedRegistry, parse_address

SPAWN = multiprocessing.get_context("spawn")
CHILD_TIMEOUT_S = 20.0

OpenT = Callable[[str], Registry]


@pytest.fixture(params=["embedded", "memcached", "in-process"])
def open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenT]:
    """A function opening a registry of the given cluster on one shared backend."""
    opened: list[Registry] = []
    store: dict[str, bytes] = {}

    def open_one(cluster_id: str) -> Registry:
        registry: Registry
        if request.param == "embedded":
            registry = EmbeddedRegistry(cluster_id, root=tmp_path)
        elif request.param == "memcached":
            registry = open_registry(cluster_id, request.getfixturevalue("memcached_address"))
        else:
            registry = InProcessRegistry(cluster_id, store)
        opened.append(registry)
        return registry

    yield open_one
    for registry in opened:
        registry.close()


def fresh_cluster() -> str:
    return f"reg-{uuid.uuid4().hex[:12]}"


def test_publish_lookup_delete(open_backend: OpenT) -> None:
    cluster = fresh_cluster()
    one, other = open_backend(cluster), open_backend(cluster)
    assert one.lookup("replica/2/log") is None
    one.publish("replica/2/log", b"nonce 4096")
    assert other.lookup("replica/2/log") == b"nonce 4096"
    one.publish("replica/2/log", b"\x00binary\xff")
    assert other.wait_for("replica/2/log", timeout_s=1.0) == b"\x00binary\xff"
    other.delete("replica/2/log")
    assert one.lookup("replica/2/log") is None
    other.delete("replica/2/log")  # idempotent


def test_clusters_do_not_mix(open_backend: OpenT) -> None:
    first, second = open_backend(fresh_cluster()), open_backend(fresh_cluster())
    first.publish("leader", b"1")
    second.publish("leader", b"2")
    assert (first.lookup("leader"), second.lookup("leader")) == (b"1", b"2")
    first.delete("leader")
    assert second.lookup("leader") == b"2"


def test_wait_for_times_out_clearly(open_backend: OpenT) -> None:
    cluster = fresh_cluster()
    registry = open_backend(cluster)
    with pytest.raises(RegistryTimeout) as caught:
        registry.wait_for("replica/3/ctrl", timeout_s=0.1)
    message = str(caught.value)
    assert "'replica/3/ctrl'" in message and cluster in message
    assert registry.describe() in message and "after 0.1 s" in message


def test_bad_keys_and_cluster_ids_are_rejected(open_backend: OpenT) -> None:
    registry = open_backend(fresh_cluster())
    with pytest.raises(ValueError, match="registry key 'has space'"):
        registry.publish("has space", b"x")
    with pytest.raises(ValueError, match="registry key"):
        registry.lookup("x" * 500)
    with pytest.raises(ValueError, match="cluster id"):
        open_backend("no/slashes")


def publisher_main(cluster_id: str, root: str, results: Queue[Any]) -> None:
    registry = EmbeddedRegistry(cluster_id, root=Path(root))
    value = registry.wait_for("question", timeout_s=CHILD_TIMEOUT_S)
    registry.publish("answer", value + b"!")
    results.put("done")


@pytest.mark.slow
def test_embedded_registry_works_across_processes(tmp_path: Path) -> None:
    cluster = fresh_cluster()
    registry = EmbeddedRegistry(cluster, root=tmp_path)
    results: Queue[Any] = SPAWN.Queue()
    process = SPAWN.Process(target=publisher_main, args=(cluster, str(tmp_path), results))
    process.start()
    try:
        registry.publish("question", b"42")
        assert registry.wait_for("answer", timeout_s=CHILD_TIMEOUT_S) == b"42!"
        assert results.get(timeout=CHILD_TIMEOUT_S) == "done"
    finally:
        process.join(CHILD_TIMEOUT_S)
        if process.is_alive():
            process.kill()
    assert remove_cluster(cluster, root=tmp_path) == 2
    assert registry.lookup("answer") is None
    assert remove_cluster(cluster, root=tmp_path) == 0


def test_embedded_escapes_keys_one_to_one(tmp_path: Path) -> None:
    registry = EmbeddedRegistry(fresh_cluster(), root=tmp_path)
    registry.publish("a/b", b"slash")
    registry.publish("a%2Fb", b"literal")
    assert (registry.lookup("a/b"), registry.lookup("a%2Fb")) == (b"slash", b"literal")
    assert not any(p.name.startswith(".tmp") for p in registry.directory.iterdir())


def test_open_registry_picks_backend_from_environment(
    monkeypatch: pytest.MonkeyPatch, memcached_address: str
) -> None:
    monkeypatch.delenv("DORY_REGISTRY_IP", raising=False)
    embedded_cluster = fresh_cluster()
    embedded = open_registry(embedded_cluster)
    assert isinstance(embedded, EmbeddedRegistry)
    remove_cluster(embedded_cluster)
    monkeypatch.setenv("DORY_REGISTRY_IP", memcached_address)
    remote = open_registry(fresh_cluster())
    assert isinstance(remote, MemcachedRegistry)
    assert remote.describe() == f"memcached {memcached_address}"
    remote.close()
    monkeypatch.setenv("DORY_REGISTRY_IP", "not-an-address")
    with pytest.raises(RegistryError, match="'not-an-address' is not host:port"):
        open_registry(fresh_cluster())


def test_unreachable_memcached_is_reported_at_open() -> None:
    import socket

    with socket.socket() as probe:  # a port that nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RegistryError, match=f"memcached 127.0.0.1:{port}: cannot reach"):
        open_registry(fresh_cluster(), f"127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:11211", ("127.0.0.1", 11211)),
        ("registry.example:7", ("registry.example", 7)),
        ("[::1]:11211", ("::1", 11211)),
        (" 10.0.0.5:80 ", ("10.0.0.5", 80)),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["", "host", "host:", ":11211", "::1:80", "h:0", "h:70000"])
def test_parse_address_rejects(address: str) -> None:
    with pytest.raises(RegistryError, match="registry address"):
        parse_address(address)
