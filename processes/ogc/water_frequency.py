"""The ``water-frequency`` OGC API process: thin, validates inputs then runs the monitoring
functions (``aquamask.processes.monitoring.run_frequency``)."""
from __future__ import annotations

from typing import Any

from aquamask.processes.constants import COG_MEDIA_TYPE, GEOJSON_MEDIA_TYPE
from aquamask.processes.monitoring.files import FREQUENCY_TIF, ITEM_JSON, OBSERVATIONS_TIF
from aquamask.processes.monitoring.frequency import run_frequency
from aquamask.processes.monitoring.request import MonitoringRequest
from aquamask.processes.ogc.base import MonitoringProcessor, describe_process
from aquamask.processes.ogc.inputs import (
    INTERVAL_INPUT,
    MIN_VALID_INPUT,
    MONITORING_INPUTS,
    parse_monitoring,
)
from aquamask.processes.ogc.outputs import (
    BBOX_OUTPUT,
    DATES_OUTPUT,
    LAYER_OUTPUT,
    METHOD_OUTPUTS,
    STAC_ITEM_OUTPUT,
    cog_output,
    described,
    object_output,
)
from aquamask.processes.settings import Settings
from aquamask.processes.styles import style_files

PROCESS_METADATA = describe_process("water-frequency", "Water frequency",
    (        "Over every usable acquisition date of an interval over a place: per pixel, the "
        "percentage of the valid observations in which water was seen and the count of valid "
        "(and wet) observations, as Cloud-Optimized GeoTIFFs and a WMS/WCS layer with a "
        "graduated style (like the water observation statistics of Digital Earth "
        "Australia). Clouds, shadows and no data are not observations."),
    keywords=["water", "sentinel-2", "frequency", "monitoring", "wetlands"],
    inputs={**MONITORING_INPUTS, "datetime": INTERVAL_INPUT,
            "min_valid_fraction": MIN_VALID_INPUT},
    outputs={
        "frequency": cog_output("Water frequency: percent of the valid observations that saw "
                                "water (uint8 0-100, 255 none valid)"),
        "observations": cog_output("Valid (band 1) and water (band 2) observations, uint16"),
        "stac_item": STAC_ITEM_OUTPUT,
        "statistics": object_output("Areas (km²): observed, ever wet, never wet, by frequency "
                                    "class; mean frequency; observations per pixel"),
        "observations_used": described("Dates used", {"type": "integer"}),
        "dates": described("The dates used and skipped",
                           {"type": "array", "items": {"type": "object"}}),
        **METHOD_OUTPUTS,
        "datetime": DATES_OUTPUT,
        "bbox": BBOX_OUTPUT,
        "layer": LAYER_OUTPUT,
    },
    example={"bbox": [-1.2, 38.0, -1.1, 38.1],
             "datetime": "2023-01-01/2023-12-31", "method": "ndwi"},
)


def parse_inputs(data: dict[str, Any], settings: Settings) -> MonitoringRequest:
    return parse_monitoring(data, settings, PROCESS_METADATA["inputs"])


class WaterFrequencyProcessor(MonitoringProcessor):
    METADATA = PROCESS_METADATA
    RESULT_FILES = {FREQUENCY_TIF: COG_MEDIA_TYPE, OBSERVATIONS_TIF: COG_MEDIA_TYPE,
                    ITEM_JSON: GEOJSON_MEDIA_TYPE, **style_files(FREQUENCY_TIF, "frequency")}
    PARSE = staticmethod(parse_inputs)
    RUN = staticmethod(run_frequency)
