"""The WSGI app: pygeoapi's Flask app, configured from aquamask settings, plus what it lacks
(result files, the /ows map services, health)."""
from __future__ import annotations

import json
import logging
import os
from importlib.resources import files
from pathlib import Path

import yaml
from flask import Blueprint, Flask, request
from jinja2 import Template
from pygeoapi.process.base import JobNotFoundError
from werkzeug.exceptions import HTTPException

from aquamask.processes.constants import PRODUCT_ID
from aquamask.processes.files import write_atomic
from aquamask.processes.ogc import PROCESSES, result_files
from aquamask.processes.publishing import service as publishing
from aquamask.processes.settings import Settings, split_bind
from aquamask.processes.storage.jobstore import StoreUnavailable
from aquamask.processes.storage.results import results_store
from aquamask.server import metrics, processes_api
from aquamask.server.auth import Auth
from aquamask.server.errors import ogc_exception
from aquamask.server.health import health_blueprint
from aquamask.server.result_files import serve_file

LOGGER = logging.getLogger(__name__)


def render_pygeoapi_config(settings: Settings) -> tuple[Path, Path]:
    """Write pygeoapi's config and OpenAPI document under ``home`` from our settings."""
    from pygeoapi.openapi import get_oas

    from aquamask.server.pygeoapi_pages import write_templates

    host, port = split_bind(settings.server.bind)
    template = Template((files("aquamask.config") / "pygeoapi.yml.j2").read_text())
    text = template.render(
        templates=write_templates(settings.home / "pygeoapi-templates"),
        host=host or "127.0.0.1", port=port, url=settings.url,
        database=settings.database_url, results=settings.results_dir,
        log_level=settings.logging.level, processes=PROCESSES,
        # pygeoapi's HTML pages need an XYZ map; the viewer's own default is offline
        basemap_url=settings.viewer.basemap_url
        or "https://tile.openstreetmap.org/{z}/{x}/{y}.png",
        basemap_attribution=settings.viewer.basemap_attribution
        or "&copy; OpenStreetMap contributors")
    config_path = settings.home / "pygeoapi.yml"
    openapi_path = settings.home / "openapi.yml"
    write_atomic(config_path, text)
    write_atomic(openapi_path, yaml.safe_dump(get_oas(yaml.safe_load(text)), sort_keys=False))
    return config_path, openapi_path


def results_blueprint(settings: Settings, manager) -> Blueprint:
    blueprint = Blueprint("aquamask_results", __name__)
    store = results_store(settings)
    served = result_files()  # every process's result files, with their media types

    @blueprint.get("/results/<job_id>/<name>")
    def result_file(job_id: str, name: str):
        missing = ogc_exception(404, "NotFound", f"no result file {name!r} for job {job_id!r}")
        if name not in served or not PRODUCT_ID.match(job_id):
            return missing
        if not store.remote and not (settings.results_dir / job_id / name).is_file():
            return missing
        try:
            manager.get_job(job_id)  # the owner's (or a manager's) only
        except JobNotFoundError:
            return missing
        return serve_file(store, settings, job_id, name, served[name], missing)

    return blueprint


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # pages load scripts and styles from this server only (pygeoapi's too: see
    # aquamask.server.pygeoapi_pages); map tiles and images may come from a configured base map
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data: blob: https:; "
                                "style-src 'self' 'unsafe-inline'; script-src 'self'; "
                                "connect-src 'self'; frame-ancestors 'none'"),
}


def add_security_headers(app: Flask, settings: Settings) -> None:
    origins = settings.security.cors_origins

    @app.after_request
    def headers(response):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.is_secure:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        origin = request.headers.get("Origin")
        if origin and ("*" in origins or origin in origins):
            response.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else origin
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Prefer"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
            response.headers["Access-Control-Expose-Headers"] = "Location, Preference-Applied"
            response.headers.add("Vary", "Origin")
        return response


