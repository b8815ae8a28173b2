"""The replica registry: where replicas publish and find each other's connection details.

Rule 1: keys are namespaced by a cluster id, so two clusters sharing one registry never see each
        other's entries. Callers use short keys (``"replica/2/log"``); the backend adds the
        namespace. Cluster ids are 1..64 characters of ``[A-Za-z0-9_-]`` (they also name shared
        memory objects), keys are printable ASCII without spaces, at most ``KEY_LENGTH_MAX``.
Rule 2: ``publish`` returns only once the value is stored (a later ``lookup`` anywhere sees it).
Rule 3: ``wait_for`` waits a bounded time and raises ``RegistryTimeout`` naming the key and the
        registry.
Rule 4: values are bytes; what they mean belongs to the caller (fabric connection details, heartbeat
        locations).

Backends: ``InProcessRegistry`` (a dict, for one process: tests and the simulator), the embedded
single-host registry and the memcached registry (``DORY_REGISTRY_IP=host:port``), chosen by
``consensus.registry.open_registry``.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Protocol

REGISTRY_POLL_INTERVAL_S = 0.002  # how often wait_for re-reads: registry look-ups are ~100 us
CLUSTER_ID_LENGTH_MAX = 64
KEY_LENGTH_MAX = 160  # memcached allows 250 bytes for namespace + key

_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
_KEY_PATTERN = re.compile(rf"[\x21-\x7e]{{1,{KEY_LENGTH_MAX}}}")


class RegistryError(Exception):
    """A registry operation failed (unreachable server, bad address, ...); the message says
    which."""


class RegistryTimeout(RegistryError, TimeoutError):
    """A key did not appear in time."""


class Registry(Protocol):
    cluster_id: str

    def publish(self, key: str, value: bytes) -> None: ...

    def lookup(self, key: str) -> bytes | None: ...

    def delete(self, key: str) -> None: ...

    def wait_for(self, key: str, timeout_s: float) -> bytes: ...

    def describe(self) -> str:
        """A short human description (``memcached 127.0.0.1:11211``) for error messages."""

    def close(self) -> None: ...


def check_name(what: str, name: str, length_max: int) -> str:
    """Return ``name`` if it is 1..``length_max`` letters, digits, '_' and '-' (safe in file and
    shared-memory object names), else ``ValueError`` naming ``what``."""
    if len(name) > length_max or not _NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"{what} {name!r} must be 1..{length_max} characters of letters, digits, '_' and '-'"
        )
    return name


def validate_cluster_id(cluster_id: str) -> str:
    """Return ``cluster_id`` if it can be a namespace and part of file names, else
    ``ValueError``."""
    return check_name("cluster id", cluster_id, CLUSTER_ID_LENGTH_MAX)


def validate_key(key: str) -> str:
    """Return ``key`` if it is printable ASCII without spaces and not too long, else
    ``ValueError``."""
    if not _KEY_PATTERN.fullmatch(key):
        raise ValueError(
            f"registry key {key!r} must be 1..{KEY_LENGTH_MAX} printable ASCII characters "
            "without spaces"
        )
    return key


def wait_for_key(registry: Registry, key: str, timeout_s: float) -> bytes:
    """Poll ``registry.lookup(key)`` until it answers or ``timeout_s`` passes (then
    ``RegistryTimeout``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = registry.lookup(key)
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            raise RegistryTimeout(
                f"registry {registry.describe()}: no entry {key!r} for cluster "
                f"{registry.cluster_id!r} after {timeout_s:.1f} s (is that replica running?)"
            )
        time.sleep(REGISTRY_POLL_INTERVAL_S)


class InProcessRegistry:
    """A registry shared by the replicas of one process (tests, simulator). Thread-safe.

    Several instances may share one ``store`` dict to stand for one registry seen by many replicas.
    """

    def __init__(self, cluster_id: str, store: dict[str, bytes] | None = None) -> None:
        self.cluster_id = validate_cluster_id(cluster_id)
        self._store: dict[str, bytes] = {} if store is None else store
        self._lock = threading.Lock()

    def _key(self, key: str) -> str:
        return f"{self.cluster_id}/{validate_key(key)}"

    def publish(self, key: str, value: bytes) -> None:
        with self._lock:
            self._store[self._key(key)] = bytes(value)

    def lookup(self, key: str) -> bytes | None:
        with self._lock:
            return self._store.get(self._key(key))

    def delete(self, key: str) -> None:
        with self._lock:
            self._store.pop(self._key(key), None)

    def wait_for(self, key: str, timeout_s: float) -> bytes:
        return wait_for_key(self, key, timeout_s)

    def describe(self) -> str:
        return "in-process"

    def close(self) -> None:
        pass
