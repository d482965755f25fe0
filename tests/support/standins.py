"""Stand-ins for the imagery services aquamask's place sources talk to; none can be reached here.

- ``Loopback``: a real HTTP server on 127.0.0.1 (threads, HTTP/1.1, HEAD and byte ranges as
  GDAL's /vsicurl and sentinelsat's resume use them) with routes, a request log and injected
  failures (e.g. a 503 before the real answer).
- ``build_tiles``: Sentinel-2 L2A-shaped tiles made from the real Sen1Floods11 chip in
  ../shared/data (its B02, B03, B04, B08, B11, B12 values; SCL from its hand label: water 6,
  land 4, no label 0), relocated to either side of the 0° meridian so that a place there spans
  UTM zones 30 and 31. As on Earth Search, one COG per band: 10 m B02/B03/B04/B08, 20 m
  B11/B12/SCL (2x2 means / nearest), uint16 DN with nodata 0, ``offset_dn`` added (1000 for a
  processing baseline 04.00+ product). The chip is L1C top-of-atmosphere reflectance: real
  values and texture, not atmospherically corrected.
- ``stac_item``: an item in the shape of Earth Search v1 ``sentinel-2-l2a`` (properties and
  asset keys copied from a recorded Earth Search search response: ``blue``, ``green``, ``red``,
  ``nir``, ``swir16``, ``swir22``, ``scl``, ``raster:bands`` with scale 0.0001 / offset -0.1,
  ``s2:processing_baseline``, ``s2:product_uri``, ``earthsearch:boa_offset_applied``).
- ``StacApi``: the STAC API routes (landing page with conformance classes, POST/GET /search
  with bbox, intersects, datetime, collections, limit, query on eo:cloud_cover; item pages)
  as the STAC API - Item Search spec v1.0.0 defines them.
- ``Dhus``: the DHuS OpenSearch JSON feed (``/search?format=json``) and OData v1 product
  entries (``Products('uuid')?$format=json``, ``/Online/$value``, ``/$value`` with
  Content-Disposition and ranges) in the shapes sentinelsat parses (its ``_parse_opensearch_
  response``/``_parse_odata_response``), with HTTP Basic authentication.
- ``safe_zip``: a Sentinel-2 L2A SAFE zip (PSD 14 layout: MTD_MSIL2A.xml with PRODUCT_URI,
  PROCESSING_BASELINE, BOA_QUANTIFICATION_VALUE, BOA_ADD_OFFSET per band, NODATA special value,
  IMAGE_FILE list; GRANULE/.../IMG_DATA/R10m|R20m JPEG2000 bands) built from a tile.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from pyproj import Transformer
from shapely.geometry import box, mapping, shape

from tests.support.server import SPAIN_IMAGE, SPAIN_LABEL, require_spain

Response = tuple[int, dict[str, str], bytes]
BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")
SPAIN_INDEX = {"B02": 2, "B03": 3, "B04": 4, "B08": 8, "B11": 12, "B12": 13}
EARTH_SEARCH_KEYS = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir",
                     "B11": "swir16", "B12": "swir22", "SCL": "scl"}
RESOLUTION = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B11": 20, "B12": 20, "SCL": 20}
# a place straddling the 0° meridian: UTM zone 30 to the west, 31 to the east
PLACE = (-0.02, 38.09, 0.02, 38.11)
LAT = 38.10


# --------------------------------------------------------------------------- HTTP server
@dataclass
class Logged:
    method: str
    path: str
    status: int
    headers: dict[str, str]
    body: bytes = b""


class Loopback:
    """A threaded HTTP/1.1 server on loopback: ``routes`` (regex on the path -> handler),
    files under ``files`` served with byte ranges, ``fail(pattern, [503, ...])`` to answer the
    next requests matching with those statuses first."""

    def __init__(self, files: Path | None = None) -> None:
        self.files = files
        self.routes: list[tuple[re.Pattern, Callable[..., Response]]] = []
        self.log: list[Logged] = []
        self.failures: list[tuple[re.Pattern, list[int]]] = []
        self.auth: tuple[str, str] | None = None
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                server._handle(self, head=True)

            def do_GET(self):
                server._handle(self)

            def do_POST(self):
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def route(self, pattern: str, handler: Callable[..., Response]) -> None:
        self.routes.append((re.compile(pattern), handler))

    def fail(self, pattern: str, statuses: list[int]) -> None:
        self.failures.append((re.compile(pattern), list(statuses)))

    def requests(self, pattern: str = "", method: str | None = None) -> list[Logged]:
        regex = re.compile(pattern)
        return [r for r in self.log if regex.search(r.path)
                and (method is None or r.method == method)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handle(self, handler: BaseHTTPRequestHandler, head: bool = False) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        path = handler.path
        status, headers, payload = self._respond(handler, path, body, head)
        with self.lock:
            self.log.append(Logged(handler.command, unquote(path), status,
                                   dict(handler.headers), body))
        send(handler, (status, headers, payload), head)

    def _respond(self, handler, path: str, body: bytes, head: bool) -> Response:
        with self.lock:
            for pattern, statuses in self.failures:
                if statuses and pattern.search(unquote(path)):
                    return statuses.pop(0), {"Content-Type": "text/plain"}, b"try again later"
        if self.auth is not None:
            expected = "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()
            if handler.headers.get("Authorization") != expected:
                return 401, {"Content-Type": "text/html", "WWW-Authenticate": 'Basic realm="x"'}, (
                    b"<html><body><h1>HTTP Status 401 - Full authentication is required to "
                    b"access this resource</h1></body></html>")
        parsed = urlparse(path)
        for pattern, route in self.routes:
            match = pattern.fullmatch(unquote(parsed.path))
            if match:
                return route(handler=handler, match=match, query=parse_qs(parsed.query),
                             body=body, head=head)
        if self.files is not None:
            file = (self.files / unquote(parsed.path).lstrip("/")).resolve()
            if file.is_relative_to(self.files.resolve()) and file.is_file():
                return serve_bytes(handler, file.read_bytes())
        return 404, {"Content-Type": "text/plain"}, b"not found"


def send(handler: BaseHTTPRequestHandler, response: Response, head: bool = False) -> None:
    """Write ``response`` (status, headers, body) to the client; the body unless ``head``."""
    status, headers, body = response
    handler.send_response(status)
    headers.setdefault("Content-Length", str(len(body)))
    for key, value in headers.items():
        handler.send_header(key, value)
    handler.end_headers()
    if not head:
        handler.wfile.write(body)


def serve_bytes(handler, data: bytes, content_type: str = "application/octet-stream",
                extra: dict[str, str] | None = None) -> Response:
    """200 or 206 with Content-Range, as a static file server answers ranges."""
    headers = {"Content-Type": content_type, "Accept-Ranges": "bytes", **(extra or {})}
    header = handler.headers.get("Range")
    if header:
        match = re.match(r"bytes=(\d+)-(\d*)$", header.strip())
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            end = min(end, len(data) - 1)
            if start >= len(data):
                return 416, {"Content-Range": f"bytes */{len(data)}"}, b""
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, headers, data[start:end + 1]
    return 200, headers, data


def json_response(document: Any, status: int = 200,
                  content_type: str = "application/json") -> Response:
    return status, {"Content-Type": content_type}, json.dumps(document).encode()


# --------------------------------------------------------------------------- imagery
def spain_chip() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The real chip's detection bands (int16 x 10000) and an SCL made from its hand label."""
    require_spain()
    with rasterio.open(SPAIN_IMAGE) as src:
        bands = {b: src.read(i) for b, i in SPAIN_INDEX.items()}
    with rasterio.open(SPAIN_LABEL) as src:
        label = src.read(1)
    scl = np.where(label == 1, 6, np.where(label == 0, 4, 0)).astype(np.uint8)
    return bands, scl