def reject_non_object_execute_bodies(app: Flask) -> None:
    """pygeoapi assumes an execute body is a UTF-8 JSON object and fails with a 500 on
    ``[]``, ``"x"`` or undecodable bytes: answer those with a 400 before it sees them."""

    @app.before_request
    def check_execute_body():
        if request.method != "POST" or not request.path.endswith("/execution"):
            return None
        raw = request.get_data(cache=True)
        if not raw:
            return None  # pygeoapi answers a missing body with its own 400
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return ogc_exception(400, "InvalidParameterValue",
                                 "the request body must be JSON in UTF-8")
        try:
            body = json.loads(text)
            deep = json_depth(body) > MAX_JSON_DEPTH
        except ValueError:
            return None  # pygeoapi answers malformed JSON with its own 400
        except RecursionError:
            deep = True
        if deep:
            return ogc_exception(400, "InvalidParameterValue",
                                 f"the request is nested too deeply (at most {MAX_JSON_DEPTH} "
                                 "levels of arrays and objects)")
        if not isinstance(body, dict):
            return ogc_exception(400, "InvalidParameterValue",
                                 "the execute request must be a JSON object with 'inputs'")
        return None


# no input needs more (a MultiPolygon's coordinates are 4 deep); every parser after this one
# (pygeoapi, shapely, ours) then stays far from Python's recursion limit
MAX_JSON_DEPTH = 32


def json_depth(value) -> int:
    """How deep arrays and objects nest in ``value``, without recursing."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in
                         (item.values() if isinstance(item, dict) else item))
    return deepest


def _not_a_missing_offset(record: logging.LogRecord) -> bool:
    """pygeoapi 0.21 logs ``int(None)``'s TypeError as a warning for every GET /jobs without
    ``offset`` (viewers poll it): not a problem, so not in the log."""
    return not (isinstance(record.msg, TypeError) and "NoneType" in str(record.msg))


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app once per process (pygeoapi configures itself when first imported)."""
    settings = settings or Settings.load()
    settings.ensure_dirs()
    config_path, openapi_path = render_pygeoapi_config(settings)
    os.environ["PYGEOAPI_CONFIG"] = str(config_path)
    os.environ["PYGEOAPI_OPENAPI"] = str(openapi_path)
    from pygeoapi.flask_app import APP, api_

    logging.getLogger("pygeoapi.api.processes").addFilter(_not_a_missing_offset)

    from aquamask.server.ows import make_ows_blueprint
    from aquamask.server.viewer import viewer_blueprint

    APP.config["MAX_CONTENT_LENGTH"] = settings.limits.max_request_bytes
    auth = Auth(settings)
    # first: its timer starts before auth or anything else may answer the request
    metrics.init_app(APP, settings, api_.manager.store, auth, api_.manager.sweep)
    auth.init_app(APP)
    reject_non_object_execute_bodies(APP)
    add_security_headers(APP, settings)
    APP.register_blueprint(results_blueprint(settings, api_.manager))
    APP.register_blueprint(health_blueprint(settings, api_.manager))
    APP.register_blueprint(make_ows_blueprint(settings))
    # the map engine's files, derived from the job store's layers: missing or broken ones
    # rendered again, those of layers no longer there retired
    from aquamask.processes.jobs import reconcile
    publishing.rebuild(settings)
    reconcile.report(settings)  # results without a job record: logged, never silently kept
    APP.register_blueprint(viewer_blueprint(settings))
    processes_api.install(APP, api_, settings)

    @APP.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        return ogc_exception(err.code or 500, err.name.replace(" ", ""), err.description or "")

    @APP.errorhandler(StoreUnavailable)
    def store_away(err: StoreUnavailable):
        # the database is restarting or failing over: jobs wait, requests are told to retry
        response = ogc_exception(503, "ServiceUnavailable", "the job store is not available "
                                 "right now; try again in a minute")
        response.headers["Retry-After"] = "30"
        return response

    APP.config["AQUAMASK_SETTINGS"] = settings
    return APP
