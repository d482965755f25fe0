"""A STAND-IN for GeoServer's REST API, for tests only: it is not GeoServer and renders nothing.

GeoServer cannot run on the test machines, so the GeoServer publisher is tested against this
small HTTP server on loopback. It implements only the subset of the REST API the publisher
(and /health: ``about/version``) calls, transcribed from GeoServer's published REST API
documentation, the Swagger 2.0 files ``doc/en/api/1.0.0/{workspaces,coveragestores,coverages,
layers,styles,structuredcoverages,manifests}.yaml`` of the geoserver/geoserver repository:

* the same paths (under ``/geoserver/rest``), methods and status codes; where the Swagger file and
  GeoServer's controllers disagree the controller wins, and the line says so: ``PUT
  .../{method}.{format}`` answers 201 (``@ResponseStatus(CREATED)`` in
  ``CoverageStoreFileController``; the yaml says 200), the harvesting ``POST`` answers 202
  (``ACCEPTED``), deleting a non-empty store without ``recurse`` answers 401 "coveragestore not
  empty" (``CoverageStoreController``), an existing style on ``POST`` answers 403;
* the same content types: bodies in JSON or XML as documented (``consumes``), 415 otherwise;
  representations in JSON (``.json`` suffix or ``Accept: application/json``);
* GeoServer's error bodies: ``text/plain`` messages such as ``No such coverage store: ws,name``;
  401 with ``WWW-Authenticate: Basic realm="GeoServer Realm"`` without valid Basic credentials;
* every JSON/XML body it receives is checked against the schema of the documentation's
  ``definitions`` (``Workspace``, ``StyleInfoPost``, ``CoverageInfo``, ``Layer``) transcribed in
  ``SCHEMAS`` below, strictly: an unknown property is refused with 400, as GeoServer's XStream
  parser refuses unknown elements. SLD bodies must be well-formed SLD 1.0 documents; GeoTIFF
  uploads must be TIFFs, ImageMosaic uploads zips with ``indexer.properties``,
  ``timeregex.properties`` and at least one granule.

Faults are injected per test: ``delay_s`` (a slow server), ``fail_status`` with
``fail_count``/``fail_match`` (500s or any status for matching requests), a wrong password
(401). Stopping the server (or never starting one) gives "connection refused".
"""
from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.etree import ElementTree

import xmltodict

SLD_NS = "http://www.opengis.net/sld"

# -- the schemas, transcribed from the Swagger files' `definitions` ------------------------------
_STR = {"type": "string"}
_NUM = {"type": "number"}
_BOOL = {"type": "boolean"}
_BBOX = {"type": "object", "properties": {"minx": _NUM, "maxx": _NUM, "miny": _NUM,
                                          "maxy": _NUM, "crs": _STR}}
