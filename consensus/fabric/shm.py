"""The shared-memory fabric: every replica is its own OS process, regions live in POSIX shared
memory (files in ``/dev/shm``), and a remote write or read is a copy done by the caller. The
owner's process runs no code for it, so a paused or killed owner does not stop its peers.

Rule 1: a region is one file ``/dev/shm/mu.<cluster>.<owner>.<region>``: a ``META_BYTES`` metadata
        page (magic, nonce, size, closed flag, one permission byte per writer id, pids) followed by
        the region's bytes. ``LocalRegion.buf`` starts after the metadata, so offsets start at 0.
Rule 2: each (region, writer) pair has its own named POSIX semaphore (``sem.mu.<cluster>...``,
        value 1, named after the region's nonce). A writer takes it, checks its permission byte,
        copies, releases. Writers never wait for each other, only for a revoke of themselves.
Rule 3: ``revoke_write(peer)`` clears the permission byte, then takes and releases ``peer``'s
        semaphore: a write that read the old byte holds the semaphore until its copy is done, so
        when the revoke returns no write of ``peer`` can land (base Rule 4). The permission lives
        in shared memory, so it holds while the owner is stopped or dead.
Rule 4: a semaphore held by a dead process is released by whoever waits for it, once the pids
        recorded in the metadata (the writer's, set at connect; the revoker's, set during a revoke)
        show that no live process can hold it. A live writer that holds it is stopped (SIGSTOP,
        a tracer) or running (a copy takes microseconds, unless it is starved): a stopped one
        makes the owner move the region (Rule 7), so the revoke returns and the
        cluster keeps its majority; a running one that still holds it after
        ``REVOKE_WAIT_S_MAX`` makes the revoke raise ``RevokeStalled`` (retry: it will finish).
Rule 5: a write copies all but its last ``WRITE_TAIL_BYTES`` bytes, then the tail, so a reader
        that sees the tail (Mu's canary, the log's trailer) sees the whole write (x86 keeps
        stores in program order).
Rule 6: a region is created under a temporary name and renamed into place; replacing one
        (``reattach=False``) first marks the old file closed with every permission cleared, so
        writers still mapping it get ``RegionClosed``. ``cleanup(cluster_id)`` does this for every
        object of a cluster; a new nonce per region means stale semaphores are never reused.

Rule 7: moving a region (``ShmRegion._move``): the owner marks the old file ``MOVED`` (every
        permission cleared), fences, copies it into a fresh file with a new nonce, maps the new
        file over its own mapping's addresses (``mmap(MAP_FIXED)``: every view the owner's code
        holds now sees the new file), renames it into place and publishes the nonce. The copy
        is the region's size (64 MiB: ~50 ms here; 1 MiB: ~2 ms); the owner's threads run
        meanwhile and read the old file. A stopped
        writer that resumes completes its copy into the abandoned file. Every writer re-reads the
        closed flag after releasing its semaphore (a full barrier) and reports a write that met
        ``MOVED`` as ``WriteRejected``: the owner stores ``MOVED`` and fences before it copies, so
        a write either reached the copy or fails (Dekker's pattern). A write found whole in the
        copy is as good as any other; a partial one is a torn entry, as after a kill -9 mid-write.
        Remote handles follow a move lazily (the registry names the new file), so a move is
        invisible to the protocol except as one failed write of a writer that had permission.
        Words the owner's own threads store in the region during the copy can be lost; in the
        protocol that is only the ``first_undecided`` hint (a lower bound, rewritten on every
        delivery; a stale one makes a leader's catch-up resend more, never less).

Connection details go through the registry (key ``fabric/shm/<owner>/<region>``, value
``"<nonce hex> <size>"``); ``connect`` accepts a file only when its nonce matches, so entries left
by a crashed run are ignored.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import mmap
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from consensus.fabric.base import (
    Buffer,
    Completion,
    FabricError,
    FabricUnavailable,
    ImmediateCompletions,
    OutOfRange,
    RegionClosed,
    ReplicaIdT,
    RevokeStalled,
    UnknownPeer,
    WriteRejected,
    check_range,
)
from consensus.registry.base import Registry, check_name, validate_cluster_id

SHM_DIR = Path("/dev/shm")
OBJECT_PREFIX = "mu"
REGION_NAME_LENGTH_MAX = 32
WRITER_ID_MAX = 255  # replica ids 1..255 (one permission byte each)
META_BYTES = 4096  # one page, so the region's bytes start page-aligned
WRITE_TAIL_BYTES = 16  # copied last (Rule 5): the log trailer {index u64, proposal u64}
REVOKE_WAIT_S_MAX = 0.05  # longest a revoke waits for a live writer's copy to finish
LOCK_POLL_INTERVAL_S = 0.002  # how often a waiter re-checks who holds a semaphore
CONNECT_POLL_INTERVAL_S = 0.001
ORPHAN_RECHECK_S = 0.01  # a connecting writer re-checks a semaphore it thinks orphaned
FOLLOW_WAIT_S = 0.5  # how long a remote handle waits for a moved region's new file (Rule 7)

MAGIC = b"MUSHMRG1"
_HEADER = struct.Struct("<8sQQII")  # magic, nonce, size, owner id, owner pid
OWNER_PID_OFFSET = 28
CLOSED_OFFSET = 32  # 0 open, CLOSED_YES closed for good, CLOSED_MOVED moved to a new file
CLOSED_YES = 1
CLOSED_MOVED = 2
PERMISSION_OFFSET = 64  # + writer id: 1 = may write
_PERMISSIONS = slice(PERMISSION_OFFSET, PERMISSION_OFFSET + WRITER_ID_MAX + 1)  # every writer's
WRITER_PID_OFFSET = 512  # + 4 * writer id: pid of the writer's process (u32)
REVOKER_PID_OFFSET = 1536  # + 4 * writer id: pid of a process revoking that writer, else 0
_PID = struct.Struct("<I")
_SEMAPHORE_KIND = 1  # _multiprocessing.SemLock kind SEMAPHORE (no owner checks on release)

LOGGER = logging.getLogger(__name__)

# The C semaphore behind multiprocessing.Lock; used raw, so no resource tracker adopts it.
_SEMLOCK: Any = importlib.import_module("_multiprocessing").SemLock

# libc's mmap, to map a new file over the owner's own addresses (Rule 7).
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mmap.restype = ctypes.c_void_p
_LIBC.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long]
_MAP_FIXED = 0x10  # Linux, every architecture Python supports (the mmap module lacks it)
# A full barrier: an uncontended lock's acquire and release are locked instructions on x86.
_FENCE = threading.Lock()


class SemLock(Protocol):
    """The part of ``_multiprocessing.SemLock`` used here (a named POSIX semaphore)."""

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool: ...

    def release(self) -> None: ...

    def _get_value(self) -> int: ...


def region_path(cluster_id: str, owner: ReplicaIdT, name: str) -> Path:
    return SHM_DIR / f"{OBJECT_PREFIX}.{cluster_id}.{owner}.{name}"


def semaphore_name(cluster_id: str, owner: ReplicaIdT, name: str, nonce: int, writer: int) -> str:
    return f"/{OBJECT_PREFIX}.{cluster_id}.{owner}.{name}.{nonce:016x}.{writer}"


def registry_key(owner: ReplicaIdT, name: str) -> str:
    return f"fabric/shm/{owner}/{name}"


def encode_details(nonce: int, size: int) -> bytes:
    return f"{nonce:016x} {size}".encode()


def decode_details(value: bytes) -> tuple[int, int] | None:
    """``(nonce, size)`` from a registry value, or ``None`` if it is not one."""
    parts = value.split()
    if len(parts) != 2 or not parts[1].isdigit():
        return None
    try:
        return int(parts[0], 16), int(parts[1])
    except ValueError:
        return None


def check_replica_id(replica_id: ReplicaIdT) -> int:
    if not 1 <= replica_id <= WRITER_ID_MAX:
        raise UnknownPeer(f"replica id {replica_id} outside 1..{WRITER_ID_MAX}")
    return replica_id


def check_region_name(name: str) -> str:
    return check_name("region name", name, REGION_NAME_LENGTH_MAX)


def open_semaphore(name: str) -> SemLock:
    """Open the named semaphore ``name``, creating it (value 1) if it does not exist yet."""
    while True:
        try:
            lock: SemLock = _SEMLOCK(_SEMAPHORE_KIND, 1, 1, name, False)
            return lock
        except FileExistsError:
            pass
        try:
            lock = _SEMLOCK._rebuild(0, _SEMAPHORE_KIND, 1, name)
            return lock
        except FileNotFoundError:
            continue  # unlinked between the two calls: create it again


def process_state(pid: int) -> str:
    """The kernel's one-letter state of ``pid`` (``R``, ``S``, ``T`` stopped, ``Z`` zombie...), or
    ``""`` if no such process exists."""
    if pid <= 0:
        return ""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return ""
    return stat.rpartition(b")")[2].split()[0].decode()


def process_alive(pid: int) -> bool:
    return process_state(pid) not in ("", "Z", "X")


def release_orphan(lock: SemLock) -> None:
    """Release ``lock`` on behalf of a dead holder (no-op if it is free already)."""
    try:
        lock.release()
    except ValueError:  # "released too many times": someone else repaired it first
        pass


class Mapping:
    """An mmap of a region file: its metadata page and its bytes."""

    def __init__(self, path: Path, size: int | None = None) -> None:
        """Map the existing file ``path``; ``OSError``/``ValueError`` if absent or malformed."""
        fd = os.open(path, os.O_RDWR)
        try:
            file_size = os.fstat(fd).st_size
            if file_size < META_BYTES or (size is not None and file_size != META_BYTES + size):
                raise ValueError(f"{path}: size {file_size} does not match")
            self.map = mmap.mmap(fd, file_size)
        finally:
            os.close(fd)
        self.view = memoryview(self.map)
        self.meta = self.view[:META_BYTES]
        self.data = self.view[META_BYTES:]
        self.magic, self.nonce, self.size, self.owner, self.owner_pid = _HEADER.unpack_from(
            self.meta
        )
        if self.magic != MAGIC or self.size != file_size - META_BYTES:
            self.close()
            raise ValueError(f"{path}: not a region of this fabric")

    @property
    def closed(self) -> bool:
        return bool(self.meta[CLOSED_OFFSET])

    def pid(self, offset: int, writer: int) -> int:
        pid: int = _PID.unpack_from(self.meta, offset + 4 * writer)[0]
        return pid

    def set_pid(self, offset: int, writer: int, pid: int) -> None:
        _PID.pack_into(self.meta, offset + 4 * writer, pid)

    def mark_closed(self, how: int = CLOSED_YES) -> None:
        """Withdraw every permission and flag the region closed (Rule 6) or moved (Rule 7)."""
        self.meta[_PERMISSIONS] = bytes(WRITER_ID_MAX + 1)
        self.meta[CLOSED_OFFSET] = how

    def address(self) -> int:
        """The virtual address of the mapping's first byte (the metadata page)."""
        anchor = ctypes.c_char.from_buffer(self.map)
        try:
            return ctypes.addressof(anchor)
        finally:
            del anchor  # releases the buffer export, so the map can still be closed

    def close(self) -> None:
        for view in (self.data, self.meta, self.view):
            view.release()
        try:
            self.map.close()
        except BufferError:  # the owner still holds slices of ``buf``; the GC unmaps later
            pass


