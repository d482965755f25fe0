"""The inputs the processes share: their descriptions (JSON schemas) and their parsing, one of
each. Parsing checks everything that needs no network or file, so a malformed request is a 4xx
naming the input before any job exists: place (bbox, geometry, point with radius), dates,
cloud limit, collection, source, method, threshold, public."""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
from shapely.geometry.base import BaseGeometry

from aquamask.processes.errors import InvalidInput, MissingInput
from aquamask.processes.monitoring.request import MonitoringRequest
from aquamask.processes.pipeline import methods
from aquamask.processes.pipeline.sources import place_source, source_names
from aquamask.processes.pipeline.sources.grid import check_place_pixels
from aquamask.processes.pipeline.sources.query import (
    CRS84,
    PlaceQuery,
    check_area,
    check_date_span,
    parse_bbox,
    parse_cloud_cover,
    parse_collection,
    parse_datetime,
    parse_geometry,
)
from aquamask.processes.settings import Settings

MAX_RADIUS_M = 50_000.0


def optional(title: str, schema: dict[str, Any], description: str | None = None
             ) -> dict[str, Any]:
    """The description of an input that may be left out."""
    described = {"title": title, **({"description": description} if description else {})}
    return {**described, "schema": schema, "minOccurs": 0, "maxOccurs": 1}


BBOX_SCHEMA = {"type": "object", "format": "ogc-bbox", "required": ["bbox"],
               "properties": {"bbox": {"type": "array", "items": {"type": "number"},
                                       "minItems": 4, "maxItems": 6},
                              "crs": {"type": "string", "format": "uri", "default": CRS84}}}
GEOMETRY_SCHEMA = {"type": "object", "contentMediaType": "application/geo+json"}
# the input every process takes to show its layers to everyone
PUBLIC_INPUT = optional(
    "Public layers", {"type": "boolean", "default": False},
    "Show the result's map layers to every user of the server (default false: only to you "
    "and to managers). Results and jobs stay yours either way.")


def method_input() -> dict[str, Any]:
    """The ``method`` input: its enum from the methods registry."""
    return optional("Method", {"type": "string", "enum": list(methods.names()),
                               "default": "unet"}, methods.described() + ".")


def threshold_input(description: str) -> dict[str, Any]:
    return optional("Threshold", {"type": "number", "minimum": 0, "maximum": 1,
                                  "default": methods.get("unet").default_threshold},
                    description)


# -- parsing ------------------------------------------------------------------------------------
def check_known(data: Any, known: Iterable[str]) -> dict[str, Any]:
    """``data`` as the inputs object, refusing names no input has."""
    if not isinstance(data, dict):
        raise InvalidInput("inputs must be a JSON object")
    known = list(known)
    unknown = set(data) - set(known)
    if unknown:
        raise InvalidInput(f"unknown input(s): {', '.join(sorted(unknown))}; expected some of "
                           + ", ".join(known))
    return data


def number(data: dict[str, Any], key: str, default: float | None, low: float,
           high: float) -> float:
    """The number input ``key`` (``default`` when absent) within [low, high]."""
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not low <= value <= high:
        raise InvalidInput(f"{key} must be a number between {low:g} and {high:g} "
                           f"(got {value!r})")
    return float(value)


def parse_public(data: dict[str, Any]) -> bool:
    """The ``public`` input: true or false (absent: false)."""
    value = data.get("public", False)
    if not isinstance(value, bool):
        raise InvalidInput(f"public must be true or false (got {value!r})")
    return value


def parse_method(data: dict[str, Any], settings: Settings) -> tuple[str, float]:
    """The ``method`` (default ``detection.method``) and the ``threshold`` (default
    ``detection.threshold``, else the method's own)."""
    method = data.get("method", settings.detection.method)
    if not isinstance(method, str) or method not in methods.METHODS:
        raise InvalidInput(f"method must be one of {', '.join(methods.names())} "
                           f"(got {method!r})")
    return method, number(data, "threshold", methods.threshold_for(method, settings), 0, 1)


def circle(lon: float, lat: float, radius_m: float, vertices: int = 72) -> BaseGeometry:
    """The geodesic disc of ``radius_m`` around (lon, lat) as a CRS84 polygon."""
    from pyproj import Geod
    from shapely.geometry import Polygon

    geod = Geod(ellps="WGS84")
    azimuths = np.linspace(0.0, 360.0, vertices, endpoint=False)
    lons, lats, _ = geod.fwd(np.full(vertices, lon), np.full(vertices, lat), azimuths,
                             np.full(vertices, radius_m))
    return Polygon(list(zip(lons, lats)))


