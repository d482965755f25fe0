"""``/ows``: WMS 1.3.0 / 1.1.1 and WCS 2.0.1 of the published layers, through a strict gateway
to a pool of persistent MapServer processes.

Each request is parsed and rebuilt by ``aquamask.server.ows_gateway`` (nothing of the client's
query reaches MapServer), then answered from the layers its caller may see: their own and the
public ones (managers: all), read from the job store. A layer of someone else is answered
exactly as a layer that does not exist. The mapfile of each request is chosen here and named to
MapServer in ``MS_MAPFILE``: a layer's own small mapfile, a time series', the caller's view
(capabilities), or a set of the layers named.

MapServer runs as FastCGI processes owned by each web worker (``aquamask.server.fastcgi``): a
GetMap costs MapServer's rendering alone, not its start-up. MapServer's own OGC exception
documents are passed on (WMS ones, which MapServer sends with 200, as 400); its HTML error pages
become OGC exceptions without the paths they show; a busy, dead or slow engine is a 503.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from flask import Blueprint, Flask, Response, request

from aquamask.processes.identity import current_identity
from aquamask.server import wcs_documents
from aquamask.server.fastcgi import FastCGIError, MapServerPool, PoolBusy
from aquamask.server.ows_gateway import Limits, OwsError, OwsRequest, parse

LOGGER = logging.getLogger(__name__)

DEFAULT_BINARY = "/usr/lib/cgi-bin/mapserv"
CHUNK = 256 * 1024
HEADER_LIMIT = 64 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"
FORM_LIMIT = 64 * 1024
ENGINE_KEY = "aquamask_ows_engine"
# Headers of MapServer's CGI output worth passing on; Content-Length is computed here.
PASSED_HEADERS = {"content-type", "content-disposition", "content-description", "content-id",
                  "cache-control", "expires", "last-modified"}
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def find_mapserv(configured: str | os.PathLike | None = None) -> str:
    """The mapserv binary: the configured path, else ``mapserv`` on PATH, else Debian's."""
    if configured:
        return str(configured)
    return shutil.which("mapserv") or DEFAULT_BINARY


def ows_exception(status: int, code: str, message: str) -> Response:
    """An OWS 2.0 exception report (the family WCS 2.0 uses; WMS clients read the text too)."""
    return error_response(OwsError(code, message, status=status).about("WCS", "2.0.1"))


def error_response(err: OwsError) -> Response:
    body, content_type = err.body()
    return Response(body, status=err.status, content_type=content_type)


class CapabilitiesCache:
    """Capabilities answers by view and query, kept while the view's mapfile is unchanged.

    MapServer builds them from every layer of the view (0.7-0.9 s with 1,000 layers) and
    clients ask at each connection. The ETag names the mapfile's state and the query, so a
    client or proxy revalidates with If-None-Match and gets a 304. Per process, a few entries;
    a new view mapfile (a publish, another owner) is a new key."""

    def __init__(self, entries: int = 16) -> None:
        self.entries = entries
        self._answers: OrderedDict[str, tuple[str, int, list[tuple[str, str]], bytes]] = \
            OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def etag(mapfile: Path, query: str) -> str:
        stat = mapfile.stat()
        state = f"{mapfile}:{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}\n{query}"
        return hashlib.sha256(state.encode()).hexdigest()[:24]

    def answer(self, mapfile: Path, query: str, run: Callable[[], Response]) -> Response:
        etag = self.etag(mapfile, query)
        if request.if_none_match.contains(etag):
            response = Response(status=304)
        else:
            with self._lock:
                hit = self._answers.get(etag)
                if hit is not None:
                    self._answers.move_to_end(etag)
            if hit is None:
                fresh = run()
                if fresh.status_code != 200:
                    return fresh
                body, headers = drained(fresh)
                hit = (etag, fresh.status_code, headers, body)
                with self._lock:
                    self._answers[etag] = hit
                    while len(self._answers) > self.entries:
                        self._answers.popitem(last=False)
            response = Response(hit[3], status=hit[1], headers=hit[2])
        response.set_etag(etag)
        response.headers["Cache-Control"] = "private, no-cache"  # revalidate: a publish changes it
        return response


# answers that depend on one layer's mapfile and the query alone: a viewer's tiles, legends
CACHEABLE = ("GetMap", "GetLegendGraphic")
TILE_MAX_AGE_S = 60


def revalidated(mapfile: Path, query: str, run: Callable[[], Response]) -> Response:
    """A map tile or legend with an ETag naming the layer's mapfile state and the query: a
    browser reuses it for a minute, then revalidates it (304) instead of drawing it again.
    A layer published again gets a new mapfile, hence new ETags."""
    etag = CapabilitiesCache.etag(mapfile, query)
    if request.if_none_match.contains(etag):
        response = Response(status=304)
    else:
        response = run()
        if response.status_code != 200:
            return response
    response.set_etag(etag)
    response.headers["Cache-Control"] = f"private, max-age={TILE_MAX_AGE_S}"
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


