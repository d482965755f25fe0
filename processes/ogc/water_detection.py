"""The ``water-detection`` OGC API process: thin, validates inputs then runs the pipeline."""
from __future__ import annotations

from typing import Any

from aquamask.processes.constants import DETECTION_BANDS
from aquamask.processes.errors import InvalidInput, MissingInput
from aquamask.processes.ogc.base import AquamaskProcessor, describe_process
from aquamask.processes.ogc.inputs import (
    BBOX_SCHEMA,
    CRS84,
    GEOMETRY_SCHEMA,
    PUBLIC_INPUT,
    check_known,
    method_input,
    optional,
    parse_method,
    parse_public,
    place_query,
    threshold_input,
)
from aquamask.processes.ogc.outputs import (
    BBOX_OUTPUT,
    LAYER_OUTPUT,
    MASK_RESULT_FILES,
    METHOD_OUTPUTS,
    STAC_ITEM_OUTPUT,
    cog_output,
    described,
    result_link,
)
from aquamask.processes.pipeline.flow import DetectionRequest, run_detection
from aquamask.processes.pipeline.sources import place_source
from aquamask.processes.pipeline.sources.query import iso, parse_instant
from aquamask.processes.pipeline.sources.raster import RasterSource
from aquamask.processes.publishing import service as publishing
from aquamask.processes.settings import Settings
from aquamask.processes.types import Layer, Product, ProgressCallback

PROCESS_METADATA = describe_process("water-detection", "Water detection",
    (        "Finds surface water in a Sentinel-2 image (13-band L1C/L2A stack, or 6 bands "
        "B02,B03,B04,B08,B11,B12, reflectance x 10000), or in the Sentinel-2 L2A scenes of a "
        "place (bbox or geometry) and a date found by the server (least cloudy, clouds masked "
        "with SCL, same-day tiles mosaicked), with a U-Net or a spectral index, writes "
        "the mask as a Cloud-Optimized GeoTIFF with a STAC Item, and publishes it as a WMS/WCS "
        "layer."),
    keywords=["water", "sentinel-2", "segmentation", "flood"],
    inputs={
        "image": optional(
            "Image", {"type": "object", "required": ["href"],
                      "properties": {"href": {"type": "string"}}},
            "The image to analyse: {\"href\": ...}, a GeoTIFF/COG path under the server's data "
            "root, or an http(s) URL. Give either an image or a place (bbox or geometry) with a "
            "datetime."),
        "bbox": optional(
            "Place (bounding box)", BBOX_SCHEMA,
            "The place to look at: [minx, miny, maxx, maxy] in bbox-crs (default CRS84: "
            "lon/lat), or {\"bbox\": [...], \"crs\": \"...\"}. The server finds the Sentinel-2 "
            "scenes itself."),
        "bbox-crs": optional(
            "CRS of bbox", {"type": "string", "default": CRS84},
            "CRS URI or code of bbox, in its axis order (CRS84 lon/lat by default; EPSG:4326 is "
            "lat/lon)."),
        "geometry": optional(
            "Place (polygon)", GEOMETRY_SCHEMA,
            "The place to look at as a GeoJSON Polygon or MultiPolygon in lon/lat; pixels "
            "outside it are no data."),
        "datetime": optional(
            "Date or dates", {"type": "string"},
            "With a place: an RFC 3339 date-time, a date (its whole UTC day) or an interval "
            "start/end ('..' open). Over an interval the least cloudy scene (or same-day "
            "mosaic) covering the place is used. With an image: when it was acquired (a "
            "date-time or a date), for an image whose file does not say (a time tag, or a "
            "date in its name); else the result's acquisition time is unknown."),
        "max_cloud_cover": optional(
            "Maximum cloud cover (%)", {"type": "number", "minimum": 0, "maximum": 100},
            "With a place: scenes with more cloud (their eo:cloud_cover) are not considered."),
        "source": optional(
            "Imagery source", {"type": "string"},
            "With a place: which configured source to search (see the server's sources; "
            "default from its config)."),
        "collection": optional(
            "STAC collection", {"type": "string"},
            "With a place: the collection to search (default: the source's, e.g. "
            "sentinel-2-l2a)."),
        "bands": optional(
            "Band mapping", {"type": "object",
                             "properties": {b: {"type": "integer", "minimum": 1}
                                            for b in DETECTION_BANDS}},
            "For an image of another layout: the 1-based band index of each of "
            + ", ".join(DETECTION_BANDS) + "."),
        "method": method_input(),
        "threshold": threshold_input("Water probability at or above which a pixel is water "
                                     "(for the indices, (index + 1) / 2, so 0.5 is index > 0)."),
        "probability": optional(
            "Probability output", {"type": "boolean", "default": True},
            "Also write the water probability as a COG (default true); false saves time and "
            "space on large scenes."),
        "public": PUBLIC_INPUT,
    },
    outputs={
        "mask": cog_output("Water mask", "uint8 COG: 1 water, 0 dry, 255 no data"),
        "probability": cog_output("Water probability", "float32 COG, 0-1 (unless the input "
                                  "probability is false)"),
        "stac_item": STAC_ITEM_OUTPUT,
        "water_area_km2": described("Water area (km²), on the ellipsoid", {"type": "number"}),
        "water_fraction": described("Water fraction of the valid pixels", {"type": "number"}),
        "valid_fraction": described("Fraction of pixels with valid data", {"type": "number"}),
        "valid_area_km2": described("Area with valid data (km²), on the ellipsoid",
                                    {"type": "number"}),
        "bbox": BBOX_OUTPUT,
        "crs": described("CRS of the mask", {"type": "string"}, "e.g. EPSG:32630"),
        "acquired": described("Acquisition time of the image (null: unknown)",
                              {"type": "string", "format": "date-time", "nullable": True}),
        **METHOD_OUTPUTS,
        "layer": LAYER_OUTPUT,
    },
    example={"image": {"href": "demo/demo-scene.tif"}, "method": "unet"},
)
PLACE_INPUTS = ("bbox", "geometry")
PLACE_OPTIONS = ("bbox-crs", "max_cloud_cover", "source", "collection")


