"""Errors a user (or an operator) can act on: one family, independent of the web framework.

Each carries the HTTP status and the OGC exception code it stands for; the edge (the processor
base, ``ogc.base.as_ogc_error``, and the job manager) turns them into pygeoapi's
``ProcessorExecuteError``, which pygeoapi writes as an OGC exception document.
"""
from __future__ import annotations

from http import HTTPStatus
from typing import Any

# OGC API - Processes 1.0's exception types (RFC 7807 ``type`` URIs); other errors are
# ``about:blank`` (the HTTP status says it all) with the OWS code beside it
PROCESSES_EXCEPTIONS = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0/"
EXCEPTION_TYPES = {"NoSuchProcess": "no-such-process", "NoSuchJob": "no-such-job",
                   "ResultNotReady": "result-not-ready"}
EXCEPTION_TITLES = {"NoSuchProcess": "No such process", "NoSuchJob": "No such job",
                    "ResultNotReady": "The results are not ready"}


class AquamaskError(Exception):
    """Base of errors caused by the request, not by the server."""

    http_status_code = HTTPStatus.BAD_REQUEST
    ogc_exception_code = "InvalidParameterValue"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(AquamaskError):
    """An input value is malformed, out of range or inconsistent."""


class MissingInput(AquamaskError):
    ogc_exception_code = "MissingParameterValue"


class Forbidden(AquamaskError):
    """The request names something it may not reach (e.g. a path outside the data root)."""

    http_status_code = HTTPStatus.FORBIDDEN


class TooLarge(AquamaskError):
    """The request exceeds a configured limit."""

    http_status_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class TooManyJobs(AquamaskError):
    """The caller already has as many jobs queued or running as the limit allows."""

    http_status_code = HTTPStatus.TOO_MANY_REQUESTS
    ogc_exception_code = "TooManyRequests"


class NoScene(InvalidInput):
    """No imagery matches the place, dates and cloud limit asked for.

    422, not 404: the request is well formed and the process exists (OGC API - Processes keeps
    404 for "no such process/job", and a client would take it for a wrong URL); it is these
    inputs that cannot be processed, and changing them (wider dates, higher cloud limit) helps.
    """

    http_status_code = HTTPStatus.UNPROCESSABLE_ENTITY


class UpstreamError(AquamaskError):
    """An imagery hub or catalogue failed: refused the configured credentials, kept answering
    errors after the retries, or served unreadable files. Not the request's fault: 502."""

    http_status_code = HTTPStatus.BAD_GATEWAY
    ogc_exception_code = "NoApplicableCode"


def exception_document(status: int, code: str, detail: str) -> dict[str, Any]:
    """An OGC API exception (RFC 7807 problem details): ``type`` (the spec's URI where it has
    one), ``title``, ``status``, ``detail``; and the OWS ``code`` and ``description`` older
    clients read."""
    spec = EXCEPTION_TYPES.get(code)
    return {"type": PROCESSES_EXCEPTIONS + spec if spec else "about:blank",
            "title": EXCEPTION_TITLES.get(code) or HTTPStatus(status).phrase,
            "status": int(status), "detail": detail, "code": code, "description": detail}


class ConfigError(ValueError):
    """The configuration is wrong; the message names the key (``jobs.max_running: ...``).
    Raised when the settings are read, so the server refuses to start."""


class Cancelled(Exception):
    """The job was dismissed while it ran; not a user error, the work just stops."""


class Overdue(Exception):
    """The job ran past its runtime limit (``jobs.max_runtime_s``): stopped and failed."""
