"""Checking the journals a real-process run leaves behind (``consensus.sim.proc_node`` writes them).

Rule 1: the journals are read whole after the run; a line that does not parse is reported as a
        violation (a torn line would mean the journal itself is broken), never skipped silently.
Rule 2: the checks are the simulator's ``HistoryChecker`` rules, fed in a fixed order: every
        proposal first, then each incarnation's deliveries in file order, then the
        acknowledgements, then catch-up of the live incarnations through the highest acknowledged
        index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from consensus.sim.checkers import HistoryChecker, Violation

_NAME = re.compile(r"(proposed|acked|delivered)-(\d+)-(\d+)\.log")


@dataclass(frozen=True, slots=True)
class HistorySummary:
    violations: tuple[Violation, ...]
    proposed: int
    acked: int
    delivered: int
    acked_upto: int


def journal_files(directory: Path, kind: str) -> list[tuple[int, int, Path]]:
    """``(replica, incarnation, path)`` of every ``kind`` journal, sorted."""
    found = []
    for path in directory.iterdir():
        match = _NAME.fullmatch(path.name)
        if match and match.group(1) == kind:
            found.append((int(match.group(2)), int(match.group(3)), path))
    return sorted(found)


def parse_indexed(path: Path, violations: list[Violation]) -> list[tuple[int, bytes]]:
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            index_text, payload_hex = line.split(" ")
            entries.append((int(index_text), bytes.fromhex(payload_hex)))
        except ValueError:
            violations.append(Violation("journal", f"{path.name}:{number}: bad line {line!r}"))
    return entries


def check_journals(directory: Path, live: dict[int, int]) -> HistorySummary:
    """Check every journal in ``directory``; ``live`` maps each live replica to its incarnation."""
    violations: list[Violation] = []
    checker = HistoryChecker(violations.append)
    proposed = 0
    for _, _, path in journal_files(directory, "proposed"):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            try:
                checker.proposed(bytes.fromhex(line))
                proposed += 1
            except (ValueError, AssertionError):
                violations.append(Violation("journal", f"{path.name}:{number}: bad line {line!r}"))
    for replica, incarnation, path in journal_files(directory, "delivered"):
        for index, payload in parse_indexed(path, violations):
            checker.delivered(replica, incarnation, index, payload)
    acked_upto = 0
    for _, _, path in journal_files(directory, "acked"):
        for index, payload in parse_indexed(path, violations):
            checker.acknowledged(index, payload)
            acked_upto = max(acked_upto, index)
    checker.check_caught_up(sorted(live.items()), acked_upto)
    return HistorySummary(
        tuple(violations), proposed, len(checker.acked), checker.deliveries, acked_upto
    )
