"""Replicas in separate processes over the shm fabric (driven like the fail-over benchmark):
replication with 3 and 5 replicas, leader paused through the hook, leader process killed."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from pathlib import Path

import pytest

from consensus import bench_cluster as bc

pytestmark = pytest.mark.slow
EVENT_WAIT_S = 20.0
LOAD_S = 0.3  # proposals keep flowing this long around each fault (load, not synchronization)


def start(members: tuple[int, ...], tmp_path: Path):
    cluster = bc.new_cluster_id("mu-test")
    argv = [["bench", "failover-node", str(rid), "--cluster", cluster, "--members",
             ",".join(map(str, members)), "--payload-size", "32", "--interval-us", "200",
             "--record", str(tmp_path / f"r{rid}.txt")] for rid in members]
    children = bc.spawn_local(argv, cluster, pipes=True)
    events: queue.SimpleQueue[bc.Event] = queue.SimpleQueue()
    for child in children:
        threading.Thread(target=bc._read_events, args=(child, events), daemon=True).start()
    return cluster, dict(zip(members, children, strict=True)), events


def finish(cluster, children, alive, tmp_path: Path) -> dict[int, list[str]]:
    for rid in alive:
        bc._send(children[rid], "quit")
    bc.reap(list(children.values()), cluster)
    return {rid: (tmp_path / f"r{rid}.txt").read_text().splitlines() for rid in alive}


def check_identical(records: dict[int, list[str]], at_least: int) -> None:
    longest = max(records.values(), key=len)
    assert [int(line.split()[0]) for line in longest] == list(range(1, len(longest) + 1))
    for rid, lines in records.items():
        assert lines == longest[: len(lines)], f"replica {rid} diverged"
        assert len(lines) >= at_least, f"replica {rid} delivered only {len(lines)}"
    payloads = [line.split()[1] for line in longest]
    assert len(set(payloads)) == len(payloads), "an entry was delivered twice"


@pytest.mark.parametrize("size", [3, 5])
def test_leader_paused_through_the_hook(tmp_path, size):
    members = tuple(range(1, size + 1))
    cluster, children, events = start(members, tmp_path)
    try:
        leader = bc._next_event(events, "first-commit", EVENT_WAIT_S).replica
        time.sleep(LOAD_S)
        bc._send(children[leader], "pause")
        new = bc._next_event(events, "first-commit", EVENT_WAIT_S, exclude=leader).replica
        assert new != leader
        bc._send(children[leader], "resume")
        bc._next_event(events, "resumed", EVENT_WAIT_S)
        time.sleep(LOAD_S)
    finally:
        records = finish(cluster, children, members, tmp_path)
    check_identical(records, at_least=100)


def test_leader_process_killed(tmp_path):
    members = (1, 2, 3)
    cluster, children, events = start(members, tmp_path)
    try:
        leader = bc._next_event(events, "first-commit", EVENT_WAIT_S).replica
        time.sleep(LOAD_S)
        os.kill(children[leader].pid, signal.SIGKILL)
        children[leader].wait()
        bc._next_event(events, "first-commit", EVENT_WAIT_S, exclude=leader)
        time.sleep(LOAD_S)
    finally:
        alive = tuple(m for m in members if m != leader)
        records = finish(cluster, children, alive, tmp_path)
    check_identical(records, at_least=100)


def test_a_silent_pause_reports_the_election_milestones_in_order(tmp_path):
    """bench_cluster Rule 4: the replica that takes over reports suspect, campaign, granted and
    leading (``Replica(on_phase=...)``), in that order, before its first commit."""
    members = (1, 2, 3)
    cluster, children, events = start(members, tmp_path)
    try:
        leader = bc._next_event(events, "first-commit", EVENT_WAIT_S).replica
        time.sleep(LOAD_S)
        seen: list[bc.Event] = []
        bc._send(children[leader], "pause")
        new = bc._next_event(events, "first-commit", EVENT_WAIT_S, exclude=leader, seen=seen)
        bc._send(children[leader], "resume")
        bc._next_event(events, "resumed", EVENT_WAIT_S)
    finally:
        finish(cluster, children, members, tmp_path)
    mine = [e for e in seen if e.replica == new.replica and e.kind in bc.PHASE_EVENTS]
    kinds = [e.kind for e in mine]
    assert kinds[-3:] == ["campaign", "granted", "leading"], kinds
    assert "suspect" in kinds[: kinds.index("campaign")], kinds
    times = [e.time_ns for e in mine] + [new.time_ns]
    assert times == sorted(times)
