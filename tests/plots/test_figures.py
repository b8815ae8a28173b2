"""The figures: PNGs that decode at the fixed size, from seeded data; bad input is one error."""

import random

import pytest

from plots import Marker, PlotError, latency_cdf, read_latency_column, timeline
from tests.plots.png import assert_png

SEED = 11


def test_latency_cdf_draws_one_curve_per_configuration(tmp_path):
    rng = random.Random(SEED)
    print(f"seed {SEED}")
    series = {
        "unreplicated": [rng.lognormvariate(6.4, 0.3) for _ in range(20_000)],
        "3 replicas": [rng.lognormvariate(6.5, 0.4) for _ in range(20_000)] + [0.0],
        "empty": [],  # skipped, not an error
    }
    path = latency_cdf(series, tmp_path / "sub" / "cdf.png", "test")
    assert path == tmp_path / "sub" / "cdf.png"
    assert_png(path)


def test_timeline_marks_events_and_shades_a_pause(tmp_path):
    rng = random.Random(SEED)
    points = [(i / 1000, rng.lognormvariate(7, 0.3)) for i in range(12_000)
              if not 4_800 <= i < 4_811]
    markers = [Marker(4.8, "pause", "server 1 paused"), Marker(4.811, "leader", "now 2"),
               Marker(8.4, "resume", "server 1 resumed"), Marker(9.0, "restart", "3 restarted")]
    assert_png(timeline(points, markers, tmp_path / "timeline.png", "test"))


def test_nothing_to_draw_is_a_plot_error(tmp_path):
    with pytest.raises(PlotError, match="no latency samples"):
        latency_cdf({"a": []}, tmp_path / "x.png", "empty")
    with pytest.raises(PlotError, match="no samples"):
        timeline([], [], tmp_path / "y.png", "empty")
    (tmp_path / "file").write_text("")  # a file where a directory should be
    with pytest.raises(PlotError, match="cannot write"):
        latency_cdf({"a": [1.0]}, tmp_path / "file" / "x.png", "t")


def test_read_latency_column_takes_the_first_number_of_each_line(tmp_path):
    dump = tmp_path / "dump.txt"
    dump.write_text("# start_us latency_us\n10 20 1 acked x\n\n30 40\n")
    assert read_latency_column(dump) == [10.0, 30.0]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(PlotError, match="no samples"):
        read_latency_column(tmp_path / "empty.txt")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PlotError):
        read_latency_column(tmp_path / "binary.txt")
