"""The memcached registry, as the original Mu used (``DORY_REGISTRY_IP=host:port``).

Rule 1: the address is ``host:port`` (``[v6addr]:port`` for IPv6); anything else is a
        ``RegistryError`` naming the bad value, before any connection is tried.
Rule 2: opening the registry talks to the server once (``version``), so an unreachable server is
        reported at start with its address, not at the first publish.
Rule 3: every memcached key is ``mu/<cluster id>/<key>``; writes use ``noreply=False`` so
        ``publish`` returns only once the server stored the value; items never expire.
Rule 4: one connection per registry object, used under a lock (pymemcache clients are not
        thread-safe); socket errors become ``RegistryError``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import TypeVar

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError

from consensus.registry.base import (
    RegistryError,
    validate_cluster_id,
    validate_key,
    wait_for_key,
)

CONNECT_TIMEOUT_S = 2.0
OPERATION_TIMEOUT_S = 2.0
PORT_MAX = 65535
KEY_PREFIX = "mu"

T = TypeVar("T")

_ADDRESS_PATTERN = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]]+)):(?P<port>\d{1,5})"
)


def parse_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (or ``[v6]:port``) into its parts; ``RegistryError`` if malformed."""
    match = _ADDRESS_PATTERN.fullmatch(address.strip())
    if match is None:
        raise RegistryError(
            f"registry address {address!r} is not host:port (e.g. 127.0.0.1:11211); "
            "unset DORY_REGISTRY_IP to use the embedded single-host registry"
        )
    host = match.group("v6") or match.group("host")
    port = int(match.group("port"))
    if not 0 < port <= PORT_MAX:
        raise RegistryError(f"registry address {address!r}: port must be in 1..{PORT_MAX}")
    return host, port


class MemcachedRegistry:
    """A ``Registry`` on a memcached server."""

    def __init__(self, cluster_id: str, address: str) -> None:
        self.cluster_id = validate_cluster_id(cluster_id)
        self.host, self.port = parse_address(address)
        self._lock = threading.Lock()
        self._client = Client(
            (self.host, self.port),
            connect_timeout=CONNECT_TIMEOUT_S,
            timeout=OPERATION_TIMEOUT_S,
            no_delay=True,
            default_noreply=False,
        )
        self._call("reach the server", self._client.version)

    def _key(self, key: str) -> str:
        return f"{KEY_PREFIX}/{self.cluster_id}/{validate_key(key)}"

    def _call(self, what: str, operation: Callable[[], T]) -> T:
        with self._lock:
            try:
                return operation()
            except (OSError, MemcacheError) as error:
                self._client.close()  # reconnects on the next call
                raise RegistryError(
                    f"registry {self.describe()}: cannot {what}: {error or type(error).__name__}"
                    " (is memcached running there? unset DORY_REGISTRY_IP for the embedded "
                    "registry)"
                ) from error

    def publish(self, key: str, value: bytes) -> None:
        name = self._key(key)
        stored = self._call(
            f"store {key!r}", lambda: self._client.set(name, bytes(value), noreply=False)
        )
        if not stored:
            raise RegistryError(f"registry {self.describe()}: server refused to store {key!r}")

    def lookup(self, key: str) -> bytes | None:
        name = self._key(key)
        value = self._call(f"read {key!r}", lambda: self._client.get(name))
        return None if value is None else bytes(value)

    def delete(self, key: str) -> None:
        name = self._key(key)
        self._call(f"delete {key!r}", lambda: self._client.delete(name, noreply=False))

    def wait_for(self, key: str, timeout_s: float) -> bytes:
        return wait_for_key(self, key, timeout_s)

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"memcached {host}:{self.port}"

    def close(self) -> None:
        with self._lock:
            self._client.close()
