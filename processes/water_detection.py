"""The ``water-detection`` OGC API process: thin, validates inputs then runs the pipeline."""
from __future__ import annotations

import math
from typing import Any

from pygeoapi.process.base import BaseProcessor

from aquamask.processes.detection import METHODS
from aquamask.processes.errors import InvalidInput, MissingInput
from aquamask.processes.pipeline import (DetectionRequest, outputs_document, run_detection,
                                         source_from_settings)
from aquamask.processes.settings import Settings
from aquamask.processes.types import DETECTION_BANDS, ProgressCallback

COG = "image/tiff; application=geotiff; profile=cloud-optimized"

PROCESS_METADATA = {
    "version": "0.1.0",
    "id": "water-detection",
    "title": {"en": "Water detection"},
    "description": {"en": (
        "Finds surface water in a Sentinel-2 image (13-band L1C/L2A stack, or 6 bands "
        "B02,B03,B04,B08,B11,B12, reflectance x 10000) with a U-Net or a spectral index, writes "
        "the mask as a Cloud-Optimized GeoTIFF with a STAC Item, and publishes it as a WMS/WCS "
        "layer.")},
    "jobControlOptions": ["sync-execute", "async-execute", "dismiss"],
    "outputTransmission": ["value", "reference"],
    "keywords": ["water", "sentinel-2", "segmentation", "flood"],
    "links": [{"type": "text/html", "rel": "about", "title": "aquamask viewer",
               "href": "/viewer", "hreflang": "en-US"}],
    "inputs": {
        "image": {
            "title": "Image",
            "description": "The image to analyse: {\"href\": ...}, a GeoTIFF/COG path under the "
                           "server's data root, or an http(s) URL.",
            "schema": {"type": "object", "required": ["href"],
                       "properties": {"href": {"type": "string"}}},
            "minOccurs": 1, "maxOccurs": 1,
        },
        "bands": {
            "title": "Band mapping",
            "description": "For an image of another layout: the 1-based band index of each of "
                           + ", ".join(DETECTION_BANDS) + ".",
            "schema": {"type": "object",
                       "properties": {b: {"type": "integer", "minimum": 1}
                                      for b in DETECTION_BANDS}},
            "minOccurs": 0, "maxOccurs": 1,
        },
        "method": {
            "title": "Method",
            "description": "unet (the trained model), ndwi or mndwi (spectral index > 0).",
            "schema": {"type": "string", "enum": list(METHODS), "default": "unet"},
            "minOccurs": 0, "maxOccurs": 1,
        },
        "threshold": {
            "title": "Threshold",
            "description": "Water probability at or above which a pixel is water (for the "
                           "indices, (index + 1) / 2, so 0.5 is index > 0).",
            "schema": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
            "minOccurs": 0, "maxOccurs": 1,
        },
    },
    "outputs": {
        "mask": {"title": "Water mask", "description": "uint8 COG: 1 water, 0 dry, 255 no data",
                 "schema": {"type": "string", "contentMediaType": COG}},
        "probability": {"title": "Water probability", "description": "float32 COG, 0-1",
                        "schema": {"type": "string", "contentMediaType": COG}},
        "stac_item": {"title": "STAC Item", "description": "provenance and statistics",
                      "schema": {"type": "object", "contentMediaType": "application/geo+json"}},
        "water_area_km2": {"title": "Water area (km²), on the ellipsoid",
                           "schema": {"type": "number"}},
        "water_fraction": {"title": "Water fraction of the valid pixels",
                           "schema": {"type": "number"}},
        "valid_fraction": {"title": "Fraction of pixels with valid data",
                           "schema": {"type": "number"}},
        "layer": {"title": "WMS/WCS layer", "schema": {"type": "object"}},
    },
    "example": {"inputs": {"image": {"href": "demo/demo-scene.tif"}, "method": "unet"}},
}


def parse_inputs(data: dict[str, Any], settings: Settings) -> DetectionRequest:
    """Check the inputs before any work starts; every problem is a 4xx with a clear message."""
    if not isinstance(data, dict):
        raise InvalidInput("inputs must be a JSON object")
    unknown = set(data) - set(PROCESS_METADATA["inputs"])
    if unknown:
        raise InvalidInput(f"unknown input(s): {', '.join(sorted(unknown))}; expected some of "
                           + ", ".join(PROCESS_METADATA["inputs"]))
    image = data.get("image")
    if image is None:
        raise MissingInput("the input 'image' is required: {\"href\": \"path/or/url.tif\"}")
    if isinstance(image, str):
        image = {"href": image}
    if not isinstance(image, dict) or not isinstance(image.get("href"), str) \
            or not image["href"].strip():
        raise InvalidInput("image must be an object with a string 'href'")
    method = data.get("method", settings.get("detection", "method"))
    if method not in METHODS:
        raise InvalidInput(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    threshold = data.get("threshold", settings.get("detection", "threshold"))
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not math.isfinite(threshold) or not 0 <= threshold <= 1:
        raise InvalidInput(f"threshold must be a number between 0 and 1 (got {threshold!r})")
    bands = data.get("bands")
    if bands is not None:
        if not isinstance(bands, dict) or set(bands) != set(DETECTION_BANDS):
            raise InvalidInput("bands must map each of " + ", ".join(DETECTION_BANDS)
                               + " to a 1-based band index")
    return DetectionRequest(href=image["href"].strip(), method=method,
                            threshold=float(threshold), bands=bands)


class WaterDetectionProcessor(BaseProcessor):
    def __init__(self, processor_def: dict) -> None:
        super().__init__(processor_def, PROCESS_METADATA)
        self.settings = Settings.load()

    def validate(self, data: dict[str, Any]) -> None:
        """Everything that can be checked without reading the image, before a job exists."""
        request = parse_inputs(data, self.settings)
        source_from_settings(self.settings).check({"href": request.href, "bands": request.bands})

    def run(self, data: dict[str, Any], job_id: str,
            progress: ProgressCallback) -> dict[str, Any]:
        request = parse_inputs(data, self.settings)
        product, layer = run_detection(request, self.settings, job_id, progress)
        return outputs_document(product, layer, request, self.settings.url)

    def execute(self, data: dict[str, Any], outputs=None):
        return "application/json", self.run(data, self.job_id, lambda pct, msg: None)

    def __repr__(self) -> str:
        return "<WaterDetectionProcessor>"
