"""Scenes of one surface for the tests that count areas: every pixel water (or dry land), so a
place's water area is the place's own area, and dated GeoTIFFs for the local source."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from pyproj import Geod, Transformer
from rasterio.transform import from_origin
from shapely.geometry import shape

from aquamask.processes.constants import DETECTION_BANDS
from aquamask.processes.demo import SIGNATURES

CRS = "EPSG:32630"
ORIGIN = (600000.0, 4220000.0)  # the demo scene's corner: near Murcia
_GEOD = Geod(ellps="WGS84")


def uniform_scene(path: Path, surface: str = "water", size: int = 800,
                  origin: tuple[float, float] = ORIGIN, scale: float = 1.0) -> Path:
    """A 6-band stack (B02..B12 described) of ``size`` x ``size`` 10 m pixels of one surface,
    reflectance x 10000 times ``scale`` (``scale=1e-4``: reflectance 0-1 as float32)."""
    data = np.empty((len(DETECTION_BANDS), size, size), np.float32)
    for i, value in enumerate(SIGNATURES[surface]):
        data[i] = value * scale
    dtype = "int16" if scale == 1.0 else "float32"
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size,
                       count=len(DETECTION_BANDS), dtype=dtype, crs=CRS, nodata=0, tiled=True,
                       blockxsize=256, blockysize=256,
                       transform=from_origin(*origin, 10.0, 10.0)) as dst:
        dst.write(data.astype(dtype))
        for i, name in enumerate(DETECTION_BANDS, start=1):
            dst.set_band_description(i, name)
    return path


def inner_box(size: int = 800, origin: tuple[float, float] = ORIGIN, inset: float = 0.2
              ) -> list[float]:
    """A lon/lat box inside a ``uniform_scene``, ``inset`` of its side in from each edge."""
    to_lonlat = Transformer.from_crs(CRS, "OGC:CRS84", always_xy=True)
    side = size * 10.0
    x0, x1 = origin[0] + inset * side, origin[0] + (1 - inset) * side
    y0, y1 = origin[1] - (1 - inset) * side, origin[1] - inset * side
    corners = [to_lonlat.transform(x, y) for x in (x0, x1) for y in (y0, y1)]
    lons, lats = sorted(c[0] for c in corners), sorted(c[1] for c in corners)
    return [round(lons[1], 6), round(lats[1], 6), round(lons[2], 6), round(lats[2], 6)]


def ellipsoidal_km2(geometry: dict) -> float:
    """The area of a lon/lat GeoJSON polygon on the WGS84 ellipsoid, its edges densified (a
    box's parallels are not geodesics)."""
    area, _ = _GEOD.geometry_area_perimeter(shape(geometry).segmentize(1e-4))
    return abs(area) / 1e6


def pixels_in_box(bbox, grid) -> np.ndarray:
    """The pixels of ``grid`` whose centre lies in the lon/lat ``bbox`` (each centre taken to
    lon/lat with pyproj: independent of the rasterizing of the code under test)."""
    cols, rows = np.meshgrid(np.arange(grid.width) + 0.5, np.arange(grid.height) + 0.5)
    x, y = grid.transform * (cols, rows)
    lon, lat = Transformer.from_crs(grid.crs, "OGC:CRS84", always_xy=True).transform(x, y)
    west, south, east, north = bbox
    return (lon >= west) & (lon <= east) & (lat >= south) & (lat <= north)
