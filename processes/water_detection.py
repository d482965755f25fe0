"""The ``water-detection`` OGC API process: thin, validates inputs then runs the pipeline."""
from __future__ import annotations

import math
from typing import Any

from pygeoapi.process.base import BaseProcessor

from aquamask.processes.detection import METHODS
from aquamask.processes.errors import InvalidInput, MissingInput, TooLarge
from aquamask.processes.pipeline import (DetectionRequest, outputs_document, run_detection,
                                         source_from_settings)
from aquamask.processes.publishing import PUBLIC_INPUT, parse_public
from aquamask.processes.settings import Settings
from aquamask.processes.sources import place_source, source_names
from aquamask.processes.sources.grid import grid_for
from aquamask.processes.sources.query import (CRS84, PlaceQuery, check_area, check_date_span,
                                              parse_bbox,
                                              parse_cloud_cover, parse_collection,
                                              parse_datetime, parse_geometry)
from aquamask.processes.types import DETECTION_BANDS, ProgressCallback
from aquamask.server.metrics import instrument_job

COG = "image/tiff; application=geotiff; profile=cloud-optimized"

PROCESS_METADATA = {
    "version": "0.1.0",
    "id": "water-detection",
    "title": {"en": "Water detection"},
    "description": {"en": (
        "Finds surface water in a Sentinel-2 image (13-band L1C/L2A stack, or 6 bands "
        "B02,B03,B04,B08,B11,B12, reflectance x 10000), or in the Sentinel-2 L2A scenes of a "
        "place (bbox or geometry) and a date found by the server (least cloudy, clouds masked "
        "with SCL, same-day tiles mosaicked), with a U-Net or a spectral index, writes "
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
                           "server's data root, or an http(s) URL. Give either an image or a "
                           "place (bbox or geometry) with a datetime.",
            "schema": {"type": "object", "required": ["href"],
                       "properties": {"href": {"type": "string"}}},
            "minOccurs": 0, "maxOccurs": 1,
        },
        "bbox": {
            "title": "Place (bounding box)",
            "description": "The place to look at: [minx, miny, maxx, maxy] in bbox-crs (default "
                           "CRS84: lon/lat), or {\"bbox\": [...], \"crs\": \"...\"}. The "
                           "server finds the Sentinel-2 scenes itself.",
            "schema": {"type": "object", "format": "ogc-bbox", "required": ["bbox"],
                       "properties": {"bbox": {"type": "array", "items": {"type": "number"},
                                               "minItems": 4, "maxItems": 6},
                                      "crs": {"type": "string", "format": "uri",
                                              "default": CRS84}}},
            "minOccurs": 0, "maxOccurs": 1,
        },
        "bbox-crs": {
            "title": "CRS of bbox",
            "description": "CRS URI or code of bbox, in its axis order (CRS84 lon/lat by "
                           "default; EPSG:4326 is lat/lon).",
            "schema": {"type": "string", "default": CRS84},
            "minOccurs": 0, "maxOccurs": 1,
        },
        "geometry": {
            "title": "Place (polygon)",
            "description": "The place to look at as a GeoJSON Polygon or MultiPolygon in "
                           "lon/lat; pixels outside it are no data.",
            "schema": {"type": "object", "contentMediaType": "application/geo+json"},
            "minOccurs": 0, "maxOccurs": 1,
        },
        "datetime": {
            "title": "Date or dates",
            "description": "With a place: an RFC 3339 date-time, a date (its whole UTC day) or "
                           "an interval start/end ('..' open). Over an interval the least "
                           "cloudy scene (or same-day mosaic) covering the place is used.",
            "schema": {"type": "string"},
            "minOccurs": 0, "maxOccurs": 1,
        },
        "max_cloud_cover": {
            "title": "Maximum cloud cover (%)",
            "description": "With a place: scenes with more cloud (their eo:cloud_cover) are "
                           "not considered.",
            "schema": {"type": "number", "minimum": 0, "maximum": 100},
            "minOccurs": 0, "maxOccurs": 1,
        },
        "source": {
            "title": "Imagery source",
            "description": "With a place: which configured source to search (see the "
                           "server's sources; default from its config).",
            "schema": {"type": "string"},
            "minOccurs": 0, "maxOccurs": 1,
        },
        "collection": {
            "title": "STAC collection",
            "description": "With a place: the collection to search (default: the source's, "
                           "e.g. sentinel-2-l2a).",
            "schema": {"type": "string"},
            "minOccurs": 0, "maxOccurs": 1,
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
        "probability": {
            "title": "Probability output",
            "description": "Also write the water probability as a COG (default true); false "
                           "saves time and space on large scenes.",
            "schema": {"type": "boolean", "default": True},
            "minOccurs": 0, "maxOccurs": 1,
        },
        "public": PUBLIC_INPUT,
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
PLACE_INPUTS = ("bbox", "geometry")
PLACE_OPTIONS = ("bbox-crs", "datetime", "max_cloud_cover", "source", "collection")


def parse_place(data: dict[str, Any], settings: Settings) -> tuple[PlaceQuery, str]:
    """The place query of the inputs and the source name; every check that needs no network:
    bbox ranges, GeoJSON validity, RFC 3339 dates and their order, the place's area."""
    if data.get("bbox") is not None and data.get("geometry") is not None:
        raise InvalidInput("give the place once: 'bbox' or 'geometry', not both")
    if data.get("geometry") is not None:
        if data.get("bbox-crs") is not None:
            raise InvalidInput("bbox-crs goes with bbox; geometry is always lon/lat (CRS84)")
        geometry, is_bbox = parse_geometry(data["geometry"]), False
    else:
        geometry, is_bbox = parse_bbox(data["bbox"], data.get("bbox-crs")), True
    if data.get("datetime") is None:
        raise MissingInput("with a place, 'datetime' is required: a date (2023-08-01), an "
                           "RFC 3339 date-time, or an interval start/end")
    start, end = parse_datetime(data["datetime"])
    sources = settings.raw.get("sources") or {}
    cloud = parse_cloud_cover(data.get("max_cloud_cover", sources.get("max_cloud_cover", 100)))
    collection = data.get("collection")
    if collection is not None:
        collection = parse_collection(collection)
    name = data.get("source", sources.get("default") or "local")
    if not isinstance(name, str) or name not in source_names(settings):
        raise InvalidInput(f"source must be one of {', '.join(source_names(settings))} "
                           f"(got {name!r})")
    check_area(geometry, float(settings.get("limits", "max_area_km2") or 2500))
    check_date_span(start, end, float(settings.get("limits", "max_date_span_days") or 5000))
    pixels = grid_for(geometry).pixels
    max_pixels = int(settings.get("limits", "max_pixels"))
    if pixels > max_pixels:
        raise TooLarge(f"the place needs {pixels:,} pixels at 10 m; this server accepts at "
                       f"most {max_pixels:,}")
    return PlaceQuery(geometry=geometry, start=start, end=end, max_cloud_cover=cloud,
                      collection=collection, is_bbox=is_bbox), name


def parse_inputs(data: dict[str, Any], settings: Settings) -> DetectionRequest:
    """Check the inputs before any work starts; every problem is a 4xx with a clear message."""
    if not isinstance(data, dict):
        raise InvalidInput("inputs must be a JSON object")
    unknown = set(data) - set(PROCESS_METADATA["inputs"])
    if unknown:
        raise InvalidInput(f"unknown input(s): {', '.join(sorted(unknown))}; expected some of "
                           + ", ".join(PROCESS_METADATA["inputs"]))
    image = data.get("image")
    has_place = any(data.get(k) is not None for k in PLACE_INPUTS)
    if image is None and not has_place:
        raise MissingInput("the input 'image' is required ({\"href\": \"path/or/url.tif\"}) "
                           "unless a place is given: 'bbox' or 'geometry' with a 'datetime'")
    if image is not None and has_place:
        raise InvalidInput("give either 'image' or a place ('bbox'/'geometry'), not both")
    if image is None:
        stray = [k for k in ("bands",) if data.get(k) is not None]
        if stray:
            raise InvalidInput("bands applies to an image, not to a place (the server knows "
                               "the bands of the scenes it finds)")
    else:
        stray = [k for k in PLACE_OPTIONS if data.get(k) is not None]
        if stray:
            raise InvalidInput(f"{', '.join(stray)} only go with a place ('bbox' or "
                               "'geometry'), not with an image")
    method = data.get("method", settings.get("detection", "method"))
    if method not in METHODS:
        raise InvalidInput(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    threshold = data.get("threshold", settings.get("detection", "threshold"))
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not math.isfinite(threshold) or not 0 <= threshold <= 1:
        raise InvalidInput(f"threshold must be a number between 0 and 1 (got {threshold!r})")
    probability = data.get("probability", True)
    if not isinstance(probability, bool):
        raise InvalidInput(f"probability must be true or false (got {probability!r})")
    parse_public(data)
    if image is None:
        query, source = parse_place(data, settings)
        return DetectionRequest(href=None, method=method, threshold=float(threshold),
                                place=query.as_dict(), source=source,
                                probability=probability)
    if isinstance(image, str):
        image = {"href": image}
    if not isinstance(image, dict) or not isinstance(image.get("href"), str) \
            or not image["href"].strip():
        raise InvalidInput("image must be an object with a string 'href'")
    bands = data.get("bands")
    if bands is not None:
        if not isinstance(bands, dict) or set(bands) != set(DETECTION_BANDS):
            raise InvalidInput("bands must map each of " + ", ".join(DETECTION_BANDS)
                               + " to a 1-based band index")
    return DetectionRequest(href=image["href"].strip(), method=method,
                            threshold=float(threshold), bands=bands, probability=probability)


class WaterDetectionProcessor(BaseProcessor):
    def __init__(self, processor_def: dict) -> None:
        super().__init__(processor_def, PROCESS_METADATA)
        self.settings = Settings.load()

    def validate(self, data: dict[str, Any]) -> int | None:
        """Everything that can be checked without reading the image, before a job exists;
        the pixels to process when known (an image), None for a place (found in the job)."""
        request = parse_inputs(data, self.settings)
        if request.href is None:  # a place: the search itself runs in the job's worker
            place_source(self.settings, request.source).check()
            return None
        return source_from_settings(self.settings).check({"href": request.href,
                                                          "bands": request.bands})

    @instrument_job
    def run(self, data: dict[str, Any], job_id: str,
            progress: ProgressCallback) -> dict[str, Any]:
        request = parse_inputs(data, self.settings)
        product, layer = run_detection(request, self.settings, job_id, progress)
        return outputs_document(product, layer, request, self.settings.url)

    def execute(self, data: dict[str, Any], outputs=None):
        return "application/json", self.run(data, self.job_id, lambda pct, msg: None)

    def __repr__(self) -> str:
        return "<WaterDetectionProcessor>"
