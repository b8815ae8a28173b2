"""The journal check of the real-process nemesis, on hand-written journals."""

from __future__ import annotations

from pathlib import Path

from consensus.sim.history import check_journals


def write(directory: Path, name: str, lines: list[str]) -> None:
    (directory / name).write_text("".join(f"{line}\n" for line in lines))


def entry(index: int, payload: bytes) -> str:
    return f"{index} {payload.hex()}"


def clean_run(directory: Path) -> None:
    payloads = [b"1.1.1", b"1.1.2", b"1.1.3"]
    write(directory, "proposed-1-1.log", [p.hex() for p in payloads])
    write(directory, "acked-1-1.log", [entry(i, p) for i, p in enumerate(payloads, 1)])
    for replica in (1, 2, 3):
        write(directory, f"delivered-{replica}-1.log",
              [entry(i, p) for i, p in enumerate(payloads, 1)])


def test_clean_history_passes(tmp_path: Path) -> None:
    clean_run(tmp_path)
    summary = check_journals(tmp_path, {1: 1, 2: 1, 3: 1})
    assert not summary.violations
    assert (summary.proposed, summary.acked, summary.delivered) == (3, 3, 9)


def test_restarted_incarnation_replaying_from_the_start_passes(tmp_path: Path) -> None:
    clean_run(tmp_path)
    write(tmp_path, "delivered-2-2.log", [entry(1, b"1.1.1"), entry(2, b"1.1.2"),
                                          entry(3, b"1.1.3")])
    assert not check_journals(tmp_path, {1: 1, 2: 2, 3: 1}).violations


def test_lost_acknowledged_entry_is_caught(tmp_path: Path) -> None:
    clean_run(tmp_path)
    write(tmp_path, "delivered-3-1.log", [entry(1, b"1.1.1"), entry(2, b"1.1.2")])
    rules = {v.rule for v in check_journals(tmp_path, {1: 1, 2: 1, 3: 1}).violations}
    assert rules == {"catch-up"}


def test_divergence_duplicate_and_gap_are_caught(tmp_path: Path) -> None:
    clean_run(tmp_path)
    write(tmp_path, "delivered-2-1.log", [entry(1, b"1.1.1"), entry(2, b"1.1.3"),
                                          entry(3, b"1.1.3")])
    write(tmp_path, "delivered-3-1.log", [entry(1, b"1.1.1"), entry(3, b"1.1.3")])
    rules = {v.rule for v in check_journals(tmp_path, {1: 1, 2: 1, 3: 1}).violations}
    assert {"agreement", "integrity", "prefix"} <= rules


def test_torn_journal_line_is_reported(tmp_path: Path) -> None:
    clean_run(tmp_path)
    with open(tmp_path / "delivered-2-1.log", "a") as journal:
        journal.write("4 zz\n")
    rules = {v.rule for v in check_journals(tmp_path, {1: 1, 2: 1, 3: 1}).violations}
    assert "journal" in rules
