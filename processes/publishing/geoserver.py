"""The GeoServer publisher: every result becomes a GeoServer WMS/WCS layer, through its REST API.

Built on the ``geoserver-rest`` package (``geo.Geoserver``). For one result it

1. ensures the workspace (``GET /workspaces/{ws}``, ``POST /workspaces`` when missing),
2. uploads the water SLD once (``GET`` the style, ``POST`` + ``PUT`` it only when missing),
3. creates a GeoTIFF coverage store ``water-{id}``: the COG uploaded (``PUT .../file.geotiff``) or,
   with a shared volume, referenced by its path as GeoServer sees it (``PUT .../external.geotiff``);
   GeoServer configures the coverage and the layer of the same name,
4. sets the coverage's title, abstract, keywords, native and declared CRS and both bounding boxes
   (``PUT .../coverages/{name}``) and the layer's default style (``PUT /layers/{ws}:{name}``),
5. when the result is one date of a job's time series, adds it to that series' ImageMosaic so
   WMS clients step through the dates with ``TIME=``: the first product creates the mosaic
   (``PUT .../file.imagemosaic`` with a zip of ``indexer.properties``, ``timeregex.properties``
   and the granule), the next ones are harvested into it (``POST
   .../file.imagemosaic?filename=...``); the coverage gets a TIME dimension.

Every step checks before it creates, so publishing a product again changes nothing and creates
nothing twice. ``unpublish`` deletes the store with its coverage and layer (``recurse=true``) and
its files (``purge=all`` for uploads; ``purge=metadata`` for a referenced COG, which aquamask
owns), and removes the product's granule from its mosaic (the mosaic itself when it was the last).

Which store, mosaic and granule belong to which product is kept in the product's layer row of
the job store (its ``geoserver`` column, written before the first change on GeoServer), so
``unpublish`` needs neither the COG nor GeoServer's listings. A time series is one job's dates
(``series-<job>``), never products of other jobs or places.

The password is read from ``AQUAMASK__GEOSERVER__PASSWORD`` or the file ``password_file`` names;
it is held by the client only and never logged: errors carry the HTTP status and GeoServer's
message, and requests' own messages (which can hold URLs) are reduced to their class name.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import re
import tempfile
import zipfile
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence
from urllib.parse import quote

import requests
from filelock import FileLock, Timeout
from geo.Geoserver import Geoserver, GeoserverException

from aquamask.processes.publishing.base import Publisher, getmap_params, ogc_url, service_layer
from aquamask.processes.publishing.mapserver import is_vsi, raster_facts
from aquamask.processes.storage.jobstore import job_store
from aquamask.processes.storage.results import results_store
from aquamask.processes.types import Layer, Product

if TYPE_CHECKING:
    from aquamask.processes.settings import Settings

LOGGER = logging.getLogger(__name__)

NAME = "geoserver"
STYLE_FILE = "water.sld"
LOCK_FILE = ".publish.lock"
LOCK_TIMEOUT_S = 120
STORE_MODES = ("upload", "external")
KEYWORDS = ("water", "flood", "mask", "sentinel-2", "aquamask")
WORKSPACE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
# granule file names carry the acquisition time first, so the mosaic's time regex never meets the
# product id (ids are letters, digits, '-' and '_': no 'T' between 8 and 6 digits)
TIME_FORMAT = "%Y%m%dT%H%M%S"
TIMEREGEX = "regex=[0-9]{8}T[0-9]{6},format=yyyyMMdd'T'HHmmss\n"
INDEXER = """\
TimeAttribute=time
Schema=*the_geom:Polygon,location:String,time:java.util.Date
PropertyCollectors=TimestampFileNameExtractorSPI[timeregex](time)
Caching=false
AbsolutePath=false
Name={name}
"""


class GeoServerError(Exception):
    """A GeoServer call failed: unreachable, too slow, refused (401/403) or broken (5xx).

    ``status`` is the HTTP status (None when no answer came back). The message never holds the
    credentials: they are not part of any URL or body this module builds.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def read_password(settings: "Settings") -> str | None:
    """The GeoServer password: ``AQUAMASK__GEOSERVER__PASSWORD`` (taken verbatim from the
    environment, not parsed as YAML, so ``0123`` or ``yes`` stay strings), else the first line of
    ``geoserver.password_file`` (a Docker or Kubernetes secret)."""
    raw = os.environ.get("AQUAMASK__GEOSERVER__PASSWORD")
    if raw:
        return raw
    value = settings.geoserver.password
    if value not in (None, ""):
        return str(value)
    path = settings.geoserver.password_file
    if path:
        try:
            return Path(path).expanduser().read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError) as err:
            raise ValueError(f"geoserver.password_file {path}: cannot read a password "
                             f"({type(err).__name__})") from None
    return None