@dataclass
class MapServerEngine:
    """Answers a rebuilt OGC query from one mapfile on this process's MapServer pool."""

    config_path: Path
    binary: str
    processes: int
    timeout: float
    script_name: str = "/ows"

    def __post_init__(self) -> None:
        self._pool: MapServerPool | None = None
        self._lock = threading.Lock()

    @property
    def pool(self) -> MapServerPool:
        # one pool per process: gunicorn forks its web workers after the app is loaded
        with self._lock:
            if self._pool is None or self._pool._owner != os.getpid():
                self._pool = MapServerPool(
                    self.binary, self.processes,
                    # the whole environment of MapServer: nothing of the server's own (its
                    # secrets); the object store's GDAL options are in its config file
                    {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                     "MAPSERVER_CONFIG_FILE": str(self.config_path)},
                    timeout=self.timeout, wait=self.timeout)
            return self._pool

    def available(self) -> bool:
        return os.access(self.binary, os.X_OK)

    def run(self, query: str, mapfile: Path, ogc: OwsRequest) -> Response:
        if not self.available():
            LOGGER.error("/ows: the map engine %s is missing or not executable", self.binary)
            return error_response(ogc.error("NoApplicableCode", "The map engine (MapServer) "
                                            "is not available on this server.", status=503))
        params = {"GATEWAY_INTERFACE": "CGI/1.1", "SERVER_PROTOCOL": "HTTP/1.1",
                  "SERVER_SOFTWARE": "aquamask", "SERVER_NAME": "localhost",
                  "SERVER_PORT": "80", "SCRIPT_NAME": self.script_name,
                  "REQUEST_METHOD": "GET", "QUERY_STRING": query,
                  "MS_MAPFILE": str(mapfile)}
        try:
            answer = self.pool.request(params)
        except PoolBusy as err:
            LOGGER.error("/ows: %s", err)
            return error_response(ogc.error("NoApplicableCode", "The map engine is busy; try "
                                            "again shortly.", status=503))
        except (TimeoutError, OSError) as err:  # socket.timeout is a TimeoutError
            LOGGER.error("/ows: the map engine failed (%s): %s", type(err).__name__,
                         query[:300])
            message = (f"The map engine did not answer within {self.timeout:g} s."
                       if isinstance(err, TimeoutError) else "The map engine failed.")
            return error_response(ogc.error("NoApplicableCode", message, status=503))
        except FastCGIError as err:
            LOGGER.error("/ows: the map engine failed: %s", err)
            return error_response(ogc.error("NoApplicableCode", "The map engine failed.",
                                            status=503))
        out = answer.stdout
        try:
            if answer.stderr:
                LOGGER.info("/ows: mapserv: %s", answer.stderr.decode("utf-8", "replace")
                            .strip()[:2000])
            head = out.read(HEADER_LIMIT)
            match = _HEADER_END.search(head)
            if match is None:
                out.close()
                LOGGER.error("/ows: mapserv answered without CGI headers")
                return error_response(ogc.error("NoApplicableCode",
                                                 "The map engine gave no answer.", status=503))
            status, headers = _parse_headers(head[:match.start()])
            size = out.seek(0, os.SEEK_END) - match.end()
            ctype = next((v for k, v in headers if k.lower() == "content-type"), "")
            if ctype.startswith("text/html"):
                out.seek(match.end())
                text = out.read(8192).decode("utf-8", "replace")
                out.close()
                return error_response(self._html_error(status, text, ogc))
            if ctype.startswith(("text/xml", "application/vnd.ogc.se_xml")) \
                    and (status or 200) == 200:
                out.seek(match.end())
                if b"ServiceExceptionReport" in out.read(1024):
                    status = 400  # MapServer sends WMS exceptions with 200: a client error
            response = Response(_stream(out, match.end()), status=status or 200,
                                headers=headers, direct_passthrough=True)
            response.content_length = size
            response.call_on_close(out.close)
            return response
        except BaseException:
            out.close()
            raise

    @staticmethod
    def _html_error(status: int | None, html: str, ogc: OwsRequest) -> OwsError:
        """MapServer's HTML "MapServer Message" page (an error before the OGC layer: a mapfile
        that cannot be loaded, ...) as an OGC exception without the paths it shows."""
        text = unescape(re.sub(r"<[^>]+>", " ", html))
        text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
        text = re.sub(r"\s+", " ", text).replace("MapServer Message", "").strip()
        if re.search(r"msLoad(Map|Config)|msCGILoadMap|Unable to access file|Parsing error",
                     text):
            LOGGER.error("/ows: mapserv cannot load its configuration: %s", text)
            return ogc.error("NoApplicableCode", "The map service is misconfigured; see the "
                             "server log.", status=500)
        text = re.sub(r"(?<![\w.])/[^\s()'\"]+", "<path>", text)  # no server paths to clients
        return ogc.error("NoApplicableCode", text or "Invalid request.",
                         status=status if status and status >= 400 else 400)


