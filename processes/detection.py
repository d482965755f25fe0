"""Detection: stream a Scene block by block through a method, into a classes GeoTIFF and a
probability GeoTIFF, accumulating the statistics on the way (bounded memory for any size)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import rasterio
from rasterio.windows import Window

from aquamask.model.indices import mndwi, ndwi
from aquamask.processes.areas import pixel_areas_km2
from aquamask.processes.types import (DETECTION_BANDS, DRY, INVALID, WATER, Mask, MaskStats,
                                      ProgressCallback, Scene)

METHODS = ("unet", "ndwi", "mndwi")
BLOCK = 1024
_BAND = {name: i for i, name in enumerate(DETECTION_BANDS)}

Predict = Callable[[np.ndarray], np.ndarray]


def index_probability(index: np.ndarray) -> np.ndarray:
    """Map a normalised difference index in [-1, 1] onto [0, 1], so that the ``threshold``
    input means the same for every method: 0.5 is the customary index > 0 rule."""
    return np.clip((index + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)


def predictor(method: str, model=None) -> tuple[Predict, int]:
    """The per-block function of ``method`` and the halo (context pixels) it needs."""
    if method == "ndwi":
        return (lambda b: index_probability(ndwi(b[_BAND["B03"]], b[_BAND["B08"]]))), 0
    if method == "mndwi":
        return (lambda b: index_probability(mndwi(b[_BAND["B03"]], b[_BAND["B11"]]))), 0
    if method == "unet":
        if model is None:
            raise ValueError("the unet method needs a loaded WaterModel")
        return model.predict, int(model.halo)
    raise ValueError(f"unknown method {method!r}")


def _windows(width: int, height: int, block: int):
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield Window(col, row, min(block, width - col), min(block, height - row))


def _output_profile(scene: Scene, dtype: str, nodata) -> dict:
    profile = {k: scene.profile[k] for k in ("width", "height", "crs", "transform")}
    profile.update(driver="GTiff", count=1, dtype=dtype, nodata=nodata, tiled=True,
                   blockxsize=256, blockysize=256, compress="deflate", BIGTIFF="IF_SAFER")
    return profile


def detect(scene: Scene, method: str, threshold: float, workdir: Path, *,
           model=None, block: int = BLOCK,
           progress: ProgressCallback = lambda pct, msg: None) -> Mask:
    """Classify every pixel of ``scene`` as water, dry or invalid.

    Each block is read with ``halo`` pixels of context on every side so that tiled inference
    sees the same neighbourhood it would see on the whole scene; the halo is cropped on write.
    """
    predict, halo = predictor(method, model)
    workdir.mkdir(parents=True, exist_ok=True)
    classes_path = workdir / "classes.tif"
    probability_path = workdir / "probability.tif"
    crs_wkt = scene.profile["crs"].to_wkt()
    transform = scene.profile["transform"]
    windows = list(_windows(scene.width, scene.height, block))
    water_px = valid_px = 0
    water_km2 = valid_km2 = 0.0
    with rasterio.open(classes_path, "w", **_output_profile(scene, "uint8", INVALID)) as cls_ds, \
            rasterio.open(probability_path, "w",
                          **_output_profile(scene, "float32", float("nan"))) as prob_ds:
        cls_ds.write_colormap(1, {DRY: (0, 0, 0, 0), WATER: (0, 112, 255, 255),
                                  INVALID: (0, 0, 0, 0)})
        for n, window in enumerate(windows):
            outer = Window(window.col_off - halo, window.row_off - halo,
                           window.width + 2 * halo, window.height + 2 * halo)
            bands = scene.read(outer)
            probability = predict(bands)[halo:halo + window.height, halo:halo + window.width]
            valid = np.isfinite(probability)
            water = valid & (probability >= threshold)
            classes = np.where(valid, np.where(water, WATER, DRY), INVALID).astype(np.uint8)
            cls_ds.write(classes, 1, window=window)
            prob_ds.write(probability.astype(np.float32), 1, window=window)
            areas = pixel_areas_km2(transform, crs_wkt, window)
            water_px += int(water.sum())
            valid_px += int(valid.sum())
            water_km2 += float(areas[water].sum())
            valid_km2 += float(areas[valid].sum())
            progress(100.0 * (n + 1) / len(windows),
                     f"detected water in block {n + 1} of {len(windows)}")
    stats = MaskStats(water_pixels=water_px, valid_pixels=valid_px,
                      total_pixels=scene.width * scene.height,
                      water_area_km2=water_km2, valid_area_km2=valid_km2)
    model_info = None
    if method == "unet":
        model_info = {"name": model.name, "version": model.version,
                      "weights_sha256": model.weights_sha256}
    return Mask(path=classes_path, probability_path=probability_path,
                profile=_output_profile(scene, "uint8", INVALID), method=method,
                threshold=threshold, stats=stats, model=model_info)