def check_not_running(mapping: Mapping, path: Path) -> None:
    """Refuse to take over a region whose owner process is still alive (two replicas with one
    id would each believe the other's writes are their own)."""
    pid = mapping.owner_pid
    if pid != os.getpid() and process_alive(pid):
        mapping.close()
        raise FabricError(
            f"region {path.name} belongs to a running process (pid {pid}): is replica "
            f"{mapping.owner} started twice? (python -m consensus.fabric cleanup CLUSTER)"
        )


def create_region_file(path: Path, owner: ReplicaIdT, size: int) -> Mapping:
    """Create a fresh region file at ``path`` (atomically replacing any old one, Rule 6)."""
    try:
        old = Mapping(path)
    except (OSError, ValueError):
        pass
    else:
        check_not_running(old, path)
        old.mark_closed()
        old.close()
    temporary = create_unplaced_file(path, owner, size)
    os.replace(temporary, path)
    return Mapping(path, size)


def create_unplaced_file(path: Path, owner: ReplicaIdT, size: int) -> Path:
    """A new region file with a fresh nonce beside ``path``, under a temporary name."""
    nonce = int.from_bytes(os.urandom(8), "little") or 1
    temporary = path.with_name(f"{path.name}.tmp{os.getpid()}")
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, META_BYTES + size)
        header = _HEADER.pack(MAGIC, nonce, size, owner, os.getpid())
        os.pwrite(fd, header, 0)
    finally:
        os.close(fd)
    return temporary


