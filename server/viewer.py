"""``/viewer``: the web page to choose a place and a date, run water detection, watch the job and
see the water on a map; plus the small JSON API the page needs beside OGC API - Processes.

- ``GET /viewer``: the page (``viewer/index.html``); its scripts and styles are built from
  ``viewer/src`` with npm + esbuild into ``viewer/static`` by ``scripts/setup.sh``. No CDN: the
  page works offline.
- ``GET /viewer/static/<file>``: the built bundle, the offline world layer, licences.
- ``GET /viewer/api/config``: the base map (``viewer.basemap_url``: XYZ template or WMS URL;
  none means the offline world layer), auth mode and login URL.
- ``GET /viewer/api/scenes``: raster files under the data root (relative paths) with their
  bounds in WGS84, read with rasterio, cached by modification time.
- ``GET /viewer/api/results``: the caller's earlier successful jobs with their outputs and the
  acquisition time from their STAC item (through the job manager, so ownership rules apply).

The landing page (``/``) gets a link to the viewer: a link object in its JSON and a short
section in its HTML, added after pygeoapi renders it (no copy of pygeoapi's template to keep in
step with its releases).
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, redirect, request, send_from_directory
from markupsafe import escape

from aquamask.processes.settings import Settings
from aquamask.processes.storage.results import results_store
from aquamask.server.errors import ogc_exception

LOGGER = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent / "viewer"
STATIC = HERE / "static"
RASTER_SUFFIXES = (".tif", ".tiff")
MAX_SCENES = 1000
MAX_DEPTH = 8
MAX_RESULTS = 200
LANDING_MARKERS = ('<section id="processes">', '<section id="openapi">')


def _scene_entry(path: Path, relative: str) -> dict[str, Any] | None:
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.warp import transform_bounds

    from aquamask.processes.errors import InvalidInput
    from aquamask.processes.pipeline.sources.raster import band_indexes

    try:
        with rasterio.open(path) as ds:
            try:  # a scene holds the detection bands: a label or mask raster is no scene
                band_indexes(ds.descriptions, ds.count)
            except InvalidInput:
                return None
            entry: dict[str, Any] = {
                "href": relative, "name": path.name, "width": ds.width, "height": ds.height,
                "count": ds.count, "crs": ds.crs.to_string() if ds.crs else None,
                "bbox": None}
            if ds.crs:
                west, south, east, north = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds,
                                                            densify_pts=21)
                entry["bbox"] = [round(v, 7) for v in (west, south, east, north)]
            return entry
    except (RasterioError, ValueError, OSError) as err:
        LOGGER.debug("viewer: %s is not a readable raster (%s)", relative, err)
        return None


class SceneIndex:
    """Raster files under the data root, each read once per (mtime, size)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[str, tuple[tuple[float, int], dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    def _files(self):
        root = str(self.root)
        for directory, dirs, names in os.walk(root):
            depth = directory[len(root):].count(os.sep)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < MAX_DEPTH else []
            for name in sorted(names):
                if not name.startswith(".") and name.lower().endswith(RASTER_SUFFIXES):
                    yield Path(directory) / name

    def scenes(self) -> tuple[list[dict[str, Any]], bool]:
        found: list[dict[str, Any]] = []
        truncated, seen = False, set()
        with self._lock:
            for path in self._files():
                if len(found) >= MAX_SCENES:
                    truncated = True
                    break
                try:
                    stat = path.stat()
                except OSError:
                    continue
                relative = path.relative_to(self.root).as_posix()
                seen.add(relative)
                key = (stat.st_mtime, stat.st_size)
                cached = self._cache.get(relative)
                if cached is None or cached[0] != key:
                    cached = (key, _scene_entry(path, relative))
                    self._cache[relative] = cached
                if cached[1] is not None:
                    found.append(cached[1])
            if not truncated:
                for gone in set(self._cache) - seen:
                    del self._cache[gone]
        return found, truncated


# job id -> acquisition time, of results on an object store (a result never changes; each
# look-up there is a request)
_ACQUIRED: dict[str, str] = {}


def _acquired(results, job_id: str) -> str | None:
    """The acquisition time a result's STAC item records, when it has one. ``results``: the
    results folder or store (``aquamask.processes.storage.results``)."""
    from aquamask.processes.pipeline.products import ITEM_FILE
    from aquamask.processes.storage.results import LocalResultStore

    store = LocalResultStore(Path(results)) if isinstance(results, (str, os.PathLike)) \
        else results
    if store.remote and job_id in _ACQUIRED:
        return _ACQUIRED[job_id]
    try:
        item = json.loads(store.read_text(job_id, ITEM_FILE))
    except Exception:  # noqa: BLE001 - missing, unreadable, or the store is down: no time
        return None
    properties = item.get("properties") or {}
    # aquamask:acquired is null when no input said it (then datetime is null and
    # start/end_datetime only bound it); items written before it have their datetime
    acquired = properties["aquamask:acquired"] if "aquamask:acquired" in properties \
        else properties.get("datetime")
    if store.remote and acquired:
        if len(_ACQUIRED) >= 4096:
            _ACQUIRED.clear()
        _ACQUIRED[job_id] = acquired
    return acquired


def result_summary(record: dict[str, Any], results_dir, base_url: str) -> dict[str, Any]:
    """An earlier result for the page, its links on this server (``base_url``) even when the
    job was made by a server at another address (port)."""
    from aquamask.processes.ogc.outputs import rebased, served_url

    outputs = record.get("outputs")
    made_at = served_url(record)
    if made_at and made_at != base_url:
        outputs = rebased(outputs, made_at, base_url)
    return {
        "id": record["identifier"],
        "process_id": record.get("process_id"),
        "created": record.get("created"),
        "finished": record.get("finished"),
        "inputs": record.get("inputs") or {},
        "outputs": outputs if isinstance(outputs, dict) else {},
        "datetime": _acquired(results_dir, record["identifier"]),
    }


def _media_type(response: Response) -> str:
    # pygeoapi replaces a response's headers with a plain dict: look the name up by hand
    for name, value in response.headers.items():
        if name.lower() == "content-type":
            return value.split(";")[0].strip().lower()
    return ""


def _link_landing_page(response: Response, viewer_href: str) -> Response:
    """Add the viewer to pygeoapi's landing page: a link in its JSON, a section in its HTML."""
    if response.status_code != 200 or response.direct_passthrough:
        return response  # (pygeoapi's pages come as an iterable: get_data() buffers it)
    media_type = _media_type(response)
    if media_type == "application/json":
        try:
            document = json.loads(response.get_data(as_text=True))
        except ValueError:
            return response
        links = document.get("links") if isinstance(document, dict) else None
        if isinstance(links, list) and not any(link.get("href") == viewer_href for link in links):
            links.append({"rel": "related", "type": "text/html", "title": "aquamask viewer",
                          "href": viewer_href})
            response.set_data(json.dumps(document, indent=4))
    elif media_type == "text/html":
        text = response.get_data(as_text=True)
        if 'id="viewer"' in text:
            return response
        section = ('<section id="viewer">\n  <h2>Viewer</h2>\n  <p><a href="'
                   f'{escape(viewer_href)}">Open the aquamask viewer</a>: choose a place and a '
                   'date, run water detection and see the water on a map</p>\n</section>\n')
        for marker in LANDING_MARKERS:
            if marker in text:
                response.set_data(text.replace(marker, section + marker, 1))
                break
    return response


def viewer_blueprint(settings: Settings) -> Blueprint:
    blueprint = Blueprint("aquamask_viewer", __name__)
    scenes = SceneIndex(settings.data_root)
    viewer_href = f"{settings.url}/viewer"

    @blueprint.get("/viewer")
    def page():
        if not (STATIC / "viewer.js").is_file():
            return Response(
                "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>aquamask "
                "viewer</title></head><body><h1>The viewer is not built</h1><p>Run "
                "<code>bash scripts/setup.sh</code> (it runs <code>npm ci</code> and the build "
                "in <code>server/viewer</code>), then reload.</p></body></html>",
                status=503, mimetype="text/html")
        response = send_from_directory(HERE, "index.html", mimetype="text/html")
        response.headers["Cache-Control"] = "no-cache"
        return response

    @blueprint.get("/viewer/")
    def page_slash():
        # the page's relative links assume /viewer, so that the app can sit under a prefix
        return redirect("../viewer", code=308)

    @blueprint.get("/viewer/static/<path:name>")
    def static_file(name: str):
        response = send_from_directory(STATIC, name, conditional=True, max_age=300)
        return response

    @blueprint.get("/viewer/api/config")
    def config():
        viewer = settings.viewer
        basemap = None
        if viewer.basemap_url:
            kind = viewer.basemap_type or ("xyz" if "{z}" in viewer.basemap_url else "wms")
            basemap = {"url": viewer.basemap_url, "type": kind,
                       "layers": viewer.basemap_layers or "",
                       "attribution": viewer.basemap_attribution or ""}
        return jsonify({
            "process": viewer.process,
            "series_process": viewer.series_process,
            "basemap": basemap,
            "auth": {"mode": settings.auth.mode,
                     "login_url": viewer.login_url or settings.auth.login_url},
            "poll_ms": viewer.poll_ms,
        })

    @blueprint.get("/viewer/api/scenes")
    def list_scenes():
        found, truncated = scenes.scenes()
        return jsonify({"scenes": found, "truncated": truncated,
                        "numberReturned": len(found)})

    @blueprint.get("/viewer/api/results")
    def list_results():
        from pygeoapi.flask_app import api_
        from pygeoapi.util import JobStatus

        from aquamask.processes.identity import current_identity

        identity = current_identity.get()
        if identity is not None and not identity.has("researcher"):
            # as for /jobs: results are a researcher's (the manager lists the caller's own)
            return ogc_exception(403, "Forbidden", "listing results needs the researcher role")
        try:
            limit = min(max(int(request.args.get("limit", 50)), 1), MAX_RESULTS)
        except ValueError:
            return ogc_exception(400, "InvalidParameterValue", "limit must be an integer")
        jobs = api_.manager.get_jobs(status=JobStatus.successful, limit=limit)
        results = [result_summary(r, results_store(settings), settings.url)
                   for r in jobs["jobs"]]
        return jsonify({"results": results, "numberMatched": jobs.get("numberMatched"),
                        "numberReturned": len(results)})

    @blueprint.after_app_request
    def landing_link(response: Response) -> Response:
        if request.path == "/" and request.method == "GET":
            return _link_landing_page(response, viewer_href)
        return response

    return blueprint
