"""Imagery sources: each turns a request (an href, or a place and a date) into a ``Scene``.
Chosen by name in config, one small class per kind.

- ``raster``: the image a user points at (``image.href``), :mod:`.raster`.
- place sources, configured under ``sources:`` in aquamask.yml, each ``search`` -> scenes and
  ``read`` -> a windowed, reprojected stack of the detection bands over the place:
  ``stac`` (any STAC API, :mod:`.stac`), ``sentinelsat`` (DHuS hubs, :mod:`.sentinelsat_`),
  ``local`` (a folder or static STAC catalog on disk, :mod:`.local`).
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from aquamask.processes.types import Scene

if TYPE_CHECKING:
    from aquamask.processes.settings import Settings
    from aquamask.processes.sources.bands import SourceItem
    from aquamask.processes.sources.query import PlaceQuery

# kind -> "module:Class" of the place sources
KINDS = {
    "stac": "aquamask.processes.sources.stac:StacSource",
    "sentinelsat": "aquamask.processes.sources.sentinelsat_:SentinelsatSource",
    "local": "aquamask.processes.sources.local:LocalSource",
}


class Source(ABC):
    name: str

    @abstractmethod
    def read(self, request: dict[str, Any]) -> Scene:
        """Open the imagery ``request`` names as a Scene of the detection bands."""


class PlaceSource(Source):
    """A source that finds scenes of a place and a date itself."""

    kind = ""

    def __init__(self, name: str, config: dict[str, Any], settings: "Settings") -> None:
        from aquamask.processes.sources.cache import WindowCache
        from aquamask.processes.sources.http import HttpPolicy

        self.name = name
        self.config = config
        self.settings = settings
        common = settings.raw.get("sources") or {}
        self.http = HttpPolicy.from_config({**(common.get("http") or {}),
                                            **(config.get("http") or {})})
        cache = common.get("cache") or {}
        self.cache = None if cache.get("enabled") is False else WindowCache(
            settings.path(cache.get("dir") or "cache/windows"),
            int(float(cache.get("max_mb", 2048)) * 2**20))
        self.max_items = int(config.get("max_items") or common.get("max_items") or 200)
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

    def read(self, request: dict[str, Any]) -> Scene:
        from aquamask.processes.errors import TooLarge
        from aquamask.processes.sources.compose import no_scene, place_scene, select
        from aquamask.processes.sources.grid import grid_for

        query: PlaceQuery = request["query"]
        progress = request.get("progress") or (lambda pct, msg: None)
        max_pixels = int(self.settings.get("limits", "max_pixels"))
        grid = grid_for(query.geometry)
        if grid.pixels > max_pixels:
            raise TooLarge(f"the place needs {grid.pixels:,} pixels at 10 m; this server "
                           f"accepts at most {max_pixels:,}")
        progress(0, f"searching {self.name} for {query.describe()}")
        items = self.search(query)
        chosen, coverage = select(items, query)
        if not chosen:
            raise no_scene(self.name, query, len(items))
        progress(50, f"chose {', '.join(i.product_id or i.id for i in chosen)} "
                     f"({coverage:.0%} of the place)")
        ready = []
        for n, item in enumerate(chosen):
            ready.append(self.materialize(item))
            progress(50 + 50 * (n + 1) / len(chosen), f"{item.id} ready")
        return place_scene(ready, grid, query, self.cache, self.gdal_options)


def source_names(settings: "Settings") -> list[str]:
    section = settings.raw.get("sources") or {}
    return [k for k, v in section.items() if isinstance(v, dict) and v.get("kind")]


def place_source(settings: "Settings", name: str | None = None) -> PlaceSource:
    """The configured place source ``name`` (default: ``sources.default``)."""
    from aquamask.processes.errors import InvalidInput

    section = settings.raw.get("sources") or {}
    name = name or section.get("default") or "local"
    config = section.get(name)
    if not isinstance(config, dict) or not config.get("kind"):
        raise InvalidInput(f"source: '{name}' is not a configured source; this server has "
                           + (", ".join(source_names(settings)) or "none"))
    kind = config["kind"]
    if kind not in KINDS:
        raise InvalidInput(f"source '{name}': unknown kind '{kind}' (one of {', '.join(KINDS)})")
    module, _, cls = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), cls)(name, config, settings)
