"""The scale of an image's reflectance: detection reads reflectance x 10000 (Sentinel-2's
digital numbers), and a common export holds reflectance 0-1 instead, in which every pixel
looks like deep water to the U-Net. The scale is told from the pixels themselves: the two are
fifty times apart, so a bright pixel of either can never be taken for the other.

- every valid value at most ``REFLECTANCE_MAX`` (a 99th percentile): reflectance 0-1, scaled
  by 10000;
- at least ``DIGITAL_NUMBER_MIN``: reflectance x 10000 as it is;
- in between (reflectance in percent, a visual 8-bit export of a dark scene, ...): refused,
  naming the scale expected, rather than guessed.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from rasterio.windows import Window

from aquamask.processes.errors import InvalidInput

REFLECTANCE_MAX = 2.0  # bright snow, cloud or glint stays below 1.5 in reflectance 0-1
DIGITAL_NUMBER_MIN = 100.0  # the visible bands of any land or water pixel, x 10000
TO_DIGITAL_NUMBERS = 10000.0
SAMPLE_SIDE = 256  # pixels a side of each window sampled
SAMPLE_GRID = 3  # windows sampled along each axis


def reflectance_factor(values: np.ndarray, label: str) -> float:
    """What ``values`` (bands of valid pixels, NaN for no data) are multiplied by to be
    reflectance x 10000; 1.0 when nothing is valid. InvalidInput when the scale is neither."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return 1.0
    high = float(np.percentile(finite, 99))
    if high <= REFLECTANCE_MAX:
        return TO_DIGITAL_NUMBERS
    if high >= DIGITAL_NUMBER_MIN:
        return 1.0
    raise InvalidInput(
        f"{label} holds reflectance up to {high:.3g} (99th percentile), which is neither "
        "scale aquamask reads: reflectance x 10000 (Sentinel-2 L1C/L2A digital numbers, "
        "typically 100-5000) or reflectance 0-1. Rescale it to one of them (e.g. gdal_calc.py "
        "--calc 'A*100' for reflectance in percent)")


def sample_windows(width: int, height: int) -> list[Window]:
    """A few windows spread over a raster, each at most SAMPLE_SIDE a side."""
    side_x, side_y = min(SAMPLE_SIDE, width), min(SAMPLE_SIDE, height)
    found = []
    for i in range(SAMPLE_GRID):
        for j in range(SAMPLE_GRID):
            col = round((width - side_x) * (j + 0.5) / SAMPLE_GRID)
            row = round((height - side_y) * (i + 0.5) / SAMPLE_GRID)
            found.append(Window(col, row, side_x, side_y))
    return list(dict.fromkeys(found))  # a small raster: one window, not nine copies


def rescaled(read: Callable[[Window], np.ndarray], factor: float
             ) -> Callable[[Window], np.ndarray]:
    """``read`` with its values multiplied by ``factor`` (itself when that is 1)."""
    if factor == 1.0:
        return read
    return lambda window: read(window) * np.float32(factor)


def rescaled_lazily(read: Callable[[Window], np.ndarray], label: str
                    ) -> Callable[[Window], np.ndarray]:
    """``read`` in reflectance x 10000, its scale told from the first window with any valid
    pixel (every window before it is all no data, which no factor changes): for scenes read
    only as detection streams them (a place's scenes, fetched window by window)."""
    factor: list[float] = []

    def read_scaled(window: Window) -> np.ndarray:
        bands = read(window)
        if not factor:
            if not np.isfinite(bands).any():
                return bands
            factor.append(reflectance_factor(bands, label))
        return bands * np.float32(factor[0]) if factor[0] != 1.0 else bands

    return read_scaled
