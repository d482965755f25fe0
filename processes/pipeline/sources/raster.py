"""Read a GeoTIFF/COG the user points at: a local path under the data root or an http(s) URL.

Only GeoTIFF (COGs included) is opened, with GDAL's GTiff driver alone: VRT and every other
format that can name other files (GTI, MRF, netCDF/HDF subdatasets, ...) is refused, since its
sources would be read with this server's network and files. Remote images are read through
:mod:`.remote` (every connection and redirect checked), never through GDAL's /vsicurl. An image
whose blocks (tiles or strips) decompress to more than ``limits.max_block_bytes`` is refused
before a job exists: one such block costs that much memory and time to read any pixel of it.

Band layouts are recognised from the band descriptions first, then from the band count; a user
with another layout passes ``bands`` (band name -> 1-based band index).
"""
from __future__ import annotations

import contextvars
import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, TypeVar
from urllib.parse import unquote, urlsplit

import numpy as np
import rasterio
from rasterio.enums import Interleaving
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from aquamask.processes.constants import DETECTION_BANDS
from aquamask.processes.errors import InvalidInput, TooLarge
from aquamask.processes.pipeline.sources.acquired import dataset_time
from aquamask.processes.pipeline.sources.http import HttpPolicy
from aquamask.processes.pipeline.sources.remote import RemoteImage
from aquamask.processes.pipeline.sources.scale import (
    reflectance_factor,
    rescaled,
    rescaled_lazily,
    sample_windows,
)
from aquamask.processes.pipeline.sources.urls import HrefPolicy, check_href_text, file_under
from aquamask.processes.types import Scene

if TYPE_CHECKING:
    from aquamask.processes.settings import Settings

# Defence in depth: no VRT from a user reaches GDAL, and none in this process may read raw
# bytes of arbitrary files (a VRTRawRasterBand) should one ever get through.
os.environ["GDAL_VRT_ENABLE_RAWRASTERBAND"] = "NO"

DRIVER = "GTiff"  # GeoTIFF and COG; GDAL's COG driver only writes
ACCEPTED = ("this server reads GeoTIFF and Cloud-Optimized GeoTIFF images only (no VRT or other "
            "format that refers to other files); convert yours, e.g. gdal_translate -of COG "
            "in.vrt out.tif")
DEFAULT_MAX_BLOCK_BYTES = 64 * 2**20
T = TypeVar("T")
REAL_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
               "float32", "float64")

# Band order of the layouts recognised by count (1-based indices of DETECTION_BANDS).
SENTINEL2_13 = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
                "B11", "B12")
LAYOUTS_BY_COUNT: dict[int, tuple[str, ...]] = {13: SENTINEL2_13, 6: DETECTION_BANDS}
_BAND_NAME = re.compile(r"^B0?(\d{1,2}A?)$", re.IGNORECASE)
_VSI_PREFIX = re.compile(r"/vsi\w+/")


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


def resolve_href(href: Any, data_root: Path, policy: HrefPolicy) -> str | Path:
    """A checked http(s) URL (its connections are checked as it is read), or the resolved
    local file under ``data_root``."""
    href = check_href_text(href, policy.field)
    try:
        parts = urlsplit(href)
    except ValueError:  # e.g. an unclosed [ of an IPv6 host
        raise InvalidInput(f"{policy.field}: '{href}' is not a valid path or URL") from None
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        policy.check_url(href)
        return href
    if scheme not in ("", "file"):
        raise InvalidInput(f"{policy.field}: unsupported scheme '{scheme}' "
                           f"(use {policy.local}, or http(s))")
    if scheme == "file":
        if parts.netloc:
            raise InvalidInput(f"{policy.field}: a file: URL names no host; write "
                               f"file:///path or just {policy.local}")
        text = check_href_text(unquote(parts.path), policy.field)
    else:
        text = href
    return file_under(data_root, text, href, policy.field)


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def block_bytes(dataset: rasterio.DatasetReader) -> int:
    """What one block (tile or strip) of the dataset decompresses to: every band's part of it
    when the bands are interleaved by pixel, as one block holds them all."""
    rows, cols = dataset.block_shapes[0]
    sizes = [np.dtype(dtype).itemsize for dtype in dataset.dtypes]
    per_pixel = sum(sizes) if dataset.interleaving == Interleaving.pixel else max(sizes)
    return rows * cols * per_pixel


