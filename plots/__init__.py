"""Pictures of benchmark and demo runs (matplotlib, headless): latency CDFs and timelines.

This package imports nothing of ours, so every package may use it (``consensus`` included, which
must not import ``exchange`` or ``traders``); matplotlib itself is imported only when a picture is
drawn, so importing this package costs nothing.
"""

from plots.figures import (
    FIGURE_HEIGHT_PX,
    FIGURE_WIDTH_PX,
    Marker,
    PlotError,
    latency_cdf,
    read_latency_column,
    timeline,
)

__all__ = [
    "FIGURE_HEIGHT_PX",
    "FIGURE_WIDTH_PX",
    "Marker",
    "PlotError",
    "latency_cdf",
    "read_latency_column",
    "timeline",
]
