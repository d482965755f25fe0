"""The JSON body of an error this server answers itself (an OGC API exception document)."""
from __future__ import annotations

from http import HTTPStatus

from flask import Response, jsonify


def ogc_exception(status: int, code: str, description: str) -> Response:
    response = jsonify({"type": code, "code": code, "title": HTTPStatus(status).phrase,
                        "status": status, "description": description})
    response.status_code = status
    return response