def _down2(array: np.ndarray, mean: bool) -> np.ndarray:
    h, w = array.shape
    blocks = array[:h // 2 * 2, :w // 2 * 2].reshape(h // 2, 2, w // 2, 2)
    return blocks.mean(axis=(1, 3)) if mean else blocks[:, 0, :, 0]


def write_cog(path: Path, array: np.ndarray, crs: str, transform: Affine, nodata=0,
              dtype="uint16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", driver="GTiff", width=array.shape[1], height=array.shape[0],
                       count=1, dtype=dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(array.astype(dtype), 1)
    rasterio.shutil.copy(tmp, path, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=256)
    tmp.unlink()
    return path


@dataclass
class Tile:
    """One relocated tile: where it is, its band files, the values it was made from."""

    name: str
    crs: str
    transform: Affine  # of the 10 m grid
    files: dict[str, Path]
    values: dict[str, np.ndarray]  # reflectance x 10000 before the DN offset, 10 m / 20 m
    scl: np.ndarray  # 20 m
    offset_dn: int

    @property
    def footprint(self) -> dict:
        west, north = self.transform.c, self.transform.f
        east, south = west + 5120, north - 5120
        to_lonlat = Transformer.from_crs(self.crs, "OGC:CRS84", always_xy=True)
        ring = [to_lonlat.transform(x, y) for x, y in
                ((west, north), (east, north), (east, south), (west, south), (west, north))]
        return mapping(shape({"type": "Polygon", "coordinates": [ring]}))


def build_tile(folder: Path, name: str, zone_epsg: int, edge_lon: float, side: str,
               offset_dn: int = 0, flip: bool = False,
               cloud: tuple[slice, slice] | None = None,
               bands: dict[str, np.ndarray] | None = None,
               scl: np.ndarray | None = None) -> Tile:
    """A 512 x 512 px (10 m) tile of the real chip in EPSG ``zone_epsg`` whose east (``side``
    'west') or west ('east') edge lies at ``edge_lon``; ``cloud`` marks an SCL cloud box (in
    20 m pixels) over which the tile's pixels are also brightened like a cloud."""
    if bands is None or scl is None:
        bands, scl = spain_chip()
    if flip:
        bands = {b: np.fliplr(a) for b, a in bands.items()}
        scl = np.fliplr(scl)
    crs = f"EPSG:{zone_epsg}"
    x, y = Transformer.from_crs("OGC:CRS84", crs, always_xy=True).transform(edge_lon, LAT)
    _, top = Transformer.from_crs("OGC:CRS84", crs, always_xy=True).transform(edge_lon,
                                                                                LAT + 0.023)
    west = (x - 5120 if side == "west" else x)
    west, top = round(west / 10) * 10, round(top / 10) * 10
    transform = Affine(10, 0, west, 0, -10, top)
    transform20 = Affine(20, 0, west, 0, -20, top)
    scl20 = _down2(scl, mean=False).copy()
    if cloud is not None:
        scl20[cloud] = 9  # cloud, high probability
    values: dict[str, np.ndarray] = {}
    files: dict[str, Path] = {}
    for band in BANDS:
        data = bands[band].astype(np.float64)
        if RESOLUTION[band] == 20:
            data = _down2(data, mean=True)
        if cloud is not None:
            rows, cols = cloud
            scale = 2 if RESOLUTION[band] == 10 else 1
            data[rows.start * scale:rows.stop * scale, cols.start * scale:cols.stop * scale] = 6000
        values[band] = np.round(data)
        dn = np.where(values[band] > 0, values[band] + offset_dn, 0)
        files[band] = write_cog(folder / name / f"{band}.tif", dn, crs,
                                transform if RESOLUTION[band] == 10 else transform20)
    files["SCL"] = write_cog(folder / name / "SCL.tif", scl20, crs, transform20, nodata=0,
                             dtype="uint8")
    return Tile(name=name, crs=crs, transform=transform, files=files, values=values,
                scl=scl20, offset_dn=offset_dn)


def stac_item(tile: Tile, base_url: str, files_url: str, when: str, cloud: float,
              collection: str = "sentinel-2-l2a", baseline: str = "05.09",
              boa_offset_applied: bool | None = False, raster_offset: float | None = -0.1,
              product_uri: str | None = None) -> dict[str, Any]:
    """A STAC item shaped like Earth Search v1's sentinel-2-l2a items."""
    item_id = tile.name
    properties: dict[str, Any] = {
        "created": "2023-08-01T14:42:10.537Z", "platform": "sentinel-2b",
        "constellation": "sentinel-2", "instruments": ["msi"], "eo:cloud_cover": cloud,
        "proj:epsg": int(tile.crs.split(":")[1]), "mgrs:utm_zone": int(tile.crs[-2:]),
        "s2:product_type": "S2MSI2A", "s2:processing_baseline": baseline,
        "s2:product_uri": product_uri or f"S2B_MSIL2A_{when[:10].replace('-', '')}T105619_"
                                         f"N{baseline.replace('.', '')}_R094_T{tile.name}_"
                                         f"20230801T134512.SAFE",
        "datetime": when, "s2:sequence": "0", "processing:software": {"sentinel2-to-stac": "0.1.0"},
    }
    if boa_offset_applied is not None:
        properties["earthsearch:boa_offset_applied"] = boa_offset_applied
    assets = {}
    for band, key in EARTH_SEARCH_KEYS.items():
        raster_band: dict[str, Any] = {"nodata": 0, "data_type": "uint16",
                                       "spatial_resolution": RESOLUTION[band]}
        if band != "SCL":
            raster_band.update(bits_per_sample=15, scale=0.0001)
            if raster_offset is not None:
                raster_band["offset"] = raster_offset
        else:
            raster_band["data_type"] = "uint8"
        size = 10980 if RESOLUTION[band] == 10 else 5490
        assets[key] = {
            "href": f"{files_url}/{tile.name}/{band}.tif",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "title": f"{key} ({band})", "proj:shape": [size, size],
            "raster:bands": [raster_band], "roles": ["data", "reflectance"]}
    self_href = f"{base_url}/collections/{collection}/items/{item_id}"
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id, "properties": properties,
        "geometry": tile.footprint, "bbox": list(shape(tile.footprint).bounds),
        "links": [{"rel": "self", "href": self_href, "type": "application/geo+json"},
                  {"rel": "parent", "href": f"{base_url}/collections/{collection}"},
                  {"rel": "collection", "href": f"{base_url}/collections/{collection}"},
                  {"rel": "root", "href": base_url}],
        "assets": assets, "collection": collection,
        "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/projection/v1.1.0/schema.json"],
    }


