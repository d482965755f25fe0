"""Imagery sources: each gives a ``Scene`` of the detection bands.

- ``raster``: the image a user points at (``image.href``): ``RasterSource.read(href, bands)``,
  :mod:`.raster`.
- place sources, configured under ``sources:`` in aquamask.yml by name, one small class per
  kind (``KINDS``, a registry of dotted paths as pygeoapi names its plugins): ``search`` ->
  scenes, ``choose`` -> the best day's scenes, ``open`` -> a windowed, reprojected stack of the
  detection bands over the place, ``read(query)`` all three. ``stac`` (any STAC API,
  :mod:`.stac`), ``sentinelsat`` (DHuS hubs, :mod:`.sentinelsat_`), ``local`` (a folder or
  static STAC catalog on disk, :mod:`.local`).
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from aquamask.processes.errors import InvalidInput
from aquamask.processes.pipeline.sources.cache import WindowCache
from aquamask.processes.pipeline.sources.compose import no_scene, place_scene, select
from aquamask.processes.pipeline.sources.grid import Grid, check_place_pixels
from aquamask.processes.pipeline.sources.http import HttpPolicy
from aquamask.processes.types import ProgressCallback, Scene, no_progress

if TYPE_CHECKING:
    from aquamask.processes.pipeline.sources.bands import SourceItem
    from aquamask.processes.pipeline.sources.query import PlaceQuery
    from aquamask.processes.settings import Settings

# kind -> "module:Class" of the place sources
KINDS = {
    "stac": "aquamask.processes.pipeline.sources.stac:StacSource",
    "sentinelsat": "aquamask.processes.pipeline.sources.sentinelsat_:SentinelsatSource",
    "local": "aquamask.processes.pipeline.sources.local:LocalSource",
}


class PlaceSource(ABC):
    """A source that finds the scenes of a place and a date itself."""

    kind = ""

    def __init__(self, name: str, config: dict[str, Any], settings: "Settings") -> None:
        self.name = name
        self.config = config
        self.settings = settings
        common = settings.sources
        self.http = HttpPolicy.from_config({"retries": common.http.retries,
                                            "backoff": common.http.backoff,
                                            "timeout": common.http.timeout,
                                            **(config.get("http") or {})})
        cache = common.cache
        self.cache = WindowCache(settings.path(cache.dir), int(cache.max_mb * 2**20)) \
            if cache.enabled else None
        self.max_items = int(config.get("max_items") or common.max_items)
        self.collection = config.get("collection")
        self.gdal_options = {**self.http.gdal_options(),
                             **{str(k): str(v) for k, v in (config.get("gdal") or {}).items()}}

    def check(self) -> None:
        """Refuse, before a job exists, a source whose configuration cannot work."""

    @abstractmethod
    def search(self, query: "PlaceQuery", limit: int | None = None) -> list["SourceItem"]:
        """The scenes that intersect the place in the dates, under the cloud limit."""

    def materialize(self, item: "SourceItem") -> "SourceItem":
        """Make ``item`` readable (a hub downloads its product here); returns it with assets."""
        return item.materialize(item) if item.materialize else item

    def choose(self, query: "PlaceQuery", limit: int | None = None
               ) -> tuple[list["SourceItem"], float]:
        """The scenes of the day that covers the place best (least cloudy first) and the
        fraction of the place they cover; NoScene when none does."""
        items = self.search(query, limit)
        chosen, coverage = select(items, query)
        if not chosen:
            raise no_scene(self.name, query, len(items))
        return chosen, coverage

    def open(self, chosen: list["SourceItem"], grid: Grid, query: "PlaceQuery",
             progress: ProgressCallback = no_progress) -> Scene:
        """The chosen scenes, made readable, as one Scene over the place's grid."""
        ready = []
        for n, item in enumerate(chosen):
            ready.append(self.materialize(item))
            progress(100 * (n + 1) / len(chosen), f"{item.id} ready")
        return place_scene(ready, grid, query, self.cache, self.gdal_options)

    def read(self, query: "PlaceQuery", progress: ProgressCallback = no_progress) -> Scene:
        """The best scene (or same-day mosaic) of the place and dates of ``query``."""
        grid = check_place_pixels(query.geometry, self.settings.limits.max_pixels)
        progress(0, f"searching {self.name} for {query.describe()}")
        chosen, coverage = self.choose(query)
        progress(50, f"chose {', '.join(i.product_id or i.id for i in chosen)} "
                     f"({coverage:.0%} of the place)")
        return self.open(chosen, grid, query, lambda pct, msg: progress(50 + pct / 2, msg))


def source_names(settings: "Settings") -> list[str]:
    return settings.sources.names


def place_source(settings: "Settings", name: str | None = None) -> PlaceSource:
    """The configured place source ``name`` (default: ``sources.default``)."""
    name = name or settings.sources.default
    config = settings.sources.entries.get(name)
    if config is None:
        raise InvalidInput(f"source: '{name}' is not a configured source; this server has "
                           + (", ".join(source_names(settings)) or "none"))
    kind = config["kind"]
    if kind not in KINDS:
        raise InvalidInput(f"source '{name}': unknown kind '{kind}' (one of {', '.join(KINDS)})")
    module, _, cls = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), cls)(name, config, settings)
