"""water-timeseries: every usable acquisition date of an interval -> water area, valid fraction,
source products; JSON, CSV and a PNG chart; each date's mask published as a product
``{job_id}--t<time>`` (``names.derived_id``) so that one WMS layer with a ``TIME`` dimension
steps through the dates, and dismissing the job removes them; optional field validation."""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from aquamask.processes.files import write_atomic
from aquamask.processes.monitoring import insitu
from aquamask.processes.monitoring.charts import timeseries_chart, validation_chart
from aquamask.processes.monitoring.dates import (
    FAILED,
    OK,
    SKIPPED,
    date_context,
    detect_dates,
    fail_if_nothing,
    find_dates,
    public_record,
)
from aquamask.processes.monitoring.files import (
    DATES_DIR,
    TIMESERIES_CSV,
    TIMESERIES_JSON,
    TIMESERIES_PNG,
    VALIDATION_CSV,
    VALIDATION_PNG,
    Links,
    Staging,
    job_files,
    series_csv,
)
from aquamask.processes.monitoring.request import MonitoringRequest
from aquamask.processes.pipeline.products import product_title
from aquamask.processes.publishing import service as publishing
from aquamask.processes.publishing.names import series_name
from aquamask.processes.settings import Settings
from aquamask.processes.types import Layer, Product, ProgressCallback, scaled

LOGGER = logging.getLogger(__name__)


def run_timeseries(request: MonitoringRequest, settings: Settings, job_id: str,
                   progress: ProgressCallback, links: Links) -> dict[str, Any]:
    published: list[str] = []
    with job_files(settings, job_id) as (staging, work):
        try:
            return _run(request, settings, job_id, progress, links, staging, work, published)
        except BaseException:
            for product_id in published:
                try:
                    publishing.unpublish(product_id, settings, background=False)
                except Exception:  # noqa: BLE001 - the job's failure is what is reported
                    LOGGER.exception("%s: could not unpublish after a failure", product_id)
            raise


def _run(request: MonitoringRequest, settings: Settings, job_id: str,
         progress: ProgressCallback, links: Links, staging: Staging, work: Path,
         published: list[str]) -> dict[str, Any]:
    """The series; ``published``: the products published so far (taken down on failure)."""
    ctx = date_context(request, settings, job_id, work, "water-timeseries",
                       staging.path / DATES_DIR, progress)
    (staging.path / DATES_DIR).mkdir()
    plans = find_dates(request, settings, ctx.source, scaled(progress, 1, 5))
    records = detect_dates(plans, ctx, settings, request.min_valid_fraction, progress)
    fail_if_nothing(records)
    rows = [public_record(r) for r in records]
    query = request.query()
    title = (f"Water area over {request.describe_place()} ({request.method}), "
             f"{request.describe_dates()}")
    progress(89, "writing the series, its CSV and its chart")
    write_atomic(staging.path / TIMESERIES_CSV, series_csv(rows))
    timeseries_chart(rows, staging.path / TIMESERIES_PNG, title)
    validation = None
    if request.field:
        field = insitu.FieldSeries.from_dict(request.field)
        validation = insitu.validate_series(rows, field, request.field_tolerance_days)
        write_atomic(staging.path / VALIDATION_CSV, insitu.pairs_csv(validation))
        validation_chart(validation, rows, field, staging.path / VALIDATION_PNG)
    for record in records:  # drop the skipped dates' products: nothing to publish
        product = record.get("_product")
        if product is not None and record["status"] != OK:
            shutil.rmtree(product.directory, ignore_errors=True)
            record.pop("_product")
    final = staging.commit()
    progress(93, "publishing the dates as one time-enabled layer")
    dated: list[tuple[dict[str, Any], Product, Layer]] = []
    for record, row in zip(records, rows):
        product = record.get("_product")
        if product is None:
            continue
        moved = replace(product, directory=final / DATES_DIR / product.id,
                        mask_cog=final / DATES_DIR / product.id / product.mask_cog.name,
                        stac_item=final / DATES_DIR / product.id / product.stac_item.name,
                        title=product_title("Water time series", request.method, row["date"]))
        published.append(moved.id)
        layer = publishing.publish(moved, settings, background=False,
                                   series=series_name(job_id))
        row["layer"] = layer.name
        dated.append((row, moved, layer))
    layer_output = publishing.series_output(job_id, [(p, lay) for _, p, lay in dated],
                                            settings)
    if layer_output is not None:
        for (row, _, _), time in zip(dated, layer_output["times"]):
            row["layer_time"] = time
    usable = [r for r in rows if r["status"] == OK]
    areas = [r["water_area_km2"] for r in usable]
    summary = {"dates": len(rows), "usable": len(usable),
               "skipped": sum(r["status"] == SKIPPED for r in rows),
               "failed": sum(r["status"] == FAILED for r in rows),
               "water_area_km2_min": min(areas) if areas else None,
               "water_area_km2_max": max(areas) if areas else None,
               "water_area_km2_mean": round(float(np.mean(areas)), 6) if areas else None}
    outputs: dict[str, Any] = {
        "timeseries": rows,
        "summary": summary,
        "method": request.method, "threshold": request.threshold,
        "datetime": query.datetime_text, "bbox": list(query.bbox),
        "max_cloud_cover": request.max_cloud_cover,
        "min_valid_fraction": request.min_valid_fraction,
        "json": links(TIMESERIES_JSON, "the series as JSON"),
        "csv": links(TIMESERIES_CSV, "the series as CSV"),
        "chart": links(TIMESERIES_PNG, "water area over time (PNG)"),
        "layer": layer_output,
    }
    if validation is not None:
        outputs["field_validation"] = dict(
            validation,
            csv=links(VALIDATION_CSV, "matched pairs (CSV)"),
            chart=links(VALIDATION_PNG, "water area and field values (PNG)"))
    staging.store.put(job_id, TIMESERIES_JSON, json.dumps(
        {k: v for k, v in outputs.items() if k not in ("json",)}, indent=1))
    return outputs
