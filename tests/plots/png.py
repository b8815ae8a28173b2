"""A PNG check shared by the tests of every command that draws: it decodes, at the figures'
size (no pixel comparison)."""

from pathlib import Path

from PIL import Image

from plots import FIGURE_HEIGHT_PX, FIGURE_WIDTH_PX


def assert_png(path: Path, size: tuple[int, int] = (FIGURE_WIDTH_PX, FIGURE_HEIGHT_PX)) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG", path
        assert image.size == size, (path, image.size)
        image.load()  # decodes every pixel: a truncated file fails here
