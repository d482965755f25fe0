"""Products: the mask and probability as Cloud-Optimized GeoTIFFs, and a STAC Item beside them
with the statistics and the provenance (input, model, parameters, software, times). The COG
writing and the STAC item's common part serve the monitoring products too."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pystac
import rasterio
from pyproj import CRS
from rasterio.errors import RasterioIOError
from rasterio.io import MemoryFile
from rasterio.shutil import delete
from rasterio.transform import array_bounds
from rasterio.warp import transform_bounds
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles
from shapely.geometry import box, mapping

from aquamask import __version__
from aquamask.processes.constants import COG_MEDIA_TYPE, INVALID
from aquamask.processes.files import write_atomic
from aquamask.processes.pipeline.blocks import gtiff_profile, windows
from aquamask.processes.pipeline.detection import intermediate_folder, release
from aquamask.processes.styles import (
    SCENE_BANDS,
    STRETCH_TAG,
    style_files,
    write_style_files,
)
from aquamask.processes.types import Mask, Product, Scene

if TYPE_CHECKING:
    from aquamask.processes.storage.results import ResultStore

MASK_FILE = "mask.tif"
PROBABILITY_FILE = "probability.tif"
ITEM_FILE = "item.json"
# the input scene's display bands (styles.SCENE_BANDS), uint16 reflectance x 10000 (0: no
# data), stretched by their 2-98 % percentiles when drawn
SCENE_FILE = "scene.tif"
STRETCH_PERCENTILES = (2, 98)
SAMPLE_STEP = 8  # every 8th pixel of each row and column gives the percentiles
PROCESSING_EXTENSION = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
PROJECTION_EXTENSION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
# the mask's style files (``style_files``), as STAC assets
STYLE_ASSETS = {"qgis_style": "QGIS style of the mask (.qml)",
                "sld": "OGC SLD style of the mask",
                "gdal_metadata": "GDAL auxiliary metadata: the class names"}
# An image whose acquisition time is unknown: STAC needs a time, so its item gives the interval
# that surely holds it, from the first Earth observation satellite (Landsat 1) to processing
EARLIEST_ACQUISITION = dt.datetime(1972, 7, 23, tzinfo=dt.timezone.utc)


# 256 px blocks: overviews start at 512 px, and WMS clients read small tiles
COG_PROFILE = dict(cog_profiles.get("deflate"), blockxsize=256, blockysize=256)
# parallel block compression (GDAL works outside the GIL)
COG_CONFIG = {"GDAL_NUM_THREADS": "ALL_CPUS"}


def to_cog(source: Path | str, target: Path, *, resampling: Any, nodata: Any = None,
           **profile: Any) -> Path:
    """The tiled GeoTIFF ``source`` as a COG at ``target``: DEFLATE (``profile`` overrides),
    overviews by ``resampling``. GDAL's COG driver writes it in one pass (rio-cogeo's own
    path writes a temporary GeoTIFF with overviews and copies it: every COG twice).

    A source held in memory is written to memory and copied to ``target`` by Python: GDAL
    tells a full or read-only disk only in its log and deletes what it wrote, while Python's
    write raises the operating system's error (ENOSPC, EROFS, ...) the job reports."""
    options = dict(nodata=nodata, overview_resampling=resampling, quiet=True,
                   config=COG_CONFIG, use_cog_driver=True)
    if not str(source).startswith("/vsimem/"):
        cog_translate(source, target, dict(COG_PROFILE, **profile), **options)
        return target
    with MemoryFile() as cog:
        cog_translate(source, cog.name, dict(COG_PROFILE, **profile), **options)
        cog.seek(0)
        with open(target, "wb") as out:
            shutil.copyfileobj(cog, out, 16 << 20)
    return target


def product_title(process: str, method: str, subject: str,
                  run: dt.datetime | None = None) -> str:
    """A product's title, its layer's too: the process, its method, what it shows (an input,
    a date or an interval) and when it ran, so that the layers of one place differ in a
    client's list (QGIS, GDAL) by more than their ids."""
    run = run or dt.datetime.now(dt.timezone.utc)
    return (f"{process} ({method}): {subject}, "
            f"run {run.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC")


def write_cogs(mask: Mask, directory: Path) -> tuple[Path, Path | None]:
    """Mask (mode overviews, colour table, nodata 255) and probability (average overviews),
    written at the same time.

    The probability is stored with LERC (max error 0.001, NaN kept): a quarter of the size of
    lossless DEFLATE and several times faster to write, at a precision far finer than any
    threshold a user would pick."""
    mask_cog = directory / MASK_FILE
    probability_cog = directory / PROBABILITY_FILE if mask.probability_path else None
    try:
        with ThreadPoolExecutor(2, thread_name_prefix="aquamask-cog") as pool:
            jobs = [pool.submit(to_cog, mask.path, mask_cog, resampling="mode",
                                nodata=INVALID)]
            if mask.probability_path is not None and probability_cog is not None:
                jobs.append(pool.submit(to_cog, mask.probability_path, probability_cog,
                                        resampling="average", compress="lerc_zstd",
                                        max_z_error=0.001))
            for job in jobs:
                job.result()
    finally:
        release(mask)  # the detection's rasters: in memory, or in the job's work folder
    return mask_cog, probability_cog