class GeoServerClient(Geoserver):
    """``geo.Geoserver`` with the few calls it lacks, each in the same style as its own.

    Extended rather than replaced: workspaces (``create_workspace``), the style
    (``upload_style``), coverage stores and mosaics (``create_coveragestore``) and default styles
    (``publish_style``) go through the package's own methods. Added here, because the package has
    no call for them (2.10.0): a quiet existence check (its getters raise on 404 and log nothing
    useful), updating a coverage's metadata (its only coverage PUT,
    ``publish_time_dimension_to_coveragestore``, sends a fixed time-only XML body and then parses
    GeoServer's empty 200 answer as JSON, which raises), deleting a store with ``purge`` (its
    ``delete_coveragestore`` cannot remove the uploaded files), harvesting a granule into a mosaic,
    and listing/removing a mosaic's granules (structured coverages).
    """

    def __init__(self, service_url: str, username: str, password: str | None,
                 connect_timeout_s: float, timeout_s: float) -> None:
        # every request of the package goes through _requests with these options: a request
        # never waits longer than the timeouts, and redirects (which could forward the basic
        # auth header elsewhere) are not followed
        super().__init__(service_url.rstrip("/"), username, password or "",
                         request_options={"timeout": (connect_timeout_s, timeout_s),
                                          "allow_redirects": False})

    def __repr__(self) -> str:  # never the password
        return f"<GeoServerClient {self.service_url} user={self.username}>"

    def _url(self, *parts: str) -> str:
        return f"{self.service_url}/rest/" + "/".join(quote(p, safe=":.") for p in parts)

    @staticmethod
    def _check(response: requests.Response, *ok: int) -> requests.Response:
        if response.status_code not in ok:
            raise GeoserverException(response.status_code, response.content)
        return response

    def exists(self, *parts: str) -> bool:
        """GET a resource quietly: True on 200, False on 404, GeoserverException otherwise."""
        response = self._requests("get", self._url(*parts), params={"quietOnNotFound": "true"},
                                  headers={"Accept": "application/json"})
        if response.status_code == 404:
            return False
        self._check(response, 200)
        return True

    def update_coverage(self, workspace: str, store: str, coverage: str,
                        body: dict[str, Any]) -> None:
        self._check(self._requests(
            "put", self._url("workspaces", workspace, "coveragestores", store, "coverages",
                             coverage), json={"coverage": body},
            headers={"Content-Type": "application/json"}), 200)

    def harvest_granule(self, workspace: str, store: str, path: Path, filename: str) -> None:
        with open(path, "rb") as fh:
            self._check(self._requests(
                "post", self._url("workspaces", workspace, "coveragestores", store,
                                  "file.imagemosaic"),
                params={"filename": filename, "updateBBox": "true"}, data=fh,
                headers={"Content-Type": "image/tiff"}), 200, 201, 202)

    def granules(self, workspace: str, store: str, coverage: str,
                 cql_filter: str | None = None) -> list[dict[str, Any]]:
        params = {"filter": cql_filter} if cql_filter else {}
        response = self._check(self._requests(
            "get", self._url("workspaces", workspace, "coveragestores", store, "coverages",
                             coverage, "index", "granules.json"), params=params), 200)
        return list(response.json().get("features") or [])

    def delete_granules(self, workspace: str, store: str, coverage: str, cql_filter: str,
                        purge: str) -> None:
        self._check(self._requests(
            "delete", self._url("workspaces", workspace, "coveragestores", store, "coverages",
                                coverage, "index", "granules"),
            params={"filter": cql_filter, "purge": purge}), 200)

    def delete_store(self, workspace: str, store: str, purge: str) -> bool:
        """Delete a coverage store with its coverages and layers; False when there was none."""
        response = self._requests(
            "delete", self._url("workspaces", workspace, "coveragestores", store),
            params={"recurse": "true", "purge": purge})
        if response.status_code == 404:
            return False
        self._check(response, 200)
        return True


