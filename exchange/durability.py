"""A durable exchange server: a journal of applied entries and snapshots in a data directory.

Rule 1: the journal holds the committed entries this server applied, in log order, each as one
        checksummed record ``<Q index><I length><I crc32(index, length, payload)>`` + payload,
        in segment files ``journal-<first index>.log`` that open with a header (magic
        ``MUJOURNL``, format version, first index, cluster id, crc32 of the header). Records are
        consecutive: a segment's records are ``first, first + 1, ...``.
Rule 2: a snapshot file ``snapshot-<index>.snap`` is a header (magic ``MUSNAPFL``, version, index,
        cluster id, crc32) followed by an exchange snapshot (``exchange.snapshot``: its own
        envelope, version and sha256). It is written to a temporary file, fsynced, renamed and
        the directory fsynced; only then are older snapshots and the journal segments it
        covers deleted (a segment is deleted once the next segment starts at or below the
        snapshot's index + 1).
Rule 3: loading = the latest snapshot, then every journal record after its index, in order. A
        record cut short or failing its checksum at the end of the last segment is a torn write:
        the segment is cut at the last whole record and the cut is logged. Anything else that
        does not read back (a bad snapshot, a file from another cluster or of another version,
        a bad record before the tail, a gap in the indexes) raises ``DataDirError`` with one
        line: nothing is loaded in part.
Rule 4: ``durable_index`` is the highest index whose state is on disk (journal records written and
        fdatasynced, or a snapshot). In ``sync`` mode an order-entry handler returns only once
        ``durable_index >= its entry's index`` (``wait_durable``): the first waiter to take the
        write lock writes and fdatasyncs every pending record (group commit) and the others find
        their index covered. In ``async`` mode nobody waits. The background thread writes what
        is pending every ``FLUSH_INTERVAL_S`` (a follower's entries, async mode: in the kernel's
        page cache, safe from a process crash) and fdatasyncs every ``SYNC_INTERVAL_S``; it also
        takes a snapshot every ``snapshot_entries`` entries.
Rule 5: a write or sync that fails (disk full, I/O error) fails the journal for good: ``failure``
        says why, every waiter and every later ``wait_durable`` raises ``JournalFailed``, and
        the server stops acknowledging; nothing not stored is ever reported durable.
Rule 6: one process per data directory: an exclusive ``flock`` on ``DIR/LOCK`` (released by the
        kernel when the process dies, also on ``kill -9``).
Rule 7: segments are preallocated: zeros are written and synced ahead of the records in chunks
        of ``SEGMENT_CHUNK_BYTES`` (the background thread grows the file before the records
        reach its end), so the fdatasync of an acknowledgement writes data blocks only, with no
        file-size change for the file system's own journal to commit. Records therefore end at
        an all-zero record header (no record has index 0) followed by zeros only; a segment is
        cut to its records' end when it is closed or rotated. Anything else after the records
        is a torn write (Rule 3).

Test hook: ``MU_JOURNAL_FAIL_AFTER_BYTES=N`` makes journal writes fail with ENOSPC once the
records written by this process would exceed N bytes (a full disk without a full disk).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from exchange.state_machine import ExchangeStateMachine
from orderbook.snapshot import SnapshotError

JOURNAL_MAGIC = b"MUJOURNL"
SNAPSHOT_MAGIC = b"MUSNAPFL"
FILE_VERSION = 1
FILE_HEADER = struct.Struct("<8sIQH")  # magic, version, first index / snapshot index, id length
HEADER_CRC = struct.Struct("<I")
RECORD = struct.Struct("<QII")  # index, payload length, crc32
RECORD_PAYLOAD_BYTES_MAX = 1 << 16  # far above an entry (192 bytes); bounds a corrupt length
CLUSTER_ID_BYTES_MAX = 1024
FLUSH_INTERVAL_S = 0.005  # background write period (async mode; followers' entries)
SYNC_INTERVAL_S = 0.05  # background fdatasync period: 3 servers on one disk sync less often
SNAPSHOT_ENTRIES_DEFAULT = 100_000  # entries between two snapshots
SEGMENT_CHUNK_BYTES = 4 << 20  # Rule 7: zeros written ahead of the records at a time
SEGMENT_GROW_MARGIN_BYTES = 1 << 20  # the background thread grows a segment this near its end
DURABILITY_MODES = ("sync", "async")
FAIL_AFTER_ENV = "MU_JOURNAL_FAIL_AFTER_BYTES"
_JOURNAL_NAME = re.compile(r"^journal-(\d{20})\.log$")
_SNAPSHOT_NAME = re.compile(r"^snapshot-(\d{20})\.snap$")

log = logging.getLogger("exchange.durability")


class DataDirError(Exception):
    """The data directory cannot be used as it is; the message (one line) says why."""


class JournalFailed(Exception):
    """The journal could not store entries (Rule 5); the message says why."""


def journal_name(first: int) -> str:
    return f"journal-{first:020d}.log"


def snapshot_name(index: int) -> str:
    return f"snapshot-{index:020d}.snap"


def file_header(magic: bytes, index: int, cluster_id: str) -> bytes:
    """A journal segment's or snapshot file's header (Rules 1-2)."""
    name = cluster_id.encode()
    assert len(name) <= CLUSTER_ID_BYTES_MAX, cluster_id
    head = FILE_HEADER.pack(magic, FILE_VERSION, index, len(name)) + name
    return head + HEADER_CRC.pack(zlib.crc32(head))


def read_header(data: bytes, path: Path, magic: bytes, cluster_id: str) -> tuple[int, int] | None:
    """``(index, header bytes)`` of a file's header; None when ``data`` is shorter than a header
    (a file torn while being created). Raises ``DataDirError`` for a foreign, corrupt, other-
    version or other-cluster header."""
    if len(data) < FILE_HEADER.size:
        return None
    found, version, index, name_bytes = FILE_HEADER.unpack_from(data, 0)
    if found != magic:
        kind = "journal" if magic == JOURNAL_MAGIC else "snapshot"
        raise DataDirError(f"{path}: not a mu-exchange {kind} file (magic {found!r})")
    if version != FILE_VERSION:
        raise DataDirError(f"{path}: format version {version}, this build reads {FILE_VERSION}")
    if name_bytes > CLUSTER_ID_BYTES_MAX:
        raise DataDirError(f"{path}: corrupt header (cluster id of {name_bytes} bytes)")
    end = FILE_HEADER.size + name_bytes
    if len(data) < end + HEADER_CRC.size:
        return None
    (crc,) = HEADER_CRC.unpack_from(data, end)
    if crc != zlib.crc32(data[:end]):
        raise DataDirError(f"{path}: corrupt header (checksum mismatch)")
    owner = data[FILE_HEADER.size:end].decode(errors="replace")
    if owner != cluster_id:
        raise DataDirError(f"{path} belongs to cluster {owner!r}, this server is in cluster "
                           f"{cluster_id!r}: refusing to mix their states (use another --data-dir "
                           "or the same --cluster-id)")
    return int(index), end + HEADER_CRC.size


def encode_record(index: int, payload: bytes | memoryview) -> bytes:
    head = struct.pack("<QI", index, len(payload))
    return head + HEADER_CRC.pack(zlib.crc32(payload, zlib.crc32(head))) + bytes(payload)


def _only_zeros(data: bytes, offset: int) -> bool:
    """Whether ``data[offset:]`` holds zeros only (the preallocated end of a segment, Rule 7)."""
    return len(data.rstrip(b"\0")) <= offset


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _listing(directory: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    found = []
    for path in directory.iterdir():
        match = pattern.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


@dataclass(slots=True)
class Loaded:
    """What a data directory held (Rule 3)."""

    machine: ExchangeStateMachine
    snapshot_index: int  # 0 = no snapshot
    replayed: int  # journal records applied after the snapshot
    cut_bytes: int  # bytes cut from a torn tail


def _load_snapshot(directory: Path, cluster_id: str, limits: tuple[int, int]
                   ) -> tuple[ExchangeStateMachine, int]:
    snapshots = _listing(directory, _SNAPSHOT_NAME)
    if not snapshots:
        return ExchangeStateMachine(*limits), 0
    index, path = snapshots[-1]
    data = path.read_bytes()
    header = read_header(data, path, SNAPSHOT_MAGIC, cluster_id)
    if header is None:
        raise DataDirError(f"{path}: corrupt snapshot (shorter than its header)")
    found, start = header
    if found != index:
        raise DataDirError(f"{path}: header says index {found}, the name says {index}")
    try:
        machine = ExchangeStateMachine.restore(memoryview(data)[start:],
                                               seqs_per_client_max=limits[0],
                                               clients_max=limits[1])
    except SnapshotError as exc:
        raise DataDirError(f"{path}: corrupt snapshot: {exc}") from None
    if machine.applied_index != index:
        raise DataDirError(f"{path}: holds index {machine.applied_index}, named {index}")
    return machine, index


def _replay_segment(path: Path, data: bytes, start: int, first: int, machine: ExchangeStateMachine,
                    last_segment: bool) -> tuple[int, int]:
    """Apply ``path``'s records after ``machine``'s index; return (records applied, bytes cut)."""
    offset, expected, applied = start, first, 0
    records_end = len(data.rstrip(b"\0"))  # Rule 7: zeros after it are preallocated space
    while offset < len(data):
        bad = ""
        if offset >= records_end:
            return applied, 0
        if len(data) - offset < RECORD.size:
            bad = "record header cut short"
        else:
            index, length, crc = RECORD.unpack_from(data, offset)
            end = offset + RECORD.size + length
            if length > RECORD_PAYLOAD_BYTES_MAX or end > len(data):
                bad = "record cut short"
            elif crc != zlib.crc32(data[offset + RECORD.size:end],
                                   zlib.crc32(data[offset:offset + 12])):
                bad = "record checksum mismatch"
            elif index != expected:
                bad = f"record index {index}, expected {expected}"
            if index == 0 and length == 0 and crc == 0:
                bad = "non-zero bytes after the end of the records"
        if bad:
            if not last_segment:
                raise DataDirError(f"{path}: {bad} at byte {offset}, before the end of the "
                                   "journal (not a torn tail): refusing a partial load")
            cut = len(data) - offset
            with open(path, "r+b") as file:
                file.truncate(offset)
                os.fsync(file.fileno())
            log.warning("%s: torn tail cut at byte %d after record %d (%s; %d bytes dropped)",
                        path, offset, expected - 1, bad, cut)
            return applied, cut
        if index > machine.applied_index + 1:
            raise DataDirError(f"{path}: record {index} follows state index "
                               f"{machine.applied_index}: entries are missing")
        if index == machine.applied_index + 1:
            machine.apply(index, data[offset + RECORD.size:end])
            applied += 1
        offset, expected = end, expected + 1
    return applied, 0


def load(directory: Path, cluster_id: str, limits: tuple[int, int]) -> Loaded:
    """Rule 3: the state the data directory holds. Raises ``DataDirError``."""
    machine, snapshot_index = _load_snapshot(directory, cluster_id, limits)
    segments = _listing(directory, _JOURNAL_NAME)
    replayed = cut = 0
    for number, (first, path) in enumerate(segments):
        last_segment = number == len(segments) - 1
        data = path.read_bytes()
        header = read_header(data, path, JOURNAL_MAGIC, cluster_id)
        if header is None:
            if not last_segment:
                raise DataDirError(f"{path}: journal segment shorter than its header")
            log.warning("%s: torn segment header (%d bytes); removed", path, len(data))
            path.unlink()
            cut += len(data)
            continue
        found, start = header
        if found != first:
            raise DataDirError(f"{path}: header says first index {found}, the name says {first}")
        done, dropped = _replay_segment(path, data, start, first, machine, last_segment)
        replayed += done
        cut += dropped
    return Loaded(machine, snapshot_index, replayed, cut)


class Journal:
    """The data directory of one running server (see the module rules)."""

    def __init__(self, directory: Path, cluster_id: str, mode: str, index: int,
                 take_snapshot: Callable[[], tuple[int, bytes]],
                 snapshot_entries: int = SNAPSHOT_ENTRIES_DEFAULT) -> None:
        assert mode in DURABILITY_MODES, mode
        assert snapshot_entries > 0
        self.directory = directory
        self.cluster_id = cluster_id
        self.mode = mode
        self.sync = mode == "sync"
        self.take_snapshot = take_snapshot
        self.snapshot_entries = snapshot_entries
        self.durable_index = index
        self.written_index = index  # handed to the kernel (durable once synced)
        self.appended_index = index
        self.snapshot_index = 0
        self.failure = ""
        self.on_failure: Callable[[str], None] | None = None
        self._pending: list[bytes] = []
        self._pending_lock = threading.Lock()
        self._write_lock = threading.Lock()  # one writer at a time (group commit)
        self._snapshot_lock = threading.Lock()
        self._fd = -1
        self._offset = 0  # where the next record goes in the open segment (Rule 7)
        self._allocated = 0  # bytes of the open segment written (header, records, zeros)
        self._since_snapshot = 0
        self._written_bytes = 0
        fail_after = os.environ.get(FAIL_AFTER_ENV, "").strip()
        self._fail_after_bytes = int(fail_after) if fail_after.isdigit() else -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        existing = _listing(directory, _SNAPSHOT_NAME)
        if existing:
            self.snapshot_index = existing[-1][0]
        self._open_segment(index + 1)

    # -- files ----------------------------------------------------------------------------------
    def _open_segment(self, first: int) -> None:
        """Start appending to ``journal-<first>.log`` (created, or reused if it holds no
        record yet); the previous segment is cut to its records' end and closed (Rule 7)."""
        self._close_segment()
        path = self.directory / journal_name(first)
        header = file_header(JOURNAL_MAGIC, first, self.cluster_id)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(os.dup(fd), "rb") as existing:
            held = existing.read()
        if not _only_zeros(held, len(header)):
            os.close(fd)
            raise DataDirError(f"{path} already holds records after index {first - 1}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, header, 0)
        self._fd, self._offset, self._allocated = fd, len(header), len(header)
        self._grow()
        os.fsync(fd)
        _fsync_dir(self.directory)

    def _grow(self) -> None:
        """Rule 7: write the next chunk of zeros after the allocated end and sync it."""
        zeros = bytes(SEGMENT_CHUNK_BYTES)
        os.pwrite(self._fd, zeros, self._allocated)
        os.fdatasync(self._fd)
        self._allocated += len(zeros)

    def _close_segment(self) -> None:
        """Cut the open segment to its records' end (Rule 7), sync and close it."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            os.ftruncate(fd, self._offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    def start(self) -> None:
        """Start the background thread (flushes, snapshots)."""
        self._thread = threading.Thread(target=self._run, name="journal", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if not self.failure:
            try:
                self.flush()
            except JournalFailed:
                pass
        with self._write_lock, contextlib.suppress(OSError):  # a failed disk keeps its zeros
            self._close_segment()

    # -- appending (the apply path, under the node's lock) --------------------------------------
    def append(self, index: int, payload: bytes | memoryview) -> None:
        """Queue committed entry ``index`` (called in log order). O(payload)."""
        record = encode_record(index, payload)
        with self._pending_lock:
            assert index == self.appended_index + 1, (index, self.appended_index)
            self.appended_index = index
            if not self.failure:  # a failed journal stores nothing more (Rule 5)
                self._pending.append(record)
        self._since_snapshot += 1

    # -- group commit (Rule 4) ------------------------------------------------------------------
    def wait_durable(self, index: int) -> None:
        """Return once ``index`` is on disk (sync mode; async returns at once). Raises
        ``JournalFailed``."""
        if self.failure:
            raise JournalFailed(self.failure)
        if not self.sync or self.durable_index >= index:
            return
        with self._write_lock:
            if self.durable_index < index:
                self._flush_locked()
        if self.durable_index < index:
            raise JournalFailed(self.failure or f"entry {index} is not in the journal")

    def flush(self, sync: bool = True) -> None:
        """Write every pending record; with ``sync``, fdatasync what was written."""
        with self._write_lock:
            self._flush_locked(sync)

    def _flush_locked(self, sync: bool = True) -> None:
        if self.failure:
            raise JournalFailed(self.failure)
        with self._pending_lock:
            records, self._pending = self._pending, []
            last = self.appended_index
        try:
            if records:
                data = b"".join(records)
                self._check_injected_failure(len(data))
                while self._offset + len(data) > self._allocated:
                    self._grow()
                view = memoryview(data)
                while view:
                    written = os.pwrite(self._fd, view, self._offset)
                    view = view[written:]
                    self._offset += written
                self._written_bytes += len(data)
                self.written_index = last
            if sync and self.durable_index < self.written_index:
                written_index = self.written_index
                os.fdatasync(self._fd)
                self.durable_index = written_index
        except OSError as exc:
            self._fail(f"journal write failed in {self.directory}: {exc}")
            raise JournalFailed(self.failure) from None

    def _grow_ahead(self) -> None:
        """Rule 7: keep zeros ahead of the records, so acknowledgements never wait for it."""
        if self._allocated - self._offset >= SEGMENT_GROW_MARGIN_BYTES:
            return
        with self._write_lock:
            if self.failure or self._fd < 0:
                return
            try:
                self._grow()
            except OSError as exc:
                self._fail(f"journal preallocation failed in {self.directory}: {exc}")
                raise JournalFailed(self.failure) from None

    def _check_injected_failure(self, size: int) -> None:
        limit = self._fail_after_bytes
        if limit >= 0 and self._written_bytes + size > limit:
            raise OSError(errno.ENOSPC, f"No space left on device (injected by {FAIL_AFTER_ENV}"
                                        f"={limit})")

    def _fail(self, reason: str) -> None:
        if self.failure:
            return
        self.failure = reason
        log.error("%s; this server stops acknowledging orders", reason)
        if self.on_failure is not None:
            self.on_failure(reason)

    # -- snapshots (Rule 2) ---------------------------------------------------------------------
    def installed(self, index: int, data: bytes) -> None:
        """The state was replaced by the snapshot ``data`` of ``index`` (rejoin, cold start):
        store it and continue the journal at ``index + 1``. Raises ``JournalFailed``."""
        with self._snapshot_lock:
            self._write_snapshot(index, data)
            with self._write_lock:
                self._flush_locked()
                with self._pending_lock:
                    assert not self._pending
                    self.appended_index = index
                self._rotate(index + 1)
                self.written_index = self.durable_index = index
            self._trim(index)

    def snapshot_now(self) -> None:
        """Take a snapshot of the node's state, store it, trim the journal behind it."""
        with self._snapshot_lock:
            index, data = self.take_snapshot()
            if index <= self.snapshot_index:
                return
            self._since_snapshot = 0
            self._write_snapshot(index, data)
            with self._write_lock:
                self._flush_locked()  # every record up to durable_index is in the old segment
                self._rotate(self.durable_index + 1)
            self._trim(index)

    def _rotate(self, first: int) -> None:
        try:
            self._open_segment(first)
        except (OSError, DataDirError) as exc:
            self._fail(f"cannot start journal segment {first} in {self.directory}: {exc}")
            raise JournalFailed(self.failure) from None

    def _write_snapshot(self, index: int, data: bytes) -> None:
        path = self.directory / snapshot_name(index)
        temporary = path.with_name(path.name + ".tmp")
        try:
            self._check_injected_failure(len(data))
            with open(temporary, "wb") as file:
                file.write(file_header(SNAPSHOT_MAGIC, index, self.cluster_id))
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.rename(temporary, path)
            _fsync_dir(self.directory)
        except OSError as exc:
            self._fail(f"snapshot write failed in {self.directory}: {exc}")
            raise JournalFailed(self.failure) from None
        self.snapshot_index = max(self.snapshot_index, index)
        log.info("snapshot of index %d stored (%d bytes)", index, len(data))

    def _trim(self, index: int) -> None:
        """Delete snapshots before ``index`` and segments wholly covered by it (Rule 2)."""
        if index < self.snapshot_index:
            return
        for number, path in _listing(self.directory, _SNAPSHOT_NAME):
            if number < index:
                path.unlink(missing_ok=True)
        segments = _listing(self.directory, _JOURNAL_NAME)
        for (_, path), (next_first, _) in zip(segments, segments[1:], strict=False):
            if next_first <= index + 1:
                path.unlink(missing_ok=True)
        _fsync_dir(self.directory)

    # -- background (Rule 4) --------------------------------------------------------------------
    def _run(self) -> None:
        synced_at = time.monotonic()
        while not self._stop.wait(FLUSH_INTERVAL_S):
            if self.failure:
                return
            now = time.monotonic()
            sync = now - synced_at >= SYNC_INTERVAL_S
            if sync:
                synced_at = now
            try:
                self.flush(sync)
                self._grow_ahead()
                if self._since_snapshot >= self.snapshot_entries:
                    self.snapshot_now()
            except JournalFailed:
                return
            except Exception:
                log.exception("journal background work failed")
                self._fail("journal background work failed; see the log")
                return


def open_data_dir(path: str) -> tuple[Path, int]:
    """Create ``path`` if needed and lock it (Rule 6); return (directory, lock fd). Raises
    ``DataDirError``."""
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(f"--data-dir {path}: {exc.strerror or exc}") from None
    if not directory.is_dir():
        raise DataDirError(f"--data-dir {path} is not a directory")
    for stale in directory.glob("*.tmp"):
        stale.unlink(missing_ok=True)
    try:
        fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DataDirError(f"--data-dir {path}: cannot create LOCK: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DataDirError(f"--data-dir {path} is in use by another server process") from None
    return directory, fd
