"""The ``water-timeseries`` OGC API process: thin, validates inputs then runs the monitoring
functions (``aquamask.processes.monitoring.run_timeseries``)."""
from __future__ import annotations

from typing import Any

from aquamask.processes.constants import CSV_MEDIA_TYPE, JSON_MEDIA_TYPE, PNG_MEDIA_TYPE
from aquamask.processes.errors import InvalidInput
from aquamask.processes.monitoring.files import (
    TIMESERIES_CSV,
    TIMESERIES_JSON,
    TIMESERIES_PNG,
    VALIDATION_CSV,
    VALIDATION_PNG,
)
from aquamask.processes.monitoring.insitu import read_field_input
from aquamask.processes.monitoring.request import MonitoringRequest
from aquamask.processes.monitoring.timeseries import run_timeseries
from aquamask.processes.ogc.base import MonitoringProcessor, describe_process
from aquamask.processes.ogc.inputs import (
    INTERVAL_INPUT,
    MIN_VALID_INPUT,
    MONITORING_INPUTS,
    number,
    parse_monitoring,
)
from aquamask.processes.ogc.outputs import (
    BBOX_OUTPUT,
    DATES_OUTPUT,
    METHOD_OUTPUTS,
    described,
    file_output,
    object_output,
)
from aquamask.processes.settings import Settings

PROCESS_METADATA = describe_process("water-timeseries", "Water extent over time",
    (        "For every acquisition date of an interval over a place (bbox, polygon, or point with "
        "radius): the water area (km², on the ellipsoid), the valid fraction, the source "
        "products and the method; dates clouder than max_cloud_cover or with less valid data "
        "than min_valid_fraction are reported as skipped, with why, and a date that fails is "
        "reported while the rest stands. Gives JSON, CSV and a PNG chart, and publishes each "
        "date's mask into one WMS layer with a TIME dimension. With field_data (a CSV of "
        "date, value, unit) the series is matched with in-situ measurements and their "
        "Pearson and Spearman correlations are given with a chart of both."),
    keywords=["water", "sentinel-2", "time series", "monitoring", "reservoir"],
    inputs={
        **MONITORING_INPUTS,
        "datetime": INTERVAL_INPUT,
        "min_valid_fraction": MIN_VALID_INPUT,
        "field_data": {
            "title": "Field measurements (CSV)",
            "description": "In-situ measurements to validate against: CSV text (or "
                           "{\"value\": text}, or {\"href\": path under the data root}) with "
                           "a header naming date, value and unit (e.g. a gauge level in m).",
            "schema": {"oneOf": [{"type": "string", "contentMediaType": "text/csv"},
                                 {"type": "object"}]},
            "minOccurs": 0, "maxOccurs": 1,
        },
        "field_tolerance_days": {
            "title": "Field match tolerance (days)",
            "description": "A date matches the nearest field measurement at most this many "
                           "days away (default monitoring.field_tolerance_days).",
            "schema": {"type": "number", "minimum": 0, "maximum": 365},
            "minOccurs": 0, "maxOccurs": 1,
        },
    },
    outputs={
        "timeseries": described("One row per date: date, datetime, status (ok, skipped, "
                                "failed), water_area_km2, valid_fraction, water_fraction, "
                                "cloud_cover, source_ids, method, reason or error, layer_time",
                                {"type": "array", "items": {"type": "object"}}),
        "summary": object_output("Counts of dates and the range of the water area"),
        "json": file_output("The series (JSON)", JSON_MEDIA_TYPE),
        "csv": file_output("The series (CSV)", CSV_MEDIA_TYPE),
        "chart": file_output("Water area over time (PNG), skipped dates marked",
                             PNG_MEDIA_TYPE),
        "layer": object_output("The time-enabled WMS layer of the dates' masks (TIME values "
                               "and a GetMap for each)"),
        "field_validation": object_output("Matched pairs, Pearson r, Spearman rho, and links "
                                          "to their CSV and chart (with field_data only)"),
        **METHOD_OUTPUTS,
        "datetime": DATES_OUTPUT,
        "bbox": BBOX_OUTPUT,
        "max_cloud_cover": described("Maximum cloud cover applied (%)", {"type": "number"}),
        "min_valid_fraction": described("Minimum valid fraction applied", {"type": "number"}),
    },
    example={"bbox": [-1.2, 38.0, -1.1, 38.1],
             "datetime": "2023-01-01/2023-12-31", "max_cloud_cover": 40,
             "min_valid_fraction": 0.6, "method": "unet"},
)


def parse_inputs(data: dict[str, Any], settings: Settings) -> MonitoringRequest:
    request = parse_monitoring(data, settings, PROCESS_METADATA["inputs"])
    config = settings.monitoring
    tolerance = data.get("field_tolerance_days", config.field_tolerance_days)
    if data.get("field_data") is None:
        if data.get("field_tolerance_days") is not None:
            raise InvalidInput("field_tolerance_days goes with field_data")
        return request
    request.field_tolerance_days = number({"field_tolerance_days": tolerance},
                                          "field_tolerance_days", 1, 0, 365)
    request.field = read_field_input(data["field_data"], settings.data_root,
                                     config.max_field_bytes).as_dict()
    return request


class WaterTimeseriesProcessor(MonitoringProcessor):
    METADATA = PROCESS_METADATA
    RESULT_FILES = {TIMESERIES_JSON: JSON_MEDIA_TYPE, TIMESERIES_CSV: CSV_MEDIA_TYPE,
                    TIMESERIES_PNG: PNG_MEDIA_TYPE, VALIDATION_CSV: CSV_MEDIA_TYPE,
                    VALIDATION_PNG: PNG_MEDIA_TYPE}
    PARSE = staticmethod(parse_inputs)
    RUN = staticmethod(run_timeseries)
