"""Geodesic pixel areas, correct for geographic (EPSG:4326) and projected (UTM, ...) grids alike.

No library gives per-pixel ellipsoidal areas of a raster grid, so they are computed here on a
coarse grid of cells (the area varies smoothly across a scene, so a cell of CELL x CELL pixels
shares one per-pixel area: for 10-60 m pixels the per-pixel error stays below 0.02 % even at 80°
latitude). Each cell's corners are projected to the ellipsoidal cylindrical equal-area
projection, where a quadrilateral's plane area is its area on the ellipsoid, and measured with
the shoelace formula, all cells of a block at once (for cells of a few hundred metres the
straight edges differ from geodesics by far less than 1e-6 of the area).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.windows import Window

CELL = 32
# Lambert's cylindrical equal-area on the WGS84 ellipsoid (authalic latitude): areas are true;
# +over: no wrap at the antimeridian, so a cell across it keeps its corners together
EQUAL_AREA = CRS.from_proj4("+proj=cea +lon_0=0 +lat_ts=0 +ellps=WGS84 +units=m +over +no_defs")


@lru_cache(maxsize=8)
def _to_equal_area(crs_wkt: str) -> Transformer:
    return Transformer.from_crs(CRS.from_wkt(crs_wkt), EQUAL_AREA, always_xy=True)


def pixel_areas_km2(transform: Affine, crs_wkt: str, window: Window) -> np.ndarray:
    """Area in km² of every pixel of ``window`` (shape ``(height, width)``, float64)."""
    height, width = int(window.height), int(window.width)
    rows = np.unique(np.arange(0, height + CELL, CELL).clip(max=height))
    cols = np.unique(np.arange(0, width + CELL, CELL).clip(max=width))
    grid_c, grid_r = np.meshgrid(cols + window.col_off, rows + window.row_off)
    xs, ys = _to_equal_area(crs_wkt).transform(*(transform * (grid_c, grid_r)))
    # the shoelace formula over each cell's corners (top-left, top-right, bottom-right,
    # bottom-left), every cell at once
    corners_x = (xs[:-1, :-1], xs[:-1, 1:], xs[1:, 1:], xs[1:, :-1])
    corners_y = (ys[:-1, :-1], ys[:-1, 1:], ys[1:, 1:], ys[1:, :-1])
    twice = sum(corners_x[k] * corners_y[(k + 1) % 4] - corners_x[(k + 1) % 4] * corners_y[k]
                for k in range(4))
    pixels = np.diff(rows)[:, None] * np.diff(cols)[None, :]
    areas = np.abs(twice) / 2.0 / pixels / 1e6
    return np.repeat(np.repeat(areas, np.diff(rows), axis=0), np.diff(cols), axis=1)
