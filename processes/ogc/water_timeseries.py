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
from aquamask.processes.settings import Settings

LINK = {"type": "object", "required": ["href"],
        "properties": {"href": {"type": "string"}, "type": {"type": "string"}}}

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
        "timeseries": {"title": "One row per date: date, datetime, status (ok, skipped, "
                                "failed), water_area_km2, valid_fraction, water_fraction, "
                                "cloud_cover, source_ids, method, reason or error, layer_time",
                       "schema": {"type": "array"}},
        "summary": {"title": "Counts of dates and the range of the water area",
                    "schema": {"type": "object"}},
        "json": {"title": "The series (JSON)", "schema": LINK},
        "csv": {"title": "The series (CSV)", "schema": LINK},
        "chart": {"title": "Water area over time (PNG), skipped dates marked", "schema": LINK},
        "layer": {"title": "The time-enabled WMS layer of the dates' masks (TIME values and "
                           "a GetMap for each)", "schema": {"type": "object"}},
        "field_validation": {"title": "Matched pairs, Pearson r, Spearman rho, CSV and chart",
                             "schema": {"type": "object"}},
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
