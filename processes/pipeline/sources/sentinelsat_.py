"""Hubs that speak the DHuS OpenSearch/OData API, through sentinelsat.

Search is DHuS OpenSearch (``/search?q=...&format=json``). A chosen product is downloaded as
its SAFE zip (OData ``Products('uuid')/$value``) with sentinelsat: an interrupted download
resumes from its ``.incomplete`` file with an HTTP Range request, and the finished file is
checked against the hub's MD5 (or SHA3-256) before it is renamed into the product cache. The
cache keeps a sha256 beside each zip, checked on every reuse, and a byte budget
(``sources.products.max_mb``, least recently used out first).

Bands are read straight from the zip with GDAL (``/vsizip/.../IMG_DATA/R10m/..._B02_10m.jp2``),
nothing unpacked; the radiometry comes from the product's own MTD_MSIL2A.xml (BOA_ADD_OFFSET and
BOA_QUANTIFICATION_VALUE; RADIO_ADD_OFFSET and QUANTIFICATION_VALUE for L1C) and its NODATA
special value.

Credentials: ``sources.<name>.user``/``password``, to be given in the environment
(``AQUAMASK__SOURCES__DHUS__USER``, ``AQUAMASK__SOURCES__DHUS__PASSWORD``), never in the file.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import requests
from shapely import wkt
from shapely.geometry import mapping

from aquamask.processes.constants import DETECTION_BANDS
from aquamask.processes.errors import UpstreamError
from aquamask.processes.files import write_atomic
from aquamask.processes.pipeline.sources import PlaceSource
from aquamask.processes.pipeline.sources.bands import (
    ESA_BAND_ID,
    S2_NODATA,
    SCL,
    BandAsset,
    SourceItem,
)
from aquamask.processes.pipeline.sources.cache import file_digest, prune
from aquamask.processes.pipeline.sources.query import PlaceQuery

LOGGER = logging.getLogger(__name__)
_MTD = re.compile(r"^[^/]+\.SAFE/MTD_MSIL(1C|2A)\.xml$")
BAND_RESOLUTION = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B11": 20, "B12": 20, SCL: 20}


def _text(root: ElementTree.Element, tag: str) -> str | None:
    element = next(root.iter(tag), None)
    return element.text.strip() if element is not None and element.text else None


def safe_assets(zip_path: Path) -> tuple[dict[str, BandAsset], str, dict[str, Any]]:
    """The detection bands (and SCL) of a SAFE zip as /vsizip paths with the product's own
    radiometry; raises UpstreamError when the zip is not a readable Sentinel-2 SAFE."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = archive.namelist()
            mtd = next((n for n in names if _MTD.match(n)), None)
            if mtd is None:
                raise UpstreamError(f"{zip_path.name} holds no MTD_MSIL2A.xml/MTD_MSIL1C.xml: "
                                    "not a Sentinel-2 SAFE product")
            root = ElementTree.fromstring(archive.read(mtd))
    except zipfile.BadZipFile as err:
        raise UpstreamError(f"{zip_path.name} is not a readable zip ({err})") from err
    safe_dir = mtd.split("/", 1)[0]
    level2 = mtd.endswith("MTD_MSIL2A.xml")
    quantification = float(_text(root, "BOA_QUANTIFICATION_VALUE" if level2
                                 else "QUANTIFICATION_VALUE") or 10000.0)
    offset_tag = "BOA_ADD_OFFSET" if level2 else "RADIO_ADD_OFFSET"
    offsets = {int(str(e.get("band_id"))): float(e.text) for e in root.iter(offset_tag)
               if e.get("band_id") is not None and e.text}
    nodata = S2_NODATA
    for special in root.iter("Special_Values"):
        if _text(special, "SPECIAL_VALUE_TEXT") == "NODATA":
            nodata = float(_text(special, "SPECIAL_VALUE_INDEX") or S2_NODATA)
    files = [e.text.strip() for e in root.iter("IMAGE_FILE") if e.text]
    scale = 10000.0 / quantification
    assets: dict[str, BandAsset] = {}
    for band in (*DETECTION_BANDS, SCL):
        if not level2 and band == SCL:
            continue
        suffix = f"_{band}_{BAND_RESOLUTION[band]}m" if level2 else f"_{band}"
        match = next((f for f in files if f.endswith(suffix)), None)
        if match is None:
            if band == SCL:
                continue
            raise UpstreamError(f"{zip_path.name}: MTD lists no image file for {band}")
        path = f"/vsizip/{zip_path}/{safe_dir}/{match}.jp2"
        if band == SCL:
            assets[band] = BandAsset(path=path, nodata=None)
        else:
            assets[band] = BandAsset(path=path, scale=scale,
                                     offset=offsets.get(ESA_BAND_ID[band], 0.0) * scale,
                                     nodata=nodata)
    baseline = _text(root, "PROCESSING_BASELINE")
    rule = (f"{'BOA' if level2 else 'RADIO'}_ADD_OFFSET from the SAFE metadata "
            f"(baseline {baseline}, quantification {quantification:g})" if offsets
            else f"SAFE metadata: no offset (baseline {baseline})")
    return assets, rule, {"processing_baseline": baseline, "safe": safe_dir}


