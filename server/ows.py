"""``/ows``: WMS 1.3.0 and WCS 2.0.1 of the published layers, served by MapServer's CGI.

Each request runs ``mapserv`` once as a subprocess with a minimal CGI environment. The MapServer 8
configuration file the publisher writes (``MAPSERVER_CONFIG_FILE``) forbids map paths, the
mapfile is named by this module in ``MS_MAPFILE`` (a request for one product's layer gets that
layer's own small mapfile, anything else the catalogue's), and this module strips every ``map``
parameter (and MapServer's ``map.*``/``map_*`` runtime substitutions) from the client's request,
so a client can neither pick another mapfile nor alter this one.

The CGI output goes to a temporary file rather than a pipe: the subprocess timeout then covers the
whole rendering, a slow client cannot stall ``mapserv``, and the status is known before the first
byte is sent. The body is then streamed from that file. MapServer's own OGC exception documents
are passed through with its status (``Status:`` header, e.g. 400/404 for WCS 2.0; WMS replies 200
with a ServiceExceptionReport as the standard asks); a missing binary or a timeout is a 503.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import OrderedDict
from html import escape, unescape
from pathlib import Path
from typing import IO, Any, Callable, Iterator
from urllib.parse import parse_qsl, unquote_plus

from flask import Blueprint, Response, request

LOGGER = logging.getLogger(__name__)

DEFAULT_BINARY = "/usr/lib/cgi-bin/mapserv"
DEFAULT_TIMEOUT_S = 60.0
# The largest WMS image served. The mapfile's MAXSIZE is raised to the largest coverage so that
# WCS can return whole Sentinel-2 tiles; WMS images are capped here instead.
DEFAULT_MAX_IMAGE_SIZE = 4096
CHUNK = 256 * 1024
HEADER_LIMIT = 64 * 1024
XML_TYPES = ("text/xml", "application/xml")
FORM_TYPE = "application/x-www-form-urlencoded"
# Headers of MapServer's CGI output worth passing on; Content-Length is computed here.
PASSED_HEADERS = {"content-type", "content-disposition", "content-description", "content-id",
                  "cache-control", "expires", "last-modified", "etag"}
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def find_mapserv(configured: str | os.PathLike | None = None) -> str:
    """The mapserv binary: the configured path, else ``mapserv`` on PATH, else Debian's CGI."""
    if configured:
        return str(configured)
    return shutil.which("mapserv") or DEFAULT_BINARY


def _is_map_key(raw_key: str) -> bool:
    key = unquote_plus(raw_key).strip().lower()
    return key == "map" or key.startswith(("map.", "map_", "map["))


def sanitize_query(query: bytes | str) -> str:
    """The query string without ``map`` parameters (nor MapServer's ``map.``/``map_`` runtime
    substitutions); the other parameters pass byte for byte, in order."""
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    kept = []
    for piece in text.split("&"):
        if not piece:
            continue
        key = piece.split("=", 1)[0]
        if _is_map_key(key):
            LOGGER.warning("/ows: dropped client parameter %r", unquote_plus(key)[:64])
            continue
        kept.append(piece)
    return "&".join(kept)


def ows_exception(status: int, code: str, message: str) -> Response:
    """An OWS 2.0 exception report (the family WCS 2.0 uses; WMS clients read the text too)."""
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<ows:ExceptionReport xmlns:ows="http://www.opengis.net/ows/2.0" version="2.0.1" '
            'xml:lang="en">\n'
            f'  <ows:Exception exceptionCode="{escape(code)}">\n'
            f"    <ows:ExceptionText>{escape(message)}</ows:ExceptionText>\n"
            "  </ows:Exception>\n"
            "</ows:ExceptionReport>\n")
    return Response(body, status=status, content_type="application/xml; charset=utf-8")


def wms_exception(code: str, message: str, status: int = 400) -> Response:
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<ServiceExceptionReport version="1.3.0" xmlns="http://www.opengis.net/ogc">\n'
            f'  <ServiceException code="{escape(code)}">{escape(message)}</ServiceException>\n'
            "</ServiceExceptionReport>\n")
    return Response(body, status=status, content_type="text/xml; charset=utf-8")


