"""recovery.catch_up and adopt on hand-built logs (no activities): the two guards the simulator
asked for."""

from __future__ import annotations

from typing import Any

import pytest

from consensus import LogOverrun, ReplicaConfig
from consensus import log as log_mod
from consensus.fabric.memory import MemoryNetwork
from consensus.recovery import Deposed, adopt, catch_up
from consensus.runtime import RealRuntime
from consensus.state import Peer, ReplicaState

SLOTS = 8


def build() -> tuple[ReplicaState, Peer, Any]:
    network = MemoryNetwork()
    config = ReplicaConfig(1, (1, 2, 3), payload_size_max=16, log_slots=SLOTS)
    layout = log_mod.LogLayout.create(SLOTS, 16)
    one, two = network.endpoint(1), network.endpoint(2)
    log1, ctrl1 = one.register("log", layout.region_bytes), one.register("ctrl", 256)
    log2 = two.register("log", layout.region_bytes)
    two.register("ctrl", 256)
    log2.grant_write(1)
    state = ReplicaState(config, one, RealRuntime(), log1, ctrl1)  # type: ignore[arg-type]
    peer = Peer(2, 1, one.connect(2, "log", 1.0), one.connect(2, "ctrl", 1.0))
    return state, peer, log2


def put(buf: Any, layout: log_mod.LogLayout, index: int, proposal: int, payload: bytes) -> None:
    slot = bytearray(layout.slot_bytes)
    length = log_mod.encode_entry(slot, index, proposal, 0, payload)
    offset = layout.offset(index)
    buf[offset : offset + length] = slot[:length]


def test_a_deposed_leader_regaining_a_follower_writes_nothing():
    state, peer, log2 = build()
    state.proposal = 257
    put(state.log_buf, state.layout, 1, 257, b"stale")
    put(log2.buf, state.layout, 1, 514, b"committed")
    log_mod.U64.pack_into(log2.buf, log_mod.MIN_PROPOSAL_OFFSET, 514)  # a newer leader was here
    before = bytes(log2.buf)
    with pytest.raises(Deposed):
        catch_up(state, peer, tail=1, commit=0)
    assert bytes(log2.buf) == before


def test_catch_up_raises_min_proposal_then_rewrites():
    state, peer, log2 = build()
    state.proposal = 514
    put(state.log_buf, state.layout, 1, 257, b"value")
    assert catch_up(state, peer, tail=1, commit=1)
    assert log_mod.U64.unpack_from(log2.buf, log_mod.MIN_PROPOSAL_OFFSET)[0] == 514
    entry = log_mod.read_entry(log2.buf, state.layout.offset(1), 1, 16)
    assert entry is not None and (entry.proposal, entry.payload) == (514, b"value")


def test_a_later_wrap_anywhere_means_the_candidate_is_overrun():
    state, peer, log2 = build()
    put(state.log_buf, state.layout, 1, 257, b"stale-own")  # its own stale entry 1 ...
    put(log2.buf, state.layout, 1 + SLOTS, 514, b"later")  # ... but 1 was applied and recycled
    with pytest.raises(LogOverrun):
        adopt(state, [peer], start=1)


def test_adopt_takes_the_highest_proposal_and_stops_at_the_first_gap():
    state, peer, log2 = build()
    put(state.log_buf, state.layout, 1, 257, b"old")
    put(log2.buf, state.layout, 1, 514, b"new")
    put(log2.buf, state.layout, 2, 514, b"two")
    log_mod.U64.pack_into(log2.buf, log_mod.FIRST_UNDECIDED_OFFSET, 1)
    adopted = adopt(state, [peer], start=1)
    assert [(e.index, e.payload) for e in adopted] == [(1, b"new"), (2, b"two")]