def parse_inputs(data: dict[str, Any], settings: Settings) -> DetectionRequest:
    """Check the inputs before any work starts; every problem is a 4xx with a clear message."""
    data = check_known(data, PROCESS_METADATA["inputs"])
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
    method, threshold = parse_method(data, settings)
    probability = data.get("probability", True)
    if not isinstance(probability, bool):
        raise InvalidInput(f"probability must be true or false (got {probability!r})")
    parse_public(data)
    if image is None:
        query, source = place_query(data, settings, PLACE_INPUTS)
        return DetectionRequest(href=None, method=method, threshold=threshold,
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
    acquired = data.get("datetime")
    if acquired is not None:
        acquired = iso(parse_instant(acquired))
    return DetectionRequest(href=image["href"].strip(), method=method, threshold=threshold,
                            bands=bands, probability=probability, acquired=acquired)


def outputs_document(product: Product, layer: Layer, request: DetectionRequest,
                     base_url: str) -> dict[str, Any]:
    """The OGC API - Processes results document: values inline, files as links."""
    stats = product.stats

    def link(path, title: str) -> dict[str, str]:
        return result_link(base_url, product.id, path.name, MASK_RESULT_FILES[path.name],
                           title)

    files = {"mask": link(product.mask_cog, "water mask: 1 water, 0 dry, 255 no data")}
    if product.probability_cog is not None:
        files["probability"] = link(product.probability_cog, "water probability")
    return {
        **files,
        "stac_item": link(product.stac_item, "STAC Item with provenance"),
        "water_area_km2": round(stats.water_area_km2, 6),
        "water_fraction": round(stats.water_fraction, 6),
        "valid_fraction": round(stats.valid_fraction, 6),
        "valid_area_km2": round(stats.valid_area_km2, 6),
        "acquired": iso(product.datetime) if product.datetime else None,
        "bbox": list(product.bbox_wgs84),
        "crs": product.crs,
        "method": request.method,
        "threshold": request.threshold,
        "layer": layer.as_output(),
    }


class WaterDetectionProcessor(AquamaskProcessor[DetectionRequest]):
    METADATA = PROCESS_METADATA
    RESULT_FILES = MASK_RESULT_FILES

    def parse(self, data: dict[str, Any]) -> DetectionRequest:
        return parse_inputs(data, self.settings)

    def check(self, request: DetectionRequest) -> int | None:
        """The pixels to process when known (an image), None for a place (its search runs
        in the job's worker)."""
        if request.href is None:
            place_source(self.settings, request.source).check()
            return None
        return RasterSource.from_settings(self.settings).check(request.href, request.bands)

    def work(self, request: DetectionRequest, job_id: str,
             progress: ProgressCallback) -> dict[str, Any]:
        product = run_detection(request, self.settings, job_id, progress)
        progress(95, "publishing the WMS/WCS layer")
        layer = publishing.publish(product, self.settings)  # GeoServer, else/meanwhile here
        publishing.publish_views(product, self.settings)
        return outputs_document(product, layer, request, self.settings.url)
