"""What the job store does not know: results found without a job record (a store restored from
an older backup, a deleted SQLite file), reported and, on request, imported back.

The job store is the one source of truth; the results store holds files. A result without a
record is never served, listed or counted, so it is an orphan: ``orphans()`` names them (the
server logs them when it starts), ``import_result()`` makes one a successful job again, owned by
no user (managers see it) and published privately, from its STAC item. ``aquamask reconcile``
is the command for both.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from aquamask.processes.ogc.outputs import MASK_RESULT_FILES, result_link
from aquamask.processes.pipeline.products import ITEM_FILE, MASK_FILE, PROBABILITY_FILE
from aquamask.processes.publishing import service as publishing
from aquamask.processes.settings import Settings
from aquamask.processes.storage.jobstore import job_store
from aquamask.processes.storage.results import results_store

LOGGER = logging.getLogger(__name__)


def orphans(settings: Settings) -> list[str]:
    """Job ids with a complete result in the results store and no job record."""
    store = job_store(settings)
    return [job_id for job_id in results_store(settings).job_ids() if store.get(job_id) is None]


def import_result(job_id: str, settings: Settings) -> dict[str, Any]:
    """A water-detection result without a record made a successful job again, its mask and its
    views published (privately: its owner is not known); the job's outputs."""

    results = results_store(settings)
    if job_store(settings).get(job_id) is not None:
        raise ValueError(f"job {job_id} has a record already")
    item = json.loads(results.read_text(job_id, ITEM_FILE))
    if "mask" not in item.get("assets", {}):
        raise ValueError(f"result {job_id} is not a water mask (a monitoring result): "
                         "nothing to import")
    props = item.get("properties") or {}
    lineage = props.get("aquamask:lineage") or {}
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    job_store(settings).add({
        "identifier": job_id, "process_id": "water-detection", "type": "process",
        "status": "successful", "progress": 100, "created": props.get("created") or now,
        "started": props.get("processing:datetime") or now, "finished": now, "updated": now,
        "message": "imported from the results store", "mimetype": "application/json",
        "inputs": {"method": lineage.get("method")}, "submitted": True,
        "location": results.location_of(job_id)})
    product = publishing.product_from_results(job_id, settings)
    layer = publishing.publish(product, settings, background=False)
    publishing.publish_views(product, settings)  # the scene and probability views, as at first
    outputs = {"mask": _link(settings, job_id, MASK_FILE),
               "stac_item": _link(settings, job_id, ITEM_FILE),
               "water_area_km2": props.get("aquamask:water_area_km2"),
               "water_fraction": props.get("aquamask:water_fraction"),
               "valid_fraction": props.get("aquamask:valid_fraction"),
               "layer": layer.as_output()}
    if "probability" in item.get("assets", {}):
        outputs["probability"] = _link(settings, job_id, PROBABILITY_FILE)
    job_store(settings).update(job_id, {"outputs": outputs})
    LOGGER.info("job %s imported from its result", job_id)
    return outputs


def _link(settings: Settings, job_id: str, name: str) -> dict[str, str]:
    return result_link(settings.url, job_id, name, MASK_RESULT_FILES[name])


def report(settings: Settings) -> list[str]:
    """Log the orphans (at start): never silently kept."""
    try:
        found = orphans(settings)
    except Exception as err:  # noqa: BLE001 - a store that cannot be listed is /health's job
        LOGGER.warning("results without a job record could not be looked for: %s", err)
        return []
    if found:
        LOGGER.warning("%d result(s) have no job record (not served): %s%s; run `aquamask "
                       "reconcile --import` to make them jobs again", len(found),
                       ", ".join(found[:10]), " ..." if len(found) > 10 else "")
    return found
