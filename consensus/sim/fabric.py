"""The simulator's fabric: ``consensus.fabric.memory`` with a switch point before every operation,
posted writes that land late, crash-mid-write triggers and an observer that sees every landing.

Rule 1: every fabric operation (write, read, read_into, post_write, poll_completions, grant,
        revoke, connect polling) first calls the scheduler (a switch point), so the replicas'
        steps interleave one one-sided operation at a time.
Rule 2: memory semantics are those of ``MemoryNetwork`` (base Rules 3-5): a write lands only with
        permission; a revoke that returned stops the peer's writes. Regions outlive a crashed
        replica (its restarted incarnation re-attaches them).
Rule 3: a posted write is queued and lands later, at a ``poll_completions`` of its writer (a random
        prefix of the queue, in issue order) or before the writer's next synchronous write (so
        one writer's writes land in issue order, base Rule 5). The data is copied when posted.
        When its writer crashes, a random prefix of the queue lands and the rest is lost.
Rule 4: a crash trigger armed on a writer fires after its k-th successful write to an exclusive
        region (a follower's log): the write lands whole or torn (a prefix, as a process dying in
        memcpy leaves it), then the writer crashes. This is "leader dies having written the entry
        to some followers but not others".
Rule 5: the observer hears every permission change and every landed write, with the writer; the
        exclusive-writer checker is built on it. A revoke counts as a change when it returns.
Rule 6: as on the ``shm`` fabric, a write to an exclusive region may be preempted between its
        permission check and its copy (``MID_WRITE_SWITCH_P``): it is then "in flight" and lands
        even if its permission is revoked meanwhile. ``revoke_write`` waits (in simulated time)
        for the revoked writer's write in flight; if the writer does not finish within
        ``REVOKE_WAIT_NS`` (starved), the revoke raises ``RevokeStalled`` and the write may
        still land later. A writer killed mid-write never lands its write. A writer in
        ``stop_mid_write`` is preempted, and stopped, inside its next log write.
Rule 7: only a region's owner grants (``SimLocalRegion.grant_write``); a fault can only withdraw
        a permission (``withdraw_permission``), as a broken connection does, never give one.
Rule 8: ``wipe(owner)`` models a restart on fresh memory (``MemoryNetwork.wipe``): the owner's
        regions are closed (every handle on them raises ``RegionClosed``; a write in flight or
        posted to them lands nowhere) and forgotten, so ``connect`` waits for the new ones and
        the nemesis never re-grants a permission on a region that no longer exists.
Rule 9: as on the ``shm`` fabric (a region move, ``consensus/fabric/shm.py``), a revoke that
        finds the writer SIGSTOPped (``scheduler.paused``) inside a write moves the region
        instead of waiting: a random prefix of that write lands (the copy caught none, part or
        all of it), the revoke returns, and the writer, once continued, gets ``WriteRejected``
        for that write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from consensus.fabric.base import (
    Buffer,
    Completion,
    FabricError,
    RegionClosed,
    RemoteRegion,
    ReplicaIdT,
    RevokeStalled,
    UnknownPeer,
    WriteRejected,
)
from consensus.fabric.memory import MemoryNetwork, MemoryRegion, MemoryRemote
from consensus.sim.scheduler import Scheduler, SimKilled, Task, Waitable

CONNECT_POLL_NS = 20_000  # how often connect() looks for a region that is not registered yet
POSTED_LAND_ALL_P = 0.7  # probability that a poll lands every queued posted write
EXCLUSIVE_REGION_NAMES = frozenset({"log"})  # regions that must have a single writer at a time
MID_WRITE_SWITCH_P = 0.25  # share of exclusive-region writes preempted after the permission check
# shm gives up on a stopped writer after 50 ms (REVOKE_WAIT_S_MAX), 6x its failure detection
# time; the simulator's timings are scaled down, and a shorter wait makes stalls happen often.
REVOKE_WAIT_NS = 1_000_000


class FabricObserver(Protocol):
    def permission_changed(
        self, owner: ReplicaIdT, name: str, writers: frozenset[ReplicaIdT], cause: str
    ) -> None: ...

    def write_landed(self, owner: ReplicaIdT, name: str, writer: ReplicaIdT) -> None: ...


@dataclass(slots=True)
class CrashTrigger:
    """Crash ``writer`` after ``writes_left`` more successful writes to exclusive regions."""

    writes_left: int
    torn: bool


class _DrainWait(Waitable):
    """Revokers waiting for one writer's write in flight."""

    def __init__(self) -> None:
        self.tasks: list[Task] = []

    def forget(self, task: Task) -> None:
        if task in self.tasks:
            self.tasks.remove(task)

    def wake_all(self, scheduler: Scheduler) -> None:
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            scheduler.wake(task)


