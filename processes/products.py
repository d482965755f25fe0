"""Products: the mask and probability as Cloud-Optimized GeoTIFFs, and a STAC Item beside them
with the statistics and the provenance (input, model, parameters, software, times)."""
from __future__ import annotations

import datetime as dt
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pystac
from pyproj import CRS
from rasterio.transform import array_bounds
from rasterio.warp import transform_bounds
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles
from shapely.geometry import box, mapping

from aquamask import __version__
from aquamask.processes.types import INVALID, Mask, Product, Scene

if TYPE_CHECKING:
    from aquamask.processes.results import ResultStore

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
MASK_FILE = "mask.tif"
PROBABILITY_FILE = "probability.tif"
ITEM_FILE = "item.json"
PROCESSING_EXTENSION = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
PROJECTION_EXTENSION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"


def write_cogs(mask: Mask, directory: Path) -> tuple[Path, Path | None]:
    """Mask (mode overviews, colour table, nodata 255) and probability (average overviews),
    written at the same time (GDAL works outside the GIL).

    The probability is stored with LERC (max error 0.001, NaN kept): a quarter of the size of
    lossless DEFLATE and several times faster to write, at a precision far finer than any
    threshold a user would pick."""
    # 256 px blocks: overviews start at 512 px, and WMS clients read small tiles
    profile = dict(cog_profiles.get("deflate"), blockxsize=256, blockysize=256)
    mask_cog = directory / MASK_FILE
    probability_cog = directory / PROBABILITY_FILE if mask.probability_path else None
    threads = {"GDAL_NUM_THREADS": "ALL_CPUS"}  # parallel block compression
    with ThreadPoolExecutor(2, thread_name_prefix="aquamask-cog") as pool:
        jobs = [pool.submit(cog_translate, mask.path, mask_cog, profile, nodata=INVALID,
                            overview_resampling="mode", quiet=True, in_memory=False,
                            config=threads)]
        if probability_cog is not None:
            jobs.append(pool.submit(cog_translate, mask.probability_path, probability_cog,
                                    dict(profile, compress="lerc_zstd", max_z_error=0.001),
                                    overview_resampling="average", quiet=True,
                                    in_memory=False, config=threads))
        for job in jobs:
            job.result()
    return mask_cog, probability_cog


def stac_item(product_id: str, mask: Mask, scene: Scene, parameters: dict[str, Any],
              started: dt.datetime, bbox: tuple[float, float, float, float]) -> pystac.Item:
    now = dt.datetime.now(dt.timezone.utc)
    stats = mask.stats
    crs = CRS.from_user_input(mask.profile["crs"])
    sources = source_records(scene)
    lineage = {"input": {"href": scene.href, "sha256": scene.sha256,
                         "source_ids": scene.source_ids,
                         **({"source_items": sources} if sources else {})},
               "method": mask.method, "parameters": parameters, "model": mask.model}
    item = pystac.Item(
        id=product_id, geometry=mapping(box(*bbox)), bbox=list(bbox),
        datetime=scene.acquired or now,
        properties={
            "title": f"Water mask ({mask.method})",
            "created": now.isoformat(),
            "aquamask:water_area_km2": stats.water_area_km2,
            "aquamask:valid_area_km2": stats.valid_area_km2,
            "aquamask:water_fraction": stats.water_fraction,
            "aquamask:valid_fraction": stats.valid_fraction,
            "aquamask:lineage": lineage,
            "processing:software": {"aquamask": __version__},
            "processing:lineage": (f"{mask.method} water detection of {scene.href}"
                                   + (f" with {mask.model['name']} {mask.model['version']}"
                                      if mask.model else "")),
            "processing:datetime": started.isoformat(),
            "proj:code": f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else None,
            "proj:wkt2": None if crs.to_epsg() else crs.to_wkt(),
            "proj:shape": [mask.profile["height"], mask.profile["width"]],
            "proj:transform": list(mask.profile["transform"])[:6],
        },
        stac_extensions=[PROCESSING_EXTENSION, PROJECTION_EXTENSION])
    item.add_asset("mask", pystac.Asset(
        href=f"./{MASK_FILE}", media_type=COG_MEDIA_TYPE, roles=["data"],
        title="Water mask: 1 water, 0 dry, 255 no data",
        extra_fields={"classification:classes": [
            {"value": 0, "name": "dry"}, {"value": 1, "name": "water"},
            {"value": 255, "name": "nodata", "nodata": True}]}))
    if mask.probability_path is not None:
        item.add_asset("probability", pystac.Asset(
            href=f"./{PROBABILITY_FILE}", media_type=COG_MEDIA_TYPE, roles=["data"],
            title="Water probability (0-1, NaN no data)"))
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
                  results: "Path | ResultStore", started: dt.datetime) -> Product:
    """Write COGs and STAC item into a staging folder, then commit it to the results store
    (a folder: renamed into place; an object store: uploaded, the item last), so a reader
    never sees a half-written product and a failure leaves nothing behind.

    ``results`` is a store or a folder. The product's paths are where GDAL reads its files
    (``ResultStore.gdal_path``: local paths, or /vsis3/... for an object store)."""
    from aquamask.processes.results import LocalResultStore

    store = LocalResultStore(results) if isinstance(results, (str, os.PathLike)) else results
    staging = store.staging(product_id)
    try:
        mask_cog, probability_cog = write_cogs(mask, staging)
        bbox = wgs84_bounds(mask.profile)
        item = stac_item(product_id, mask, scene, parameters, started, bbox)
        (staging / ITEM_FILE).write_text(json.dumps(item.to_dict(include_self_link=False),
                                                    indent=2))
        store.commit(product_id, staging)
    except BaseException:
        store.discard(staging)
        raise
    final = Path(store.gdal_path(product_id))
    crs = CRS.from_user_input(mask.profile["crs"])
    return Product(id=product_id, directory=final, mask_cog=final / MASK_FILE,
                   probability_cog=final / PROBABILITY_FILE if probability_cog else None,
                   stac_item=final / ITEM_FILE,
                   stats=mask.stats, bbox_wgs84=bbox,
                   crs=f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else crs.to_wkt(),
                   title=f"Water mask ({mask.method}) of {Path(scene.href).name}",
                   datetime=scene.acquired)