def check_structure(dataset: rasterio.DatasetReader, label: str, max_block_bytes: int) -> None:
    """Refuse what would cost a job far more than its pixels say, or cannot be read as numbers.
    ``label`` names the image in messages (e.g. "image.href: 'a.tif'")."""
    odd = sorted({d for d in dataset.dtypes if d not in REAL_DTYPES})
    if odd:
        raise InvalidInput(f"{label} has bands of type {', '.join(odd)}; bands must hold "
                           "integers or real numbers")
    size = block_bytes(dataset)
    if size > max_block_bytes:
        rows, cols = dataset.block_shapes[0]
        raise TooLarge(
            f"{label} is stored in blocks of {cols:,} x {rows:,} pixels that "
            f"decompress to {size / 2**20:,.0f} MiB each; this server reads blocks of at most "
            f"{max_block_bytes / 2**20:,.0f} MiB. Write it tiled, e.g. gdal_translate -of COG "
            "in.tif out.tif (or -co TILED=YES)")


def check_geotiff(path: str, label: str, max_block_bytes: int) -> None:
    """Refuse a local file that is no GeoTIFF (a VRT or any other format), or whose blocks
    are too large; for files named by others than the user (e.g. a local STAC catalog)."""
    try:
        with rasterio.open(path, driver=DRIVER) as dataset:
            check_structure(dataset, label, max_block_bytes)
    except RasterioIOError as err:
        raise InvalidInput(f"{label} is not a GeoTIFF; " + ACCEPTED) from err


def unreadable(href: str, err: Exception, *hidden: str, field: str = "image.href"
               ) -> InvalidInput:
    """InvalidInput for a file GDAL cannot open, its reason without this server's paths."""
    reason = str(err)
    for text in hidden:
        reason = reason.replace(text, href)
    reason = _VSI_PREFIX.sub("", reason)  # rasterio's /vsiriopener_<id>/ of a remote image
    return InvalidInput(f"{field}: '{href}' cannot be read as a raster ({reason}); "
                        + ACCEPTED)


# an image without a CRS is refused with a message of ours (areas and layers need one); the
# warning rasterio gives first would reach a CLI user's terminal as a source line
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)