def fence() -> None:
    """A full memory barrier (Rule 7)."""
    with _FENCE:
        pass


def map_over(address: int, length: int, path: Path) -> None:
    """Map ``path`` (shared, read-write) at ``address`` in place of whatever is mapped there."""
    fd = os.open(path, os.O_RDWR)
    try:
        result = _LIBC.mmap(address, length, mmap.PROT_READ | mmap.PROT_WRITE,
                            mmap.MAP_SHARED | _MAP_FIXED, fd, 0)
    finally:
        os.close(fd)
    if result != address:  # MAP_FAILED, or (impossible with MAP_FIXED) another address
        errno = ctypes.get_errno()
        raise FabricError(f"mapping {path.name} over the old region failed: {os.strerror(errno)}")


class ShmRegion:
    """A region this replica owns (``LocalRegion``)."""

    def __init__(self, fabric: ShmFabric, name: str, mapping: Mapping) -> None:
        self.fabric = fabric
        self.name = name
        self.size = mapping.size
        self.mapping = mapping
        self.buf = mapping.data
        self._meta = mapping.meta
        self._locks: dict[int, SemLock] = {}
        self._admin_lock = threading.Lock()

    def _lock_of(self, peer: int) -> SemLock:
        lock = self._locks.get(peer)
        if lock is None:
            fabric = self.fabric
            lock = open_semaphore(
                semaphore_name(
                    fabric.cluster_id, fabric.replica_id, self.name, self.mapping.nonce, peer
                )
            )
            self._locks[peer] = lock
        return lock

    def grant_write(self, peer: ReplicaIdT) -> None:
        check_replica_id(peer)
        with self._admin_lock:
            self._meta[PERMISSION_OFFSET + peer] = 1

    def revoke_write(self, peer: ReplicaIdT) -> None:
        check_replica_id(peer)
        with self._admin_lock:
            self._meta[PERMISSION_OFFSET + peer] = 0
            lock = self._lock_of(peer)
            self.mapping.set_pid(REVOKER_PID_OFFSET, peer, os.getpid())
            try:
                self._drain(peer, lock)
            finally:
                self.mapping.set_pid(REVOKER_PID_OFFSET, peer, 0)

    def _drain(self, peer: int, lock: SemLock) -> None:
        """Wait until ``peer`` holds no write in flight (Rules 3, 4 and 7)."""
        if lock.acquire(False):
            lock.release()
            return
        deadline = time.monotonic() + REVOKE_WAIT_S_MAX
        while True:
            writer_pid = self.mapping.pid(WRITER_PID_OFFSET, peer)
            state = process_state(writer_pid)
            if state in ("", "Z", "X"):
                release_orphan(lock)
            elif state in ("T", "t"):
                self._move(f"replica {peer} (pid {writer_pid}) is stopped inside a write")
                return
            elif time.monotonic() >= deadline:
                raise RevokeStalled(
                    f"region {self.name!r} of replica {self.fabric.replica_id}: replica {peer} "
                    f"(pid {writer_pid}, running) is still inside a write after "
                    f"{REVOKE_WAIT_S_MAX * 1000:.0f} ms; its permission is withdrawn, retry"
                )
            if lock.acquire(True, LOCK_POLL_INTERVAL_S):
                break
        lock.release()

    def _move(self, why: str) -> None:
        """Rule 7: carry the region over to a fresh file; writes into the old one are lost."""
        fabric = self.fabric
        mapping = self.mapping
        path = region_path(fabric.cluster_id, fabric.replica_id, self.name)
        started = time.monotonic()
        temporary = create_unplaced_file(path, fabric.replica_id, self.size)
        permissions = bytes(self._meta[_PERMISSIONS])
        fd = os.open(temporary, os.O_RDWR)
        try:
            os.pwrite(fd, permissions, PERMISSION_OFFSET)
            mapping.mark_closed(CLOSED_MOVED)
            fence()
            # the kernel allocates the new file's pages as it copies: about twice as fast as a
            # memcpy into a fresh mapping, which faults every page in (64 MiB: 50 vs 100+ ms)
            copied = 0
            while copied < self.size:
                copied += os.pwrite(fd, mapping.data[copied:], META_BYTES + copied)
            nonce = _HEADER.unpack(os.pread(fd, _HEADER.size, 0))[1]
            map_over(mapping.address(), META_BYTES + self.size, temporary)
        except (OSError, FabricError) as error:
            # nothing moved: reopen the old file as it was; the stopped write may still land
            self._meta[_PERMISSIONS] = permissions
            self._meta[CLOSED_OFFSET] = 0
            temporary.unlink(missing_ok=True)
            raise RevokeStalled(
                f"region {self.name!r} of replica {fabric.replica_id}: {why}, and moving the "
                f"region failed ({error}); its permission is withdrawn, retry"
            ) from error
        finally:
            os.close(fd)
        os.replace(temporary, path)
        old_nonce, mapping.nonce = mapping.nonce, nonce
        self._locks.clear()
        fabric.registry.publish(registry_key(fabric.replica_id, self.name),
                                encode_details(mapping.nonce, self.size))
        remove_semaphores(f"{path.name}.{old_nonce:016x}.")
        LOGGER.warning(
            "replica %d moved region %r to a new file in %.1f ms: %s (its copy in flight lands "
            "in the old one)", fabric.replica_id, self.name,
            (time.monotonic() - started) * 1000, why)

    def writers(self) -> frozenset[ReplicaIdT]:
        permissions = self._meta[_PERMISSIONS]
        return frozenset(peer for peer in range(1, WRITER_ID_MAX + 1) if permissions[peer])


