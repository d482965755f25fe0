"""Scenes on disk, offline: the embedded default source.

The folder (``sources.local.path``, default ``{home}/scenes``) holds either

- a static STAC catalog (``catalog.json`` or ``collection.json`` at its root, items anywhere
  below, read with pystac): each item's assets are found and scaled as for a STAC API, or
- GeoTIFFs/COGs, each a stack holding the detection bands (recognised as for ``image.href``:
  band descriptions, or the 13-band / 6-band layouts) and optionally a band described ``SCL``.
  The acquisition time comes from a ``datetime`` (or ``ACQUISITION_DATE``) tag, else from the
  file name (``..._20230801T105619_...`` or ``2023-08-01``); cloud cover from an
  ``eo:cloud_cover`` or ``CLOUDY_PIXEL_PERCENTAGE`` tag. GDAL band scale/offset, when set, give
  reflectance (0-1) as in a Sentinel-2 COG; a ``BOA_ADD_OFFSET`` tag (DN) is applied as ESA
  defines it. Files without a date are skipped (they cannot be found by date).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pystac
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.warp import transform_geom
from shapely.geometry import box, mapping, shape

from aquamask.processes.constants import DETECTION_BANDS
from aquamask.processes.errors import InvalidInput, UpstreamError
from aquamask.processes.pipeline.sources import PlaceSource
from aquamask.processes.pipeline.sources.acquired import dataset_time
from aquamask.processes.pipeline.sources.bands import S2_NODATA, SCL, BandAsset, SourceItem
from aquamask.processes.pipeline.sources.query import PlaceQuery
from aquamask.processes.pipeline.sources.raster import DRIVER, band_indexes, check_geotiff
from aquamask.processes.pipeline.sources.stac import source_item

LOGGER = logging.getLogger(__name__)
CATALOG_FILES = ("catalog.json", "collection.json")
REMOTE_PATHS = ("/vsicurl/http://", "/vsicurl/https://", "/vsis3/")  # bands.gdal_path of URLs


def _float_tag(tags: dict[str, str], *keys: str) -> float | None:
    for key in keys:
        try:
            return float(tags[key])
        except (KeyError, ValueError):
            continue
    return None


def geotiff_item(path: Path, source: str) -> SourceItem | None:
    try:
        dataset = rasterio.open(path, driver=DRIVER)
    except RasterioIOError as err:
        LOGGER.warning("skipping %s: %s", path, err)
        return None
    with dataset:
        tags = dataset.tags()
        when = dataset_time(dataset, path.stem)
        if when is None or dataset.crs is None:
            LOGGER.info("skipping %s: no %s", path,
                        "acquisition date" if when is None else "CRS")
            return None
        descriptions = tuple(d.strip() if d else d for d in dataset.descriptions)
        try:
            indexes = band_indexes(tuple(d for d in descriptions), dataset.count)
        except InvalidInput as err:
            LOGGER.info("skipping %s: %s", path, err)
            return None
        nodata = dataset.nodata if dataset.nodata is not None else S2_NODATA
        add_offset = _float_tag(tags, "BOA_ADD_OFFSET")
        assets: dict[str, BandAsset] = {}
        rules = set()
        for band, index in zip(DETECTION_BANDS, indexes):
            scale, offset = dataset.scales[index - 1], dataset.offsets[index - 1]
            if (scale, offset) != (1.0, 0.0):  # GDAL metadata: reflectance = DN*scale+offset
                scale_10k, offset_10k, rule = scale * 1e4, offset * 1e4, "GDAL scale/offset"
            elif add_offset is not None:
                scale_10k, offset_10k, rule = 1.0, add_offset, "BOA_ADD_OFFSET tag"
            else:
                scale_10k, offset_10k, rule = 1.0, 0.0, "none declared"
            rules.add(rule)
            assets[band] = BandAsset(path=str(path), band=index, scale=scale_10k,
                                     offset=offset_10k, nodata=nodata)
        if "SCL" in descriptions:
            assets[SCL] = BandAsset(path=str(path), band=descriptions.index("SCL") + 1,
                                    nodata=None)
        footprint = transform_geom(dataset.crs, "OGC:CRS84", mapping(box(*dataset.bounds)),
                                   antimeridian_cutting=True)
    return SourceItem(id=path.stem, source=source, datetime=when,
                      cloud_cover=_float_tag(tags, "eo:cloud_cover", "CLOUD_COVER",
                                             "CLOUDY_PIXEL_PERCENTAGE"),
                      geometry=footprint, href=str(path),
                      product_id=tags.get("PRODUCT_ID") or path.stem,
                      assets=assets, radiometry=", ".join(sorted(rules)))


def catalog_items(root: Path, source: str) -> list[SourceItem]:
    catalog_file = next(root / name for name in CATALOG_FILES if (root / name).is_file())
    try:
        catalog = pystac.read_file(str(catalog_file))
    except Exception as err:  # noqa: BLE001 - pystac raises many types for a broken catalog
        LOGGER.error("the local catalog %s cannot be read: %s", catalog_file, err)
        raise UpstreamError(f"the local catalog {catalog_file.name} cannot be read; see the "
                            "server log") from err
    items = []
    for item in catalog.get_items(recursive=True):  # type: ignore[attr-defined]
        raw = item.to_dict(include_self_link=False, transform_hrefs=False)
        for key, asset in item.assets.items():
            raw["assets"][key]["href"] = asset.get_absolute_href()
        found = source_item(raw, source, href=item.get_self_href())
        if found is not None:
            found.collection = found.collection or item.collection_id
            items.append(found)
    return items


class LocalSource(PlaceSource):
    kind = "local"

    def __init__(self, name: str, config: dict[str, Any], settings) -> None:
        super().__init__(name, config, settings)
        self.root = settings.path(config.get("path") or "scenes")

    def check(self) -> None:
        if not self.root.is_dir():
            LOGGER.error("the local source '%s' has no folder %s", self.name, self.root)
            raise UpstreamError(f"the local source '{self.name}' has no scene folder yet "
                                f"(sources.{self.name}.path): the server's operator puts "
                                "dated scenes or a STAC catalog there")

    def items(self) -> list[SourceItem]:
        self.check()
        if any((self.root / name).is_file() for name in CATALOG_FILES):
            return catalog_items(self.root, self.name)
        found = []
        for path in sorted(self.root.rglob("*")):
            if path.suffix.lower() in (".tif", ".tiff") and path.is_file():
                item = geotiff_item(path, self.name)
                if item is not None:
                    found.append(item)
        return found

    def materialize(self, item: SourceItem) -> SourceItem:
        """A catalog on disk may name any file: each local one is read only as a GeoTIFF of
        bounded blocks, as a user's image is; GDAL virtual paths only for URLs."""
        max_block = self.settings.limits.max_block_bytes
        for band, asset in item.assets.items():
            label = f"the scene '{item.id}' ({band}) of the source '{self.name}'"
            if asset.path.startswith("/vsi"):
                if not asset.path.startswith(REMOTE_PATHS):
                    raise InvalidInput(f"{label} names a GDAL virtual file; a local catalog "
                                       "may name files and http(s) or s3 URLs only")
                continue
            check_geotiff(asset.path, label, max_block)
        return super().materialize(item)

    def search(self, query: PlaceQuery, limit: int | None = None) -> list[SourceItem]:
        matches = []
        for item in self.items():
            if query.start and item.datetime < query.start:
                continue
            if query.end and item.datetime > query.end:
                continue
            if item.cloud_cover is not None and item.cloud_cover > query.max_cloud_cover:
                continue
            if query.collection and item.collection and item.collection != query.collection:
                continue
            if item.geometry and not shape(item.geometry).intersects(query.geometry):
                continue
            matches.append(item)
        matches.sort(key=lambda it: it.datetime, reverse=True)
        return matches[:limit or self.max_items]
