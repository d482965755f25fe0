"""From found scenes to one Scene over the place: choose, then read window by window.

Choosing (``select``): scenes are grouped by acquisition day (one satellite pass); a day's
scenes over the place together make its view; the day chosen is the one that covers the place
best, then the one whose scenes are least cloudy, then the latest. So a date range gives the least
cloudy full view of the place, from one scene or from a mosaic of the same day's tiles.

Reading (``place_scene``): every band of every chosen scene is warped (rasterio WarpedVRT) into
the place's grid, only the requested window at a time, so only the COG tiles under the place are
fetched. 20 m bands are resampled to 10 m (bilinear; SCL nearest), each product's scale and
offset applied, nodata and SCL-invalid pixels set to NaN. Where several scenes overlap, each
pixel comes from the scene whose SCL rates it best (least cloudy scene first among equals).
"""
from __future__ import annotations

import datetime as dt
import logging
import os
from collections import defaultdict
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from aquamask.processes.constants import DETECTION_BANDS
from aquamask.processes.errors import InvalidInput, NoScene, UpstreamError
from aquamask.processes.pipeline.sources import scl as scl_classes
from aquamask.processes.pipeline.sources.bands import SCL, BandAsset, SourceItem
from aquamask.processes.pipeline.sources.cache import WindowCache
from aquamask.processes.pipeline.sources.grid import Grid, place_mask
from aquamask.processes.pipeline.sources.query import PlaceQuery
from aquamask.processes.pipeline.sources.scale import rescaled_lazily
from aquamask.processes.types import Scene

LOGGER = logging.getLogger(__name__)
FULL_COVERAGE = 0.995
MAX_PER_DAY = 8


def footprint(item: SourceItem, place: BaseGeometry) -> BaseGeometry:
    """The part of the world a scene says it covers (the place itself when it does not say)."""
    if not item.geometry:
        return place  # a scene that does not say where it is is taken to cover the place
    try:
        return shape(item.geometry).buffer(0)
    except Exception:  # noqa: BLE001 - a broken footprint is no reason to refuse the scene
        return place


def select(items: list[SourceItem], query: PlaceQuery) -> tuple[list[SourceItem], float]:
    """The scenes to read (least cloudy first) and the fraction of the place they cover."""
    place = query.geometry
    place_area = place.area
    by_day: dict[dt.date, list[SourceItem]] = defaultdict(list)
    for item in items:
        if query.max_cloud_cover < 100 and item.cloud_cover is not None \
                and item.cloud_cover > query.max_cloud_cover:
            continue  # a catalogue that ignored the filter
        if not footprint(item, place).intersects(place):
            continue
        by_day[item.datetime.astimezone(dt.timezone.utc).date()].append(item)
    candidates = []
    for day, group in by_day.items():
        group.sort(key=lambda it: (it.cloud_cover if it.cloud_cover is not None else 100.0,
                                   it.id))
        # every scene of the day over the place, least cloudy first: reading stops at the
        # first scene wherever its pixels are clear, the others fill its clouds, its no-data
        # edges and the parts of the place it does not reach
        chosen = group[:MAX_PER_DAY]
        covered = unary_union([footprint(it, place).intersection(place) for it in chosen])
        coverage = min(covered.area / place_area, 1.0)
        parts = [footprint(it, place).intersection(place).area for it in chosen]
        cloud = sum((it.cloud_cover or 0.0) * a for it, a in zip(chosen, parts)) / (
            sum(parts) or 1.0)  # the day's cloud over the place, weighted by each scene's share
        full = coverage >= FULL_COVERAGE
        latest = max(it.datetime for it in chosen)
        candidates.append(((not full, 0.0 if full else -coverage, cloud, -latest.timestamp()),
                           chosen, coverage))
    if not candidates:
        return [], 0.0
    candidates.sort(key=lambda c: c[0])
    _, chosen, coverage = candidates[0]
    return chosen, coverage


class _Reader:
    """Warped readers of the chosen scenes' assets into the grid, each opened once."""

    def __init__(self, grid: Grid, gdal_options: dict[str, str]) -> None:
        self.grid = grid
        self.options = gdal_options
        self.open: dict[tuple[str, str], tuple[Any, WarpedVRT]] = {}

    def vrt(self, asset: BandAsset, resampling: Resampling) -> WarpedVRT:
        key = (asset.path, resampling.name)
        if key not in self.open:
            try:
                dataset = rasterio.open(asset.path)
            except RasterioIOError as err:
                LOGGER.error("cannot read the scene file %s: %s", asset.path, err)
                raise UpstreamError(f"cannot read the scene file {_shown(asset.path)}") \
                    from err
            nodata = asset.nodata if asset.nodata is not None else dataset.nodata
            vrt = WarpedVRT(dataset, crs=self.grid.crs, transform=self.grid.transform,
                            width=self.grid.width, height=self.grid.height,
                            resampling=resampling, src_nodata=nodata, nodata=nodata)
            self.open[key] = (dataset, vrt)
        return self.open[key][1]

    def read(self, asset: BandAsset, window: Window, resampling: Resampling) -> np.ndarray:
        with rasterio.Env(**self.options):
            vrt = self.vrt(asset, resampling)
            try:
                return vrt.read(asset.band, window=window, out_dtype=np.float32)
            except RasterioIOError as err:
                LOGGER.error("reading %s failed: %s", asset.path, err)
                raise UpstreamError(f"reading {_shown(asset.path)} failed") from err

    def close(self) -> None:
        for dataset, vrt in self.open.values():
            vrt.close()
            dataset.close()
        self.open.clear()