@dataclass(slots=True)
class _InFlight:
    """A synchronous write preempted between its permission check and its copy (Rule 6)."""

    remote: MemoryRemote
    offset: int
    data: bytes
    moved: bool = False  # the owner moved the region meanwhile (Rule 9)


@dataclass(frozen=True, slots=True)
class _Posted:
    remote: MemoryRemote
    offset: int
    data: bytes
    wr_id: int


class SimNetwork:
    """All regions of a simulated cluster plus the fault hooks (one per run)."""

    def __init__(
        self,
        scheduler: Scheduler,
        observer: FabricObserver,
        crash: Callable[[ReplicaIdT, str], None],
    ) -> None:
        self.memory = MemoryNetwork()
        self.scheduler = scheduler
        self.observer = observer
        self.crash = crash  # the world's crash: kills the replica's tasks
        self.note: Callable[[str], None] = scheduler.trace  # the world replaces it
        self.triggers: dict[ReplicaIdT, CrashTrigger] = {}
        self.stop_mid_write: set[ReplicaIdT] = set()  # SIGSTOP these inside their next log write
        self.on_stop_mid_write: Callable[[ReplicaIdT], None] = lambda writer: None
        self.endpoints: dict[ReplicaIdT, SimFabric] = {}
        self.writes_landed = 0
        self.writes_rejected = 0
        self._drain_waiters: dict[tuple[ReplicaIdT, str, ReplicaIdT], _DrainWait] = {}
        self._flights: dict[tuple[ReplicaIdT, str, ReplicaIdT], list[_InFlight]] = {}
        self.revokes_stalled = 0
        self.regions_moved = 0

    def wipe(self, owner: ReplicaIdT) -> None:
        """Rule 8 (between two steps: no switch point)."""
        self.memory.wipe(owner)
        self.memory.forget(owner)
        self.scheduler.trace(f"wipe {owner}")

    def endpoint(self, replica_id: ReplicaIdT) -> SimFabric:
        """A fresh endpoint for a replica (incarnation); the old one is closed."""
        old = self.endpoints.get(replica_id)
        if old is not None:
            old.close()
        fabric = SimFabric(self, replica_id)
        self.endpoints[replica_id] = fabric
        return fabric

    def write(self, writer: ReplicaIdT, remote: MemoryRemote, offset: int, data: Buffer) -> None:
        """A synchronous write, possibly preempted between permission check and copy (Rule 6)."""
        region = remote.region
        exclusive = region.name in EXCLUSIVE_REGION_NAMES and region.owner != writer
        stop = exclusive and writer in self.stop_mid_write
        if not stop and (not exclusive or self.scheduler.rng.random() >= MID_WRITE_SWITCH_P):
            self.land(writer, remote, offset, data)
            return
        with region.lock:
            if region.closed:
                raise RegionClosed(f"region {region.name!r} of replica {region.owner} is closed")
            permitted = region.may_write(writer)
        if not permitted:
            self._land_checked(writer, remote, offset, data)  # raises WriteRejected
            return
        key = (region.owner, region.name, writer)
        flight = _InFlight(remote, offset, bytes(data))
        self._flights.setdefault(key, []).append(flight)
        if stop:
            self.stop_mid_write.discard(writer)
            self.on_stop_mid_write(writer)
        try:
            self.scheduler.switch(f"mid-write {writer}>{region.owner}.{region.name}@{offset}")
            if flight.moved:  # Rule 9: the owner moved the region meanwhile
                raise WriteRejected(
                    f"region {region.name!r} of replica {region.owner} was moved during a "
                    f"write of replica {writer}; the write may not have landed"
                )
            self.land(writer, remote, offset, data, checked=False)
        finally:
            self._flights[key].remove(flight)
            waiters = self._drain_waiters.pop(key, None)
            if waiters is not None:
                waiters.wake_all(self.scheduler)

    def drain(self, owner: ReplicaIdT, name: str, peer: ReplicaIdT) -> None:
        """Wait until ``peer`` has no write in flight on the region; if it is stopped inside
        one, move the region (Rule 9); if it is running but late, raise ``RevokeStalled``."""
        key = (owner, name, peer)
        deadline_ns = self.scheduler.now_ns + REVOKE_WAIT_NS
        while any(not flight.moved for flight in self._flights.get(key, ())):
            if peer in self.scheduler.paused:
                self._move(owner, name, peer)
                return
            left_ns = deadline_ns - self.scheduler.now_ns
            if left_ns <= 0:
                self.revokes_stalled += 1
                raise RevokeStalled(
                    f"region {name!r} of replica {owner}: replica {peer} is still inside a "
                    f"write after {REVOKE_WAIT_NS // 1_000_000} ms; its permission is "
                    "withdrawn, retry"
                )
            waiters = self._drain_waiters.setdefault(key, _DrainWait())
            waiters.tasks.append(self.scheduler.me())
            self.scheduler.block(f"drain {peer} {owner}.{name}", left_ns, waiters)

    def writes_in_flight(self, owner: ReplicaIdT, name: str, writer: ReplicaIdT) -> int:
        """``writer``'s synchronous writes to the region preempted before their copy (Rule 6)."""
        return len(self._flights.get((owner, name, writer), ()))

    def _move(self, owner: ReplicaIdT, name: str, peer: ReplicaIdT) -> None:
        """Rule 9 (the shm fabric's move): the copy keeps a random prefix (none, some, all) of
        each write ``peer`` is stopped inside; the rest never lands and the writer, resumed, is
        refused."""
        rng = self.scheduler.rng
        for flight in self._flights[(owner, name, peer)]:
            if flight.moved:
                continue
            flight.moved = True
            cut = rng.randrange(len(flight.data) + 1)
            region = flight.remote.region
            if cut:
                with region.lock:
                    if not region.closed:
                        region.memory[flight.offset : flight.offset + cut] = flight.data[:cut]
                self.observer.write_landed(owner, name, peer)
            self.scheduler.trace(f"move {owner}.{name}: {peer}'s write @{flight.offset} kept "
                                 f"{cut} of {len(flight.data)} bytes")
        self.regions_moved += 1

    def land(
        self,
        writer: ReplicaIdT,
        remote: MemoryRemote,
        offset: int,
        data: Buffer,
        checked: bool = True,
    ) -> None:
        """Apply one write now (no switch point); may fire ``writer``'s crash trigger."""
        region = remote.region
        trigger = self.triggers.get(writer)
        exclusive = region.name in EXCLUSIVE_REGION_NAMES and region.owner != writer
        if trigger is not None and exclusive and trigger.writes_left <= 1:
            if trigger.torn and len(data) > 1 and (region.may_write(writer) or not checked):
                self._land_torn(writer, region, offset, data)
            else:
                self._land_checked(writer, remote, offset, data, checked)
            del self.triggers[writer]
            self.crash(writer, f"crash trigger after a write to {region.owner}.{region.name}")
            raise SimKilled
        self._land_checked(writer, remote, offset, data, checked)
        if trigger is not None and exclusive:
            trigger.writes_left -= 1

    def _land_checked(
        self,
        writer: ReplicaIdT,
        remote: MemoryRemote,
        offset: int,
        data: Buffer,
        checked: bool = True,
    ) -> None:
        if not checked:  # in flight: its permission was checked before the preemption
            region = remote.region
            with region.lock:
                if region.closed:  # the owner restarted on fresh memory meanwhile (Rule 8)
                    return
                region.memory[offset : offset + len(data)] = data
            self.writes_landed += 1
            self.observer.write_landed(remote.owner, remote.name, writer)
            return
        try:
            remote.write(offset, data)
        except WriteRejected:
            self.writes_rejected += 1
            raise
        self.writes_landed += 1
        self.observer.write_landed(remote.owner, remote.name, writer)

    def _land_torn(
        self, writer: ReplicaIdT, region: MemoryRegion, offset: int, data: Buffer
    ) -> None:
        cut = self.scheduler.rng.randrange(1, len(data))
        with region.lock:
            if region.closed:
                return
            region.memory[offset : offset + cut] = bytes(data[:cut])
        self.scheduler.trace(f"torn write {writer}->{region.owner}.{region.name}@{offset}+{cut}")
        self.observer.write_landed(region.owner, region.name, writer)

    def withdraw_permission(
        self, owner: ReplicaIdT, name: str, peer: ReplicaIdT, cause: str
    ) -> None:
        """A fault takes ``peer``'s permission away, between two steps: no switch point, no drain
        (a write of ``peer`` in flight may still land). There is no counterpart that grants:
        only the owner grants (Rule 7)."""
        region = self.memory.region(owner, name)
        if region is None:  # wiped (Rule 8): nothing left to withdraw
            return
        region.revoke_write(peer)
        self.note_permission(owner, name, peer, False, cause)

    def note_permission(
        self, owner: ReplicaIdT, name: str, peer: ReplicaIdT, grant: bool, cause: str
    ) -> None:
        region = self.memory.region(owner, name)
        if region is None:  # wiped (Rule 8): a killed owner's revoke unwinding after its crash
            return
        text = f"{cause} {'grant' if grant else 'revoke'} {peer} on {owner}.{name}"
        if cause == "owner":
            self.scheduler.trace(text)
        else:
            self.note(text)
        self.observer.permission_changed(owner, name, region.writers(), cause)

    def close(self) -> None:
        self.memory.close()