_STYLE_REF = {"type": "object", "properties": {"name": _STR, "link": _STR}}  # StyleReference
SCHEMAS: dict[str, dict[str, Any]] = {
    # workspaces.yaml definitions/Workspace
    "Workspace": {"type": "object", "required": ["workspace"], "properties": {
        "workspace": {"type": "object", "required": ["name"], "properties": {"name": _STR}}}},
    # styles.yaml definitions/StyleInfoPost (root element/key `style`)
    "StyleInfoPost": {"type": "object", "required": ["style"], "properties": {
        "style": {"type": "object", "properties": {"name": _STR, "filename": _STR}}}},
    # layers.yaml definitions/Layer (root `layer`), the properties a client may send
    "Layer": {"type": "object", "required": ["layer"], "properties": {"layer": {
        "type": "object", "properties": {
            "name": _STR, "path": _STR,
            "type": {"type": "string", "enum": ["VECTOR", "RASTER", "REMOTE", "WMS", "GROUP"]},
            "defaultStyle": _STYLE_REF,
            "styles": {"type": "object", "properties": {
                "@class": {"type": "string", "enum": ["linked-hash-set"]},
                "style": {"type": "array", "items": _STYLE_REF}}},
            "opaque": _BOOL,
            "attribution": {"type": "object", "properties": {
                "title": _STR, "href": _STR, "logoURL": _STR, "logoWidth": {"type": "integer"},
                "logoHeight": {"type": "integer"}, "logoType": _STR}}}}}},
    # coverages.yaml definitions/CoverageInfo (root `coverage`), the properties a client may
    # send. `metadata` is declared there as an array of MetadataEntry, but the same file's
    # examples (and GeoServer) use {"entry": [...]}, whose "time" entry holds a dimensionInfo
    # (example: {"@key": "time", "dimensionInfo": {"enabled": false, "defaultValue": ""}});
    # presentation, units and defaultValue.strategy are the dimensionInfo fields of GeoServer's
    # time-dimension documentation, which geoserver-rest's time call sends too.
    "CoverageInfo": {"type": "object", "required": ["coverage"], "properties": {"coverage": {
        "type": "object", "properties": {
            "name": _STR, "nativeName": _STR,
            "namespace": {"type": "object", "properties": {"name": _STR}},
            "title": _STR, "abstract": _STR, "defaultInterpolationMethod": _STR,
            "keywords": {"type": "object", "properties": {
                "string": {"type": "array", "items": _STR}}},
            "nativeCRS": _STR, "srs": _STR,
            "nativeBoundingBox": _BBOX, "latLonBoundingBox": _BBOX,
            "metadata": {"type": "object", "properties": {"entry": {"type": "array", "items": {
                "type": "object", "required": ["@key"], "properties": {
                    "@key": {"type": "string", "enum": [
                        "regionateStrategy", "regionateFeatureLimit", "cacheAgeMax",
                        "cachingEnabled", "regionateAttribute", "indexingEnabled", "dirName",
                        "time", "elevation"]},
                    "$": _STR,
                    "dimensionInfo": {"type": "object", "properties": {
                        "enabled": _BOOL, "presentation": {
                            "type": "string",
                            "enum": ["LIST", "CONTINUOUS_INTERVAL", "DISCRETE_INTERVAL"]},
                        "units": _STR,
                        "defaultValue": {"type": "object", "properties": {
                            "strategy": {"type": "string", "enum": [
                                "MINIMUM", "MAXIMUM", "NEAREST", "FIXED"]},
                            "referenceValue": _STR}}}}}}}}},
            "store": {"type": "object", "properties": {"@class": _STR, "name": _STR}},
            "enabled": _BOOL}}}},
}


class SchemaError(ValueError):
    pass