def write_scene_cog(scene: Scene, directory: Path) -> Path:
    """The display bands of ``scene`` as a COG in ``directory``, block by block, with their
    stretch (``STRETCH_TAG``): the map engine reads this file, never the user's input."""
    picks = [scene.bands.index(band) for band in SCENE_BANDS]
    # in memory when it fits, like detection's rasters: only the COG reaches the disk, and a
    # full disk is then Python's error (to_cog), not GDAL's
    raw_bytes = scene.width * scene.height * len(SCENE_BANDS) * 2  # uint16 bands
    raw = intermediate_folder(directory, raw_bytes) / "scene.raw.tif"
    samples = []
    try:
        with rasterio.open(raw, "w", **gtiff_profile(scene.profile, "uint16", 0,
                                                      count=len(SCENE_BANDS))) as dst:
            for window in windows(scene.width, scene.height):
                data = scene.read(window)[picks]
                valid = np.isfinite(data).all(axis=0)
                values = np.where(valid, np.clip(np.nan_to_num(data), 1, 65535), 0)
                dst.write(values.astype("uint16"), window=window)
                step = values[:, ::SAMPLE_STEP, ::SAMPLE_STEP]
                samples.append(step[:, valid[::SAMPLE_STEP, ::SAMPLE_STEP]])
            sampled = np.concatenate(samples, axis=1)
            stretch = {band: ([float(v) for v in np.percentile(sampled[i], STRETCH_PERCENTILES)]
                              if sampled.shape[1] else [0.0, 10000.0])
                       for i, band in enumerate(SCENE_BANDS)}
            dst.update_tags(**{STRETCH_TAG: json.dumps(stretch)})
            dst.descriptions = SCENE_BANDS
        return to_cog(raw, directory / SCENE_FILE, resampling="average", nodata=0)
    finally:
        try:
            delete(str(raw))
        except RasterioIOError:
            pass  # never written


def new_item(item_id: str, profile: dict[str, Any], properties: dict[str, Any], *,
             datetime: dt.datetime | None = None, start: dt.datetime | None = None,
             end: dt.datetime | None = None, wkt2: bool = False) -> pystac.Item:
    """A STAC Item of a raster product on the grid of ``profile``: its WGS84 box, the
    software, and the projection (``proj:wkt2`` too with ``wkt2``)."""
    bbox = wgs84_bounds(profile)
    crs = CRS.from_user_input(profile["crs"])
    epsg = crs.to_epsg()
    projection: dict[str, Any] = {"proj:code": f"EPSG:{epsg}" if epsg else None}
    if wkt2:
        projection["proj:wkt2"] = None if epsg else crs.to_wkt()
    projection.update({"proj:shape": [profile["height"], profile["width"]],
                       "proj:transform": list(profile["transform"])[:6]})
    return pystac.Item(
        id=item_id, geometry=mapping(box(*bbox)), bbox=list(bbox), datetime=datetime,
        start_datetime=start, end_datetime=end,
        properties={**properties, "processing:software": {"aquamask": __version__},
                    **projection},
        stac_extensions=[PROCESSING_EXTENSION, PROJECTION_EXTENSION])


def cog_asset(name: str, title: str, **extra: Any) -> pystac.Asset:
    return pystac.Asset(href=f"./{name}", media_type=COG_MEDIA_TYPE, roles=["data"],
                        title=title, extra_fields=extra or None)


def write_item(item: pystac.Item, path: Path) -> None:
    write_atomic(path, json.dumps(item.to_dict(include_self_link=False), indent=2))


def acquired_text(when: dt.datetime | None) -> str:
    """An acquisition time as titles say it: its UTC day, or that it is unknown."""
    return f"acquired {when.astimezone(dt.timezone.utc):%Y-%m-%d}" if when \
        else "acquisition date unknown"