class RegionMoved(WriteRejected):
    """The owner moved the region to a new file (Rule 7); the handle follows it."""


class ShmRemote:
    """``writer``'s handle on a peer's region (``RemoteRegion``)."""

    def __init__(self, fabric: ShmFabric, owner: ReplicaIdT, name: str, mapping: Mapping) -> None:
        self.fabric = fabric
        self.owner = owner
        self.name = name
        self.size = mapping.size
        self.writer = fabric.replica_id
        self._permission_index = PERMISSION_OFFSET + self.writer
        self._retired: Mapping | None = None
        self._follow_lock = threading.Lock()
        self._attach(mapping)

    def _attach(self, mapping: Mapping) -> None:
        self.mapping: Mapping | None = mapping
        self._data: memoryview | None = mapping.data
        self._meta = mapping.meta
        fabric = self.fabric
        self._lock = open_semaphore(
            semaphore_name(fabric.cluster_id, self.owner, self.name, mapping.nonce, self.writer)
        )
        self._claim_lock(mapping)

    def _follow(self, moved: memoryview) -> bool:
        """Rule 7: the owner moved the region whose metadata is ``moved``; map the file the
        registry names now (unless another thread did already). ``False`` (then
        ``RegionClosed``, as for a restart) if none appeared within ``FOLLOW_WAIT_S`` or the
        file there is another process's: the owner restarted after the move."""
        with self._follow_lock:
            if self._meta is not moved:
                return self.mapping is not None  # another thread followed meanwhile
            return self._follow_locked()

    def _follow_locked(self) -> bool:
        current = self.mapping
        if current is None:
            return False
        fabric = self.fabric
        path = region_path(fabric.cluster_id, self.owner, self.name)
        deadline = time.monotonic() + FOLLOW_WAIT_S
        while True:
            mapping = fabric._try_map(self.owner, self.name, path)
            if mapping is not None:
                if mapping.nonce != current.nonce:
                    mover = _PID.unpack_from(current.meta, OWNER_PID_OFFSET)[0]
                    if mapping.size == self.size and mapping.owner_pid == mover:
                        break
                    mapping.close()  # the owner restarted since: a region of a new life
                    return False
                mapping.close()
            if time.monotonic() >= deadline:
                return False
            time.sleep(CONNECT_POLL_INTERVAL_S)
        if self._retired is not None:
            self._retired.close()
        self._retired = current  # another thread may still be inside a copy into it
        self._attach(mapping)
        return True

    def _claim_lock(self, mapping: Mapping) -> None:
        """Record this process as the writer, first freeing the semaphore if an earlier
        incarnation of this writer died holding it (Rule 4)."""
        previous = mapping.pid(WRITER_PID_OFFSET, self.writer)
        if previous not in (0, os.getpid()) and not process_alive(previous):
            for _ in range(2):  # a revoke holds it for microseconds; an orphan for ever
                if self._lock._get_value() != 0:
                    break
                time.sleep(ORPHAN_RECHECK_S)
            else:
                if not process_alive(mapping.pid(REVOKER_PID_OFFSET, self.writer)):
                    release_orphan(self._lock)
        mapping.set_pid(WRITER_PID_OFFSET, self.writer, os.getpid())

    def _acquire_slow(self) -> None:
        """The semaphore is taken: by a revoke of this writer (then the permission byte is
        clear already), by another thread of this process, or by a dead revoker."""
        lock = self._lock
        while not lock.acquire(True, LOCK_POLL_INTERVAL_S):
            if not self._meta[self._permission_index]:
                raise self._refusal()
            revoker = self.mapping.pid(REVOKER_PID_OFFSET, self.writer) if self.mapping else 0
            if revoker and not process_alive(revoker):
                release_orphan(lock)

    def _refusal(self) -> FabricError:
        closed = self._meta[CLOSED_OFFSET]
        if closed == CLOSED_MOVED:
            return RegionMoved(f"region {self.name!r} of replica {self.owner} was moved")
        if closed:
            return RegionClosed(f"region {self.name!r} of replica {self.owner} was closed")
        return WriteRejected(
            f"replica {self.writer} may not write region {self.name!r} of replica {self.owner}"
        )

    def write(self, offset: int, data: Buffer) -> None:
        length = len(data)
        end = offset + length
        if offset < 0 or end > self.size:
            raise OutOfRange(
                f"region {self.name!r} of replica {self.owner}: range [{offset}, {end}) "
                f"outside [0, {self.size})"
            )
        buf = self._data
        if buf is None:
            raise RegionClosed(f"fabric endpoint of replica {self.writer} is closed")
        lock = self._lock
        meta = self._meta
        try:
            if not lock.acquire(False):
                self._acquire_slow()
            try:
                if not meta[self._permission_index]:
                    raise self._refusal()
                if length > WRITE_TAIL_BYTES:
                    split = end - WRITE_TAIL_BYTES
                    view = memoryview(data)
                    buf[offset:split] = view[: length - WRITE_TAIL_BYTES]
                    buf[split:end] = view[length - WRITE_TAIL_BYTES :]
                else:
                    buf[offset:end] = data
            finally:
                lock.release()
        except RegionMoved:
            if not self._follow(meta):
                raise RegionClosed(
                    f"region {self.name!r} of replica {self.owner} was moved and its new file "
                    f"did not appear within {FOLLOW_WAIT_S} s"
                ) from None
            self.write(offset, data)
            return
        if meta[CLOSED_OFFSET]:  # read after the release, a full barrier (Rule 7)
            raise WriteRejected(
                f"region {self.name!r} of replica {self.owner} was moved or closed during a write "
                f"of replica {self.writer}; the write may not have landed"
            )

    def _readable(self, offset: int, length: int) -> memoryview:
        check_range(self.name, self.size, offset, length)
        buf = self._data
        if buf is None:
            raise RegionClosed(f"fabric endpoint of replica {self.writer} is closed")
        meta = self._meta
        closed = meta[CLOSED_OFFSET]
        if closed:
            if closed == CLOSED_MOVED and self._follow(meta):
                return self._readable(offset, length)
            raise RegionClosed(f"region {self.name!r} of replica {self.owner} was closed")
        return buf

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self._readable(offset, length)[offset : offset + length])

    def read_into(self, offset: int, out: memoryview) -> None:
        length = len(out)
        out[:] = self._readable(offset, length)[offset : offset + length]

    def pin_u64(self, offset: int) -> ctypes.c_uint64 | None:
        """The u64 at ``offset`` of the current mapping, for a C reader (native_beat Rule 7):
        while the returned object lives the mapping cannot be unmapped (it is exported), so
        drop it right after use. A move or a close makes its value stand still, never
        invalid. None if there is no mapping or it cannot be exported."""
        data = self._data
        if data is None:
            return None
        try:
            return ctypes.c_uint64.from_buffer(data, offset)
        except (TypeError, ValueError, BufferError):
            return None

    def close(self) -> None:
        if self.mapping is not None:
            self._data = None
            self.mapping.close()
            self.mapping = None
        if self._retired is not None:
            self._retired.close()
            self._retired = None