def parse_point(value: Any, radius: Any) -> BaseGeometry:
    if isinstance(value, dict) and value.get("type") == "Feature":
        value = value.get("geometry")
    if isinstance(value, dict) and value.get("type") == "Point":
        value = value.get("coordinates")
    if not isinstance(value, (list, tuple)) or len(value) not in (2, 3) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value):
        raise InvalidInput("point must be [lon, lat] or a GeoJSON Point in lon/lat")
    lon, lat = float(value[0]), float(value[1])
    if not (-180 <= lon <= 180 and -90 < lat < 90):
        raise InvalidInput(f"point: lon must lie in [-180, 180] and lat in (-90, 90) "
                           f"(got {lon}, {lat})")
    if radius is None:
        raise MissingInput("point needs radius_m: the radius in metres of the place around it")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) \
            or not math.isfinite(radius) or not 0 < radius <= MAX_RADIUS_M:
        raise InvalidInput(f"radius_m must be a number of metres above 0 and at most "
                           f"{MAX_RADIUS_M:,.0f} (got {radius!r})")
    return circle(lon, lat, float(radius))


def parse_place(data: dict[str, Any], settings: Settings,
                shapes: Sequence[str] = ("bbox", "geometry", "point")
                ) -> tuple[BaseGeometry, bool]:
    """The place (one of ``shapes``: bbox, geometry, point with radius_m) as (CRS84 geometry,
    is_bbox): ranges, GeoJSON validity, at most ``limits.max_area_km2`` and
    ``limits.max_pixels`` at 10 m."""
    given = [k for k in shapes if data.get(k) is not None]
    if not given:
        raise MissingInput("give the place: " + ", ".join(f"'{k}'" for k in shapes[:-1])
                           + f", or '{shapes[-1]}'"
                           + (" with 'radius_m'" if shapes[-1] == "point" else ""))
    if len(given) == 2:
        raise InvalidInput(f"give the place once: '{given[0]}' or '{given[1]}', not both")
    if len(given) > 2:
        raise InvalidInput(f"give the place once: {', '.join(given)} were all given")
    shape = given[0]
    if data.get("bbox-crs") is not None and shape != "bbox":
        raise InvalidInput(f"bbox-crs goes with bbox; {shape} is always lon/lat (CRS84)")
    if data.get("radius_m") is not None and shape != "point":
        raise InvalidInput("radius_m goes with point")
    if shape == "bbox":
        geometry = parse_bbox(data["bbox"], data.get("bbox-crs"))
    elif shape == "geometry":
        geometry = parse_geometry(data["geometry"])
    else:
        geometry = parse_point(data["point"], data.get("radius_m"))
    check_area(geometry, settings.limits.max_area_km2)
    check_place_pixels(geometry, settings.limits.max_pixels)
    return geometry, shape == "bbox"


def parse_dates(data: dict[str, Any], key: str, settings: Settings):
    """The interval (or date) ``key`` as (start, end), at most ``limits.max_date_span_days``."""
    if data.get(key) is None:
        raise MissingInput(f"'{key}' is required: a date (2023-08-01), an RFC 3339 date-time, "
                           "or an interval start/end (e.g. 2023-01-01/2023-12-31)")
    try:
        start, end = parse_datetime(data[key])
    except InvalidInput as err:
        if key == "datetime":
            raise
        raise InvalidInput(f"{key}: {err.message.removeprefix('datetime: ')}") from None
    check_date_span(start, end, settings.limits.max_date_span_days)
    return start, end


def parse_search(data: dict[str, Any], settings: Settings) -> tuple[float, str | None, str]:
    """The cloud limit (default ``sources.max_cloud_cover``), the collection (default the
    source's) and the source (default ``sources.default``) of a place."""
    cloud = parse_cloud_cover(data.get("max_cloud_cover", settings.sources.max_cloud_cover))
    collection = data.get("collection")
    if collection is not None:
        collection = parse_collection(collection)
    name = data.get("source", settings.sources.default)
    if not isinstance(name, str) or name not in source_names(settings):
        raise InvalidInput(f"source must be one of {', '.join(source_names(settings))} "
                           f"(got {name!r})")
    return cloud, collection, name