def stac_item(product_id: str, mask: Mask, scene: Scene, parameters: dict[str, Any],
              started: dt.datetime) -> pystac.Item:
    now = dt.datetime.now(dt.timezone.utc)
    acquired = scene.acquired
    stats = mask.stats
    sources = source_records(scene)
    lineage = {"input": {"href": scene.href, "sha256": scene.sha256,
                         "source_ids": scene.source_ids,
                         **({"source_items": sources} if sources else {})},
               "method": mask.method, "parameters": parameters, "model": mask.model}
    item = new_item(product_id, mask.profile, {
        "title": f"Water mask ({mask.method}), {acquired_text(acquired)}",
        "created": now.isoformat(),
        # the acquisition time, null when no input says it (then `datetime` is null too and
        # start/end_datetime only bound it)
        "aquamask:acquired": acquired.isoformat() if acquired else None,
        "aquamask:water_area_km2": stats.water_area_km2,
        "aquamask:valid_area_km2": stats.valid_area_km2,
        "aquamask:water_fraction": stats.water_fraction,
        "aquamask:valid_fraction": stats.valid_fraction,
        "aquamask:lineage": lineage,
        "processing:lineage": (f"{mask.method} water detection of {scene.href}"
                               + (f" with {mask.model['name']} {mask.model['version']}"
                                  if mask.model else "")),
        "processing:datetime": started.isoformat(),
    }, datetime=acquired, start=None if acquired else EARLIEST_ACQUISITION,
        end=None if acquired else now, wkt2=True)
    item.add_asset("mask", cog_asset(
        MASK_FILE, "Water mask: 1 water, 0 dry, 255 no data", **{"classification:classes": [
            {"value": 0, "name": "dry"}, {"value": 1, "name": "water"},
            {"value": 255, "name": "nodata", "nodata": True}]}))
    for key, (name, media_type) in zip(STYLE_ASSETS, style_files(MASK_FILE, "water").items()):
        item.add_asset(key, pystac.Asset(href=f"./{name}", media_type=media_type,
                                         roles=["metadata"], title=STYLE_ASSETS[key]))
    if mask.probability_path is not None:
        item.add_asset("probability", cog_asset(PROBABILITY_FILE,
                                                "Water probability (0-1, NaN no data)"))
    if scene.href.startswith(("http://", "https://")):
        item.add_link(pystac.Link("derived_from", scene.href, title="input image"))
    for source in sources:  # each source scene's own STAC item (or hub entry) and ESA id
        if source.get("href"):
            item.add_link(pystac.Link(
                "derived_from", source["href"], media_type=source_media_type(source["href"]),
                title=source.get("product_id") or source["id"],
                extra_fields={"aquamask:product_id": source.get("product_id") or source["id"],
                              "aquamask:item_id": source["id"]}))
    return item


def source_media_type(href: str) -> str:
    return "application/atom+xml" if "/odata/" in href else "application/geo+json"


def source_records(scene: Scene) -> list[dict[str, Any]]:
    """The scene's source items for the provenance: URLs kept, server file paths dropped."""
    records = []
    for record in scene.source_items:
        record = dict(record)
        if not str(record.get("href") or "").startswith(("http://", "https://")):
            record.pop("href", None)
        records.append(record)
    return records


def wgs84_bounds(profile: dict[str, Any]) -> tuple[float, float, float, float]:
    west, south, east, north = array_bounds(profile["height"], profile["width"],
                                            profile["transform"])
    return tuple(transform_bounds(profile["crs"], "EPSG:4326", west, south, east, north,
                                  densify_pts=21))  # type: ignore[return-value]


def write_product(product_id: str, mask: Mask, scene: Scene, parameters: dict[str, Any],
                  results: "Path | ResultStore", started: dt.datetime, *,
                  with_scene: bool = False) -> Product:
    """Write COGs and STAC item into a staging folder, then commit it to the results store
    (a folder: renamed into place; an object store: uploaded, the item last), so a reader
    never sees a half-written product and a failure leaves nothing behind.

    ``with_scene``: also the scene's display bands (``write_scene_cog``).
    ``results`` is a store or a folder. The product's paths are where GDAL reads its files
    (``ResultStore.gdal_path``: local paths, or /vsis3/... for an object store)."""
    from aquamask.processes.storage.results import LocalResultStore

    store = LocalResultStore(results) if isinstance(results, (str, os.PathLike)) else results
    staging = store.staging(product_id)
    try:
        mask_cog, probability_cog = write_cogs(mask, staging)
        write_style_files(mask_cog, "water")
        if with_scene:
            write_scene_cog(scene, staging)
        item = stac_item(product_id, mask, scene, parameters, started)
        write_item(item, staging / ITEM_FILE)
        store.commit(product_id, staging)
    except BaseException:
        store.discard(staging)
        raise
    final = Path(store.gdal_path(product_id))
    crs = CRS.from_user_input(mask.profile["crs"])
    return Product(id=product_id, directory=final, mask_cog=final / MASK_FILE,
                   probability_cog=final / PROBABILITY_FILE if probability_cog else None,
                   stac_item=final / ITEM_FILE,
                   stats=mask.stats, bbox_wgs84=wgs84_bounds(mask.profile),
                   crs=f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else crs.to_wkt(),
                   title=product_title("Water detection", mask.method, Path(scene.href).name
                                     + (f", acquired {scene.acquired:%Y-%m-%d}"
                                        if scene.acquired else ""), started),
                   datetime=scene.acquired,
                   scene_cog=final / SCENE_FILE if with_scene else None)