class ShmFabric(ImmediateCompletions):
    """One replica's endpoint on the shared-memory fabric (``Fabric``)."""

    def __init__(
        self, replica_id: ReplicaIdT, cluster_id: str, registry: Registry, reattach: bool = False
    ) -> None:
        if not SHM_DIR.is_dir():
            raise FabricUnavailable(f"{SHM_DIR} does not exist")
        self.replica_id = check_replica_id(replica_id)
        self.cluster_id = validate_cluster_id(cluster_id)
        self.registry = registry
        self.reattach = reattach
        self._regions: dict[str, ShmRegion] = {}
        self._remotes: list[ShmRemote] = []
        self._completions: list[Completion] = []
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RegionClosed(f"fabric endpoint of replica {self.replica_id} is closed")

    def register(self, name: str, size: int) -> ShmRegion:
        self._check_open()
        check_region_name(name)
        if size <= 0:
            raise ValueError(f"region {name!r}: size must be positive, got {size}")
        region = self._regions.get(name)
        if region is not None:
            if region.size != size:
                raise FabricError(
                    f"region {name!r} of replica {self.replica_id} is registered with size "
                    f"{region.size}, asked for {size}"
                )
            return region
        path = region_path(self.cluster_id, self.replica_id, name)
        mapping = self._reattach(path, size) if self.reattach else None
        if mapping is None:
            mapping = create_region_file(path, self.replica_id, size)
            remove_semaphores(f"{path.name}.", keep_nonce=mapping.nonce)
        region = ShmRegion(self, name, mapping)
        self._regions[name] = region
        self.registry.publish(
            registry_key(self.replica_id, name), encode_details(mapping.nonce, size)
        )
        return region

    def _reattach(self, path: Path, size: int) -> Mapping | None:
        """The surviving region file at ``path``, or ``None`` if there is none usable."""
        try:
            mapping = Mapping(path)
        except (OSError, ValueError):
            return None
        if mapping.closed:
            mapping.close()
            return None
        check_not_running(mapping, path)
        if mapping.size != size:
            found = mapping.size
            mapping.close()
            raise FabricError(
                f"region {path.name}: re-attaching with size {size} but it has {found} bytes; "
                "clean up the cluster or restart without re-attach"
            )
        _PID.pack_into(mapping.meta, OWNER_PID_OFFSET, os.getpid())
        mapping.owner_pid = os.getpid()
        return mapping

    def connect(self, owner: ReplicaIdT, name: str, timeout_s: float) -> ShmRemote:
        self._check_open()
        check_replica_id(owner)
        check_region_name(name)
        deadline = time.monotonic() + timeout_s
        path = region_path(self.cluster_id, owner, name)
        while True:
            mapping = self._try_map(owner, name, path)
            if mapping is not None:
                remote = ShmRemote(self, owner, name, mapping)
                self._remotes.append(remote)
                return remote
            if time.monotonic() >= deadline:
                raise UnknownPeer(
                    f"replica {owner} has no region {name!r} in cluster {self.cluster_id!r} "
                    f"after {timeout_s} s (registry {self.registry.describe()}; is it running?)"
                )
            time.sleep(CONNECT_POLL_INTERVAL_S)

    def _try_map(self, owner: ReplicaIdT, name: str, path: Path) -> Mapping | None:
        """Map ``path`` if the registry announces it and its nonce matches (stale entries and
        closed files are skipped)."""
        value = self.registry.lookup(registry_key(owner, name))
        details = None if value is None else decode_details(value)
        if details is None:
            return None
        nonce, size = details
        try:
            mapping = Mapping(path, size)
        except (OSError, ValueError):
            return None
        if mapping.nonce != nonce or mapping.closed:
            mapping.close()
            return None
        return mapping

    def close(self) -> None:
        """Unmap everything; the regions stay in shared memory for a restart (``cleanup`` removes
        them)."""
        if self._closed:
            return
        self._closed = True
        for remote in self._remotes:
            remote.close()
        # Local regions stay mapped while the protocol may still hold ``buf`` (its threads may
        # be stopping); the mapping goes when the last view does.
        self._remotes.clear()
        self._regions.clear()