# --------------------------------------------------------------------------- STAC API
CONFORMANCE = ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search",
               "https://api.stacspec.org/v1.0.0/ogcapi-features",
               "https://api.stacspec.org/v1.0.0/item-search#query",
               "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
               "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson"]


def _interval(text: str) -> tuple[dt.datetime | None, dt.datetime | None]:
    def one(value: str) -> dt.datetime | None:
        return None if value in ("", "..") else dt.datetime.fromisoformat(value)
    if "/" in text:
        start, end = text.split("/")
        return one(start), one(end)
    return one(text), one(text)


@dataclass
class StacApi:
    """STAC API - Item Search over ``items``, mounted on a Loopback."""

    server: Loopback
    items: list[dict[str, Any]] = field(default_factory=list)
    conformance: list[str] = field(default_factory=lambda: list(CONFORMANCE))
    searches: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server.route(r"/", self.landing)
        self.server.route(r"/search", self.search)
        self.server.route(r"/collections/([^/]+)/items/([^/]+)", self.item)

    @property
    def url(self) -> str:
        return self.server.url

    def landing(self, **_) -> Response:
        return json_response({
            "type": "Catalog", "id": "stand-in", "stac_version": "1.0.0",
            "description": "STAC API stand-in on loopback", "conformsTo": self.conformance,
            "links": [{"rel": "self", "href": self.url, "type": "application/json"},
                      {"rel": "root", "href": self.url, "type": "application/json"},
                      {"rel": "search", "href": f"{self.url}/search",
                       "type": "application/geo+json", "method": "GET"},
                      {"rel": "search", "href": f"{self.url}/search",
                       "type": "application/geo+json", "method": "POST"}]})

    def item(self, match, **_) -> Response:
        for item in self.items:
            if item["id"] == match.group(2) and item["collection"] == match.group(1):
                return json_response(item, content_type="application/geo+json")
        return json_response({"code": "NotFound", "description": "no such item"}, 404)

    def search(self, handler, query, body, **_) -> Response:
        if handler.command == "POST":
            params = json.loads(body or b"{}")
        else:
            params = {k: v[0] for k, v in query.items()}
            for key in ("bbox", "collections"):
                if isinstance(params.get(key), str):
                    params[key] = params[key].split(",")
            if "bbox" in params:
                params["bbox"] = [float(v) for v in params["bbox"]]
            for key in ("intersects", "query"):
                if isinstance(params.get(key), str):
                    params[key] = json.loads(params[key])
        self.searches.append(params)
        if "bbox" in params:
            area = box(*params["bbox"])
        elif "intersects" in params:
            area = shape(params["intersects"])
        else:
            area = None
        start, end = _interval(params["datetime"]) if params.get("datetime") else (None, None)
        cloud = ((params.get("query") or {}).get("eo:cloud_cover") or {})
        matched = []
        for item in self.items:
            when = dt.datetime.fromisoformat(item["properties"]["datetime"])
            if params.get("collections") and item["collection"] not in params["collections"]:
                continue
            if area is not None and not shape(item["geometry"]).intersects(area):
                continue
            if (start and when < start) or (end and when > end):
                continue
            if "lte" in cloud and item["properties"]["eo:cloud_cover"] > cloud["lte"]:
                continue
            matched.append(item)
        limit = int(params.get("limit") or 10)
        return json_response({"type": "FeatureCollection", "features": matched[:limit],
                              "numberMatched": len(matched),
                              "numberReturned": len(matched[:limit]),
                              "links": [{"rel": "root", "href": self.url}]},
                             content_type="application/geo+json")