def _cql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class GeoServerPublisher(Publisher):
    """Publishes products as layers of one GeoServer workspace (see the module docstring)."""

    name = NAME

    def __init__(self, url: str, user: str, password: str | None, workspace: str,
                 workdir: Path | str, *, store_mode: str = "upload",
                 shared_results_dir: str | None = None, results_dir: Path | str | None = None,
                 style: str = "water", public_url: str | None = None,
                 connect_timeout_s: float = 5.0, timeout_s: float = 60.0,
                 time_series: bool = True, results_store=None, store=None) -> None:
        if not url or not re.match(r"^https?://[^/\s]+", str(url)):
            raise ValueError(f"geoserver.url must be an http(s) URL (got {url!r})")
        if not WORKSPACE_NAME.fullmatch(str(workspace)):
            raise ValueError(f"geoserver.workspace {workspace!r} is not a valid workspace name")
        if not WORKSPACE_NAME.fullmatch(str(style)):
            raise ValueError(f"geoserver.style {style!r} is not a valid style name")
        if store_mode not in STORE_MODES:
            raise ValueError(f"geoserver.store_mode must be one of {', '.join(STORE_MODES)} "
                             f"(got {store_mode!r})")
        if store_mode == "external" and not (shared_results_dir and results_dir):
            raise ValueError("geoserver.store_mode external needs geoserver.shared_results_dir: "
                             "the results folder as GeoServer sees it")
        self.url = str(url).rstrip("/")
        self.public_url = (public_url or self.url).rstrip("/")
        self.workspace = workspace
        self.style = style
        self.store_mode = store_mode
        self.shared_results_dir = shared_results_dir.rstrip("/") if shared_results_dir else None
        self.results_dir = Path(results_dir).resolve() if results_dir else None
        # the results store (aquamask.processes.storage.results) products on an object store are
        # copied from for upload
        self.results_store = results_store
        self.time_series = bool(time_series)
        # the job store, whose layer rows hold what GeoServer was given for each product
        self.store = store
        self.client = GeoServerClient(self.url, user, password, connect_timeout_s, timeout_s)
        self.workdir = Path(workdir).expanduser().resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.workdir / LOCK_FILE), timeout=LOCK_TIMEOUT_S)

    def __repr__(self) -> str:
        return f"<GeoServerPublisher {self.url} workspace={self.workspace}>"

    @classmethod
    def configured(cls, settings: "Settings") -> bool:
        return settings.geoserver.configured

    @classmethod
    def from_settings(cls, settings: "Settings") -> "GeoServerPublisher":
        config = settings.geoserver
        if not config.url:
            raise ValueError("GeoServer is not configured: set geoserver.url "
                             "(AQUAMASK__GEOSERVER__URL)")
        if settings.results_url and config.store_mode == "external":
            raise ValueError(f"geoserver.store_mode external needs the results on a folder "
                             f"GeoServer shares, but paths.results is an object store "
                             f"({settings.results_url}): use geoserver.store_mode upload")
        return cls(config.url, config.user, read_password(settings), config.workspace,
                   settings.path(config.workdir), store_mode=config.store_mode,
                   shared_results_dir=config.shared_results_dir,
                   results_dir=settings.results_dir, style=config.style,
                   public_url=config.public_url, connect_timeout_s=config.connect_timeout_s,
                   timeout_s=config.timeout_s, time_series=config.time_series,
                   results_store=results_store(settings), store=job_store(settings))

    @contextmanager
    def _locked(self, what: str):
        """The publisher's lock (one GeoServer change at a time: the workspace, the style and a
        mosaic are shared by all results); waiting too long for it is a GeoServer failure like
        any other (pending, retried), not a failed job."""
        try:
            self._lock.acquire()
        except Timeout:
            raise GeoServerError(f"GeoServer {what}: another publish held the lock for "
                                 f"{LOCK_TIMEOUT_S} s") from None
        try:
            yield
        finally:
            self._lock.release()

    # -- calls ---------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one client call; every failure becomes a GeoServerError without secrets."""
        try:
            return fn(*args, **kwargs)
        except GeoserverException as err:
            body = err.message.decode("utf-8", "replace") if isinstance(err.message, bytes) \
                else str(err.message)
            body = re.sub(r"\s+", " ", body).strip()[:300]
            raise GeoServerError(f"GeoServer {what}: HTTP {err.status}"
                                 + (f": {body}" if body else ""), int(err.status)) from None
        except requests.Timeout:
            raise GeoServerError(f"GeoServer {what}: no answer within the timeout") from None
        except requests.RequestException as err:
            raise GeoServerError(f"GeoServer {what}: unreachable ({type(err).__name__})") \
                from None
        except ValueError as err:  # a 2xx answer that is not the JSON documented
            raise GeoServerError(f"GeoServer {what}: unexpected answer "
                                 f"({type(err).__name__})") from None

    def _ensure_workspace(self) -> None:
        if self._call("workspace lookup", self.client.exists, "workspaces", self.workspace):
            return
        try:
            self._call("workspace creation", self.client.create_workspace, self.workspace)
        except GeoServerError as err:
            if err.status != 409:  # 409: created meanwhile by another worker
                raise

    def _ensure_style(self) -> None:
        if self._call("style lookup", self.client.exists, "workspaces", self.workspace,
                      "styles", self.style):
            return
        sld = (files("aquamask.config") / "styles" / STYLE_FILE).read_text(encoding="utf-8")
        try:
            self._call("style upload", self.client.upload_style, sld, name=self.style,
                       workspace=self.workspace, sld_version="1.0.0")
        except GeoServerError as err:
            # 403: GeoServer's "style already exists" (another worker uploaded it meanwhile)
            if err.status == 403:
                return
            # upload_style POSTs the style entry, then PUTs the SLD: when the PUT failed, an
            # entry without content would pass the lookup above for ever; remove it so the next
            # attempt uploads the style again
            try:
                self._call("style cleanup", self.client.delete_style, self.style,
                           workspace=self.workspace)
            except GeoServerError:
                pass
            raise

    def _coverage_body(self, name: str, title: str, abstract: str, facts: dict[str, Any],
                       bbox: list[float], time_dimension: bool = False) -> dict[str, Any]:
        left, bottom, right, top = facts["extent"]
        srs = f"EPSG:{facts['epsg']}" if facts.get("epsg") else None
        # declared CRS: the EPSG code (Sentinel-2 grids are UTM/WGS84 EPSG codes); a CRS
        # without one keeps the declared CRS GeoServer derived from the file at upload
        body: dict[str, Any] = {
            "name": name,
            "title": title,
            "abstract": abstract,
            "keywords": {"string": list(KEYWORDS)},
            "nativeCRS": facts["wkt"],
            "nativeBoundingBox": {"minx": left, "maxx": right, "miny": bottom, "maxy": top,
                                  "crs": srs or facts["wkt"]},
            "latLonBoundingBox": {"minx": bbox[0], "maxx": bbox[2], "miny": bbox[1],
                                  "maxy": bbox[3], "crs": "EPSG:4326"},
            # classes, not measurements: never interpolate between 0, 1 and 255
            "defaultInterpolationMethod": "nearest neighbor",
            "enabled": True,
        }
        if srs:
            body["srs"] = srs
        if time_dimension:
            body["metadata"] = {"entry": [{"@key": "time", "dimensionInfo": {
                "enabled": True, "presentation": "LIST", "units": "ISO8601",
                "defaultValue": {"strategy": "MAXIMUM"}}}]}
        return body

    def _upload_or_reference(self, store: str, path: Path) -> None:
        if self.store_mode == "upload":
            self._call("GeoTIFF upload", self.client.create_coveragestore, str(path),
                       workspace=self.workspace, layer_name=store, file_type="GeoTIFF",
                       content_type="image/tiff", method="file")
        else:
            try:
                relative = path.resolve().relative_to(self.results_dir or "")
            except ValueError:
                raise ValueError(f"{path} is not under the results folder {self.results_dir}")\
                    from None
            shared = f"{self.shared_results_dir}/{relative.as_posix()}"
            self._call("GeoTIFF store", self.client.create_coveragestore, shared,
                       workspace=self.workspace, layer_name=store, file_type="GeoTIFF",
                       method="external")

    def _publish_series(self, product: Product, key: str, granule: str, path: Path,
                        facts: dict[str, Any], bbox: list[float]) -> None:
        ws = self.workspace
        if not self._call("mosaic lookup", self.client.exists, "workspaces", ws,
                          "coveragestores", key):
            with tempfile.TemporaryDirectory(prefix=".mosaic-", dir=self.workdir) as tmp:
                bundle = Path(tmp) / f"{key}.zip"
                with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as archive:
                    archive.writestr("indexer.properties", INDEXER.format(name=key))
                    archive.writestr("timeregex.properties", TIMEREGEX)
                    archive.write(path, granule)
                self._call("mosaic creation", self.client.create_coveragestore, str(bundle),
                           workspace=ws, layer_name=key, file_type="imagemosaic",
                           content_type="application/zip", method="file")
        else:
            found = self._call("granule lookup", self.client.granules, ws, key, key,
                               f"location = {_cql_string(granule)}")
            if not found:
                self._call("granule harvest", self.client.harvest_granule, ws, key, path,
                           granule)
        extent_facts = dict(facts)
        self._call("mosaic metadata", self.client.update_coverage, ws, key, key,
                   self._coverage_body(key, "Water masks through time",
                                       "Water detected by aquamask on one place at each date: "
                                       "choose the date with the WMS TIME parameter. Blue is "
                                       "water; dry land and no data are transparent.",
                                       extent_facts, bbox, time_dimension=True))
        self._call("mosaic style", self.client.publish_style, key, f"{ws}:{self.style}", ws)

    # -- Publisher -----------------------------------------------------------------------------
    def publish(self, product: Product, row: dict[str, Any]) -> Layer:
        """Publish ``product`` as the layer of its ``row`` (name, series, WGS84 box)."""
        path = Path(product.mask_cog)
        if not is_vsi(path):
            return self._publish(product, row, path.expanduser().resolve())
        # a result on an object store: GeoServer receives a copy (upload mode only)
        if self.store_mode != "upload" or self.results_store is None:
            raise ValueError(f"{path.name} is on an object store: GeoServer can only receive a "
                             "copy of it (geoserver.store_mode: upload)")
        with self.results_store.local_copy(path, self.workdir) as local:
            return self._publish(product, row, local)

    def _record(self, row: dict[str, Any], entry: dict[str, Any]) -> None:
        if self.store is not None:
            self.store.update_layer(row["product_id"], {"geoserver": entry})

    def _publish(self, product: Product, row: dict[str, Any], path: Path) -> Layer:
        name = row["name"]
        facts = raster_facts(path)
        bbox = [float(v) for v in row["facts"]["bbox_wgs84"]]
        stats = product.stats
        when = product.datetime.astimezone(dt.timezone.utc) if product.datetime else None
        abstract = (f"Water mask {product.id}"
                    + (f", acquired {when.isoformat()}" if when else "")
                    + f": {stats.water_area_km2:.3f} km2 of water in {stats.valid_area_km2:.3f} "
                      "km2 observed. Blue is water; dry land and no data are transparent. "
                      "WCS: 0 dry, 1 water, 255 no data.")
        title = product.title or f"Water mask {product.id}"
        series = granule = None
        if self.time_series and when is not None and row.get("series"):
            series = row["series"]
            granule = f"{when.strftime(TIME_FORMAT)}_{product.id}.tif"
        ws = self.workspace
        with self._locked("publish"):
            # recorded before the first change on GeoServer, so that an unpublish after a
            # publish that stopped half-way (killed, timed out) finds the store and the granule
            # it may have left
            entry = {"store": name, "series": series, "granule": granule,
                     "time": when.isoformat() if when else None, "mode": self.store_mode,
                     "complete": False}
            self._record(row, entry)
            self._ensure_workspace()
            self._ensure_style()
            if not self._call("store lookup", self.client.exists, "workspaces", ws,
                              "coveragestores", name):
                self._upload_or_reference(name, path)
            self._call("coverage metadata", self.client.update_coverage, ws, name, name,
                       self._coverage_body(name, title, abstract, facts, bbox))
            self._call("layer style", self.client.publish_style, name, f"{ws}:{self.style}", ws)
            if series and granule:
                self._publish_series(product, series, granule, path, facts, bbox)
            self._record(row, dict(entry, complete=True))
        LOGGER.info("published %s to GeoServer as %s:%s%s", product.id, ws, name,
                    f" (time series {series})" if series else "")
        return self.layer(row)

    def unpublish(self, row: dict[str, Any]) -> None:
        """Delete the product's store, coverage, layer and files on GeoServer, and its granule.

        Deletes by name even when the row records nothing (a publish that failed half-way
        leaves a store behind); raises GeoServerError when GeoServer cannot be reached, so
        the caller can try again later."""
        name = row["name"]
        ws = self.workspace
        entry = row.get("geoserver") or {}
        with self._locked("unpublish"):
            purge = "metadata" if entry.get("mode", self.store_mode) == "external" else "all"
            self._call("store deletion", self.client.delete_store, ws, name, purge)
            series, granule = entry.get("series"), entry.get("granule")
            if series and granule:
                if self._call("mosaic lookup", self.client.exists, "workspaces", ws,
                              "coveragestores", series):
                    self._call("granule deletion", self.client.delete_granules, ws, series,
                               series, f"location = {_cql_string(granule)}", "all")
                    if not self._call("granule listing", self.client.granules, ws, series,
                                      series):
                        self._call("mosaic deletion", self.client.delete_store, ws, series,
                                   "all")
        LOGGER.info("unpublished %s from GeoServer", row["product_id"])

    # -- reading -------------------------------------------------------------------------------
    def layer(self, row: dict[str, Any]) -> Layer:
        return service_layer(row["name"], self.name,
                             f"{self.public_url}/{self.workspace}/wms",
                             f"{self.public_url}/{self.workspace}/wcs",
                             row["facts"]["bbox_wgs84"], {"VERSION": "1.0.0"})

    def series_urls(self, series: str, bbox_wgs84: Sequence[float], times: Sequence[str]
                    ) -> dict[str, str]:
        """A GetMap of the series' mosaic at each of ``times`` (WMS ``TIME``)."""
        return {t: ogc_url(f"{self.public_url}/{self.workspace}/wms",
                           **getmap_params(series, bbox_wgs84, TIME=t)) for t in times}