class LayerAccess:
    """Which mapfile answers a request, from the layers its caller may see.

    Layer rows are kept per process for ``row_ttl_s`` (a tile request would otherwise spend
    a third of its time reading the same row): a new layer is seen at once (misses are not
    kept), an unpublished one for at most that long, while its files are still there."""

    def __init__(self, publisher, row_ttl_s: float = 2.0) -> None:
        self.publisher = publisher
        self.store = publisher.store
        self.row_ttl_s = row_ttl_s
        self._rows: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._rows_lock = threading.Lock()

    def _row(self, name: str) -> dict[str, Any] | None:
        now = time.monotonic()
        with self._rows_lock:
            kept = self._rows.get(name)
            if kept is not None and kept[0] > now:
                return kept[1]
        row = self.store.layer_named(name)
        if row is not None and self.row_ttl_s > 0:
            with self._rows_lock:
                self._rows[name] = (now + self.row_ttl_s, row)
                self._rows.move_to_end(name)
                while len(self._rows) > 1024:
                    self._rows.popitem(last=False)
        return row

    @staticmethod
    def _caller() -> tuple[str | None, bool]:
        identity = current_identity.get()
        if identity is None:
            return None, False
        return identity.owner, identity.sees_all_jobs

    def facts(self, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """The facts of the rows of ``names`` (layers the request was allowed to name)."""
        rows = {name: self._row(name) for name in names}
        return {name: row["facts"] for name, row in rows.items() if row is not None}

    def visible_facts(self) -> dict[str, dict[str, Any]]:
        """The facts of every layer the caller may see."""
        owner, everyone = self._caller()
        _, rows = self.store.visible_layers(owner, everyone=everyone)
        return {row["name"]: row["facts"] for row in rows}

    def _visible(self, rows: list[dict[str, Any]], owner: str | None, everyone: bool) -> bool:
        return bool(rows) and all(
            r["engine"] == self.publisher.name
            and (everyone or r["public"] or (owner is not None and r["owner"] == owner))
            for r in rows)

    def mapfile(self, ogc: OwsRequest) -> Path:
        owner, everyone = self._caller()
        if ogc.operation == "GetCapabilities":
            return self.publisher.view_mapfile(owner, everyone)
        found: list[dict[str, Any]] = []
        series: dict[str, list[dict[str, Any]]] = {}
        for name in dict.fromkeys(ogc.layers):
            if name.startswith("series-"):
                members = self.store.layers(series=name)
                ok = ogc.service == "WMS" and self._visible(members, owner, everyone)
                rows = members
            else:
                row = self._row(name)
                rows = [row] if row else []
                ok = self._visible(rows, owner, everyone)
            if not ok:
                # someone else's layer is answered as one that does not exist
                if ogc.service == "WCS":
                    raise ogc.error("NoSuchCoverage", f"no coverage {name!r} here",
                                    "COVERAGEID", status=404)
                raise ogc.error("LayerNotDefined", f"no layer {name!r} here",
                                "LAYER" if ogc.operation == "GetLegendGraphic" else "LAYERS")
            if name.startswith("series-"):
                series[name] = rows
            else:
                found.extend(rows)
        self._check_time(ogc, series)
        if len(ogc.layers) == 1 and len(set(ogc.layers)) == 1:
            name = ogc.layers[0]
            if name in series:
                path = self.publisher.series_mapfile(name)
                if path is None:
                    raise ogc.error("LayerNotDefined", f"no layer {name!r} here", "LAYERS")
                return path
            return self.publisher.layer_mapfile(found[0])
        return self.publisher.set_mapfile(found + [{"name": key, "series": key, "facts": {}}
                                                   for key in series])

    @staticmethod
    def _check_time(ogc: OwsRequest, series: dict[str, list[dict[str, Any]]]) -> None:
        """TIME must be one of the series' dates (the dimension says nearestValue 0): an
        unknown or unparsable one is an InvalidDimensionValue, never the default date's map."""
        if ogc.time is None or not series:
            return
        from aquamask.processes.publishing.names import utc_time

        try:
            wanted = utc_time(ogc.time)
        except ValueError:
            raise ogc.error("InvalidDimensionValue", "TIME is not a valid date-time",
                            "TIME") from None
        for name, rows in series.items():
            times = {utc_time(r["datetime"]) for r in rows if r.get("datetime")}
            if wanted not in times:
                raise ogc.error("InvalidDimensionValue",
                                f"TIME {ogc.time} is not one of the {len(times)} dates of "
                                f"{name} (see its Dimension in the capabilities)", "TIME")


def corrected(response: Response, fix: Callable[[bytes], bytes]) -> Response:
    """A successful answer of MapServer with its document rewritten by ``fix``."""
    if response.status_code != 200:
        return response
    body, headers = drained(response)
    return Response(fix(body), status=200, headers=headers)


def drained(response: Response) -> tuple[bytes, list[tuple[str, str]]]:
    """A streamed answer's whole body, and its headers but the length (the body may change)."""
    try:
        body = b"".join(response.response)  # type: ignore[arg-type]  # bytes here
    finally:
        response.close()
    return body, [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]


def _client_pairs() -> list[tuple[str, str]] | Response:
    """The KVP pairs of a GET, or of a POSTed form (bounded); the XML POST binding is not
    offered."""
    pairs = list(request.args.items(multi=True))
    if request.method == "POST":
        if (request.mimetype or "").lower() != FORM_TYPE:
            return error_response(OwsError(
                "OperationNotSupported", "POST to /ows takes a form "
                "(application/x-www-form-urlencoded) of KVP parameters; the XML encoding is "
                "not supported", status=415))
        if (request.content_length or 0) > FORM_LIMIT:
            return error_response(OwsError("InvalidParameterValue",
                                           f"forms are limited to {FORM_LIMIT} bytes",
                                           status=413))
        pairs += list(request.form.items(multi=True))
    return pairs


def ows_blueprint(settings, name: str = "aquamask_ows") -> Blueprint:
    """``GET``/``POST /ows`` for ``settings`` (``mapserver.*``, ``server.url``)."""
    from aquamask.processes.publishing.mapserver import MapServerPublisher

    blueprint = Blueprint(name, __name__)
    limits = Limits(max_image_size=settings.mapserver.max_image_size,
                    max_coverage_size=settings.mapserver.max_size)
    state: dict[str, Any] = {}
    lock = threading.Lock()

    def parts() -> tuple[LayerAccess, MapServerEngine, CapabilitiesCache]:
        if "engine" not in state:
            with lock:
                if "engine" not in state:
                    publisher = MapServerPublisher.from_settings(settings)
                    state["access"] = LayerAccess(publisher)
                    state["capabilities"] = CapabilitiesCache()
                    state["engine"] = MapServerEngine(
                        publisher.config_path, find_mapserv(settings.mapserver.binary),
                        settings.mapserver.processes, settings.mapserver.timeout)
        return state["access"], state["engine"], state["capabilities"]

    # the app's handle on this worker's engine (start_map_engine)
    blueprint.record_once(lambda setup: setup.app.extensions.setdefault(ENGINE_KEY, parts))

    @blueprint.route("/ows", methods=["GET", "POST"])
    def ows() -> Response:
        pairs = _client_pairs()
        if isinstance(pairs, Response):
            return pairs
        if not pairs:
            pairs = [("SERVICE", "WMS"), ("REQUEST", "GetCapabilities")]
        try:
            ogc = parse(pairs, limits)
            access, engine, capabilities = parts()
            mapfile = access.mapfile(ogc)
        except OwsError as err:
            return error_response(err)
        query = ogc.query()
        if ogc.operation == "GetCapabilities" and ogc.service == "WCS":
            response = capabilities.answer(mapfile, query, lambda: corrected(
                engine.run(query, mapfile, ogc),
                lambda body: wcs_documents.capabilities(body, access.visible_facts())))
        elif ogc.operation == "GetCapabilities":
            response = capabilities.answer(mapfile, query,
                                           lambda: engine.run(query, mapfile, ogc))
        elif ogc.operation == "DescribeCoverage":
            response = corrected(engine.run(query, mapfile, ogc), lambda body: (
                wcs_documents.describe_coverage(body, access.facts(ogc.layers))))
        elif ogc.operation in CACHEABLE and len(set(ogc.layers)) == 1:
            response = revalidated(mapfile, query, lambda: engine.run(query, mapfile, ogc))
        else:
            response = engine.run(query, mapfile, ogc)
        response.vary.add("Authorization")  # what a caller sees depends on who asks
        return response

    return blueprint


def start_map_engine(app: Flask) -> None:
    """Start this process's MapServer pool now rather than on the first map request (called in
    each web worker as it starts; the master never serves maps)."""
    parts = app.extensions.get(ENGINE_KEY)
    if parts is None:
        return
    try:
        engine = parts()[1]
        if engine.available():
            engine.pool.start()
    except Exception:  # noqa: BLE001 - the first map request tries again and answers the error
        LOGGER.exception("the map engine could not be started ahead of the first request")


def make_ows_blueprint(settings) -> Blueprint:
    """``/ows`` for the app."""
    return ows_blueprint(settings)
