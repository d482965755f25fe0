"""The JSON body of an error this server answers itself (an OGC API exception document)."""
from __future__ import annotations

from flask import Response, jsonify

from aquamask.processes.errors import exception_document


def ogc_exception(status: int, code: str, description: str) -> Response:
    response = jsonify(exception_document(status, code, description))
    response.status_code = status
    return response
