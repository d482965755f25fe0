"""Errors a user (or an operator) can act on: one family, independent of the web framework.

Each carries the HTTP status and the OGC exception code it stands for; the edge (the processor
base, ``ogc.base.as_ogc_error``, and the job manager) turns them into pygeoapi's
``ProcessorExecuteError``, which pygeoapi writes as an OGC exception document.
"""
from __future__ import annotations

from http import HTTPStatus


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


class ConfigError(ValueError):
    """The configuration is wrong; the message names the key (``jobs.max_running: ...``).
    Raised when the settings are read, so the server refuses to start."""


class Cancelled(Exception):
    """The job was dismissed while it ran; not a user error, the work just stops."""


class Overdue(Exception):
    """The job ran past its runtime limit (``jobs.max_runtime_s``): stopped and failed."""
