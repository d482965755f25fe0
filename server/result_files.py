"""A result file as an HTTP answer: from the results folder (``send_from_directory``) or
streamed from an object store, with conditional and range requests either way (GDAL reads
COGs over HTTP by ranges). ``/results/<job>/<name>`` and a job's raw file outputs use it."""
from __future__ import annotations

import datetime as dt
import logging

from flask import Response, current_app, request, send_from_directory

from aquamask.processes.settings import Settings
from aquamask.server.errors import ogc_exception

LOGGER = logging.getLogger(__name__)


def serve_file(store, settings: Settings, job_id: str, name: str, mimetype: str,
               missing: Response) -> Response:
    """The file ``name`` of ``job_id``'s result (``missing`` when it is not there)."""
    if store.remote:
        return stored_file(store, job_id, name, mimetype, missing)
    directory = settings.results_dir / job_id
    if not (directory / name).is_file():
        return missing
    # conditional and range requests are honoured, so GDAL can read the COG over HTTP
    return send_from_directory(directory, name, mimetype=mimetype, conditional=True)


def stored_file(store, job_id: str, name: str, mimetype: str, missing: Response) -> Response:
    """A result file streamed from an object store, with conditional and range requests. A
    single range (what GDAL asks for when it reads a COG over HTTP) is one ranged read of
    exactly its bytes from the store; anything else is the whole file, streamed."""
    from werkzeug.http import is_resource_modified
    from werkzeug.wsgi import wrap_file

    try:
        info = store.info(job_id, name)
    except Exception as err:  # noqa: BLE001 - the store is down: the server's side
        LOGGER.error("/results/%s/%s: the results store failed: %s", job_id, name, err)
        return ogc_exception(503, "NoApplicableCode", "the results store is not available")
    if info is None:
        return missing
    size = info["size"]
    mtime = (dt.datetime.fromtimestamp(info["mtime"], dt.timezone.utc)
             if info.get("mtime") is not None else None)
    etag = info.get("etag") or f"{size:x}-{int(info.get('mtime') or 0):x}"

    def finish(response):
        response.set_etag(etag)
        if mtime is not None:
            response.last_modified = mtime
        response.accept_ranges = "bytes"
        return response

    if not is_resource_modified(request.environ, etag=etag, last_modified=mtime):
        return finish(current_app.response_class(status=304))
    wanted = request.range
    if_range = request.if_range
    if wanted is not None and wanted.units == "bytes" and len(wanted.ranges) == 1 \
            and ((if_range.etag is None and if_range.date is None) or if_range.etag == etag):
        bounds = wanted.range_for_length(size)
        if bounds is None:
            response = current_app.response_class(status=416)
            response.headers["Content-Range"] = f"bytes */{size}"
            return finish(response)
        start, stop = bounds
        try:
            data = store.read_range(job_id, name, start, stop)
        except Exception as err:  # noqa: BLE001
            LOGGER.error("/results/%s/%s: the results store failed: %s", job_id, name, err)
            return ogc_exception(503, "NoApplicableCode", "the results store is not available")
        response = current_app.response_class(data, status=206, mimetype=mimetype)
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        return finish(response)
    try:
        handle = store.open(job_id, name)
    except Exception as err:  # noqa: BLE001
        LOGGER.error("/results/%s/%s: the results store failed: %s", job_id, name, err)
        return ogc_exception(503, "NoApplicableCode", "the results store is not available")
    response = current_app.response_class(wrap_file(request.environ, handle, 1 << 20),
                                          mimetype=mimetype, direct_passthrough=True)
    response.content_length = size
    return finish(response)
