"""Read a GeoTIFF/COG the user points at: a local path under the data root or an http(s) URL.

Band layouts are recognised from the band descriptions first, then from the band count; a user
with another layout passes ``bands`` (band name -> 1-based band index).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from aquamask.processes.errors import Forbidden, InvalidInput, TooLarge
from aquamask.processes.sources import Source
from aquamask.processes.types import DETECTION_BANDS, Scene
from aquamask.processes.urls import safe_remote_url

# Band order of the layouts recognised by count (1-based indices of DETECTION_BANDS).
SENTINEL2_13 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
                "B11", "B12")
LAYOUTS_BY_COUNT: dict[int, tuple[str, ...]] = {13: SENTINEL2_13, 6: DETECTION_BANDS}
_BAND_NAME = re.compile(r"^B0?(\d{1,2}A?)$", re.IGNORECASE)


def canonical_band(name: str) -> str | None:
    """'B2', 'b02', 'B8a' -> 'B02', 'B02', 'B8A'; anything else -> None."""
    match = _BAND_NAME.match(name.strip())
    if not match:
        return None
    number = match.group(1).upper()
    return f"B{number}" if number.endswith("A") else f"B{number.zfill(2)}"


def band_indexes(descriptions: tuple[str | None, ...], count: int,
                 mapping: Mapping[str, Any] | None = None) -> list[int]:
    """1-based indexes of DETECTION_BANDS in a dataset, or InvalidInput saying what is missing."""
    if mapping:
        indexes = []
        for band in DETECTION_BANDS:
            value = mapping.get(band)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= count:
                raise InvalidInput(
                    f"bands: '{band}' must map to a band index between 1 and {count}"
                    f" (got {value!r}); give all of {', '.join(DETECTION_BANDS)}")
            indexes.append(value)
        return indexes
    named = {canonical_band(d): i + 1 for i, d in enumerate(descriptions) if d}
    named.pop(None, None)
    if all(b in named for b in DETECTION_BANDS):
        return [named[b] for b in DETECTION_BANDS]
    layout = LAYOUTS_BY_COUNT.get(count)
    if layout is None:
        raise InvalidInput(
            f"the image has {count} bands, which is not a known layout (13-band Sentinel-2 "
            f"B01..B12 with B8A, or 6 bands {','.join(DETECTION_BANDS)}); pass 'bands' to say "
            "which band index holds each of " + ", ".join(DETECTION_BANDS))
    return [layout.index(b) + 1 for b in DETECTION_BANDS]


def resolve_href(href: str, data_root: Path, schemes: list[str], hosts: list[str] = (),
                 private_hosts: list[str] = ()) -> tuple[str, Path | None]:
    """The GDAL path to open and, for local files, the resolved file."""
    if not isinstance(href, str) or not href.strip():
        raise InvalidInput("image.href must be a non-empty string")
    parsed = urlparse(href)
    if parsed.scheme in ("http", "https"):
        url = safe_remote_url(href, schemes, list(hosts), list(private_hosts))
        return f"/vsicurl/{url}", None
    if parsed.scheme not in ("", "file"):
        raise InvalidInput(f"image.href: unsupported scheme '{parsed.scheme}' "
                           "(use a path under the data root, or http(s))")
    raw = Path(parsed.path if parsed.scheme == "file" else href).expanduser()
    path = (raw if raw.is_absolute() else data_root / raw).resolve()
    # resolve() follows symlinks, so a link inside the root pointing out of it is refused too
    if not path.is_relative_to(data_root):
        raise Forbidden(f"image.href: '{href}' is outside the data root; "
                        "only files under the server's data folder can be read")
    if not path.is_file():
        raise InvalidInput(f"image.href: no such file '{href}' under the data root")
    return str(path), path


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class RasterSource(Source):
    """The image a user points at with ``image.href``."""

    name = "raster"

    def __init__(self, data_root: Path, max_pixels: int, schemes: list[str],
                 hosts: list[str] = (), private_hosts: list[str] = ()) -> None:
        self.data_root = data_root
        self.max_pixels = max_pixels
        self.schemes = schemes
        self.hosts = list(hosts)
        self.private_hosts = list(private_hosts)

    def read(self, request: dict[str, Any]) -> Scene:
        scene, local = self._open(request)
        scene.sha256 = sha256_of(local) if local else None
        return scene

    def check(self, request: dict[str, Any]) -> int:
        """Open the image's header and apply every check ``read`` would, without reading
        pixels: lets a server refuse bad input before it creates a job. The image's pixels."""
        scene, _ = self._open(request)
        scene.close()
        return scene.width * scene.height

    def _open(self, request: dict[str, Any]) -> tuple[Scene, Path | None]:
        href = request["href"]
        gdal_path, local = resolve_href(href, self.data_root, self.schemes, self.hosts,
                                        self.private_hosts)
        try:
            dataset = rasterio.open(gdal_path)
        except RasterioIOError as err:
            raise InvalidInput(f"image.href: '{href}' cannot be read as a raster ({err})") from err
        try:
            return self._scene(dataset, href, request.get("bands")), local
        except Exception:
            dataset.close()
            raise

    def _scene(self, dataset: rasterio.DatasetReader, href: str,
               mapping: Mapping[str, Any] | None) -> Scene:
        if dataset.crs is None:
            raise InvalidInput(f"image.href: '{href}' has no coordinate reference system; "
                               "water areas and map layers need a georeferenced image")
        pixels = dataset.width * dataset.height
        if pixels > self.max_pixels:
            raise TooLarge(f"the image has {pixels:,} pixels; this server accepts at most "
                           f"{self.max_pixels:,}")
        indexes = band_indexes(dataset.descriptions, dataset.count, mapping)
        nodata = dataset.nodata

        def read(window: Window) -> np.ndarray:
            return read_window(dataset, indexes, window, nodata)

        return Scene(href=href, profile=dataset.profile.copy(), bands=DETECTION_BANDS,
                     read=read, close=dataset.close)


def read_window(dataset, indexes: list[int], window: Window, nodata) -> np.ndarray:
    """Float32 bands for ``window``, NaN for no data and for the part outside the raster.

    Clipping to the raster and padding is done here rather than with rasterio's boundless read,
    which goes through a WarpedVRT and is several times slower for this plain case.
    """
    out = np.full((len(indexes), int(window.height), int(window.width)), np.nan, np.float32)
    row0, col0 = int(window.row_off), int(window.col_off)
    r0, c0 = max(row0, 0), max(col0, 0)
    r1 = min(row0 + int(window.height), dataset.height)
    c1 = min(col0 + int(window.width), dataset.width)
    if r1 <= r0 or c1 <= c0:
        return out
    data = dataset.read(indexes, window=Window(c0, r0, c1 - c0, r1 - r0), out_dtype=np.float32)
    invalid = ~np.isfinite(data)
    if nodata is not None and not np.isnan(nodata):
        invalid |= data == nodata
    # a pixel with any band missing is no data in all of them
    data[:, invalid.any(axis=0)] = np.nan
    out[:, r0 - row0:r1 - row0, c0 - col0:c1 - col0] = data
    return out
