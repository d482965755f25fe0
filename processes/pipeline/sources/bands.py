"""Sentinel-2 bands of a found scene: which asset holds each band, and the radiometry
(scale, offset, nodata) that turns its digital numbers into reflectance x 10000.

Radiometry is read from metadata, in this order, and never guessed from dates:

1. ``earthsearch:boa_offset_applied: true`` (Earth Search ``sentinel-2-l2a``): Element 84 has
   already added the offset to the pixels, so none is applied again, even though the asset's
   ``raster:bands`` still lists ``offset: -0.1`` (see Element84/earth-search issues 9 and 71).
2. ``s2:processing_baseline`` below 04.00: ESA added no offset before baseline 04.00, so none.
3. the asset's ``raster:bands`` ``scale``/``offset`` (reflectance = DN * scale + offset; Earth
   Search ``sentinel-2-c1-l2a`` and the Copernicus Data Space STAC carry 0.0001 / -0.1).
4. ``s2:processing_baseline`` 04.00 or later without ``raster:bands`` (Planetary Computer):
   ESA's BOA_ADD_OFFSET of that baseline, -1000 DN with a quantification value of 10000.
5. nothing said: DN are reflectance x 10000 (the pre-2022 convention), no offset.

A SAFE product's own MTD_MSIL2A.xml (BOA_QUANTIFICATION_VALUE, BOA_ADD_OFFSET per band) is read
by the sentinelsat source and wins over all of these.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

from aquamask.processes.constants import DETECTION_BANDS

SCL = "SCL"
# Asset keys that hold each band, by catalogue: Earth Search (common names), Planetary Computer
# (band ids), Copernicus Data Space STAC (band id + resolution), and plain variants.
ASSET_KEYS: dict[str, tuple[str, ...]] = {
    "B02": ("blue", "B02", "B02_10m", "b02", "B2"),
    "B03": ("green", "B03", "B03_10m", "b03", "B3"),
    "B04": ("red", "B04", "B04_10m", "b04", "B4"),
    "B08": ("nir", "B08", "B08_10m", "b08", "B8"),
    "B11": ("swir16", "B11", "B11_20m", "b11"),
    "B12": ("swir22", "B12", "B12_20m", "b12"),
    SCL: ("scl", "SCL", "SCL_20m"),
}
# Band ids of MTD_MSIL2A.xml's BOA_ADD_OFFSET band_id attribute (0-based, ESA's order).
ESA_BAND_ID = {"B01": 0, "B02": 1, "B03": 2, "B04": 3, "B05": 4, "B06": 5, "B07": 6, "B08": 7,
               "B8A": 8, "B09": 9, "B10": 10, "B11": 11, "B12": 12}
OFFSET_BASELINE = 4.0
ESA_BOA_ADD_OFFSET = -1000.0
ESA_QUANTIFICATION = 10000.0
S2_NODATA = 0.0  # ESA: "Digital Number DN=0 remains the NO_DATA value"


@dataclass(frozen=True)
class BandAsset:
    """One band of one scene: a GDAL path, the 1-based band in it, and how to scale it.

    ``scale``/``offset`` give reflectance x 10000: value = DN * scale + offset.
    """

    path: str
    band: int = 1
    scale: float = 1.0
    offset: float = 0.0
    nodata: float | None = S2_NODATA


@dataclass
class SourceItem:
    """A scene a source found: enough to choose it, to cite it and (once materialised) to
    read it. ``product_id`` is the ESA product name where the catalogue knows it."""

    id: str
    source: str
    datetime: dt.datetime
    cloud_cover: float | None = None
    geometry: dict[str, Any] | None = None  # GeoJSON footprint, CRS84
    href: str | None = None  # the item's own (self) URL or file
    collection: str | None = None
    product_id: str | None = None
    assets: dict[str, BandAsset] = field(default_factory=dict)  # DETECTION_BANDS + SCL
    radiometry: str = ""  # which rule gave scale/offset, for the provenance
    extra: dict[str, Any] = field(default_factory=dict)
    materialize: Callable[["SourceItem"], "SourceItem"] | None = None

    @property
    def ready(self) -> bool:
        return all(b in self.assets for b in DETECTION_BANDS)

    def provenance(self) -> dict[str, Any]:
        """What the result's STAC item records about this input."""
        record = {"id": self.id, "product_id": self.product_id or self.id, "href": self.href,
                  "source": self.source, "collection": self.collection,
                  "datetime": self.datetime.isoformat(), "cloud_cover": self.cloud_cover,
                  "radiometry": self.radiometry}
        if self.assets:
            first = self.assets.get("B02")
            if first:
                record["scale"], record["offset"] = first.scale, first.offset
        return {k: v for k, v in record.items() if v is not None}

    def with_assets(self, assets: dict[str, BandAsset], radiometry: str) -> "SourceItem":
        return replace(self, assets=assets, radiometry=radiometry)

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "product_id": self.product_id or self.id,
                "datetime": self.datetime.isoformat(), "cloud_cover": self.cloud_cover,
                "collection": self.collection, "source": self.source, "href": self.href}


