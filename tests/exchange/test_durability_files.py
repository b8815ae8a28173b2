"""The data directory's files in-process: journal and snapshot round trips, torn tails, refusals,
failed writes (exchange.durability)."""

from __future__ import annotations

import os
import random

import pytest

from exchange.durability import (
    FAIL_AFTER_ENV,
    SEGMENT_CHUNK_BYTES,
    DataDirError,
    Journal,
    JournalFailed,
    load,
    open_data_dir,
)
from exchange.state_machine import ExchangeStateMachine, encode_entry
from orderbook import AddOrder, Side

LIMITS = (128, 4096)
CLUSTER = "files-test"


def _entries(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [encode_entry(7, seq, AddOrder(f"o{seq}", "XYZ", rng.choice((Side.BUY, Side.SELL)),
                                          100 + rng.randrange(-3, 4), 1 + rng.randrange(9)))
            for seq in range(1, count + 1)]


class _Server:
    """A state machine + a journal, as the node wires them."""

    def __init__(self, directory, mode: str = "sync", snapshot_entries: int = 1000) -> None:
        loaded = load(directory, CLUSTER, LIMITS)
        self.machine = loaded.machine
        self.loaded = loaded
        self.journal = Journal(directory, CLUSTER, mode, self.machine.applied_index,
                               lambda: (self.machine.applied_index, self.machine.snapshot()),
                               snapshot_entries)

    def apply(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            index = self.machine.applied_index + 1
            self.machine.apply(index, payload)
            self.journal.append(index, payload)


def _reference(payloads: list[bytes]) -> ExchangeStateMachine:
    machine = ExchangeStateMachine(*LIMITS)
    for index, payload in enumerate(payloads, 1):
        machine.apply(index, payload)
    return machine


def test_journal_and_snapshots_round_trip_and_trim(tmp_path, seed):
    payloads = _entries(250, seed)
    server = _Server(tmp_path, snapshot_entries=1000)
    server.apply(payloads[:100])
    server.journal.wait_durable(100)
    assert server.journal.durable_index == 100
    server.journal.snapshot_now()
    server.apply(payloads[100:250])
    server.journal.flush()
    server.journal.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in names if n.startswith("snapshot-")] == ["snapshot-00000000000000000100.snap"]
    assert "journal-00000000000000000001.log" not in names  # trimmed behind the snapshot
    loaded = load(tmp_path, CLUSTER, LIMITS)
    assert loaded.snapshot_index == 100 and loaded.replayed == 150 and loaded.cut_bytes == 0
    assert loaded.machine.state_digest() == _reference(payloads).state_digest()


def test_restart_continues_the_journal(tmp_path, seed):
    payloads = _entries(60, seed)
    first = _Server(tmp_path)
    first.apply(payloads[:30])
    first.journal.close()
    second = _Server(tmp_path)
    assert second.machine.applied_index == 30
    second.apply(payloads[30:])
    second.journal.close()
    assert load(tmp_path, CLUSTER, LIMITS).machine.state_digest() == \
        _reference(payloads).state_digest()


def test_a_torn_tail_is_cut_at_the_last_whole_record(tmp_path, seed):
    payloads = _entries(40, seed)
    server = _Server(tmp_path)
    server.apply(payloads)
    server.journal.close()
    segment = max(tmp_path.glob("journal-*.log"))
    whole = segment.stat().st_size
    cut = random.Random(seed).randrange(1, len(payloads[-1]) + 16)
    os.truncate(segment, whole - cut)  # the last record written in part
    loaded = load(tmp_path, CLUSTER, LIMITS)
    assert loaded.machine.applied_index == 39
    assert loaded.cut_bytes > 0
    assert loaded.machine.state_digest() == _reference(payloads[:39]).state_digest()
    assert load(tmp_path, CLUSTER, LIMITS).cut_bytes == 0  # the cut was made on disk


def test_garbage_after_the_last_record_is_cut(tmp_path, seed):
    payloads = _entries(10, seed)
    server = _Server(tmp_path)
    server.apply(payloads)
    server.journal.close()
    segment = max(tmp_path.glob("journal-*.log"))
    with open(segment, "ab") as file:
        file.write(os.urandom(37))
    loaded = load(tmp_path, CLUSTER, LIMITS)
    assert loaded.machine.applied_index == 10 and loaded.cut_bytes == 37


def test_a_corrupt_snapshot_is_refused(tmp_path, seed):
    server = _Server(tmp_path)
    server.apply(_entries(20, seed))
    server.journal.snapshot_now()
    server.journal.close()
    snapshot = next(tmp_path.glob("snapshot-*.snap"))
    data = bytearray(snapshot.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snapshot.write_bytes(bytes(data))
    with pytest.raises(DataDirError, match="corrupt snapshot"):
        load(tmp_path, CLUSTER, LIMITS)


def test_files_of_another_cluster_are_refused(tmp_path, seed):
    server = _Server(tmp_path)
    server.apply(_entries(5, seed))
    server.journal.close()
    with pytest.raises(DataDirError, match="belongs to cluster 'files-test'"):
        load(tmp_path, "another-cluster", LIMITS)


def test_a_bad_record_before_the_tail_is_refused(tmp_path, seed):
    payloads = _entries(30, seed)
    server = _Server(tmp_path)
    server.apply(payloads[:15])
    server.journal.close()
    server = _Server(tmp_path)  # a second segment starts at 16
    server.apply(payloads[15:])
    server.journal.close()
    first = min(tmp_path.glob("journal-*.log"))
    data = bytearray(first.read_bytes())
    data[-5] ^= 0x01
    first.write_bytes(bytes(data))
    with pytest.raises(DataDirError, match="not a torn tail"):
        load(tmp_path, CLUSTER, LIMITS)


def test_a_failed_write_fails_the_journal_for_good(tmp_path, seed, monkeypatch):
    monkeypatch.setenv(FAIL_AFTER_ENV, "2000")
    server = _Server(tmp_path)
    payloads = _entries(100, seed)
    durable = 0
    with pytest.raises(JournalFailed, match="No space left on device"):
        for payload in payloads:
            server.apply([payload])
            server.journal.wait_durable(server.machine.applied_index)
            durable = server.machine.applied_index
    assert 0 < durable < 100
    assert server.journal.durable_index == durable
    with pytest.raises(JournalFailed):
        server.journal.wait_durable(1)
    server.journal.close()
    monkeypatch.delenv(FAIL_AFTER_ENV)
    loaded = load(tmp_path, CLUSTER, LIMITS)  # what was reported durable is there
    assert loaded.machine.applied_index == durable


def test_a_data_dir_is_used_by_one_process_at_a_time(tmp_path):
    _, fd = open_data_dir(str(tmp_path / "d"))
    try:
        with pytest.raises(DataDirError, match="in use"):
            open_data_dir(str(tmp_path / "d"))
    finally:
        os.close(fd)
    _, fd = open_data_dir(str(tmp_path / "d"))
    os.close(fd)


def test_a_crashed_segment_keeps_its_preallocated_zeros_and_loads(tmp_path, seed):
    """Rule 7: a server killed mid-segment leaves zeros after its records; they are not a tear."""
    payloads = _entries(25, seed)
    server = _Server(tmp_path)
    server.apply(payloads)
    server.journal.wait_durable(25)  # on disk, and the segment never cut (no close: a kill -9)
    segment = max(tmp_path.glob("journal-*.log"))
    assert segment.stat().st_size >= SEGMENT_CHUNK_BYTES
    loaded = load(tmp_path, CLUSTER, LIMITS)
    assert loaded.machine.applied_index == 25 and loaded.cut_bytes == 0
    assert loaded.machine.state_digest() == _reference(payloads).state_digest()


def test_a_torn_write_inside_the_preallocated_space_is_cut(tmp_path, seed):
    payloads = _entries(12, seed)
    server = _Server(tmp_path)
    server.apply(payloads)
    server.journal.wait_durable(12)
    segment = max(tmp_path.glob("journal-*.log"))
    records_end = server.journal._offset
    with open(segment, "r+b") as file:  # half a record's bytes landed, the rest is zeros
        file.seek(records_end + 40)
        file.write(os.urandom(9))
    loaded = load(tmp_path, CLUSTER, LIMITS)
    assert loaded.machine.applied_index == 12 and loaded.cut_bytes > 0
    assert segment.stat().st_size == records_end
