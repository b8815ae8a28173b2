"""Latency statistics: percentiles and failover gaps from per-request samples.

Rule 1: percentiles are nearest-rank on the sorted sample (no interpolation), so every reported
        figure is a latency that was actually measured.
Rule 2: a *failover gap* is a maximal time interval covered by requests that needed a retry, from
        the first failed attempt to the successful answer; overlapping intervals of different
        traders merge into one gap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PERCENTILES = (50.0, 90.0, 99.0)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    count: int
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float

    def line(self) -> str:
        if self.count == 0:
            return "no samples"
        return (
            f"p50 {self.p50_us:8.0f} us  p90 {self.p90_us:8.0f} us  p99 {self.p99_us:8.0f} us  "
            f"max {self.max_us:8.0f} us  (n={self.count})"
        )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0 < q <= 100) of an ascending sequence; 0.0 if empty."""
    assert 0 < q <= 100, q
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


def summarize(latencies_ns: Iterable[int]) -> LatencySummary:
    values = sorted(latencies_ns)
    if not values:
        return LatencySummary(0, 0.0, 0.0, 0.0, 0.0)
    p50, p90, p99 = (percentile(values, q) / 1000 for q in PERCENTILES)
    return LatencySummary(len(values), p50, p90, p99, values[-1] / 1000)


def merge_intervals(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of ``[start, end]`` intervals, sorted, overlapping ones merged (Rule 2)."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        assert start <= end, (start, end)
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def longest_silence_ns(done_ns: Iterable[int], start_ns: int, end_ns: int) -> int:
    """The longest interval in ``[start_ns, end_ns]`` without any completion."""
    previous = start_ns
    longest = 0
    for t in sorted(done_ns):
        longest = max(longest, t - previous)
        previous = t
    return max(longest, end_ns - previous)
