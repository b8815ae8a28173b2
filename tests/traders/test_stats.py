"""Percentiles (nearest rank) and failover-gap merging."""

from traders.stats import longest_silence_ns, merge_intervals, percentile, summarize


def test_percentile_is_a_measured_value():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([], 50) == 0.0
    assert percentile([7], 90) == 7


def test_summarize_in_microseconds():
    summary = summarize([3000, 1000, 2000])
    assert (summary.count, summary.p50_us, summary.max_us) == (3, 2.0, 3.0)


def test_merge_intervals():
    assert merge_intervals([(5, 7), (1, 3), (2, 4), (7, 9)]) == [(1, 4), (5, 9)]
    assert merge_intervals([]) == []


def test_longest_silence():
    assert longest_silence_ns([2, 3, 9], 0, 10) == 6
