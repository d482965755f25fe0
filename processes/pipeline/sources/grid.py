"""The output grid of a place: the UTM zone of its centre, 10 m pixels, its bounds snapped.

Every band of every scene is warped into this one grid, so a place that spans two UTM zones
(or two MGRS tiles) reads each part from the tile that holds it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import geometry_mask
from rasterio.warp import transform_bounds, transform_geom
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from aquamask.processes.errors import TooLarge
from aquamask.processes.pipeline.blocks import windows

RESOLUTION = 10.0
# a place's edges are densified to this many degrees (~50 m) before they go into the grid's
# CRS: a lon/lat box's parallels are curves in UTM
DENSIFY_DEGREES = 0.0005


@dataclass(frozen=True)
class Grid:
    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def key(self) -> str:
        return f"{self.crs.to_string()}|{tuple(self.transform)[:6]}|{self.width}x{self.height}"

    def clip(self, window: Window) -> Window | None:
        col0, row0 = max(int(window.col_off), 0), max(int(window.row_off), 0)
        col1 = min(int(window.col_off + window.width), self.width)
        row1 = min(int(window.row_off + window.height), self.height)
        if col1 <= col0 or row1 <= row0:
            return None
        return Window(col0, row0, col1 - col0, row1 - row0)

    def profile(self) -> dict:
        return {"driver": "GTiff", "crs": self.crs, "transform": self.transform,
                "width": self.width, "height": self.height, "count": 6, "dtype": "float32",
                "nodata": float("nan")}


def utm_crs(lon: float, lat: float) -> CRS:
    zone = min(int(math.floor((lon + 180.0) / 6.0)) + 1, 60)
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def grid_for(geometry: BaseGeometry, crs: CRS | None = None,
             resolution: float = RESOLUTION) -> Grid:
    """The grid covering ``geometry`` (CRS84): ``crs`` or the UTM zone of its centre."""
    centre = geometry.centroid
    crs = crs or utm_crs(centre.x, centre.y)
    west, south, east, north = transform_bounds("OGC:CRS84", crs, *geometry.bounds,
                                                densify_pts=21)
    west = math.floor(west / resolution) * resolution
    south = math.floor(south / resolution) * resolution
    east = math.ceil(east / resolution) * resolution
    north = math.ceil(north / resolution) * resolution
    width = max(int(round((east - west) / resolution)), 1)
    height = max(int(round((north - south) / resolution)), 1)
    return Grid(crs=crs, transform=Affine(resolution, 0, west, 0, -resolution, north),
                width=width, height=height)


def check_place_pixels(geometry: BaseGeometry, max_pixels: int) -> Grid:
    """The grid of the place; TooLarge when it has more than ``max_pixels`` pixels at 10 m."""
    grid = grid_for(geometry)
    if grid.pixels > max_pixels:
        raise TooLarge(f"the place needs {grid.pixels:,} pixels at 10 m; this server accepts at "
                       f"most {max_pixels:,}")
    return grid


@dataclass(frozen=True)
class PlaceMask:
    """The pixels of a grid that belong to a place (their centres inside it): the grid is the
    place's envelope, so what lies outside is no data, not part of any fraction."""

    grid: Grid
    shape: dict[str, Any]  # the place as GeoJSON in the grid's CRS
    pixels: int

    def inside(self, window: Window) -> np.ndarray:
        """Whether each pixel of ``window`` (of the grid) lies inside the place."""
        return ~geometry_mask([self.shape], out_shape=(int(window.height), int(window.width)),
                              transform=window_transform(window, self.grid.transform))


def place_mask(geometry: BaseGeometry, grid: Grid) -> PlaceMask:
    """The place ``geometry`` (CRS84) on ``grid``."""
    dense = geometry.segmentize(DENSIFY_DEGREES)
    shape = transform_geom("OGC:CRS84", grid.crs, mapping(dense))
    place = PlaceMask(grid=grid, shape=shape, pixels=0)
    pixels = sum(int(np.count_nonzero(place.inside(w)))
                 for w in windows(grid.width, grid.height))
    return PlaceMask(grid=grid, shape=shape, pixels=pixels)