def _read_item(reader: _Reader, item: SourceItem, window: Window) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """(bands, rank) of one scene over ``window`` of the grid: reflectance x 10000 with NaN
    where unusable, and the SCL rank (scl.RANK_*) of each pixel."""
    shape_ = (int(window.height), int(window.width))
    scl_asset = item.assets.get(SCL)
    if scl_asset is not None:
        rank = scl_classes.rank(reader.read(scl_asset, window, Resampling.nearest))
    else:  # no SCL (e.g. a plain GeoTIFF): every pixel with data counts as clear
        rank = np.full(shape_, scl_classes.RANK_CLEAR, np.uint8)
    bands = np.empty((len(DETECTION_BANDS), *shape_), np.float32)
    missing = np.zeros(shape_, bool)
    for i, band in enumerate(DETECTION_BANDS):
        asset = item.assets[band]
        data = reader.read(asset, window, Resampling.bilinear)
        if asset.nodata is not None and not np.isnan(asset.nodata):
            missing |= data == asset.nodata
        missing |= ~np.isfinite(data)
        bands[i] = data * np.float32(asset.scale) + np.float32(asset.offset)
    rank[missing] = scl_classes.RANK_NONE
    bands[:, rank < scl_classes.USABLE] = np.nan
    return bands, rank


def _stamp(path: str) -> list[float] | None:
    local = path[len("/vsizip/"):].split(".zip/")[0] + ".zip" if path.startswith("/vsizip/") \
        else path
    if local.startswith("/vsi"):
        return None
    try:
        stat = os.stat(local)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime]


def place_scene(items: list[SourceItem], grid: Grid, query: PlaceQuery,
                cache: WindowCache | None, gdal_options: dict[str, str]) -> Scene:
    """A Scene over ``grid`` reading the chosen ``items`` (least cloudy first)."""
    for item in items:
        if not item.ready:
            missing = [b for b in DETECTION_BANDS if b not in item.assets]
            raise InvalidInput(f"the scene {item.id} has no asset for {', '.join(missing)}; "
                               "it is not a Sentinel-2 L2A/L1C scene this server can read")
    reader = _Reader(grid, gdal_options)
    crs_wkt = grid.crs.to_wkt()
    # the grid is the place's envelope in UTM: a box's corners and a polygon's outside are not
    # the place, so they are no data (and no fraction counts them)
    place = place_mask(query.geometry, grid)

    def cached_item(item: SourceItem, window: Window) -> tuple[np.ndarray, np.ndarray]:
        if cache is None:
            return _read_item(reader, item, window)
        # signed URLs (Planetary Computer SAS tokens) change on every signing: not in the key;
        # a local file's size and time are, so a replaced file is read again
        key = WindowCache.key(assets={b: [a.path.split("?")[0], a.band, a.scale, a.offset,
                                          a.nodata, _stamp(a.path)]
                                      for b, a in sorted(item.assets.items())},
                              grid=grid.key(), crs=crs_wkt,
                              window=[int(window.col_off), int(window.row_off),
                                      int(window.width), int(window.height)])
        hit = cache.get(key)
        if hit is not None:
            return hit["bands"], hit["rank"]
        bands, rank = _read_item(reader, item, window)
        cache.put(key, bands=bands, rank=rank)
        return bands, rank

    def read(window: Window) -> np.ndarray:
        out = np.full((len(DETECTION_BANDS), int(window.height), int(window.width)), np.nan,
                      np.float32)
        inner = grid.clip(window)
        if inner is None:
            return out
        rows = slice(int(inner.row_off - window.row_off),
                     int(inner.row_off - window.row_off + inner.height))
        cols = slice(int(inner.col_off - window.col_off),
                     int(inner.col_off - window.col_off + inner.width))
        best = np.zeros((int(inner.height), int(inner.width)), np.uint8)
        merged = np.full((len(DETECTION_BANDS), *best.shape), np.nan, np.float32)
        for item in items:
            bands, rank = cached_item(item, inner)
            better = rank > best
            merged[:, better] = bands[:, better]
            best[better] = rank[better]
            if (best == scl_classes.RANK_CLEAR).all():
                break
        merged[:, ~place.inside(inner)] = np.nan
        out[:, rows, cols] = merged
        return out

    first = items[0]
    ids = [it.product_id or it.id for it in items]
    # the scale of scenes whose metadata says none (a local GeoTIFF of reflectance 0-1) is told
    # from their pixels, as they are read
    return Scene(href=" + ".join(ids), profile=grid.profile(), bands=DETECTION_BANDS,
                 read=rescaled_lazily(read, f"the scene {' + '.join(ids)}"), source_ids=ids,
                 acquired=first.datetime,
                 source_items=[it.provenance() for it in items], close=reader.close,
                 place_pixels=place.pixels)


def no_scene(source: str, query: PlaceQuery, found: int = 0) -> NoScene:
    collection = f" in the collection '{query.collection}'" if query.collection else ""
    detail = (f"; {found} scene(s) matched the dates and clouds but none covers the place"
              if found else "")
    return NoScene(f"no Sentinel-2 scene from the source '{source}'{collection} matches "
                   f"{query.describe()}{detail}. Widen the dates, raise max_cloud_cover or "
                   "check the place.")


def _shown(path: str) -> str:
    """A scene's path as a user may see it: a URL as it is, a file by its name alone (no
    server paths in messages)."""
    return path if "://" in path else path.rsplit("/", 1)[-1]