def remove_semaphores(prefix: str, keep_nonce: int | None = None) -> int:
    """Unlink the semaphores whose names start with ``prefix`` (except those of ``keep_nonce``)."""
    keep = None if keep_nonce is None else f".{keep_nonce:016x}."
    count = 0
    for path in SHM_DIR.glob(f"sem.{prefix}*"):
        if keep is not None and keep in path.name:
            continue
        try:
            path.unlink()
            count += 1
        except FileNotFoundError:
            pass
    return count


def cleanup(cluster_id: str) -> int:
    """Remove every shared-memory object of ``cluster_id`` (regions, semaphores, embedded-registry
    entries) and return how many there were. Regions are marked closed first, so a process still
    mapping one gets ``RegionClosed`` instead of writing into a deleted file. Safe to call when
    nothing exists; launchers call it before starting a cluster and after stopping it."""
    from consensus.registry.embedded import remove_cluster

    prefix = f"{OBJECT_PREFIX}.{validate_cluster_id(cluster_id)}."
    count = 0
    for path in SHM_DIR.glob(f"{prefix}*"):
        try:
            mapping = Mapping(path)
        except (OSError, ValueError):
            pass
        else:
            mapping.mark_closed()
            mapping.close()
        try:
            path.unlink()
            count += 1
        except FileNotFoundError:
            pass
    count += remove_semaphores(prefix)
    return count + remove_cluster(cluster_id)
