"""water-change: the water of the best date of each side (as water-detection picks one date in
an interval: full coverage, least cloud), then per pixel the change classes (dry, gained, lost,
permanent, no data) with the area of each, as a COG published in its style."""
from __future__ import annotations

import shutil
from functools import partial
from typing import Any

from aquamask.processes.constants import INVALID
from aquamask.processes.errors import InvalidInput
from aquamask.processes.monitoring.dates import (
    FAILED,
    best_date,
    date_context,
    detect_date,
    public_record,
)
from aquamask.processes.monitoring.files import (
    AFTER_TIF,
    BEFORE_TIF,
    CHANGE_TIF,
    ITEM_JSON,
    Links,
    job_files,
    publish_styled,
    write_raster_item,
)
from aquamask.processes.monitoring.parallel import run_parallel
from aquamask.processes.monitoring.rasters import change_raster
from aquamask.processes.monitoring.request import MonitoringRequest
from aquamask.processes.pipeline.products import product_title, to_cog
from aquamask.processes.settings import Settings
from aquamask.processes.styles import write_style_files
from aquamask.processes.types import ProgressCallback

SIDES = ("before", "after")


def run_change(request: MonitoringRequest, settings: Settings, job_id: str,
               progress: ProgressCallback, links: Links) -> dict[str, Any]:
    with job_files(settings, job_id) as (staging, work):
        ctx = date_context(request, settings, job_id, work, "water-change", None, progress)
        plans = []
        for n, side in enumerate(SIDES):
            query = request.query(side)
            progress(2 + 2 * n, f"searching {ctx.source.name} for the {side} date: "
                                f"{query.describe()}")
            plans.append(best_date(ctx.source, query))
        if plans[0].day == plans[1].day:
            raise InvalidInput(f"before and after chose the same date ({plans[0].day}); give "
                               "two different dates or intervals")
        finished = []

        def on_done(i: int, record: dict[str, Any]) -> None:
            finished.append(i)
            progress(10 + 35 * len(finished), f"{len(finished)} of 2 dates done "
                                               f"({SIDES[i]}: {record['status']})")

        progress(8, f"detecting water on {plans[0].day} and {plans[1].day}")
        records = run_parallel([partial(detect_date, p, ctx) for p in plans], on_done,
                               scheduler=settings.monitoring.scheduler,
                               workers=settings.monitoring.max_parallel_dates)
        for side, record in zip(SIDES, records):
            if record["status"] == FAILED:
                raise RuntimeError(f"the {side} date {record['date']} failed: "
                                   f"{record['error']}")
        progress(82, "classifying the change block by block")
        profile = ctx.grid.profile()
        masks = [work / p.stamp / "mask.tif" for p in plans]
        change_gtiff = work / "change.tif"
        totals = change_raster(masks[0], masks[1], change_gtiff, inside=ctx.place.inside)
        to_cog(change_gtiff, staging.path / CHANGE_TIF, nodata=INVALID, resampling="mode")
        write_style_files(staging.path / CHANGE_TIF, "change")
        for mask, name in zip(masks, (BEFORE_TIF, AFTER_TIF)):
            shutil.copyfile(mask, staging.path / name)
            write_style_files(staging.path / name, "water")
        rows = [public_record(r) for r in records]
        areas = {name: round(v["area_km2"], 6) for name, v in totals.items()}
        pixels = {name: v["pixels"] for name, v in totals.items()}
        net = areas["gained"] - areas["lost"]
        query = request.query("before")
        write_raster_item(staging.path / ITEM_JSON, job_id, profile, records,
                          f"Water change over {request.describe_place('before')}",
                          {"change_area_km2": areas, "change_pixels": pixels,
                           "parameters": request.parameters()},
                          {"change": {"name": CHANGE_TIF, "title": "0 dry, 1 gained, 2 lost, "
                                                                   "3 permanent, 255 no data"},
                           "before": {"name": BEFORE_TIF, "title": "water mask, before"},
                           "after": {"name": AFTER_TIF, "title": "water mask, after"}})
        final = staging.commit()
        progress(95, "publishing the change layer")
        layer = publish_styled(job_id, final, CHANGE_TIF, profile,
                               product_title("Water change", request.method,
                                           f"{rows[0]['date']} to {rows[1]['date']}"),
                               settings, areas["gained"] + areas["permanent"],
                               sum(v for k, v in areas.items() if k != "invalid"))
        return {
            "change": links(CHANGE_TIF,
                            "change classes: 0 dry, 1 gained, 2 lost, 3 permanent, 255 no data"),
            "before_mask": links(BEFORE_TIF, "water mask of the before date"),
            "after_mask": links(AFTER_TIF, "water mask of the after date"),
            "stac_item": links(ITEM_JSON, "STAC Item with provenance"),
            "area_km2": areas,
            "pixels": pixels,
            "net_change_km2": round(net, 6),
            "before": rows[0], "after": rows[1],
            "method": request.method, "threshold": request.threshold,
            "bbox": list(query.bbox),
            "layer": layer,
        }
