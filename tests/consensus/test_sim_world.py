"""The simulated world end to end, on a toy protocol (one fixed leader, no election) so that the
harness is tested on its own: clean runs pass and are reproducible, a known bug is caught."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import replace

import pytest

from consensus.fabric.base import Fabric, FabricError
from consensus.registry.base import Registry
from consensus.runtime import Runtime
from consensus.sim.plan import NS_PER_MS, make_plan
from consensus.sim.protocol import (
    OnCommit,
    OnLeaderChange,
    ProtocolAdapter,
    ReplicaLike,
    ReplicaSpec,
)
from consensus.sim.world import World

HEAD = struct.Struct("<QI")  # index, length
TRAILER = struct.Struct("<Q")  # index, written last
COMMIT = struct.Struct("<Q")
PUMP_IDLE_S = 0.000_02


class ToyNotLeader(Exception):
    pass


class ToyReplica:
    """Replica 1 leads forever; it writes each entry to every follower and commits on a majority.
    ``trailer_first`` is the planted bug: the trailer (the "entry complete" mark) is written before
    the body and followers apply what the trailer says is there."""

    def __init__(
        self,
        spec: ReplicaSpec,
        fabric: Fabric,
        registry: Registry,
        runtime: Runtime,
        on_commit: OnCommit,
        on_leader_change: OnLeaderChange,
        trailer_first: bool,
    ) -> None:
        self.spec, self.fabric, self.registry, self.runtime = spec, fabric, registry, runtime
        self.on_commit, self.on_leader_change = on_commit, on_leader_change
        self.trailer_first = trailer_first
        self.slot_bytes = HEAD.size + spec.payload_bytes_max + TRAILER.size
        self.mutex = runtime.mutex()
        self.next_index = 1
        self.applied = 0
        self.stopping = False
        self.paused = False

    @property
    def is_leader(self) -> bool:
        return self.spec.replica_id == 1 and not self.paused

    @property
    def error(self) -> Exception | None:
        return None

    def offset(self, index: int) -> int:
        return COMMIT.size + (index % self.spec.log_slots) * self.slot_bytes

    def start(self) -> None:
        size = COMMIT.size + self.spec.log_slots * self.slot_bytes
        self.region = self.fabric.register("log", size)
        if self.spec.replica_id != 1:
            self.region.grant_write(1)
        self.registry.publish(f"up/{self.spec.replica_id}", b"1")
        others = [r for r in self.spec.members if r != self.spec.replica_id]
        if self.spec.replica_id == 1:
            for r in others:
                self.registry.wait_for(f"up/{r}", 1.0)
            self.remotes = [self.fabric.connect(r, "log", 1.0) for r in others]
        self.on_leader_change(1, self.spec.replica_id == 1)
        self.pump = self.runtime.spawn("pump", self.run_pump)

    def propose(self, payload: bytes, timeout_s: float = 1.0) -> int:
        if not self.is_leader:
            raise ToyNotLeader
        with self.mutex:
            index = self.next_index
            self.next_index += 1
            offset = self.offset(index)
            body = HEAD.pack(index, len(payload)) + payload
            trailer = TRAILER.pack(index)
            trailer_at = offset + HEAD.size + self.spec.payload_bytes_max
            buf = self.region.buf
            buf[offset : offset + len(body)] = body
            buf[trailer_at : trailer_at + TRAILER.size] = trailer
            holders = 1
            for remote in self.remotes:
                try:
                    if self.trailer_first:
                        remote.write(trailer_at, trailer)
                        remote.write(offset, body)
                    else:
                        remote.write(offset, body)
                        remote.write(trailer_at, trailer)
                    holders += 1
                except FabricError:
                    pass
            if 2 * holders <= len(self.spec.members):
                raise ToyNotLeader
            COMMIT.pack_into(buf, 0, index)
            for remote in self.remotes:
                try:
                    remote.write(0, COMMIT.pack(index))
                except FabricError:
                    pass
        return index

    def propose_many(self, payloads: Sequence[bytes], timeout_s: float = 1.0) -> list[int]:
        return [self.propose(p, timeout_s) for p in payloads]

    def run_pump(self) -> None:
        buf = self.region.buf
        while not self.stopping:
            index = self.applied + 1
            offset = self.offset(index)
            trailer_at = offset + HEAD.size + self.spec.payload_bytes_max
            complete = TRAILER.unpack_from(buf, trailer_at)[0] == index
            committed = self.trailer_first or COMMIT.unpack_from(buf, 0)[0] >= index
            if complete and committed:
                _, length = HEAD.unpack_from(buf, offset)
                start = offset + HEAD.size
                self.on_commit(index, bytes(buf[start : start + length]))
                self.applied = index
                self.runtime.yield_now()
            else:
                self.runtime.sleep(PUMP_IDLE_S)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def stop(self) -> None:
        self.stopping = True
        self.pump.join(1.0)


def toy(trailer_first: bool = False) -> ProtocolAdapter:
    def build(
        spec: ReplicaSpec,
        fabric: Fabric,
        registry: Registry,
        runtime: Runtime,
        on_commit: OnCommit,
        on_leader_change: OnLeaderChange,
    ) -> ReplicaLike:
        return ToyReplica(
            spec, fabric, registry, runtime, on_commit, on_leader_change, trailer_first
        )

    return ProtocolAdapter("toy", build, (ToyNotLeader,))


def toy_plan(seed: int, replicas: int = 3):
    plan = make_plan(
        seed,
        steps_max=30_000,
        fault_phase_ns=5 * NS_PER_MS,
        quiet_phase_ns=25 * NS_PER_MS,
        faults=False,
        replicas=replicas,
    )
    return replace(plan, log_slots=4096, payload_bytes_max=max(plan.payload_bytes_max, 16))


@pytest.mark.parametrize("seed", range(4))
def test_clean_toy_runs_pass_and_commit(seed: int) -> None:
    result = World(toy_plan(seed), toy()).run()
    assert result.ok, f"seed {seed}: {result.failure}"
    assert not result.truncated, f"seed {seed}"
    assert result.acks > 10 and result.deliveries >= 2 * result.acks, f"seed {seed}"


def test_same_seed_same_trace_hash() -> None:
    first = World(toy_plan(11), toy()).run()
    second = World(toy_plan(11), toy()).run()
    assert first.trace_hash == second.trace_hash
    assert (first.steps, first.acks, first.sim_ns) == (second.steps, second.acks, second.sim_ns)
    other = World(toy_plan(12), toy()).run()
    assert other.trace_hash != first.trace_hash


def test_planted_torn_entry_bug_is_found_and_replays() -> None:
    failing = None
    for seed in range(20):
        result = World(toy_plan(seed), toy(trailer_first=True)).run()
        if not result.ok:
            failing = result
            break
    assert failing is not None, "20 seeds did not catch a follower applying a torn entry"
    assert failing.failure is not None and "integrity" in failing.failure
    again = World(toy_plan(failing.seed), toy(trailer_first=True)).run()
    assert again.failure == failing.failure and again.trace_hash == failing.trace_hash
