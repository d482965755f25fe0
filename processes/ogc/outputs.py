"""What a result's outputs link to: the URL of each file under ``/results/<job>/<name>``, with
its media type. Each processor declares its files (``AquamaskProcessor.RESULT_FILES``); the
app serves the names every registered process declares (``ogc.result_files``)."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from aquamask.processes.constants import COG_MEDIA_TYPE, GEOJSON_MEDIA_TYPE
from aquamask.processes.pipeline.products import ITEM_FILE, MASK_FILE, PROBABILITY_FILE
from aquamask.processes.publishing.styles import style_files

# the files of a water mask result (water-detection, and a result imported by reconcile)
MASK_RESULT_FILES = {MASK_FILE: COG_MEDIA_TYPE, PROBABILITY_FILE: COG_MEDIA_TYPE,
                     ITEM_FILE: GEOJSON_MEDIA_TYPE, **style_files(MASK_FILE, "water")}


def cog_output(title: str, description: str | None = None) -> dict[str, Any]:
    """The description of an output that is a COG."""
    return {"title": title, **({"description": description} if description else {}),
            "schema": {"type": "string", "contentMediaType": COG_MEDIA_TYPE}}


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