def oversized_image(query: str, max_size: int) -> Response | None:
    """A WMS exception when a GetMap/GetFeatureInfo/GetLegendGraphic asks for an image wider
    or taller than ``max_size``; None otherwise."""
    params = {k.strip().lower(): v for k, v in parse_qsl(query, keep_blank_values=True)}
    if params.get("request", "").lower() not in ("getmap", "map", "getfeatureinfo",
                                                   "feature_info", "getlegendgraphic"):
        return None
    for key in ("width", "height"):
        try:
            value = int(float(params.get(key, "0")))
        except ValueError:
            continue  # MapServer answers malformed sizes itself
        if value > max_size:
            return wms_exception("InvalidParameterValue",
                                 f"{key.upper()}={value} exceeds the largest image served "
                                 f"({max_size} pixels).")
    return None


# the parameter naming the layers of each request that draws or describes layers
LAYER_PARAMS = {"getmap": ("layers",), "map": ("layers",),
                "getfeatureinfo": ("layers", "query_layers"),
                "feature_info": ("layers", "query_layers"),
                "getlegendgraphic": ("layer",),
                "describecoverage": ("coverageid",), "getcoverage": ("coverageid",)}


def single_layer(query: str) -> str | None:
    """The one layer (or coverage) a GetMap, GetFeatureInfo, GetLegendGraphic,
    DescribeCoverage or GetCoverage names, None when it names several or it is another
    request."""
    params = {k.strip().lower(): v for k, v in parse_qsl(query, keep_blank_values=True)}
    keys = LAYER_PARAMS.get(params.get("request", "").strip().lower())
    if not keys:
        return None
    names = {name.strip() for key in keys for name in params.get(key, "").split(",")}
    return names.pop() if len(names) == 1 and all(names) else None


def is_capabilities(query: str) -> bool:
    params = {k.strip().lower(): v for k, v in parse_qsl(query, keep_blank_values=True)}
    return params.get("request", "").strip().lower() in ("getcapabilities", "capabilities")


class CapabilitiesCache:
    """GetCapabilities answers by query, kept while the catalogue's mapfile is unchanged.

    MapServer builds them from every layer (0.7-0.9 s with 1,000 layers here) and clients ask
    at each connection. The ETag names the mapfile's state and the query, so a client or proxy
    revalidates with If-None-Match and gets a 304. Per process, a few entries (a document is
    ~1.6 MB at 1,000 layers), keyed by the parameters whatever their order and case; a publish
    replaces the mapfile (new inode), which retires every entry."""

    def __init__(self, mapfile: Path, entries: int = 8) -> None:
        self.mapfile = mapfile
        self.entries = entries
        self._answers: OrderedDict[str, tuple[str, int, list[tuple[str, str]], bytes]] = \
            OrderedDict()
        self._lock = threading.Lock()

    def etag(self, query: str) -> str | None:
        try:
            stat = self.mapfile.stat()
        except FileNotFoundError:
            return None
        state = f"{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}\n{query}"
        return hashlib.sha256(state.encode()).hexdigest()[:24]

    def answer(self, query: str, run: Callable[[], Response]) -> Response:
        query = "&".join(sorted(f"{k.strip().lower()}={v}"
                                for k, v in parse_qsl(query, keep_blank_values=True)))
        etag = self.etag(query)
        if etag is None:
            return run()
        if request.if_none_match.contains(etag):
            response = Response(status=304)
        else:
            with self._lock:
                hit = self._answers.get(query)
                if hit is not None and hit[0] == etag:
                    self._answers.move_to_end(query)
            if hit is None or hit[0] != etag:
                fresh = run()
                if fresh.status_code != 200:
                    return fresh
                try:
                    body = b"".join(fresh.response)
                finally:
                    fresh.close()
                headers = [(k, v) for k, v in fresh.headers.items()
                           if k.lower() != "content-length"]
                hit = (etag, fresh.status_code, headers, body)
                with self._lock:
                    self._answers[query] = hit
                    self._answers.move_to_end(query)
                    while len(self._answers) > self.entries:
                        self._answers.popitem(last=False)
            response = Response(hit[3], status=hit[1], headers=hit[2])
        response.set_etag(etag)
        response.headers["Cache-Control"] = "no-cache"  # revalidate: a publish changes it
        return response


def _parse_headers(raw: bytes) -> tuple[int | None, list[tuple[str, str]]]:
    status, headers = None, []
    for line in raw.decode("latin-1").splitlines():
        name, sep, value = line.partition(":")
        if not sep:
            continue
        name, value = name.strip(), value.strip()
        if name.lower() == "status":
            match = re.match(r"\d{3}", value)
            status = int(match.group()) if match else None
        elif name.lower() in PASSED_HEADERS:
            headers.append((name, value))
    return status, headers