def _baseline(properties: dict[str, Any]) -> float | None:
    value = properties.get("s2:processing_baseline") or properties.get("processingbaseline")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def radiometry(properties: dict[str, Any], asset: dict[str, Any]) -> tuple[float, float, str]:
    """(scale, offset, rule) to reflectance x 10000 for one asset of a STAC item."""
    raster_bands = asset.get("raster:bands") or []
    declared = raster_bands[0] if raster_bands and isinstance(raster_bands[0], dict) else {}
    scale = declared.get("scale")
    offset = declared.get("offset")
    scale_10k = float(scale) * 10000.0 if scale is not None else 1.0
    baseline = _baseline(properties)
    if properties.get("earthsearch:boa_offset_applied") is True:
        return scale_10k, 0.0, "earthsearch:boa_offset_applied"
    if baseline is not None and baseline < OFFSET_BASELINE:
        return scale_10k, 0.0, f"s2:processing_baseline {baseline:05.2f} (no offset)"
    if offset is not None:
        return scale_10k, float(offset) * 10000.0, "raster:bands"
    if baseline is not None:  # the offset is in DN, before the scale
        return (scale_10k, ESA_BOA_ADD_OFFSET * scale_10k,
                f"s2:processing_baseline {baseline:05.2f} (BOA_ADD_OFFSET)")
    return scale_10k, 0.0, "raster:bands" if scale is not None else "none declared"


def asset_nodata(asset: dict[str, Any]) -> float | None:
    raster_bands = asset.get("raster:bands") or []
    if raster_bands and isinstance(raster_bands[0], dict) and "nodata" in raster_bands[0]:
        value = raster_bands[0]["nodata"]
        return None if value in (None, "nan") else float(value)
    return S2_NODATA


def find_asset(assets: dict[str, Any], band: str) -> tuple[str, Any] | None:
    for key in ASSET_KEYS[band]:
        if key in assets:
            return key, assets[key]
    # eo:bands names as a last resort (a catalogue with its own asset keys)
    for key, asset in assets.items():
        names = {b.get("name") for b in (_get(asset, "eo:bands") or []) if isinstance(b, dict)}
        if band in names or band.replace("0", "", 1) in names:
            return key, asset
    return None


def _get(asset: Any, key: str) -> Any:
    return asset.get(key) if isinstance(asset, dict) else getattr(asset, "extra_fields",
                                                                  {}).get(key)


def gdal_path(href: str) -> str:
    """The GDAL path of an asset href: /vsicurl for http(s), /vsis3 for s3, files as given."""
    if href.startswith(("http://", "https://")):
        return f"/vsicurl/{href}"
    if href.startswith("s3://"):
        return "/vsis3/" + href[len("s3://"):]
    if href.startswith("file://"):
        return href[len("file://"):]
    return href


def item_assets(properties: dict[str, Any], assets: dict[str, dict[str, Any]],
                resolve: Callable[[str], str] = lambda href: href
                ) -> tuple[dict[str, BandAsset], str, list[str]]:
    """The detection bands and SCL of a STAC item's assets (dicts), their radiometry rule,
    and the bands that are missing."""
    found: dict[str, BandAsset] = {}
    missing: list[str] = []
    rules: set[str] = set()
    for band in (*DETECTION_BANDS, SCL):
        hit = find_asset(assets, band)
        if hit is None:
            missing.append(band)
            continue
        _, asset = hit
        path = gdal_path(resolve(asset["href"]))
        if band == SCL:
            found[band] = BandAsset(path=path, nodata=None)
            continue
        scale, offset, rule = radiometry(properties, asset)
        rules.add(rule)
        found[band] = BandAsset(path=path, scale=scale, offset=offset,
                                nodata=asset_nodata(asset))
    return found, ", ".join(sorted(rules)), missing


def as_dict(asset: BandAsset) -> dict[str, Any]:
    return asdict(asset)
