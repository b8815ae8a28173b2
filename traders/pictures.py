"""Pictures of a load run (``traders load``, ``exchange demo``, ``exchange bench``) through
``plots``: a latency CDF per configuration or phase and a throughput/p99 timeline.

Rule 1: only answered requests (acked or rejected by the engine) are drawn; failed and invalid
        ones have no latency.
Rule 2: a change of the server answering the traders is marked on the timeline as a leader
        change (at the first answer from the new server); at most ``LEADER_MARKERS_MAX`` are
        drawn, the first ones.
Rule 3: pictures never decide a command's outcome: a ``PlotError`` (or matplotlib missing) is one
        line on stderr, and the command's figures and exit status stay what they were.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from plots import Marker, PlotError, latency_cdf, timeline
from traders.load import ACKED, REJECTED, LoadReport, Sample

LEADER_MARKERS_MAX = 20
ANSWERED = (ACKED, REJECTED)


def answered(samples: Iterable[Sample]) -> list[Sample]:
    return [s for s in samples if s.outcome in ANSWERED]


def latencies_us(samples: Iterable[Sample]) -> list[float]:
    return [s.latency_ns / 1e3 for s in samples if s.outcome in ANSWERED]


def leader_markers(report: LoadReport, names: Mapping[str, str] | None = None) -> list[Marker]:
    """Rule 2: where the answering server changed; ``names`` maps addresses to labels."""
    names = names or {}
    markers: list[Marker] = []
    current = ""
    for sample in sorted(answered(report.samples), key=lambda s: s.end_ns):
        if not sample.replica or sample.replica == current:
            continue
        if current:
            label = f"now {names.get(sample.replica, sample.replica)} answers"
            markers.append(Marker((sample.end_ns - report.started_ns) / 1e9, "leader", label))
            if len(markers) >= LEADER_MARKERS_MAX:
                break
        current = sample.replica
    return markers


def write_run_plots(report: LoadReport, directory: str, name: str, title: str,
                    series: Mapping[str, Sequence[float]] | None = None,
                    markers: Sequence[Marker] = (),
                    names: Mapping[str, str] | None = None) -> list[Path]:
    """``<name>-latency-cdf.png`` (``series``, default all answers) and
    ``<name>-timeline.png`` in ``directory``; prints each path; returns those written."""
    points = [((s.end_ns - report.started_ns) / 1e9, s.latency_ns / 1e3)
              for s in answered(report.samples)]
    cdf = series if series is not None else {"all answers": [p[1] for p in points]}
    all_markers = [*markers, *leader_markers(report, names)]
    jobs = (
        (f"{name}-latency-cdf.png", lambda path: latency_cdf(cdf, path, f"{title}: latency CDF")),
        (f"{name}-timeline.png",
         lambda path: timeline(points, all_markers, path,
                               f"{title}: throughput and p99 latency over time")),
    )
    return _write(directory, jobs)


def write_cdf(directory: str, name: str, title: str,
              series: Mapping[str, Sequence[float]]) -> list[Path]:
    """Only ``<name>-latency-cdf.png`` (the benchmark's configurations side by side)."""
    return _write(directory, ((f"{name}-latency-cdf.png",
                               lambda path: latency_cdf(series, path, title)),))


def _write(directory: str, jobs: Iterable[tuple[str, Callable[[Path], Path]]]) -> list[Path]:
    written: list[Path] = []
    for filename, draw in jobs:
        try:
            path = draw(Path(directory) / filename)
        except PlotError as exc:
            print(f"picture not written: {exc}", file=sys.stderr)
            continue
        except ImportError as exc:  # Rule 3: matplotlib not installed
            print(f"pictures need matplotlib ({exc}); run scripts/setup.sh", file=sys.stderr)
            return written
        print(f"picture: {path}")
        written.append(path)
    return written