# --------------------------------------------------------------------------- DHuS + SAFE
def _hub_time(when: dt.datetime) -> str:
    """A DHuS OpenSearch date: milliseconds and Z."""
    return f"{when:%Y-%m-%dT%H:%M:%S.%f}"[:-3] + "Z"


def _odata_date(when: dt.datetime) -> str:
    return f"/Date({int(when.timestamp() * 1000)})/"


@dataclass
class DhusProduct:
    uuid: str
    title: str
    when: dt.datetime
    cloud: float
    footprint: dict
    data: bytes
    baseline: str = "05.09"
    announced_md5: str | None = None  # what OData says, when it should not match the bytes

    @property
    def md5(self) -> str:
        return self.announced_md5 or hashlib.md5(self.data).hexdigest().upper()


@dataclass
class Dhus:
    """DHuS OpenSearch + OData v1 under ``/dhus/`` on a Loopback, Basic auth."""

    server: Loopback
    products: list[DhusProduct] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server.route(r"/dhus/search", self.search)
        self.server.route(r"/dhus/odata/v1/Products\('([^']+)'\)", self.entry)
        self.server.route(r"/dhus/odata/v1/Products\('([^']+)'\)/Online/\$value", self.online)
        self.server.route(r"/dhus/odata/v1/Products\('([^']+)'\)/\$value", self.value)

    @property
    def url(self) -> str:
        return f"{self.server.url}/dhus/"

    def _product(self, uuid: str) -> DhusProduct | None:
        return next((p for p in self.products if p.uuid == uuid), None)

    def search(self, query, **_) -> Response:
        q = query.get("q", [""])[0]
        self.queries.append(q)
        cloud = re.search(r'cloudcoverpercentage:\["?([\d.*]+)"? TO "?([\d.*]+)"?\]', q)
        begin = re.search(r'beginPosition:\["?([^" ]+)"? TO "?([^" \]]+)"?\]', q)
        area = re.search(r'footprint:"Intersects\((.+)\)"', q)
        from shapely import wkt as shapely_wkt
        place = shapely_wkt.loads(area.group(1)) if area else None
        entries = []
        for p in self.products:
            if cloud and cloud.group(2) != "*" and p.cloud > float(cloud.group(2)):
                continue
            if begin:
                lo, hi = (None if v == "*" else dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
                          for v in begin.groups())
                if (lo and p.when < lo) or (hi and p.when > hi):
                    continue
            if place is not None and not shape(p.footprint).intersects(place):
                continue
            odata = f"{self.url}odata/v1/Products('{p.uuid}')"
            entries.append({
                "title": p.title,
                "link": [{"href": f"{odata}/$value"},
                         {"rel": "alternative", "href": f"{odata}/"},
                         {"rel": "icon", "href": f"{odata}/Products('Quicklook')/$value"}],
                "id": p.uuid,
                "summary": f"Date: {p.when:%Y-%m-%dT%H:%M:%S.%f}Z, Instrument: MSI, "
                           "Mode: , Satellite: Sentinel-2, Size: 1.08 GB",
                "ondemand": "false",
                "date": [{"name": "beginposition", "content": _hub_time(p.when)},
                         {"name": "endposition", "content": _hub_time(p.when)},
                         {"name": "ingestiondate", "content": "2023-08-01T15:02:11.114Z"}],
                "int": [{"name": "orbitnumber", "content": "33418"},
                        {"name": "relativeorbitnumber", "content": "94"}],
                "double": {"name": "cloudcoverpercentage", "content": str(p.cloud)},
                "str": [{"name": "footprint", "content": shape(p.footprint).wkt},
                        {"name": "format", "content": "SAFE"},
                        {"name": "processingbaseline", "content": p.baseline},
                        {"name": "platformname", "content": "Sentinel-2"},
                        {"name": "filename", "content": f"{p.title}.SAFE"},
                        {"name": "producttype", "content": "S2MSI2A"},
                        {"name": "identifier", "content": p.title},
                        {"name": "uuid", "content": p.uuid},
                        {"name": "processinglevel", "content": "Level-2A"}],
            })
        feed = {"xmlns:opensearch": "http://a9.com/-/spec/opensearch/1.1/",
                "title": f"Data Hub Service search results for: {q}",
                "subtitle": f"Displaying {len(entries)} results. Request done in 0.01 seconds.",
                "opensearch:totalResults": str(len(entries)), "opensearch:startIndex": "0",
                "opensearch:itemsPerPage": "100",
                "opensearch:Query": {"role": "request", "searchTerms": q, "startPage": "1"},
                "entry": entries[0] if len(entries) == 1 else entries}
        if not entries:
            feed.pop("entry")
        return json_response({"feed": feed})

    def entry(self, match, **_) -> Response:
        p = self._product(match.group(1))
        if p is None:
            return json_response({"error": {"code": None, "message": {
                "lang": "en", "value": "Invalid key"}}}, 404)
        odata = f"{self.url}odata/v1/Products('{p.uuid}')"
        ring = shape(p.footprint).exterior.coords
        gml = ("<gml:Polygon srsName=\"http://www.opengis.net/gml/srs/epsg.xml#4326\" "
               "xmlns:gml=\"http://www.opengis.net/gml\"><gml:outerBoundaryIs><gml:LinearRing>"
               "<gml:coordinates>" + " ".join(f"{lat},{lon}" for lon, lat in ring)
               + "</gml:coordinates></gml:LinearRing></gml:outerBoundaryIs></gml:Polygon>")
        return json_response({"d": {
            "__metadata": {"id": odata, "uri": odata, "type": "DHuS.Product",
                           "content_type": "application/octet-stream",
                           "media_src": f"{odata}/$value", "edit_media": f"{odata}/$value"},
            "Id": p.uuid, "Name": p.title, "ContentType": "application/octet-stream",
            "ContentLength": str(len(p.data)), "ChildrenNumber": "1", "Value": None,
            "CreationDate": _odata_date(p.when), "IngestionDate": _odata_date(p.when),
            "ModificationDate": _odata_date(p.when), "EvictionDate": None,
            "Online": True, "OnDemand": False,
            "ContentDate": {"__metadata": {"type": "DHuS.TimeRange"},
                            "Start": _odata_date(p.when), "End": _odata_date(p.when)},
            "Checksum": {"__metadata": {"type": "DHuS.Checksum"}, "Algorithm": "MD5",
                         "Value": p.md5},
            "ContentGeometry": gml,
            "Attributes": {"__deferred": {"uri": f"{odata}/Attributes"}},
            "Nodes": {"__deferred": {"uri": f"{odata}/Nodes"}}}})

    def online(self, match, **_) -> Response:
        return json_response(self._product(match.group(1)) is not None)

    def value(self, handler, match, **_) -> Response:
        p = self._product(match.group(1))
        if p is None:
            return 404, {}, b""
        return serve_bytes(handler, p.data, extra={
            "Content-Disposition": f'attachment; filename="{p.title}.zip"'})