class SimLocalRegion:
    """The owner's view of a region (``LocalRegion``); permission changes are switch points."""

    def __init__(self, network: SimNetwork, region: MemoryRegion) -> None:
        self._network = network
        self._region = region
        self.name = region.name
        self.size = region.size
        self.buf = region.buf

    def grant_write(self, peer: ReplicaIdT) -> None:
        network, owner = self._network, self._region.owner
        network.scheduler.switch(f"grant {peer} {owner}.{self.name}")
        self._region.grant_write(peer)
        network.note_permission(owner, self.name, peer, True, "owner")

    def revoke_write(self, peer: ReplicaIdT) -> None:
        network, owner = self._network, self._region.owner
        network.scheduler.switch(f"revoke {peer} {owner}.{self.name}")
        self._region.revoke_write(peer)
        try:
            network.drain(owner, self.name, peer)
        finally:
            network.note_permission(owner, self.name, peer, False, "owner")

    def writers(self) -> frozenset[ReplicaIdT]:
        return self._region.writers()


class SimRemote:
    """A handle on a peer's region (``RemoteRegion``); every operation is a switch point."""

    def __init__(self, fabric: SimFabric, remote: MemoryRemote) -> None:
        self._fabric = fabric
        self.remote = remote
        self.owner = remote.owner
        self.name = remote.name
        self.size = remote.size
        self._tag = f"{fabric.replica_id}>{remote.owner}.{remote.name}"

    def write(self, offset: int, data: Buffer) -> None:
        fabric = self._fabric
        fabric.check_open()
        fabric.network.scheduler.switch(f"w {self._tag}@{offset}+{len(data)}")
        fabric.check_open()
        fabric.flush_posted()
        fabric.network.write(fabric.replica_id, self.remote, offset, data)

    def read(self, offset: int, length: int) -> bytes:
        self._fabric.check_open()
        self._fabric.network.scheduler.switch(f"r {self._tag}@{offset}+{length}")
        return self.remote.read(offset, length)

    def read_into(self, offset: int, out: memoryview) -> None:
        self._fabric.check_open()
        self._fabric.network.scheduler.switch(f"r {self._tag}@{offset}+{len(out)}")
        self.remote.read_into(offset, out)


