"""The ``water-change`` OGC API process: thin, validates inputs then runs the monitoring
functions (``aquamask.processes.monitoring.run_change``)."""
from __future__ import annotations

from typing import Any

from aquamask.processes.constants import COG_MEDIA_TYPE, GEOJSON_MEDIA_TYPE
from aquamask.processes.errors import InvalidInput
from aquamask.processes.monitoring.change import run_change
from aquamask.processes.monitoring.files import AFTER_TIF, BEFORE_TIF, CHANGE_TIF, ITEM_JSON
from aquamask.processes.monitoring.request import MonitoringRequest
from aquamask.processes.ogc.base import MonitoringProcessor, describe_process
from aquamask.processes.ogc.inputs import MONITORING_INPUTS, parse_monitoring
from aquamask.processes.ogc.outputs import (
    BBOX_OUTPUT,
    LAYER_OUTPUT,
    METHOD_OUTPUTS,
    STAC_ITEM_OUTPUT,
    cog_output,
    described,
    object_output,
)
from aquamask.processes.settings import Settings
from aquamask.processes.styles import style_files

SIDE = {
    "schema": {"type": "string"}, "minOccurs": 1, "maxOccurs": 1,
}
PROCESS_METADATA = describe_process("water-change", "Water change between two dates",
    (        "Water on two dates over a place (each the best scene of its date or interval: full "
        "coverage, least cloud), and per pixel what changed: dry at both, water gained, "
        "water lost, permanent water, or no data at either date; as a Cloud-Optimized "
        "GeoTIFF with the area of each class and a WMS/WCS layer with its own style."),
    keywords=["water", "sentinel-2", "change detection", "flood", "drought"],
    inputs={
        **MONITORING_INPUTS,
        "before": dict(SIDE, title="Before", description="The earlier date or interval "
                                                        "(start/end, RFC 3339)."),
        "after": dict(SIDE, title="After", description="The later date or interval; it "
                                                      "starts after before ends."),
    },
    outputs={
        "change": cog_output("Change classes: 0 dry, 1 gained, 2 lost, 3 permanent, 255 no "
                             "data"),
        "before_mask": cog_output("Water mask of the before date"),
        "after_mask": cog_output("Water mask of the after date"),
        "stac_item": STAC_ITEM_OUTPUT,
        "area_km2": object_output("Area of each class (km², on the ellipsoid)"),
        "pixels": object_output("Pixels of each class"),
        "net_change_km2": described("Gained minus lost (km²)", {"type": "number"}),
        "before": object_output("The before date: its statistics and source products"),
        "after": object_output("The after date"),
        **METHOD_OUTPUTS,
        "bbox": BBOX_OUTPUT,
        "layer": LAYER_OUTPUT,
    },
    example={"bbox": [-1.2, 38.0, -1.1, 38.1],
             "before": "2023-03-01/2023-03-31",
             "after": "2023-08-01/2023-08-31", "method": "ndwi"},
)


def parse_inputs(data: dict[str, Any], settings: Settings) -> MonitoringRequest:
    request = parse_monitoring(data, settings, PROCESS_METADATA["inputs"],
                               intervals=("before", "after"), min_valid=False)
    before, after = request.query("before"), request.query("after")
    if before.end is None or after.start is None or not before.end < after.start:
        raise InvalidInput(f"before ({before.datetime_text}) must end before after "
                           f"({after.datetime_text}) starts")
    return request


class WaterChangeProcessor(MonitoringProcessor):
    METADATA = PROCESS_METADATA
    RESULT_FILES = {CHANGE_TIF: COG_MEDIA_TYPE, BEFORE_TIF: COG_MEDIA_TYPE,
                    AFTER_TIF: COG_MEDIA_TYPE, ITEM_JSON: GEOJSON_MEDIA_TYPE,
                    **style_files(CHANGE_TIF, "change"), **style_files(BEFORE_TIF, "water"),
                    **style_files(AFTER_TIF, "water")}
    PARSE = staticmethod(parse_inputs)
    RUN = staticmethod(run_change)