class SentinelsatSource(PlaceSource):
    kind = "sentinelsat"

    def __init__(self, name: str, config: dict[str, Any], settings) -> None:
        super().__init__(name, config, settings)
        self.url = config.get("url")
        self.user = config.get("user")
        self.password = config.get("password")
        self.producttype = config.get("producttype") or "S2MSI2A"
        products = settings.sources.products
        self.products_dir = settings.path(products.dir)
        self.products_max_bytes = int(products.max_mb * 2**20)

    def check(self) -> None:
        if not self.url:
            raise UpstreamError(f"the source '{self.name}' has no hub url configured "
                                f"(sources.{self.name}.url)")
        if not self.user or not self.password:
            env = f"AQUAMASK__SOURCES__{self.name.upper()}"
            raise UpstreamError(f"the source '{self.name}' needs hub credentials: set "
                                f"{env}__USER and {env}__PASSWORD")

    def api(self):
        from sentinelsat import SentinelAPI

        self.check()
        api = SentinelAPI(str(self.user), str(self.password), self.url,
                          show_progressbars=False, timeout=self.http.timeout)
        self.http.mount(api.session)
        return api

    def _hub_error(self, err: Exception, doing: str) -> UpstreamError:
        from sentinelsat.exceptions import InvalidChecksumError, LTATriggered, UnauthorizedError

        if isinstance(err, UnauthorizedError):
            return UpstreamError(f"the hub of '{self.name}' ({self.url}) refused the "
                                 f"credentials of user '{self.user}' (HTTP 401) while {doing}; "
                                 f"check AQUAMASK__SOURCES__{self.name.upper()}__USER/PASSWORD")
        if isinstance(err, InvalidChecksumError):
            return UpstreamError(f"{doing}: the downloaded file does not match the hub's "
                                 "checksum; it was deleted, try again")
        if isinstance(err, LTATriggered):
            return UpstreamError(f"{doing}: the product is offline (long-term archive); its "
                                 "retrieval was requested, try again later")
        return UpstreamError(f"the hub of '{self.name}' ({self.url}) failed while {doing} "
                             f"after {self.http.retries} retries: {err}")

    def search(self, query: PlaceQuery, limit: int | None = None) -> list[SourceItem]:
        from sentinelsat.exceptions import SentinelAPIError

        api = self.api()
        keywords: dict[str, Any] = {"platformname": "Sentinel-2",
                                    "producttype": self.producttype}
        if query.max_cloud_cover < 100:
            keywords["cloudcoverpercentage"] = (0, query.max_cloud_cover)
        try:
            products = api.query(area=query.geometry.wkt, date=(query.start, query.end),
                                 limit=limit or self.max_items, **keywords)
        except (SentinelAPIError, requests.RequestException) as err:
            raise self._hub_error(err, "searching") from err
        items = []
        for uuid, product in products.items():
            begin = product.get("beginposition")
            if not isinstance(begin, dt.datetime):
                continue
            footprint = product.get("footprint")
            try:
                geometry = mapping(wkt.loads(footprint)) if footprint else None
            except Exception:  # noqa: BLE001 - a hub's broken WKT: keep the scene, no footprint
                geometry = None
            title = product.get("title") or product.get("identifier") or uuid
            items.append(SourceItem(
                id=title, source=self.name,
                datetime=begin if begin.tzinfo else begin.replace(tzinfo=dt.timezone.utc),
                cloud_cover=product.get("cloudcoverpercentage"), geometry=geometry,
                href=f"{api.api_url}odata/v1/Products('{uuid}')",
                collection=product.get("producttype"), product_id=title,
                extra={"uuid": uuid, "processing_baseline": product.get("processingbaseline")},
                materialize=self._download))
        return items

    def _cached(self, title: str) -> Path | None:
        path = self.products_dir / f"{title}.zip"
        sidecar = path.with_name(path.name + ".sha256")
        if not path.is_file() or not sidecar.is_file():
            return None
        if file_digest(path) != sidecar.read_text().strip():
            LOGGER.warning("cached product %s is corrupt; downloading it again", path)
            path.unlink(missing_ok=True)
            sidecar.unlink(missing_ok=True)
            return None
        now = time.time()
        path.touch()
        sidecar.touch()
        LOGGER.info("product %s from the cache (%.0f s old)", title, now - path.stat().st_ctime)
        return path

    def download(self, item: SourceItem) -> Path:
        """The SAFE zip of ``item`` in the product cache, downloaded (or resumed) if needed."""
        from sentinelsat.exceptions import InvalidChecksumError, SentinelAPIError

        cached = self._cached(item.id)
        if cached:
            return cached
        self.products_dir.mkdir(parents=True, exist_ok=True)
        api = self.api()
        try:
            info = api.download(item.extra["uuid"], directory_path=str(self.products_dir),
                                checksum=True)
        except (SentinelAPIError, InvalidChecksumError, requests.RequestException) as err:
            raise self._hub_error(err, f"downloading {item.id}") from err
        path = Path(info["path"])
        final = self.products_dir / f"{item.id}.zip"
        if path != final:
            path.replace(final)
        write_atomic(final.with_name(final.name + ".sha256"), file_digest(final).encode())
        prune(self.products_dir, self.products_max_bytes, keep=[final], pattern="*.zip")
        return final

    def _download(self, item: SourceItem) -> SourceItem:
        path = self.download(item)
        assets, rule, extra = safe_assets(path)
        return replace(item, assets=assets, radiometry=rule, extra={**item.extra, **extra})