class SimFabric:
    """One replica incarnation's endpoint (``Fabric``)."""

    def __init__(self, network: SimNetwork, replica_id: ReplicaIdT) -> None:
        self.network = network
        self.replica_id = replica_id
        self._posted: list[_Posted] = []
        self._done: list[Completion] = []
        self._closed = False

    def check_open(self) -> None:
        if self._closed:
            raise RegionClosed(f"fabric endpoint of replica {self.replica_id} is closed")

    def register(self, name: str, size: int) -> SimLocalRegion:
        self.check_open()
        region = self.network.memory.create(self.replica_id, name, size)
        self.network.scheduler.trace(f"register {self.replica_id}.{name}")
        return SimLocalRegion(self.network, region)

    def connect(self, owner: ReplicaIdT, name: str, timeout_s: float) -> SimRemote:
        scheduler = self.network.scheduler
        deadline_ns = scheduler.now_ns + int(timeout_s * 1e9)
        while True:
            self.check_open()
            region = self.network.memory.region(owner, name)
            if region is not None and not region.closed:
                scheduler.switch(f"connect {self.replica_id}>{owner}.{name}")
                return SimRemote(self, MemoryRemote(self.replica_id, region))
            if scheduler.now_ns >= deadline_ns:
                raise UnknownPeer(f"replica {owner} has no region {name!r} after {timeout_s} s")
            scheduler.sleep("connect wait", CONNECT_POLL_NS)

    def post_write(self, remote: RemoteRegion, offset: int, data: Buffer, wr_id: int) -> None:
        assert isinstance(remote, SimRemote), f"not a simulated region: {remote!r}"
        self.check_open()
        self.network.scheduler.switch(f"post {remote.owner}.{remote.name}@{offset}+{len(data)}")
        self.check_open()
        self._posted.append(_Posted(remote.remote, offset, bytes(data), wr_id))

    def poll_completions(self, max_entries: int) -> list[Completion]:
        self.check_open()
        scheduler = self.network.scheduler
        scheduler.switch("poll")
        self.check_open()
        if self._posted:
            count = len(self._posted)
            if scheduler.rng.random() >= POSTED_LAND_ALL_P:
                count = scheduler.rng.randint(0, count)
            self._land_posted(count)
        done = self._done[:max_entries]
        del self._done[:max_entries]
        return done

    def flush_posted(self) -> None:
        if self._posted:
            self._land_posted(len(self._posted))

    def _land_posted(self, count: int) -> None:
        batch = self._posted[:count]
        del self._posted[:count]
        for posted in batch:
            try:
                self.network.land(self.replica_id, posted.remote, posted.offset, posted.data)
            except FabricError as error:
                self._done.append(Completion(posted.wr_id, error))
            else:
                self._done.append(Completion(posted.wr_id, None))

    def crash(self) -> None:
        """The process died: a random prefix of the posted writes lands, the rest is lost."""
        if self._posted and not self._closed:
            keep = self.network.scheduler.rng.randint(0, len(self._posted))
            batch, self._posted = self._posted[:keep], []
            for posted in batch:
                try:
                    self.network.land(self.replica_id, posted.remote, posted.offset, posted.data)
                except (FabricError, SimKilled):
                    pass
        self.close()

    def close(self) -> None:
        self._closed = True
        self._posted.clear()
