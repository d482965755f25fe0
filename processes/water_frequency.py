"""The ``water-frequency`` OGC API process: thin, validates inputs then runs the monitoring
functions (``aquamask.processes.monitoring.run_frequency``)."""
from __future__ import annotations

from typing import Any

from pygeoapi.process.base import BaseProcessor

from aquamask.processes import monitoring
from aquamask.processes.monitoring import (COG, INTERVAL_INPUT, MIN_VALID_INPUT, PLACE_INPUTS,
                                           MonitoringRequest)
from aquamask.processes.settings import Settings

PROCESS_METADATA = {
    "version": "0.1.0",
    "id": "water-frequency",
    "title": {"en": "Water frequency"},
    "description": {"en": (
        "Over every usable acquisition date of an interval over a place: per pixel, the "
        "percentage of the valid observations in which water was seen and the count of valid "
        "(and wet) observations, as Cloud-Optimized GeoTIFFs and a WMS/WCS layer with a "
        "graduated style (like the water observation statistics of Digital Earth "
        "Australia). Clouds, shadows and no data are not observations.")},
    "jobControlOptions": ["sync-execute", "async-execute", "dismiss"],
    "outputTransmission": ["value", "reference"],
    "keywords": ["water", "sentinel-2", "frequency", "monitoring", "wetlands"],
    "links": [{"type": "text/html", "rel": "about", "title": "aquamask viewer",
               "href": "/viewer", "hreflang": "en-US"}],
    "inputs": {**PLACE_INPUTS, "datetime": INTERVAL_INPUT,
               "min_valid_fraction": MIN_VALID_INPUT},
    "outputs": {
        "frequency": {"title": "Water frequency: percent of the valid observations that saw "
                               "water (uint8 0-100, 255 none valid)",
                      "schema": {"type": "string", "contentMediaType": COG}},
        "observations": {"title": "Valid (band 1) and water (band 2) observations, uint16",
                         "schema": {"type": "string", "contentMediaType": COG}},
        "stac_item": {"title": "STAC Item", "schema": {"type": "object"}},
        "statistics": {"title": "Areas (km²): observed, ever wet, never wet, by frequency "
                                "class; mean frequency; observations per pixel",
                       "schema": {"type": "object"}},
        "dates": {"title": "The dates used and skipped", "schema": {"type": "array"}},
        "layer": {"title": "WMS/WCS layer", "schema": {"type": "object"}},
    },
    "example": {"inputs": {"bbox": [-1.2, 38.0, -1.1, 38.1],
                           "datetime": "2023-01-01/2023-12-31", "method": "ndwi"}},
}


def parse_inputs(data: dict[str, Any], settings: Settings) -> MonitoringRequest:
    return monitoring.parse_request(data, settings, PROCESS_METADATA["inputs"])


class WaterFrequencyProcessor(monitoring.MonitoringProcessor, BaseProcessor):
    parse = staticmethod(parse_inputs)
    runner = staticmethod(monitoring.run_frequency)

    def __init__(self, processor_def: dict) -> None:
        BaseProcessor.__init__(self, processor_def, PROCESS_METADATA)
        self.settings = Settings.load()

    def __repr__(self) -> str:
        return "<WaterFrequencyProcessor>"