def place_query(data: dict[str, Any], settings: Settings,
                shapes: Sequence[str] = ("bbox", "geometry")) -> tuple[PlaceQuery, str]:
    """A place and a date as the query a place source answers, and the source's name."""
    geometry, is_bbox = parse_place(data, settings, shapes)
    start, end = parse_dates(data, "datetime", settings)
    cloud, collection, name = parse_search(data, settings)
    return PlaceQuery(geometry=geometry, start=start, end=end, max_cloud_cover=cloud,
                      collection=collection, is_bbox=is_bbox), name


# -- the monitoring processes' inputs ---------------------------------------------------------
MONITORING_INPUTS: dict[str, dict[str, Any]] = {
    "bbox": optional("Place (bounding box)", BBOX_SCHEMA,
                     "[minx, miny, maxx, maxy] in bbox-crs (default CRS84: lon/lat), or "
                     "{\"bbox\": [...], \"crs\": \"...\"}. Give one of bbox, geometry or "
                     "point with radius_m."),
    "bbox-crs": optional("CRS of bbox", {"type": "string", "default": CRS84},
                         "CRS URI or code of bbox, in its axis order."),
    "geometry": optional("Place (polygon)", GEOMETRY_SCHEMA,
                         "A GeoJSON Polygon or MultiPolygon in lon/lat; pixels outside it are "
                         "no data."),
    "point": optional("Place (point of interest)",
                      {"oneOf": [{"type": "array", "items": {"type": "number"},
                                  "minItems": 2, "maxItems": 2}, {"type": "object"}]},
                      "[lon, lat] or a GeoJSON Point: with radius_m, the disc around it is the "
                      "place (pixels outside it are no data)."),
    "radius_m": optional("Radius around the point (m)",
                         # OpenAPI 3.0's form (the 1.0 schema.yaml): a minimum, and a boolean
                         # saying it is excluded
                         {"type": "number", "minimum": 0, "exclusiveMinimum": True,
                          "maximum": MAX_RADIUS_M}),
    "max_cloud_cover": optional("Maximum cloud cover (%)",
                                {"type": "number", "minimum": 0, "maximum": 100},
                                "Scenes with more cloud (their eo:cloud_cover) are not used; in "
                                "a series their dates are reported as skipped."),
    "source": optional("Imagery source", {"type": "string"},
                       "A configured source (default from config)."),
    "collection": optional("STAC collection", {"type": "string"}, "Default: the source's."),
    "method": method_input(),
    "threshold": threshold_input("Water probability at or above which a pixel is water (for "
                                 "the indices 0.5 is index > 0)."),
    "public": PUBLIC_INPUT,
}
MIN_VALID_INPUT = optional(
    "Minimum valid fraction", {"type": "number", "minimum": 0, "maximum": 1},
    "Dates whose place has a smaller fraction of valid pixels (cloud, shadow, no data) are "
    "reported as skipped (default monitoring.min_valid_fraction).")
INTERVAL_INPUT = {
    "title": "Dates",
    "description": "An interval start/end of RFC 3339 dates or date-times ('..' open), or a "
                   "single date.",
    "schema": {"type": "string"}, "minOccurs": 1, "maxOccurs": 1,
}


def parse_monitoring(data: Any, settings: Settings, known: Iterable[str],
                     intervals: Sequence[str] = ("datetime",), min_valid: bool = True
                     ) -> MonitoringRequest:
    """The inputs every monitoring process shares: place, dates (each of ``intervals``),
    source, method, threshold, cloud and valid-data limits."""
    data = check_known(data, known)
    parse_public(data)
    geometry, is_bbox = parse_place(data, settings)
    cloud, collection, name = parse_search(data, settings)
    method, threshold = parse_method(data, settings)
    min_valid_fraction = number(data, "min_valid_fraction",
                                settings.monitoring.min_valid_fraction, 0, 1) \
        if min_valid else 0.0
    queries = {}
    for key in intervals:
        start, end = parse_dates(data, key, settings)
        queries[key] = PlaceQuery(geometry=geometry, start=start, end=end,
                                  max_cloud_cover=cloud, collection=collection,
                                  is_bbox=is_bbox).as_dict()
    if "datetime" in queries:  # a series searches every date, then skips the cloudy ones
        place = dict(queries["datetime"], max_cloud_cover=100.0)
    else:
        place = queries[intervals[0]]
    return MonitoringRequest(place=place, source=name, method=method, threshold=threshold,
                             max_cloud_cover=cloud, min_valid_fraction=min_valid_fraction,
                             before=queries.get("before"), after=queries.get("after"))


def check_source(request: MonitoringRequest, settings: Settings) -> None:
    """Refuse, before the job, a source whose configuration cannot work."""
    place_source(settings, request.source).check()