def safe_zip(path: Path, tile: Tile, title: str, baseline: str = "05.09",
             offset: int = -1000) -> Path:
    """A SAFE zip of ``tile`` whose JPEG2000 bands carry DN = value - offset."""
    tile_id = "T30SXH"
    stamp = "20230801T105619"
    granule = f"L2A_{tile_id}_A033418_20230801T110428"
    safe = f"{title}.SAFE"
    files: dict[str, str] = {}
    work = path.parent / f".{title}-jp2"
    work.mkdir(parents=True, exist_ok=True)
    for band in (*BANDS, "SCL"):
        res = RESOLUTION[band]
        name = f"GRANULE/{granule}/IMG_DATA/R{res}m/{tile_id}_{stamp}_{band}_{res}m"
        with rasterio.open(tile.files[band]) as src:
            data = src.read(1)
            profile = dict(driver="GTiff", width=src.width, height=src.height, count=1,
                           dtype=src.dtypes[0], crs=src.crs, transform=src.transform)
        if band != "SCL":
            data = np.where(data > 0, data.astype(np.int32) - tile.offset_dn - offset, 0)
        gtiff = work / f"{band}.tif"
        with rasterio.open(gtiff, "w", **profile) as dst:
            dst.write(data.astype(profile["dtype"]), 1)
        jp2 = work / f"{band}.jp2"
        rasterio.shutil.copy(gtiff, jp2, driver="JP2OpenJPEG", QUALITY="100",
                             REVERSIBLE="YES", YCC="NO")
        files[name] = str(jp2)
    offsets = "".join(f'<BOA_ADD_OFFSET band_id="{i}">{offset}</BOA_ADD_OFFSET>'
                      for i in range(13)) if offset else ""
    images = "".join(f"<IMAGE_FILE>{name}</IMAGE_FILE>" for name in files)
    mtd = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/'
        'User_Product_Level-2A.xsd"><n1:General_Info><Product_Info>'
        "<PRODUCT_START_TIME>2023-08-01T10:56:19.024Z</PRODUCT_START_TIME>"
        f"<PRODUCT_URI>{safe}</PRODUCT_URI><PROCESSING_LEVEL>Level-2A</PROCESSING_LEVEL>"
        f"<PRODUCT_TYPE>S2MSI2A</PRODUCT_TYPE><PROCESSING_BASELINE>{baseline}"
        "</PROCESSING_BASELINE><Product_Organisation><Granule_List>"
        f'<Granule granuleIdentifier="S2B_OPER_MSI_L2A_TL_2BPS_{granule}" '
        f'imageFormat="JPEG2000">{images}</Granule></Granule_List></Product_Organisation>'
        "</Product_Info><Product_Image_Characteristics>"
        "<Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>"
        "<SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>"
        "<Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>"
        "<SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX></Special_Values>"
        "<QUANTIFICATION_VALUES_LIST>"
        '<BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>'
        '<AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>'
        "</QUANTIFICATION_VALUES_LIST>"
        f"<BOA_ADD_OFFSET_VALUES_LIST>{offsets}</BOA_ADD_OFFSET_VALUES_LIST>"
        "</Product_Image_Characteristics></n1:General_Info></n1:Level-2A_User_Product>")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{safe}/manifest.safe", "<xfdu:XFDU/>")
        archive.writestr(f"{safe}/MTD_MSIL2A.xml", mtd)
        for name, source in files.items():
            archive.write(source, f"{safe}/{name}.jp2")
    for leftover in work.iterdir():
        leftover.unlink()
    work.rmdir()
    return path