class RasterSource:
    """The image a user points at with ``image.href``."""

    name = "raster"

    def __init__(self, data_root: Path, max_pixels: int, schemes: Iterable[str],
                 hosts: Iterable[str] = (), private_hosts: Iterable[str] = (),
                 max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
                 http: HttpPolicy = HttpPolicy(), policy: HrefPolicy | None = None) -> None:
        self.data_root = data_root
        self.max_pixels = max_pixels
        # ``policy`` given: its schemes and hosts, and its names in messages (the CLI's)
        self.policy = policy or HrefPolicy.of(schemes, hosts, private_hosts)
        self.max_block_bytes = max_block_bytes
        self.http = http

    @classmethod
    def from_settings(cls, settings: "Settings") -> "RasterSource":
        limits, http = settings.limits, settings.sources.http
        return cls(settings.data_root, limits.max_pixels, limits.href_schemes,
                   limits.href_hosts, limits.href_private_hosts, limits.max_block_bytes,
                   HttpPolicy(http.retries, http.backoff, http.timeout))

    def read(self, href: str, bands: Mapping[str, Any] | None = None) -> Scene:
        """The image ``href`` (``bands``: which band holds each detection band, when its
        layout is not recognised) as a Scene, with the sha256 of a local file."""
        scene, local = self._open(href, bands)
        scene.sha256 = sha256_of(local) if local else None
        return scene

    def check(self, href: str, bands: Mapping[str, Any] | None = None) -> int:
        """Open the image's header and apply every check ``read`` would, without reading
        pixels: lets a server refuse bad input before it creates a job. The image's pixels."""
        scene, _ = self._open(href, bands)
        scene.close()
        return scene.width * scene.height

    def _open(self, href: str, bands: Mapping[str, Any] | None
              ) -> tuple[Scene, Path | None]:
        target = resolve_href(href, self.data_root, self.policy)
        # a compressed block may be a little larger than its pixels (incompressible data)
        image = None if isinstance(target, Path) else RemoteImage(
            target, self.policy, self.http, max_range=2 * self.max_block_bytes)
        # rasterio keeps the opener's registration in a context variable that GDAL's callbacks
        # read (a first read probes for a .msk file; closing unregisters): they must run in
        # the context the image was opened in, whichever thread reads (detection has its own)
        opened = _Opened(self._dataset(href, target, image), image, contextvars.copy_context())
        try:
            scene = self._scene(opened, href, bands)
        except Exception:
            opened.close()
            raise
        return scene, target if isinstance(target, Path) else None

    def _dataset(self, href: str, target: str | Path,
                 image: RemoteImage | None) -> rasterio.DatasetReader:
        try:
            if image is None:
                return rasterio.open(target, driver=DRIVER)
            return rasterio.open(image.path, opener=image.opener(), driver=DRIVER)
        except RasterioIOError as err:
            if image is None:
                raise unreadable(href, err, str(target), str(self.data_root),
                                 field=self.policy.field) from err
            image.close()
            raise (image.failure or unreadable(href, err, image.path,
                                               field=self.policy.field)) from err

    def _scene(self, opened: "_Opened", href: str, mapping: Mapping[str, Any] | None) -> Scene:
        dataset = opened.dataset
        if dataset.crs is None:
            raise InvalidInput(f"{self.policy.field}: '{href}' has no coordinate reference system; "
                               "water areas and map layers need a georeferenced image")
        pixels = dataset.width * dataset.height
        if pixels > self.max_pixels:
            raise TooLarge(f"the image has {pixels:,} pixels; this server accepts at most "
                           f"{self.max_pixels:,}")
        label = f"{self.policy.field}: '{href}'"
        check_structure(dataset, label, self.max_block_bytes)
        indexes = band_indexes(dataset.descriptions, dataset.count, mapping)
        nodata = dataset.nodata

        def read(window: Window) -> np.ndarray:
            return opened.run(read_window, dataset, indexes, window, nodata)

        if opened.image is None:  # a local file: its scale is told now, from a sample
            sample = np.concatenate([read(w).ravel()
                                     for w in sample_windows(dataset.width, dataset.height)])
            scaled = rescaled(read, reflectance_factor(sample, label))
        else:  # a remote one: from the first pixels detection fetches (no reads before that)
            scaled = rescaled_lazily(read, label)
        return Scene(href=href, profile=dataset.profile.copy(), bands=DETECTION_BANDS,
                     read=scaled, close=opened.close,
                     acquired=dataset_time(dataset, Path(urlsplit(href).path).stem))


@dataclass
class _Opened:
    """An open dataset, the remote image behind it (if any) and the context it was opened in."""

    dataset: rasterio.DatasetReader
    image: RemoteImage | None
    context: contextvars.Context

    def run(self, read: Callable[..., T], *args: Any) -> T:
        try:
            return self.context.copy().run(read, *args)
        except RasterioIOError as err:
            if self.image is not None:  # a remote read refused or failed mid-job
                raise (self.image.failure or err) from err
            # the input's own bytes (a truncated or damaged file): the request's fault, said
            # without GDAL's message, which names the server's path
            raise InvalidInput("the image could not be read: part of it is missing or "
                               "damaged (a truncated or corrupt file?)") from err

    def close(self) -> None:
        self.context.copy().run(self.dataset.close)
        if self.image is not None:
            self.image.close()


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
