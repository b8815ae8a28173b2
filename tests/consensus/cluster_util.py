"""In-process clusters for the consensus tests: every replica a set of threads in this process,
over ``MemoryNetwork`` and an ``InProcessRegistry``. Conditions are awaited, never slept on."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

from consensus import ConsensusError, Replica, ReplicaConfig, SnapshotUnavailable, Transfer
from consensus.fabric.memory import MemoryNetwork
from consensus.registry.base import InProcessRegistry
from consensus.runtime import Runtime

# Generous detector timings: all replicas share one interpreter (and its GIL) in these tests, so a
# 2-core shared machine must not see spurious fail-overs; correctness, not speed, is tested here.
TEST_TIMINGS = dict(heartbeat_interval_us=500, scan_interval_us=500, dead_after_us=150_000,
                    scan_gap_cap_us=2000, startup_grace_us=300_000)
WAIT_S = 10.0


def wait_until(condition: Callable[[], bool], timeout_s: float = WAIT_S, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or condition}")
        time.sleep(0.001)


class Cluster:
    def __init__(self, size: int, log_slots: int = 1024, payload_size_max: int = 64,
                 paused: tuple[int, ...] = (), pump_poll_us: int = 0,
                 runtimes: dict[int, Runtime] | None = None) -> None:
        self.network = MemoryNetwork()
        self.store: dict[str, bytes] = {}
        self.members = tuple(range(1, size + 1))
        self.delivered: dict[int, list[tuple[int, bytes]]] = {m: [] for m in self.members}
        self.errors: dict[int, list[ConsensusError]] = {m: [] for m in self.members}
        self.replicas: dict[int, Replica] = {}
        self.log_slots = log_slots
        self.payload_size_max = payload_size_max
        self.pump_poll_us = pump_poll_us
        self.runtimes = runtimes or {}
        for member in self.members:
            self.replicas[member] = self._build(member)
            if member in paused:
                self.replicas[member].pause()  # starts paused: never grants, log stays empty
        self._start(list(self.replicas.values()))

    def _build(self, member: int, initial_applied: int = 0) -> Replica:
        config = ReplicaConfig(member, self.members, payload_size_max=self.payload_size_max,
                               log_slots=self.log_slots, pump_poll_us=self.pump_poll_us,
                               **TEST_TIMINGS)  # type: ignore[arg-type]
        delivered, errors = self.delivered[member], self.errors[member]
        return Replica(config, self.network.endpoint(member),  # type: ignore[arg-type]
                       InProcessRegistry("t", self.store),
                       runtime=self.runtimes.get(member),
                       on_commit=lambda i, p: delivered.append((i, p)),
                       on_error=errors.append)

    @staticmethod
    def _start(replicas: list[Replica]) -> None:
        threads = [threading.Thread(target=r.start) for r in replicas]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def leader(self, exclude: tuple[int, ...] = ()) -> Replica:
        found: list[Replica] = []

        def one() -> bool:
            found[:] = [r for m, r in self.replicas.items() if r.is_leader and m not in exclude]
            return len(found) == 1

        wait_until(one, what="a single leader")
        return found[0]

    def propose_n(self, count: int, tag: str, exclude: tuple[int, ...] = ()) -> list[int]:
        """Propose ``count`` unique payloads through whoever leads, retrying across changes."""
        indexes = []
        for i in range(count):
            payload = f"{tag}-{i}".encode()
            while True:
                leader = self.leader(exclude)
                try:
                    indexes.append(leader.propose(payload))
                    break
                except ConsensusError:
                    time.sleep(0.001)
        return indexes

    def wait_applied(self, index: int, members: tuple[int, ...] | None = None) -> None:
        for member in members or self.members:
            replica = self.replicas[member]

            def applied(r: Replica = replica) -> bool:
                return r.applied_index >= index

            wait_until(applied, what=f"replica {member} to apply {index}")

    def check_identical(self, members: tuple[int, ...] | None = None) -> None:
        """Every replica delivered a prefix of one sequence, indexes 1.., each once."""
        chosen = members or self.members
        longest = max((self.delivered[m] for m in chosen), key=len)
        assert [i for i, _ in longest] == list(range(1, len(longest) + 1))
        for member in chosen:
            got = self.delivered[member]
            assert got == longest[: len(got)], f"replica {member} diverged"

    def stop(self) -> None:
        for replica in self.replicas.values():
            replica.stop()
        self.network.close()


class ChainApp:
    """A replicated state machine for rejoin tests: a hash chain over the delivered payloads,
    with snapshots. ``on_commit`` runs on the pump thread; ``snapshot`` on a fetching peer's."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.index = 0
        self.chain = b"\0" * 32
        self.first_delivered = 0  # the first index delivered by on_commit (after any snapshot)
        self.installed: list[int] = []

    def on_commit(self, index: int, payload: bytes) -> None:
        with self.lock:
            assert index == self.index + 1, (index, self.index)
            self.index = index
            self.chain = hashlib.sha256(self.chain + payload).digest()
            if not self.first_delivered:
                self.first_delivered = index

    def snapshot(self) -> tuple[int, bytes]:
        with self.lock:
            return self.index, self.index.to_bytes(8, "little") + self.chain

    def install(self, index: int, data: bytes) -> None:
        if len(data) != 40 or int.from_bytes(data[:8], "little") != index:
            raise SnapshotUnavailable(f"bad snapshot of index {index}")
        with self.lock:
            self.index = index
            self.chain = data[8:]
            self.installed.append(index)
            self.first_delivered = 0


