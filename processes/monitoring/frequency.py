"""water-frequency: the water of every usable date of an interval -> per pixel, the share
(percent) of valid observations that saw water and the count of valid (and wet) observations."""
from __future__ import annotations

from typing import Any

from aquamask.processes.errors import NoScene
from aquamask.processes.monitoring.dates import (
    OK,
    date_context,
    detect_dates,
    fail_if_nothing,
    find_dates,
    public_record,
)
from aquamask.processes.monitoring.files import (
    FREQUENCY_TIF,
    ITEM_JSON,
    OBSERVATIONS_TIF,
    Links,
    job_files,
    publish_styled,
    rounded,
    write_raster_item,
)
from aquamask.processes.monitoring.rasters import FREQUENCY_NODATA, frequency_rasters
from aquamask.processes.monitoring.request import MonitoringRequest
from aquamask.processes.pipeline.products import product_title, to_cog
from aquamask.processes.settings import Settings
from aquamask.processes.styles import write_style_files
from aquamask.processes.types import ProgressCallback, scaled


def run_frequency(request: MonitoringRequest, settings: Settings, job_id: str,
                  progress: ProgressCallback, links: Links) -> dict[str, Any]:
    with job_files(settings, job_id) as (staging, work):
        ctx = date_context(request, settings, job_id, work, "water-frequency", None, progress)
        plans = find_dates(request, settings, ctx.source, scaled(progress, 1, 5))
        records = detect_dates(plans, ctx, settings, request.min_valid_fraction, progress,
                               end=80.0)
        fail_if_nothing(records)
        used = [r for r in records if r["status"] == OK]
        if not used:
            raise NoScene(f"none of the {len(records)} date(s) over "
                          f"{request.describe_place()} is usable "
                          "(see max_cloud_cover and min_valid_fraction): no frequency")
        progress(82, f"counting water in {len(used)} observation(s), block by block")
        profile = ctx.grid.profile()
        frequency_gtiff, observations_gtiff = work / "frequency.tif", work / "observations.tif"
        stats = frequency_rasters([r["_mask"] for r in used], profile, frequency_gtiff,
                                  observations_gtiff, inside=ctx.place.inside)
        progress(92, "writing the cloud-optimized GeoTIFFs")
        to_cog(frequency_gtiff, staging.path / FREQUENCY_TIF, nodata=FREQUENCY_NODATA,
               resampling="nearest")
        write_style_files(staging.path / FREQUENCY_TIF, "frequency")
        to_cog(observations_gtiff, staging.path / OBSERVATIONS_TIF, resampling="nearest")
        rows = [public_record(r) for r in records]
        query = request.query()
        write_raster_item(staging.path / ITEM_JSON, job_id, profile, used,
                          f"Water frequency over {request.describe_place()}",
                          {"frequency": stats, "parameters": request.parameters()},
                          {"frequency": {"name": FREQUENCY_TIF,
                                         "title": "water frequency: percent of the valid "
                                                  "observations, 255 none valid"},
                           "observations": {"name": OBSERVATIONS_TIF,
                                            "title": "valid observations (band 1), water "
                                                     "observations (band 2)"}})
        final = staging.commit()
        progress(96, "publishing the frequency layer")
        layer = publish_styled(job_id, final, FREQUENCY_TIF, profile,
                               product_title("Water frequency", request.method,
                                           query.datetime_text), settings,
                               stats["ever_wet_area_km2"], stats["valid_area_km2"])
        return {
            "frequency": links(FREQUENCY_TIF,
                               "water frequency: uint8 percent of the valid observations that "
                               "saw water, 255 where none was valid"),
            "observations": links(OBSERVATIONS_TIF,
                                  "uint16: valid observations (band 1), water observations "
                                  "(band 2)"),
            "stac_item": links(ITEM_JSON, "STAC Item with provenance"),
            "statistics": rounded(stats),
            "observations_used": len(used),
            "dates": rows,
            "method": request.method, "threshold": request.threshold,
            "datetime": query.datetime_text, "bbox": list(query.bbox),
            "layer": layer,
        }
