"""The embedded registry: a directory of small files, shared by every process of one host, with no
server to start.

Rule 1: one file per key, under ``<root>/<cluster id>/``; the file name is the key with ``/`` and
        ``%`` escaped, so keys map to names one-to-one and clusters never share a directory.
Rule 2: ``publish`` writes a private temporary file and renames it over the key's file: a reader
        sees the old value or the new one, never a torn one, and never a half-written file.
Rule 3: the root defaults to ``/dev/shm/mu-registry`` (memory-backed, so look-ups cost a few
        microseconds), else ``<tmp>/mu-registry`` where ``/dev/shm`` does not exist.
        ``remove_cluster`` deletes a cluster's directory (launchers call it through
        ``consensus.fabric.shm.cleanup``), so a crashed run's entries do not outlive it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

from consensus.registry.base import (
    RegistryError,
    validate_cluster_id,
    validate_key,
    wait_for_key,
)

SHM_DIR = Path("/dev/shm")
ROOT_NAME = "mu-registry"


def default_root() -> Path:
    """``/dev/shm/mu-registry`` where ``/dev/shm`` exists, else the temporary directory's."""
    base = SHM_DIR if SHM_DIR.is_dir() else Path(tempfile.gettempdir())
    return base / ROOT_NAME


def _file_name(key: str) -> str:
    return validate_key(key).replace("%", "%25").replace("/", "%2F")


class EmbeddedRegistry:
    """A single-host registry kept in files (``Registry``). Safe across threads and processes."""

    def __init__(self, cluster_id: str, root: Path | None = None) -> None:
        self.cluster_id = validate_cluster_id(cluster_id)
        self.root = default_root() if root is None else root
        self.directory = self.root / cluster_id
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RegistryError(
                f"embedded registry: cannot create {self.directory}: {error.strerror}"
            ) from error
        self._counter = 0
        self._lock = threading.Lock()

    def _temporary_path(self) -> Path:
        with self._lock:
            self._counter += 1
            counter = self._counter
        return self.directory / f".tmp.{os.getpid()}.{threading.get_ident()}.{counter}"

    def publish(self, key: str, value: bytes) -> None:
        target = self.directory / _file_name(key)
        temporary = self._temporary_path()
        try:
            with open(temporary, "wb") as file:
                file.write(value)
            os.replace(temporary, target)
        except OSError as error:
            try:
                temporary.unlink()
            except OSError:
                pass
            raise RegistryError(
                f"embedded registry {self.directory}: cannot store {key!r}: {error.strerror}"
            ) from error

    def lookup(self, key: str) -> bytes | None:
        try:
            with open(self.directory / _file_name(key), "rb") as file:
                return file.read()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise RegistryError(
                f"embedded registry {self.directory}: cannot read {key!r}: {error.strerror}"
            ) from error

    def delete(self, key: str) -> None:
        try:
            (self.directory / _file_name(key)).unlink()
        except FileNotFoundError:
            pass

    def wait_for(self, key: str, timeout_s: float) -> bytes:
        return wait_for_key(self, key, timeout_s)

    def describe(self) -> str:
        return f"embedded {self.root}"

    def close(self) -> None:
        pass


def remove_cluster(cluster_id: str, root: Path | None = None) -> int:
    """Delete every entry of ``cluster_id`` from the embedded registry; return how many there
    were."""
    directory = (default_root() if root is None else root) / validate_cluster_id(cluster_id)
    if not directory.is_dir():
        return 0
    count = sum(1 for _ in directory.iterdir())
    shutil.rmtree(directory, ignore_errors=True)
    return count
