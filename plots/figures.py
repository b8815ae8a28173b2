"""The figures: a latency CDF per configuration and a throughput/p99 timeline with events marked.

Rule 1: headless and deterministic: the Agg canvas only (no pyplot, no display, no global
        backend state), a fixed size of ``FIGURE_WIDTH_PX`` x ``FIGURE_HEIGHT_PX`` pixels, and the
        same input always draws the same picture.
Rule 2: every figure shows measured values only: a CDF point is a sample (nearest rank, as
        ``traders.stats``), a timeline bucket's throughput is the answers that ended in it and its
        p99 the nearest-rank 99th percentile of their latencies; empty buckets are drawn as gaps,
        not as zeros of latency.
Rule 3: bad input is an operating error: ``PlotError`` with a one-line message (no samples, an
        unreadable dump file, a non-numeric line); the callers print it and go on.
Rule 4: latencies are in microseconds, times in seconds from the start of the run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes

FIGURE_WIDTH_PX = 1000
FIGURE_HEIGHT_PX = 560
FIGURE_DPI = 100
CDF_POINTS_MAX = 4000  # quantiles drawn per curve; a 1M-sample dump stays a small file
TIMELINE_BUCKETS_MAX = 2000  # the bucket widens for long runs
LATENCY_FLOOR_US = 0.001  # a log axis cannot show 0; a measured 0 is drawn here
MARKER_ROWS = 4  # marker labels are stacked in this many rows so that close events stay legible
DUMP_LINES_MAX = 20_000_000  # st-lat writes 200,000 by default

MARKER_COLORS = {
    "pause": "tab:red",
    "resume": "tab:green",
    "leader": "tab:purple",
    "restart": "tab:orange",
    "down": "tab:brown",
}


class PlotError(Exception):
    """The picture cannot be drawn from this input (Rule 3)."""


@dataclass(frozen=True, slots=True)
class Marker:
    """An event to mark on a timeline: ``kind`` is one of ``MARKER_COLORS``' keys."""

    time_s: float
    kind: str
    label: str

    def __post_init__(self) -> None:
        assert self.kind in MARKER_COLORS, self.kind


def _figure(rows: int) -> tuple[object, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(FIGURE_WIDTH_PX / FIGURE_DPI, FIGURE_HEIGHT_PX / FIGURE_DPI),
                    dpi=FIGURE_DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False)
    return figure, [row[0] for row in axes]


def _save(figure: object, path: str | Path) -> Path:
    from matplotlib.figure import Figure

    assert isinstance(figure, Figure)
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out, dpi=FIGURE_DPI, format="png")
    except OSError as exc:
        raise PlotError(f"cannot write {out}: {exc.strerror or exc}") from None
    return out


def _nearest_rank(ordered: Sequence[float], q: float) -> float:
    assert ordered and 0 < q <= 100, q
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def _cdf_points(ordered: Sequence[float]) -> tuple[list[float], list[float]]:
    """At most ``CDF_POINTS_MAX`` (latency, fraction <= it) pairs, always the min and the max."""
    n = len(ordered)
    step = max(1, n // CDF_POINTS_MAX)
    ranks = list(range(step - 1, n, step))
    if ranks[-1] != n - 1:
        ranks.append(n - 1)
    if ranks[0] != 0:
        ranks.insert(0, 0)
    xs = [max(ordered[r], LATENCY_FLOOR_US) for r in ranks]
    ys = [(r + 1) / n for r in ranks]
    return xs, ys


def latency_cdf(series: Mapping[str, Sequence[float]], path: str | Path, title: str) -> Path:
    """One CDF curve per non-empty series (latencies in us), log-scaled latency axis; returns
    the PNG's path. Raises ``PlotError`` when every series is empty."""
    shown = {name: sorted(values) for name, values in series.items() if values}
    if not shown:
        raise PlotError(f"no latency samples to plot for {title!r}")
    figure, (axes,) = _figure(1)
    for name, ordered in shown.items():
        xs, ys = _cdf_points(ordered)
        p50, p99 = _nearest_rank(ordered, 50), _nearest_rank(ordered, 99)
        axes.step(xs, ys, where="post",
                  label=f"{name}: p50 {_us(p50)}, p99 {_us(p99)}, n={len(ordered):,}")
    axes.set_xscale("log")
    axes.set_ylim(0, 1.005)
    axes.set_xlabel("latency (log scale)")
    axes.set_ylabel("fraction of requests at or below")
    _latency_axis(axes.xaxis)
    for level in (0.5, 0.9, 0.99):
        axes.axhline(level, color="0.85", linewidth=0.8, zorder=0)
    axes.grid(True, which="major", axis="x", color="0.9")
    axes.legend(loc="lower right", fontsize="small")
    axes.set_title(title)
    return _save(figure, path)


def _us(value_us: float) -> str:
    if value_us >= 1_000_000:
        return f"{value_us / 1_000_000:.3g} s"
    if value_us >= 1000:
        return f"{value_us / 1000:.3g} ms"
    return f"{value_us:.3g} us"


def _latency_axis(axis: object) -> None:
    """Ticks at 1-2-5 steps labelled in us/ms, no minor labels (a log axis's default is 10^x)."""
    from matplotlib.axis import Axis
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    assert isinstance(axis, Axis)
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _position: _us(value)))
    axis.set_minor_formatter(NullFormatter())