def _stream(fh: IO[bytes], start: int) -> Iterator[bytes]:
    try:
        fh.seek(start)
        while chunk := fh.read(CHUNK):
            yield chunk
    finally:
        fh.close()


class MapServCGI:
    """Runs ``mapserv`` as a CGI program against one MapServer config file: on ``mapfile``, or
    on the mapfile ``layer_mapfile(name)`` gives for a request naming one layer (None: none)."""

    def __init__(self, config_path: Path | str, mapfile: Path | str,
                 binary: str | os.PathLike | None = None,
                 timeout: float = DEFAULT_TIMEOUT_S, script_name: str = "/ows",
                 layer_mapfile: Callable[[str], Path | None] | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.config_path = Path(config_path)
        self.mapfile = Path(mapfile)
        self.layer_mapfile = layer_mapfile
        # GDAL's options for layers on an object store (its endpoint and credentials: in the
        # environment, never in the mapfile)
        self.extra_env = dict(extra_env or {})
        self.binary = find_mapserv(binary)
        self.timeout = float(timeout)
        self.script_name = script_name

    def mapfile_for(self, query: str) -> Path:
        name = single_layer(query) if self.layer_mapfile is not None else None
        return (self.layer_mapfile(name) if name else None) or self.mapfile

    def environ(self, method: str, query: str, content_type: str | None = None,
                content_length: int | None = None) -> dict[str, str]:
        env = {
            **self.extra_env,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_SOFTWARE": "aquamask",
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "SCRIPT_NAME": self.script_name,
            "REQUEST_METHOD": method,
            "QUERY_STRING": query,
            "MAPSERVER_CONFIG_FILE": str(self.config_path),
            "MS_MAPFILE": str(self.mapfile_for(query)),
        }
        if content_type is not None:
            env["CONTENT_TYPE"] = content_type
            env["CONTENT_LENGTH"] = str(content_length or 0)
        return env

    def run(self, method: str, query: str, body: bytes | None = None,
            content_type: str | None = None) -> Response:
        if not os.access(self.binary, os.X_OK):
            LOGGER.error("/ows: the map engine %s is missing or not executable", self.binary)
            return ows_exception(503, "NoApplicableCode",
                                 "The map engine (MapServer) is not available on this server.")
        env = self.environ(method, query, content_type, len(body) if body is not None else None)
        stdin = tempfile.TemporaryFile()
        out = tempfile.TemporaryFile()
        err = tempfile.TemporaryFile()
        started = time.perf_counter()
        try:
            if body:
                stdin.write(body)
                stdin.seek(0)
            try:
                proc = subprocess.run([self.binary], stdin=stdin, stdout=out, stderr=err,
                                      env=env, timeout=self.timeout, check=False)
            except subprocess.TimeoutExpired:
                out.close()
                LOGGER.error("/ows: mapserv took more than %.0f s: %s", self.timeout, query[:300])
                return ows_exception(503, "NoApplicableCode",
                                     f"The map engine did not answer within {self.timeout:g} s.")
            except OSError as exc:
                out.close()
                LOGGER.error("/ows: cannot run %s: %s", self.binary, exc)
                return ows_exception(503, "NoApplicableCode",
                                     "The map engine (MapServer) could not be started.")
            err.seek(0)
            stderr = err.read(4096).decode("utf-8", "replace").strip()
            if stderr:
                LOGGER.info("/ows: mapserv stderr: %s", stderr)
            out.seek(0)
            head = out.read(HEADER_LIMIT)
            match = _HEADER_END.search(head)
            if match is None:
                out.close()
                LOGGER.error("/ows: mapserv exited %s without CGI headers", proc.returncode)
                return ows_exception(502, "NoApplicableCode",
                                     "The map engine gave no answer.")
            status, headers = _parse_headers(head[:match.start()])
            size = out.seek(0, os.SEEK_END) - match.end()
            ctype = next((v for k, v in headers if k.lower() == "content-type"), "")
            if ctype.startswith("text/html"):
                # MapServer's HTML "MapServer Message" page: a CGI-level error (no service,
                # empty request, unloadable mapfile). Answer with an OGC exception instead, and
                # without the paths such pages show.
                out.seek(match.end())
                text = out.read(8192).decode("utf-8", "replace")
                out.close()
                return self._html_error(status, text)
            LOGGER.debug("/ows: mapserv %s in %.3f s, %d bytes", status or 200,
                         time.perf_counter() - started, size)
            response = Response(_stream(out, match.end()), status=status or 200,
                                headers=headers, direct_passthrough=True)
            response.content_length = size
            response.call_on_close(out.close)
            return response
        except BaseException:
            out.close()
            raise
        finally:
            stdin.close()
            err.close()

    @staticmethod
    def _html_error(status: int | None, html: str) -> Response:
        text = unescape(re.sub(r"<[^>]+>", " ", html))
        text = re.sub(r"\s+", " ", text).replace("MapServer Message", "").strip()
        if re.search(r"msLoad(Map|Config)|msCGILoadMap|Unable to access file", text):
            LOGGER.error("/ows: mapserv cannot load its configuration: %s", text)
            return ows_exception(500, "NoApplicableCode",
                                 "The map service is misconfigured; see the server log.")
        text = re.sub(r"(?<![\w.])/[^\s()'\"]+", "<path>", text)  # no server paths to clients
        return ows_exception(status if status and status >= 400 else 400,
                             "InvalidRequest" if "query" in text.lower() else "NoApplicableCode",
                             text or "Invalid request.")


def ows_blueprint(publisher_factory: Callable[[], object],
                  binary: str | os.PathLike | None = None,
                  timeout: float = DEFAULT_TIMEOUT_S, name: str = "aquamask_ows",
                  max_image_size: int = DEFAULT_MAX_IMAGE_SIZE) -> Blueprint:
    """A blueprint serving ``GET``/``POST /ows`` for the mapfile of
    ``publisher_factory()`` (a ``MapServerPublisher``; called once, on the first request)."""
    blueprint = Blueprint(name, __name__)
    state: dict[str, Any] = {}
    lock = threading.Lock()

    def cgi() -> MapServCGI:
        if "cgi" not in state:
            with lock:
                if "cgi" not in state:
                    publisher = publisher_factory()
                    store = getattr(publisher, "results_store", None)
                    state["capabilities"] = CapabilitiesCache(
                        publisher.mapfile_path)  # type: ignore[attr-defined]
                    state["cgi"] = MapServCGI(
                        publisher.config_path, publisher.mapfile_path,  # type: ignore
                        binary, timeout, layer_mapfile=publisher.layer_mapfile,  # type: ignore
                        extra_env=store.cgi_environment() if store is not None else None)
        return state["cgi"]

    @blueprint.route("/ows", methods=["GET", "POST"])
    def ows() -> Response:
        query = sanitize_query(request.query_string)
        if request.method == "GET":
            if not query:
                query = "SERVICE=WMS&REQUEST=GetCapabilities"
            if is_capabilities(query):
                engine = cgi()
                return state["capabilities"].answer(query, lambda: engine.run("GET", query))
            return oversized_image(query, max_image_size) or cgi().run("GET", query)
        mimetype = (request.mimetype or "").lower()
        if mimetype == FORM_TYPE:
            form = sanitize_query(request.get_data(cache=False))
            query = "&".join(p for p in (query, form) if p)
            return oversized_image(query, max_image_size) or cgi().run("GET", query)
        if mimetype in XML_TYPES:
            return cgi().run("POST", query, request.get_data(cache=False),
                             request.content_type or "text/xml")
        return ows_exception(415, "InvalidRequest",
                             "POST to /ows takes an XML request (text/xml) or a form.")

    return blueprint


def make_ows_blueprint(settings=None, *, workdir: Path | str | None = None,
                       base_url: str | None = None, binary: str | os.PathLike | None = None,
                       timeout: float | None = None) -> Blueprint:
    """``/ows`` for the app: from ``Settings`` (``mapserver.binary``, ``mapserver.timeout``,
    ``mapserver.max_image_size``, the publisher's ``mapserver.workdir`` and ``server.url``), or
    from ``workdir``/``base_url``."""
    from aquamask.processes.publishers.mapserver import MapServerPublisher

    if settings is not None:
        binary = binary or settings.get("mapserver", "binary")
        if timeout is None:
            timeout = settings.get("mapserver", "timeout")

        def factory() -> MapServerPublisher:
            return MapServerPublisher.from_settings(settings)
    else:
        if workdir is None or base_url is None:
            raise TypeError("make_ows_blueprint needs settings, or workdir and base_url")

        def factory() -> MapServerPublisher:
            return MapServerPublisher(Path(workdir), base_url)

    max_size = (settings.get("mapserver", "max_image_size") if settings is not None else None)
    return ows_blueprint(factory, binary=binary,
                         timeout=float(timeout if timeout is not None else DEFAULT_TIMEOUT_S),
                         max_image_size=int(max_size or DEFAULT_MAX_IMAGE_SIZE))