class ChainPort:
    """``SnapshotPort`` between the ``ChainApp``s of one in-process cluster."""

    def __init__(self, apps: dict[int, ChainApp], me: int) -> None:
        self.apps = apps
        self.me = me

    def fetch(self, peer: int, transfer: Transfer) -> tuple[int, bytes]:
        app = self.apps.get(peer)
        if app is None:
            raise SnapshotUnavailable(f"replica {peer} is down")
        index, data = app.snapshot()
        transfer.begin(index, len(data))
        transfer.advance(len(data))
        return index, data

    def install(self, index: int, data: bytes) -> None:
        self.apps[self.me].install(index, data)


class SnapshotCluster(Cluster):
    """A ``Cluster`` whose replicas run ``ChainApp``s with a snapshot port, and can be killed and
    restarted on fresh memory (``restart_fresh``)."""

    def __init__(self, size: int, **kwargs: object) -> None:
        self.apps: dict[int, ChainApp] = {m: ChainApp() for m in range(1, size + 1)}
        super().__init__(size, **kwargs)  # type: ignore[arg-type]

    def _build(self, member: int, initial_applied: int = 0) -> Replica:
        config = ReplicaConfig(member, self.members, payload_size_max=self.payload_size_max,
                               log_slots=self.log_slots, pump_poll_us=self.pump_poll_us,
                               **TEST_TIMINGS)  # type: ignore[arg-type]
        app, errors = self.apps[member], self.errors[member]
        return Replica(config, self.network.endpoint(member),  # type: ignore[arg-type]
                       InProcessRegistry("t", self.store), on_commit=app.on_commit,
                       on_error=errors.append, snapshots=ChainPort(self.apps, member),
                       initial_applied=initial_applied)

    def kill(self, member: int) -> None:
        """Stop ``member`` and lose its memory (its app state and its regions)."""
        self.replicas[member].stop()
        self.network.wipe(member)
        del self.apps[member]

    def restart_fresh(self, member: int) -> Replica:
        self.apps[member] = ChainApp()
        replica = self.replicas[member] = self._build(member)
        replica.start()
        return replica

    def restart_from_state(self, member: int, app: ChainApp) -> Replica:
        """Restart ``member`` on fresh regions with ``app`` (its state as restored from a disk):
        ``Replica(initial_applied=app.index)``."""
        self.apps[member] = app
        replica = self.replicas[member] = self._build(member, initial_applied=app.index)
        replica.start()
        return replica

    def wait_caught_up(self, member: int, index: int) -> None:
        replica = self.replicas[member]
        wait_until(lambda: replica.recovery is None and self.apps[member].index >= index,
                   what=f"replica {member} to recover and reach {index}")

    def check_same_state(self) -> None:
        states = {m: app.snapshot() for m, app in self.apps.items()}
        top = max(index for index, _ in states.values())
        wait_until(lambda: all(app.index == top for app in self.apps.values()),
                   what=f"every replica at {top}")
        assert len({app.chain for app in self.apps.values()}) == 1, states