def check(value: Any, schema: dict[str, Any], where: str = "$", xml: bool = False) -> None:
    """Validate ``value`` against a (Swagger 2.0 / JSON Schema draft 4) subset, strictly.

    ``xml``: the value came from XML (xmltodict), so scalars are strings and a one-item array
    is a single element: "1.5" is a number, "true" a boolean there."""
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected an object")
        for key in schema.get("required", []):
            if key not in value:
                raise SchemaError(f"{where}: missing required property {key!r}")
        properties = schema.get("properties", {})
        for key, item in value.items():
            if xml and key.startswith("@xmlns"):
                continue
            if key not in properties:
                raise SchemaError(f"{where}: unknown property {key!r}")
            check(item, properties[key], f"{where}.{key}", xml)
    elif kind == "array":
        items = value if isinstance(value, list) else [value] if xml else None
        if items is None:
            raise SchemaError(f"{where}: expected an array")
        for i, item in enumerate(items):
            check(item, schema.get("items", {}), f"{where}[{i}]", xml)
    elif kind == "string":
        if not isinstance(value, str):
            raise SchemaError(f"{where}: expected a string")
    elif kind in ("number", "integer"):
        if xml and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise SchemaError(f"{where}: expected a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(f"{where}: expected a number")
        if kind == "integer" and float(value) != int(value):
            raise SchemaError(f"{where}: expected an integer")
    elif kind == "boolean":
        if xml and value in ("true", "false"):
            return
        if not isinstance(value, bool):
            raise SchemaError(f"{where}: expected a boolean")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(f"{where}: {value!r} is not one of {schema['enum']}")


# -- state --------------------------------------------------------------------------------------
@dataclass
class Store:
    name: str
    type: str                     # GeoTIFF, ImageMosaic
    url: str
    coverages: dict[str, dict[str, Any]] = field(default_factory=dict)
    granules: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: bytes
    authorization: str | None
    status: int = 0


class RestError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class GeoServerStandIn:
    """The stand-in's state and fault switches; ``url`` is the GeoServer base URL."""

    def __init__(self, data_dir: Path, user: str = "admin", password: str = "s3cret-Pa55") -> None:
        self.data_dir = Path(data_dir)
        self.user, self.password = user, password
        self.workspaces: set[str] = set()
        self.styles: dict[tuple[str, str], dict[str, Any]] = {}
        self.stores: dict[tuple[str, str], Store] = {}
        self.layers: dict[str, dict[str, Any]] = {}   # "ws:name" -> layer info
        self.requests: list[Request] = []
        self.delay_s = 0.0
        self.fail_status: int | None = None
        self.fail_count = 0           # how many matching requests fail (-1: all)
        self.fail_match = ""          # regex on "METHOD path"
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    # -- running ---------------------------------------------------------------------------------
    def start(self) -> "GeoServerStandIn":
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self) -> None:
                standin._serve(self)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def port(self) -> int:
        assert self._server
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/geoserver"

    def fail(self, status: int, count: int = -1, match: str = "") -> None:
        self.fail_status, self.fail_count, self.fail_match = status, count, match

    def heal(self) -> None:
        self.fail_status, self.fail_count, self.delay_s = None, 0, 0.0

    def calls(self, method: str | None = None, pattern: str = "") -> list[Request]:
        return [r for r in self.requests if (method is None or r.method == method)
                and re.search(pattern, r.path)]

    # -- HTTP ------------------------------------------------------------------------------------
    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        split = urlsplit(handler.path)
        path = unquote(split.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        request = Request(handler.command, path, query,
                          (handler.headers.get("Content-Type") or "").split(";")[0].strip(),
                          body, handler.headers.get("Authorization"))
        with self._lock:
            self.requests.append(request)
        if self.delay_s:
            time.sleep(self.delay_s)
        status, ctype, payload, headers = 200, "text/plain", b"", {}
        try:
            self._authorize(request)
            self._maybe_fail(request)
            status, result = self._route(request, handler.headers.get("Accept") or "")
            if isinstance(result, (dict, list)):
                ctype, payload = "application/json", json.dumps(result).encode()
            elif result is not None:
                payload = str(result).encode()
        except RestError as err:
            status, payload, headers = err.status, err.message.encode(), err.headers
            ctype = headers.pop("Content-Type", "text/plain")
        except SchemaError as err:
            status, payload = 400, f"Invalid body: {err}".encode()
        request.status = status
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", ctype)
            handler.send_header("Content-Length", str(len(payload)))
            for key, value in headers.items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass

    def _authorize(self, request: Request) -> None:
        expected = "Basic " + base64.b64encode(
            f"{self.user}:{self.password}".encode()).decode()
        if request.authorization != expected:
            raise RestError(401, "<html><body><h1>HTTP Status 401 - Unauthorized</h1>"
                            "</body></html>",
                            {"WWW-Authenticate": 'Basic realm="GeoServer Realm"',
                             "Content-Type": "text/html"})

    def _maybe_fail(self, request: Request) -> None:
        if self.fail_status is None or self.fail_count == 0:
            return
        if self.fail_match and not re.search(self.fail_match,
                                             f"{request.method} {request.path}"):
            return
        if self.fail_count > 0:
            self.fail_count -= 1
        raise RestError(self.fail_status, "java.lang.RuntimeException: injected failure "
                        f"({HTTPStatus(self.fail_status).phrase})")

    # -- bodies ----------------------------------------------------------------------------------
    @staticmethod
    def _parse(request: Request, definition: str) -> dict[str, Any]:
        if request.content_type in ("application/json", "text/json"):
            try:
                value = json.loads(request.body)
            except ValueError:
                raise RestError(400, "Malformed JSON body") from None
            check(value, SCHEMAS[definition])
            return value
        if request.content_type in ("application/xml", "text/xml"):
            try:
                value = xmltodict.parse(request.body)
            except Exception:  # noqa: BLE001 - expat errors
                raise RestError(400, "Malformed XML body") from None
            check(value, SCHEMAS[definition], xml=True)
            return value
        raise RestError(415, f"Content type '{request.content_type}' not supported")

    # -- routes ----------------------------------------------------------------------------------
    def _route(self, request: Request, accept: str) -> tuple[int, Any]:
        path = request.path
        if not path.startswith("/geoserver/rest/"):
            raise RestError(404, "Not found")
        parts = path[len("/geoserver/rest/"):].split("/")
        m = request.method
        with self._lock:
            # manifests.yaml /about/version (GET only): GeoServer, GeoTools and GeoWebCache
            if parts[:1] == ["about"] and len(parts) == 2 \
                    and parts[1] in ("version", "version.json"):
                if m != "GET":
                    raise RestError(405, "Method not allowed")
                return 200, {"about": {"resource": [
                    {"@name": "GeoServer", "Version": "2.25.2", "Git-Revision": "stand-in",
                     "Build-Timestamp": "01-Jan-2024 00:00"},
                    {"@name": "GeoTools", "Version": "31.2", "Git-Revision": "stand-in",
                     "Build-Timestamp": "01-Jan-2024 00:00"},
                    {"@name": "GeoWebCache", "Version": "1.25.2", "Git-Revision": "stand-in"}]}}
            if parts == ["workspaces"]:
                if m == "POST":
                    return self._post_workspace(request)
                raise RestError(405, "Method not allowed")
            if parts[0] == "workspaces" and len(parts) == 2:
                ws = _strip_ext(parts[1])
                if m == "GET":
                    self._workspace(ws)
                    return 200, {"workspace": {"name": ws}}
                raise RestError(405, "Method not allowed")
            if parts[0] == "workspaces" and len(parts) >= 3 and parts[2] == "styles":
                return self._styles(request, parts)
            if parts[0] == "workspaces" and len(parts) >= 3 and parts[2] == "coveragestores":
                return self._coveragestores(request, parts)
            if parts[0] == "layers" and len(parts) == 2:
                return self._layer(request, _strip_ext(parts[1]))
        raise RestError(404, f"No mapping for {m} {path}")

    def _workspace(self, ws: str) -> None:
        if ws not in self.workspaces:
            raise RestError(404, f"No such workspace: '{ws}' found")

    def _post_workspace(self, request: Request) -> tuple[int, Any]:
        body = self._parse(request, "Workspace")
        name = body["workspace"]["name"]
        if name in self.workspaces:
            raise RestError(409, f"Workspace '{name}' already exists")
        self.workspaces.add(name)
        return 201, name

    def _styles(self, request: Request, parts: list[str]) -> tuple[int, Any]:
        ws, m = parts[1], request.method
        self._workspace(ws)
        if len(parts) == 3:
            if m != "POST":
                raise RestError(405, "Method not allowed")
            body = self._parse(request, "StyleInfoPost")
            name = body["style"]["name"]
            if (ws, name) in self.styles:
                raise RestError(403, f"Style {name} already exists.")
            self.styles[(ws, name)] = {"info": body["style"], "sld": None}
            return 201, name
        name = _strip_ext(parts[3])
        style = self.styles.get((ws, name))
        if style is None:
            raise RestError(404, f"No such style: {name}")
        if m == "GET":
            return 200, {"style": {"name": name, "workspace": {"name": ws}, "format": "sld",
                                   "languageVersion": {"version": "1.0.0"},
                                   "filename": f"{name}.sld"}}
        if m == "PUT":
            if request.content_type != "application/vnd.ogc.sld+xml":
                raise RestError(415, f"Content type '{request.content_type}' not supported")
            try:
                root = ElementTree.fromstring(request.body)
            except ElementTree.ParseError as err:
                raise RestError(400, f"Invalid style: {err}") from None
            if root.tag != f"{{{SLD_NS}}}StyledLayerDescriptor" or \
                    root.get("version") != "1.0.0":
                raise RestError(400, "Invalid style: not an SLD 1.0.0 StyledLayerDescriptor")
            style["sld"] = request.body
            return 200, None
        if m == "DELETE":
            del self.styles[(ws, name)]
            return 200, None
        raise RestError(405, "Method not allowed")

    def _coveragestores(self, request: Request, parts: list[str]) -> tuple[int, Any]:
        ws, m = parts[1], request.method
        self._workspace(ws)
        if len(parts) == 3:
            raise RestError(405, "Method not allowed")
        name = _strip_ext(parts[3])
        store = self.stores.get((ws, name))
        if len(parts) == 4:
            if store is None:
                raise RestError(404, f"No such coverage store: {ws},{name}")
            if m == "GET":
                return 200, {"coverageStore": {"name": name, "type": store.type,
                                               "enabled": True, "workspace": {"name": ws},
                                               "url": store.url}}
            if m == "DELETE":
                recurse = request.query.get("recurse", "false") == "true"
                if store.coverages and not recurse:
                    raise RestError(401, "coveragestore not empty")
                purge = request.query.get("purge", "none")
                if purge not in ("none", "metadata", "all"):
                    raise RestError(400, f"Invalid purge value {purge}")
                if purge == "all":
                    for f in store.files:
                        f.unlink(missing_ok=True)
                for coverage in store.coverages:
                    self.layers.pop(f"{ws}:{coverage}", None)
                del self.stores[(ws, name)]
                return 200, None
            raise RestError(405, "Method not allowed")
        if len(parts) == 5 and "." in parts[4]:
            return self._upload(request, ws, name, store, *parts[4].split(".", 1))
        if len(parts) >= 6 and parts[4] == "coverages":
            if store is None:
                raise RestError(404, f"No such coverage store: {ws},{name}")
            coverage = _strip_ext(parts[5])
            if coverage not in store.coverages:
                raise RestError(404, f"No such coverage: {ws},{name},{coverage}")
            if len(parts) == 6:
                if m == "GET":
                    return 200, {"coverage": store.coverages[coverage]}
                if m == "PUT":
                    body = self._parse(request, "CoverageInfo")["coverage"]
                    if "name" in body and body["name"] != coverage:
                        raise RestError(403, "Can't change the name of a coverage")
                    store.coverages[coverage].update(body)
                    return 200, None
                raise RestError(405, "Method not allowed")
            if parts[6:8] == ["index", "granules"] or parts[6:8] == ["index", "granules.json"]:
                if store.type != "ImageMosaic":
                    raise RestError(404, f"Coverage {coverage} is not a structured coverage")
                keep = _cql(request.query.get("filter"))
                if m == "GET":
                    features = [g for g in store.granules if keep(g)]
                    return 200, {"type": "FeatureCollection", "features": [
                        {"type": "Feature", "id": f"{coverage}.{i + 1}",
                         "properties": {"location": g["location"], "time": g["time"]},
                         "geometry": None} for i, g in enumerate(features)]}
                if m == "DELETE":
                    purge = request.query.get("purge", "none")
                    gone = [g for g in store.granules if keep(g)]
                    store.granules = [g for g in store.granules if not keep(g)]
                    if purge == "all":
                        for g in gone:
                            g["file"].unlink(missing_ok=True)
                    return 200, None
                raise RestError(405, "Method not allowed")
        raise RestError(404, f"No mapping for {m} {request.path}")

    def _upload(self, request: Request, ws: str, name: str, store: Store | None, method: str,
                fmt: str) -> tuple[int, Any]:
        if method not in ("file", "url", "external"):
            raise RestError(400, f"Unsupported upload method: {method}")
        formats = {"geotiff": "GeoTIFF", "imagemosaic": "ImageMosaic"}
        if fmt not in formats:
            raise RestError(400, f"Unsupported format: {fmt}, available formats are: "
                            f"{sorted(formats)}")
        directory = self.data_dir / "data" / ws / name
        if request.method == "POST":  # harvest
            if store is None:
                raise RestError(404, f"No such coverage store: {ws},{name}")
            if store.type != "ImageMosaic":
                raise RestError(405, "Coverage store found, but it does not support resource "
                                     "harvesting")
            filename = request.query.get("filename")
            if method != "file" or not filename:
                raise RestError(400, "harvesting here needs an uploaded file and ?filename=")
            _require_tiff(request.body)
            granule = directory / filename
            granule.write_bytes(request.body)
            store.granules.append({"location": filename, "time": _granule_time(filename),
                                   "file": granule})
            store.files.append(granule)
            return 202, None
        if request.method != "PUT":
            raise RestError(405, "Method not allowed")
        coverage = request.query.get("coverageName") or name
        directory.mkdir(parents=True, exist_ok=True)
        files: list[Path] = []
        granules: list[dict[str, Any]] = []
        if method == "external":
            if request.content_type != "text/plain":
                raise RestError(415, f"Content type '{request.content_type}' not supported")
            location = request.body.decode()
            if not location.startswith("/"):
                raise RestError(400, "external upload: the body must be an absolute path")
            url = f"file:{location}"
        elif fmt == "geotiff":
            if request.content_type != "image/tiff":
                raise RestError(415, f"Content type '{request.content_type}' not supported")
            _require_tiff(request.body)
            target = directory / f"{name}.geotiff"
            target.write_bytes(request.body)
            files.append(target)
            url = f"file:data/{ws}/{name}/{target.name}"
        else:
            if request.content_type != "application/zip":
                raise RestError(415, f"Content type '{request.content_type}' not supported")
            try:
                archive = zipfile.ZipFile(io.BytesIO(request.body))
            except zipfile.BadZipFile:
                raise RestError(400, "Could not unzip the upload") from None
            names = archive.namelist()
            for required in ("indexer.properties", "timeregex.properties"):
                if required not in names:
                    raise RestError(500, "Error auto-configuring coverage: missing "
                                         f"{required}")
            tiffs = [n for n in names if n.lower().endswith((".tif", ".tiff"))]
            if not tiffs:
                raise RestError(500, "Error auto-configuring coverage: no granules")
            for member in names:
                target = directory / member
                target.write_bytes(archive.read(member))
                files.append(target)
                if member in tiffs:
                    _require_tiff(target.read_bytes())
                    granules.append({"location": member, "time": _granule_time(member),
                                     "file": target})
            url = f"file:data/{ws}/{name}"
        if store is None:
            store = self.stores[(ws, name)] = Store(name, formats[fmt], url)
        store.url, store.files = url, store.files + files
        store.granules.extend(granules)
        if request.query.get("configure", "first") != "none":
            store.coverages.setdefault(coverage, {"name": coverage, "nativeName": coverage,
                                                  "title": coverage, "enabled": True})
            self.layers.setdefault(f"{ws}:{coverage}", {"name": coverage, "type": "RASTER",
                                                        "defaultStyle": {"name": "raster"}})
        return 201, {"coverageStore": {"name": name, "type": store.type,
                                       "workspace": {"name": ws}, "url": url}}

    def _layer(self, request: Request, qualified: str) -> tuple[int, Any]:
        layer = self.layers.get(qualified)
        if layer is None:
            raise RestError(404, f"No such layer: {qualified}")
        if request.method == "GET":
            return 200, {"layer": layer}
        if request.method == "PUT":
            body = self._parse(request, "Layer")["layer"]
            style = (body.get("defaultStyle") or {}).get("name")
            if style:
                ws, _, short = style.rpartition(":")
                if (ws, short) not in self.styles:
                    raise RestError(400, f"No such style: {style}")
            layer.update(body)
            return 200, None
        if request.method == "DELETE":
            del self.layers[qualified]
            return 200, None
        raise RestError(405, "Method not allowed")


def _strip_ext(name: str) -> str:
    return re.sub(r"\.(json|xml|html)$", "", name)


def _require_tiff(data: bytes) -> None:
    if data[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        raise RestError(500, "Error auto-configuring coverage: not a TIFF")


def _granule_time(filename: str) -> str | None:
    found = re.search(r"([0-9]{8})T([0-9]{6})", filename)
    if not found:
        return None
    d, t = found.groups()
    return f"{d[:4]}-{d[4:6]}-{d[6:]}T{t[:2]}:{t[2:4]}:{t[4:]}.000+0000"


def _cql(text: str | None):
    """The CQL the publisher sends: ``location = 'x'`` (and none)."""
    if not text:
        return lambda g: True
    found = re.fullmatch(r"\s*location\s*=\s*'((?:[^']|'')*)'\s*", text)
    if not found:
        raise RestError(400, f"Unsupported CQL filter in the stand-in: {text}")
    wanted = found.group(1).replace("''", "'")
    return lambda g: g["location"] == wanted
