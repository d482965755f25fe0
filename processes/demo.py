"""A deterministic demo scene, so the demo works offline on a fresh machine.

It is synthetic: a 6-band Sentinel-2-like stack (B02,B03,B04,B08,B11,B12, reflectance x 10000,
UTM zone 30N, 10 m pixels) with a lake, a river, vegetation, bare soil and a no-data corner,
each with the typical spectral signature of that surface plus seeded noise. The same call always
writes the same pixels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from aquamask.processes.constants import DETECTION_BANDS

# Typical surface reflectance x 10000 for B02, B03, B04, B08, B11, B12
SIGNATURES = {
    "water": (650, 600, 380, 180, 90, 60),
    "vegetation": (350, 650, 380, 3600, 1900, 850),
    "soil": (1100, 1450, 1750, 2500, 3100, 2500),
}
NODATA = 0


def demo_truth(size: int = 512, lake_scale: float = 1.0) -> np.ndarray:
    """The scene's ground truth: 1 water, 0 dry, 255 no data. ``lake_scale`` widens the lake
    (a flood)."""
    rows, cols = np.mgrid[0:size, 0:size]
    lake = ((rows - 0.35 * size) / (0.16 * size * lake_scale)) ** 2 \
        + ((cols - 0.6 * size) / (0.22 * size * lake_scale)) ** 2 < 1
    river_centre = 0.75 * size + 0.08 * size * np.sin(cols / (0.12 * size))
    river = np.abs(rows - river_centre) < 0.025 * size
    truth = (lake | river).astype(np.uint8)
    truth[: size // 8, : size // 8] = 255
    return truth


def make_demo_scene(path: Path, size: int = 512, seed: int = 7,
                    lake_scale: float = 1.0) -> Path:
    rng = np.random.default_rng(seed)
    truth = demo_truth(size, lake_scale)
    rows, cols = np.mgrid[0:size, 0:size]
    soil = (np.sin(rows / 37.0) + np.cos(cols / 53.0)) > 0.9
    bands = np.empty((len(DETECTION_BANDS), size, size), np.float32)
    for b in range(len(DETECTION_BANDS)):
        land = np.where(soil, SIGNATURES["soil"][b], SIGNATURES["vegetation"][b])
        bands[b] = np.where(truth == 1, SIGNATURES["water"][b], land)
    bands *= rng.normal(1.0, 0.06, size=bands.shape).astype(np.float32)
    data = np.clip(bands, 1, 10000).astype(np.int16)
    data[:, truth == 255] = NODATA
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=size, height=size, count=len(DETECTION_BANDS),
                   dtype="int16", crs="EPSG:32630", nodata=NODATA, tiled=True,
                   blockxsize=256, blockysize=256, compress="deflate",
                   transform=from_origin(600000.0, 4220000.0, 10.0, 10.0))
    tmp = path.with_name(f".{path.name}.tmp")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(DETECTION_BANDS, start=1):
            dst.set_band_description(i, name)
    tmp.replace(path)
    return path


# The demo's dated scene library: the demo scene before and after its lake floods. The local
# source reads each file's date from its name.
LIBRARY = {"demo_2024-05-10.tif": 1.0, "demo_2024-06-12.tif": 1.3}


def make_demo_library(folder: Path) -> list[Path]:
    """Dated demo scenes in ``folder`` (the local source's), so "Sentinel-2 by place and date"
    works offline on a fresh install; the files written, none when the folder already holds
    GeoTIFFs or a STAC catalog (an operator's own library is left alone)."""
    if folder.is_dir() and any(p.suffix.lower() in (".tif", ".tiff", ".json")
                               for p in folder.rglob("*")):
        return []
    return [make_demo_scene(folder / name, lake_scale=scale) for name, scale in LIBRARY.items()]
