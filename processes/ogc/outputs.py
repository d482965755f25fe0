"""The outputs the processes share: their descriptions, and what a result's files link to (the
URL of each file under ``/results/<job>/<name>``, with its media type). Each processor declares
its files (``AquamaskProcessor.RESULT_FILES``); the app serves the names every registered
process declares (``ogc.result_files``)."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from aquamask.processes.constants import (
    COG_MEDIA_TYPE,
    GEOJSON_MEDIA_TYPE,
    JSON_MEDIA_TYPE,
)
from aquamask.processes.pipeline.products import ITEM_FILE, MASK_FILE, PROBABILITY_FILE
from aquamask.processes.styles import style_files

# the files of a water mask result (water-detection, and a result imported by reconcile)
MASK_RESULT_FILES = {MASK_FILE: COG_MEDIA_TYPE, PROBABILITY_FILE: COG_MEDIA_TYPE,
                     ITEM_FILE: GEOJSON_MEDIA_TYPE, **style_files(MASK_FILE, "water")}


def described(title: str, schema: dict[str, Any], description: str | None = None
              ) -> dict[str, Any]:
    """The description of an output."""
    return {"title": title, **({"description": description} if description else {}),
            "schema": schema}


def file_output(title: str, media_type: str, description: str | None = None
                ) -> dict[str, Any]:
    """The description of an output that is a file (by reference a link to it)."""
    return described(title, {"type": "string", "contentMediaType": media_type}, description)


def cog_output(title: str, description: str | None = None) -> dict[str, Any]:
    """The description of an output that is a COG."""
    return file_output(title, COG_MEDIA_TYPE, description)


def object_output(title: str, description: str | None = None,
                  media_type: str = JSON_MEDIA_TYPE) -> dict[str, Any]:
    """The description of an output that is a JSON object (a qualified value in results)."""
    return described(title, {"type": "object", "contentMediaType": media_type}, description)


STAC_ITEM_OUTPUT = object_output("STAC Item", "provenance and statistics", GEOJSON_MEDIA_TYPE)
LAYER_OUTPUT = object_output("WMS/WCS layer", "its name and the URLs of its WMS and WCS "
                             "operations (GetCapabilities, GetMap, GetCoverage, "
                             "DescribeCoverage, legend)")
BBOX_OUTPUT = described("Bounding box (WGS84 lon/lat)",
                        {"type": "array", "items": {"type": "number"}, "minItems": 4,
                         "maxItems": 4}, "[west, south, east, north] of the result")
# what a result says of the request it answers (the defaults it applied)
METHOD_OUTPUTS = {
    "method": described("Detection method", {"type": "string"}),
    "threshold": described("Water probability threshold", {"type": "number"}),
}
DATES_OUTPUT = described("Dates searched", {"type": "string"}, "the interval, RFC 3339")


def result_url(base_url: str, job_id: str, name: str) -> str:
    return f"{base_url}/results/{job_id}/{name}"


def result_link(base_url: str, job_id: str, name: str, media_type: str,
                title: str | None = None) -> dict[str, str]:
    """The link object of a result file in a job's outputs."""
    link = {"href": result_url(base_url, job_id, name), "type": media_type}
    if title is not None:
        link["title"] = title
    return link


def result_links(base_url: str, job_id: str, files: Mapping[str, str]
                 ) -> Callable[[str, str], dict[str, str]]:
    """(name, title) -> the link of that file of ``job_id``'s result (``files``: its media
    types by name)."""
    return lambda name, title: result_link(base_url, job_id, name, files[name], title)


def served_url(record: dict[str, Any]) -> str | None:
    """The URL of the server a job's outputs were made for: its layer's /ows, or the folder
    of its result links; None when they name neither."""
    outputs = record.get("outputs")
    if not isinstance(outputs, dict):
        return None
    layer = outputs.get("layer") or {}
    wms = (layer.get("value") or {}).get("wms") if "value" in layer else layer.get("wms")
    if isinstance(wms, str) and wms.endswith("/ows"):
        return wms[:-len("/ows")]
    marker = f"/results/{record['identifier']}/"
    for value in outputs.values():
        href = value.get("href") if isinstance(value, dict) else None
        if isinstance(href, str) and marker in href:
            return href.split(marker)[0]
    return None


def rebased(value: Any, old: str, new: str) -> Any:
    """``value`` (outputs: dicts, lists, strings) with each URL under ``old`` moved under
    ``new``: a job's links once its server answers at another address."""
    if isinstance(value, str):
        return new + value[len(old):] if value.startswith(old + "/") else value
    if isinstance(value, dict):
        return {k: rebased(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [rebased(v, old, new) for v in value]
    return value
