"""The change and frequency rasters, block by block over the dates' masks (one block of each
date at a time: memory does not grow with the dates), with the area of each class on the
ellipsoid."""
from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rasterio.windows import Window

from aquamask.processes.constants import INVALID, WATER
from aquamask.processes.pipeline.areas import pixel_areas_km2
from aquamask.processes.pipeline.blocks import BLOCK, gtiff_profile, windows
from aquamask.processes.styles import FREQUENCY_CLASSES, STYLE_TAG, colormap

# change classes (uint8; 255 no data at either date)
CHANGE_DRY, CHANGE_GAINED, CHANGE_LOST, CHANGE_PERMANENT = 0, 1, 2, 3
CHANGE_NAMES = {CHANGE_DRY: "dry", CHANGE_GAINED: "gained", CHANGE_LOST: "lost",
                CHANGE_PERMANENT: "permanent", INVALID: "invalid"}
FREQUENCY_NODATA = 255  # frequency.tif: uint8 percent, 255 where no observation was valid
Inside = Callable[[Window], np.ndarray]
"""Whether each pixel of a window lies inside the place (``PlaceMask.inside``): the grid is
the place's envelope, and what lies outside is counted in no class."""


def everywhere(window: Window) -> np.ndarray:
    return np.ones((int(window.height), int(window.width)), bool)


def change_classes(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Per pixel: 0 dry at both dates, 1 water gained, 2 water lost, 3 permanent water,
    255 no data at either date."""
    out = np.full(before.shape, INVALID, np.uint8)
    valid = (before != INVALID) & (after != INVALID)
    was, now = before == WATER, after == WATER
    out[valid & ~was & ~now] = CHANGE_DRY
    out[valid & ~was & now] = CHANGE_GAINED
    out[valid & was & ~now] = CHANGE_LOST
    out[valid & was & now] = CHANGE_PERMANENT
    return out


def change_raster(before: Path, after: Path, target: Path, block: int = BLOCK,
                  inside: Inside = everywhere) -> dict[str, dict[str, float]]:
    """The change GeoTIFF of two masks on one grid, block by block; area (km², ellipsoidal) and
    pixels of each class inside the place."""
    import rasterio

    totals = {name: {"area_km2": 0.0, "pixels": 0} for name in CHANGE_NAMES.values()}
    with rasterio.open(before) as b, rasterio.open(after) as a:
        if (b.width, b.height, b.transform, b.crs) != (a.width, a.height, a.transform, a.crs):
            raise ValueError("the two masks are not on one grid")
        profile = {"width": b.width, "height": b.height, "crs": b.crs, "transform": b.transform}
        crs_wkt = b.crs.to_wkt()
        with rasterio.open(target, "w", **gtiff_profile(profile, "uint8", INVALID)) as out:
            out.update_tags(**{STYLE_TAG: "change"})
            out.write_colormap(1, colormap("change"))
            for window in windows(b.width, b.height, block):
                classes = change_classes(b.read(1, window=window), a.read(1, window=window))
                out.write(classes, 1, window=window)
                areas = pixel_areas_km2(profile["transform"], crs_wkt, window)
                place = inside(window)
                for value, name in CHANGE_NAMES.items():
                    hit = (classes == value) & place
                    totals[name]["pixels"] += int(np.count_nonzero(hit))
                    totals[name]["area_km2"] += float(np.sum(areas, where=hit))
    return totals


def frequency_rasters(masks: list[Path], profile: dict[str, Any], frequency: Path,
                      observations: Path, block: int = BLOCK,
                      inside: Inside = everywhere) -> dict[str, Any]:
    """Per pixel over the date masks: the percentage of valid observations that saw water
    (uint8 0-100 rounded half up, 255 where none was valid: a byte layer like every other; the
    exact fraction is wet / valid of the counts) and the counts of valid and wet observations
    (uint16, 2 bands). The areas count the place's pixels only. One block of each date at a
    time: memory does not grow with the dates."""
    import rasterio

    crs_wkt = profile["crs"].to_wkt()
    area = {"valid_area_km2": 0.0, "ever_wet_area_km2": 0.0, "never_wet_area_km2": 0.0,
            "no_observation_area_km2": 0.0}
    wet_weighted = 0.0
    seen_counts: list[int] = []  # the fewest and the most valid observations of a pixel
    by_class: list[dict[str, Any]] = [
        {"label": label, "above_percent": low, "up_to_percent": high, "area_km2": 0.0}
        for label, low, high, _ in FREQUENCY_CLASSES]
    with ExitStack() as stack:
        freq_out = stack.enter_context(rasterio.open(
            frequency, "w", **gtiff_profile(profile, "uint8", FREQUENCY_NODATA)))
        freq_out.update_tags(**{STYLE_TAG: "frequency"})
        freq_out.write_colormap(1, colormap("frequency"))
        freq_out.set_band_description(1, "water frequency (%)")
        obs_out = stack.enter_context(rasterio.open(
            observations, "w", **gtiff_profile(profile, "uint16", None, count=2)))
        obs_out.set_band_description(1, "valid observations")
        obs_out.set_band_description(2, "water observations")
        for window in windows(profile["width"], profile["height"], block):
            shape = (int(window.height), int(window.width))
            valid = np.zeros(shape, np.uint16)
            wet = np.zeros(shape, np.uint16)
            for path in masks:
                with rasterio.open(path) as src:
                    classes = src.read(1, window=window)
                valid += classes != INVALID
                wet += classes == WATER
            seen = valid > 0
            fraction = np.zeros(shape, np.float64)
            np.divide(wet, valid, out=fraction, where=seen)
            percent = np.floor(fraction * 100.0 + 0.5).astype(np.uint8)
            percent[~seen] = FREQUENCY_NODATA
            freq_out.write(percent, 1, window=window)
            obs_out.write(np.stack([valid, wet]), window=window)
            areas = pixel_areas_km2(profile["transform"], crs_wkt, window)
            area["valid_area_km2"] += float(np.sum(areas, where=seen))
            area["ever_wet_area_km2"] += float(np.sum(areas, where=wet > 0))
            area["never_wet_area_km2"] += float(np.sum(areas, where=seen & (wet == 0)))
            area["no_observation_area_km2"] += float(np.sum(areas, where=~seen & inside(window)))
            wet_weighted += float(np.sum(areas * fraction, where=seen))
            if seen.any():
                seen_counts += [int(valid[seen].min()), int(valid[seen].max())]
            for entry in by_class:
                hit = seen & (percent > entry["above_percent"]) & \
                    (percent <= entry["up_to_percent"])
                entry["area_km2"] += float(np.sum(areas, where=hit))
    return {**area, "max_observations": max(seen_counts, default=0),
            "min_observations": min(seen_counts, default=None), "classes": by_class,
            "mean_frequency": wet_weighted / area["valid_area_km2"]
            if area["valid_area_km2"] else None}