def _buckets(points: Sequence[tuple[float, float]], bucket_s: float
             ) -> tuple[float, list[list[float]]]:
    end_s = max(t for t, _ in points)
    width = max(bucket_s, end_s / TIMELINE_BUCKETS_MAX)
    buckets: list[list[float]] = [[] for _ in range(int(end_s / width) + 1)]
    for time_s, latency_us in points:
        if time_s >= 0:
            buckets[int(time_s / width)].append(latency_us)
    return width, buckets


def timeline(points: Sequence[tuple[float, float]], markers: Sequence[Marker], path: str | Path,
             title: str, bucket_s: float = 0.25) -> Path:
    """Throughput (answers/s) and p99 latency per ``bucket_s`` bucket over the run, from
    ``(end time s, latency us)`` points, with ``markers`` drawn as labelled vertical lines; a
    pause followed by a resume is shaded. Returns the PNG's path."""
    assert bucket_s > 0, bucket_s
    if not points:
        raise PlotError(f"no samples to plot for {title!r}")
    width, buckets = _buckets(points, bucket_s)
    centers = [(i + 0.5) * width for i in range(len(buckets))]
    rates = [len(b) / width for b in buckets]
    p99s = [_nearest_rank(sorted(b), 99) if b else math.nan for b in buckets]
    figure, (top, bottom) = _figure(2)
    top.plot(centers, rates, color="tab:blue", linewidth=1.2)
    top.set_ylabel("answers/s")
    top.set_ylim(bottom=0)
    bottom.plot(centers, [max(p, LATENCY_FLOOR_US) for p in p99s], color="tab:red",
                linewidth=1.0, marker=".", markersize=2)
    bottom.set_yscale("log")
    _latency_axis(bottom.yaxis)
    bottom.set_ylabel(f"p99 latency per {width:.3g} s")
    bottom.set_xlabel("time since start (s)")
    _draw_markers(top, bottom, markers)
    top.set_title(title)
    for axes in (top, bottom):
        axes.grid(True, color="0.92")
    return _save(figure, path)


def _draw_markers(top: Axes, bottom: Axes, markers: Sequence[Marker]) -> None:
    paused_at: float | None = None
    for index, marker in enumerate(sorted(markers, key=lambda m: m.time_s)):
        color = MARKER_COLORS[marker.kind]
        for axes in (top, bottom):
            axes.axvline(marker.time_s, color=color, linestyle="--", linewidth=1.0)
        top.annotate(marker.label, xy=(marker.time_s, 0.97 - 0.11 * (index % MARKER_ROWS)),
                     xycoords=("data", "axes fraction"), xytext=(3, 0),
                     textcoords="offset points", va="top", ha="left", fontsize="x-small",
                     color=color, bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
        if marker.kind == "pause":
            paused_at = marker.time_s
        elif marker.kind == "resume" and paused_at is not None:
            for axes in (top, bottom):
                axes.axvspan(paused_at, marker.time_s, color=MARKER_COLORS["pause"], alpha=0.06)
            paused_at = None


def read_latency_column(path: str | Path) -> list[float]:
    """The first number of every line of a latency dump (``#`` lines and blank lines skipped),
    as written by ``consensus bench st-lat`` (ns) or ``traders load`` (columns)."""
    values: list[float] = []
    try:
        with open(path, encoding="utf-8") as dump:
            for number, line in enumerate(dump, 1):
                text = line.split("#", 1)[0].split()
                if not text:
                    continue
                if len(values) >= DUMP_LINES_MAX:
                    raise PlotError(f"{path}: more than {DUMP_LINES_MAX:,} samples")
                try:
                    values.append(float(text[0]))
                except ValueError:
                    raise PlotError(f"{path}:{number}: not a number: {text[0]!r}") from None
    except OSError as exc:
        raise PlotError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PlotError(f"{path}: not a text file") from None
    if not values:
        raise PlotError(f"{path}: no samples")
    return values
