"""The types passed between pipeline steps: one definition each (docs/architecture.md
shows where each is made and read).

Bands, classes and probabilities of a whole Sentinel-2 tile do not fit in memory as float32, so
``Scene`` carries an open window reader rather than an array, and ``Mask`` points at the tiled
GeoTIFF that detection streamed its blocks into.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from rasterio.windows import Window

ProgressCallback = Callable[[float, str], None]
"""Called with a percentage (0-100) and a short message; raises to abort the work."""


def no_progress(percent: float, message: str) -> None:
    """A ProgressCallback for work nobody watches."""


def scaled(progress: ProgressCallback, start: float, end: float) -> ProgressCallback:
    """``progress`` of a part of the work that spans ``start`` to ``end`` of the whole."""
    return lambda pct, msg: progress(start + (end - start) * pct / 100.0, msg)


@dataclass
class Scene:
    """Imagery ready for detection.

    ``read(window)`` returns float32 surface reflectance x 10000 for ``bands`` (shape
    ``(len(bands), window.height, window.width)``), NaN where the input has no data; windows may
    extend past the raster edge (boundless read, NaN outside).
    """

    href: str
    profile: dict[str, Any]
    bands: tuple[str, ...]
    read: Callable[[Window], np.ndarray]
    source_ids: list[str] = field(default_factory=list)
    acquired: dt.datetime | None = None
    sha256: str | None = None
    close: Callable[[], None] = lambda: None
    # one record per source product (id, product_id, href of its STAC item or OData entry, ...)
    source_items: list[dict[str, Any]] = field(default_factory=list)
    # the pixels inside the place when the raster is a place's envelope (the rest is no data
    # and counts in no fraction); None: every pixel of the raster is the scene's
    place_pixels: int | None = None

    @property
    def width(self) -> int:
        return int(self.profile["width"])

    @property
    def height(self) -> int:
        return int(self.profile["height"])

    @property
    def pixels(self) -> int:
        """The pixels the scene's fractions are of."""
        return self.place_pixels if self.place_pixels is not None else self.width * self.height


@dataclass
class MaskStats:
    water_pixels: int
    valid_pixels: int
    total_pixels: int
    water_area_km2: float
    valid_area_km2: float

    @property
    def water_fraction(self) -> float:
        return self.water_pixels / self.valid_pixels if self.valid_pixels else 0.0

    @property
    def valid_fraction(self) -> float:
        return self.valid_pixels / self.total_pixels if self.total_pixels else 0.0


@dataclass
class Mask:
    """Detection output: a tiled uint8 GeoTIFF of classes (DRY, WATER, INVALID) and, beside it,
    the float32 water probability (NaN where invalid) the classes were thresholded from."""

    path: Path
    probability_path: Path | None  # None when the probability was not asked for
    profile: dict[str, Any]
    method: str
    threshold: float
    stats: MaskStats
    model: dict[str, str] | None = None  # name, version, weights_sha256


@dataclass
class Product:
    """A finished result on disk: the mask COG, its optional probability COG, the STAC item,
    and the input scene's display bands (``scene_cog``: water detection's products only)."""

    id: str
    directory: Path
    mask_cog: Path
    stac_item: Path
    stats: MaskStats
    bbox_wgs84: tuple[float, float, float, float]
    crs: str
    probability_cog: Path | None = None
    title: str = ""
    datetime: dt.datetime | None = None
    scene_cog: Path | None = None


@dataclass
class Layer:
    """A published map layer and the OGC service URLs that serve it."""

    name: str
    publisher: str  # "embedded" or "geoserver"
    wms_url: str
    wcs_url: str
    get_capabilities_url: str
    get_map_url: str
    get_coverage_url: str
    describe_coverage_url: str = ""
    legend_url: str = ""

    def as_output(self) -> dict[str, str]:
        return {
            "name": self.name,
            "published": self.publisher,
            "wms": self.wms_url,
            "wcs": self.wcs_url,
            "getcapabilities": self.get_capabilities_url,
            "getmap": self.get_map_url,
            "getcoverage": self.get_coverage_url,
            "describecoverage": self.describe_coverage_url,
            "legend": self.legend_url,
        }
