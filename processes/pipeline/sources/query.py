"""A place and a date: the request a place source answers, parsed and checked before any job.

Everything here is pure (no network, no files) so the process can refuse a malformed place or
date with a 4xx before a job exists, and the CLI can reuse the same rules.

- ``bbox``: four numbers (or six, 3D, the heights dropped) in ``bbox-crs`` (default CRS84,
  longitude/latitude), or the OGC API - Processes bounding-box object ``{"bbox": [...],
  "crs": "..."}``. Coordinates follow the CRS's axis order as OGC APIs do: CRS84 is lon/lat,
  ``EPSG:4326`` lat/lon, a UTM CRS easting/northing.
- ``geometry``: a GeoJSON Polygon or MultiPolygon (or a Feature holding one) in CRS84.
- ``datetime``: an RFC 3339 date-time (``2023-08-01T10:56:19Z``), a full-date (``2023-08-01``,
  the whole UTC day) or an interval ``start/end`` of those, ``..`` marking an open end.
"""
from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Any

from pyproj import CRS, Geod
from pyproj.exceptions import CRSError
from rasterio.warp import transform_bounds
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

from aquamask.processes.errors import InvalidInput, TooLarge

CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
_CRS84_NAMES = {CRS84, "CRS84", "OGC:CRS84", "urn:ogc:def:crs:OGC:1.3:CRS84",
                "https://www.opengis.net/def/crs/OGC/1.3/CRS84"}
_GEOD = Geod(ellps="WGS84")
_DATE = r"\d{4}-\d{2}-\d{2}"
_RFC3339 = re.compile(
    rf"^{_DATE}[Tt ]\d{{2}}:\d{{2}}:\d{{2}}(\.\d+)?([Zz]|[+-]\d{{2}}:\d{{2}})$")
_FULL_DATE = re.compile(rf"^{_DATE}$")
_COLLECTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


@dataclass(frozen=True)
class PlaceQuery:
    """What to search for: a place in CRS84, a closed or half-open time interval, a cloud
    limit. ``geometry`` is the polygon (the bbox's rectangle when a bbox was given)."""

    geometry: BaseGeometry
    start: dt.datetime | None
    end: dt.datetime | None
    max_cloud_cover: float = 100.0
    collection: str | None = None
    is_bbox: bool = True

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        return tuple(self.geometry.bounds)  # type: ignore[return-value]

    @property
    def datetime_text(self) -> str:
        return format_interval(self.start, self.end)

    def describe(self) -> str:
        west, south, east, north = self.bbox
        return (f"the place [{west:.5f}, {south:.5f}, {east:.5f}, {north:.5f}] (lon/lat), "
                f"dates {self.datetime_text}, cloud cover at most {self.max_cloud_cover:g} %")

    def as_dict(self) -> dict[str, Any]:
        return {"geometry": mapping(self.geometry), "datetime": self.datetime_text,
                "max_cloud_cover": self.max_cloud_cover, "collection": self.collection,
                "is_bbox": self.is_bbox}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PlaceQuery":
        start, end = parse_datetime(data["datetime"])
        return cls(geometry=shape(data["geometry"]), start=start, end=end,
                   max_cloud_cover=float(data.get("max_cloud_cover", 100.0)),
                   collection=data.get("collection"), is_bbox=bool(data.get("is_bbox", True)))


def _utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.timezone.utc)


def iso(value: dt.datetime) -> str:
    return _utc(value).strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{value.microsecond:06d}".rstrip("0") if value.microsecond else "") + "Z"


def format_interval(start: dt.datetime | None, end: dt.datetime | None) -> str:
    return f"{iso(start) if start else '..'}/{iso(end) if end else '..'}"


def _parse_instant(text: str, what: str, end_of_day: bool) -> dt.datetime:
    text = text.strip()
    if _FULL_DATE.match(text):
        try:
            day = dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)
        except ValueError as err:
            raise InvalidInput(f"datetime: {what} '{text}' is not a valid date ({err})") from err
        return day + dt.timedelta(days=1, microseconds=-1) if end_of_day else day
    if not _RFC3339.match(text):
        raise InvalidInput(
            f"datetime: {what} '{text}' is not an RFC 3339 date-time (e.g. "
            "2023-08-01T10:56:19Z, with a Z or a +hh:mm offset) nor a date (2023-08-01)")
    try:
        return _utc(dt.datetime.fromisoformat(text.replace("z", "Z").replace("t", "T")))
    except ValueError as err:
        raise InvalidInput(f"datetime: {what} '{text}' is not a valid date-time ({err})") from err


def parse_datetime(value: Any) -> tuple[dt.datetime | None, dt.datetime | None]:
    """An instant or an interval as (start, end), both UTC; a lone date is its whole day."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("datetime must be a string: an RFC 3339 date-time, a date, or an "
                           "interval 'start/end' ('..' for an open end)")
    text = value.strip()
    if "/" not in text:
        instant = _parse_instant(text, "the instant", end_of_day=False)
        return instant, _parse_instant(text, "the instant", end_of_day=True) \
            if _FULL_DATE.match(text) else instant
    parts = text.split("/")
    if len(parts) != 2:
        raise InvalidInput(f"datetime: '{text}' has more than one '/'; an interval is start/end")
    start_text, end_text = (p.strip() for p in parts)
    start = None if start_text in ("", "..") else _parse_instant(start_text, "the start", False)
    end = None if end_text in ("", "..") else _parse_instant(end_text, "the end", True)
    if start is None and end is None:
        raise InvalidInput("datetime: an interval needs at least one end ('../..' is all time)")
    if start and end and start > end:
        raise InvalidInput(f"datetime: the interval starts ({iso(start)}) after it ends "
                           f"({iso(end)})")
    return start, end


def parse_instant(value: Any, what: str = "datetime") -> dt.datetime:
    """One instant: an RFC 3339 date-time, or a date (its first second, UTC)."""
    if not isinstance(value, str) or "/" in value or not value.strip():
        raise InvalidInput(f"{what} must be one date-time (2019-09-15T10:56:19Z) or date "
                           "(2019-09-15), not an interval")
    return _parse_instant(value, f"the {what}", end_of_day=False)


def _crs(value: Any) -> CRS:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("bbox-crs must be a CRS URI or code, e.g. "
                           f"{CRS84} or EPSG:32630")
    text = value.strip()
    if text in _CRS84_NAMES:
        return CRS.from_user_input("OGC:CRS84")
    match = re.match(r"^https?://www\.opengis\.net/def/crs/(\w+)/[\d.]+/(\w+)$", text)
    try:
        return CRS.from_user_input(f"{match.group(1)}:{match.group(2)}" if match else text)
    except CRSError as err:
        raise InvalidInput(f"bbox-crs: '{text}' is not a coordinate reference system I know "
                           f"({err})") from err


def parse_bbox(value: Any, crs_value: Any = None) -> BaseGeometry:
    """A bbox input (array or OGC bbox object) as a CRS84 rectangle."""
    if isinstance(value, dict):
        if crs_value is not None and value.get("crs") not in (None, crs_value):
            raise InvalidInput("bbox: give the CRS once, in the bbox object or in bbox-crs")
        crs_value = value.get("crs", crs_value)
        value = value.get("bbox")
    if not isinstance(value, (list, tuple)) or len(value) not in (4, 6) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value):
        raise InvalidInput("bbox must be 4 numbers [minx, miny, maxx, maxy] (or 6 with "
                           "heights), or {\"bbox\": [...], \"crs\": \"...\"}")
    coords = [float(v) for v in value]
    if len(coords) == 6:
        coords = [coords[0], coords[1], coords[3], coords[4]]
    crs = _crs(crs_value if crs_value is not None else CRS84)
    axes = crs.axis_info
    if axes and axes[0].direction.lower() in ("north", "south"):  # e.g. EPSG:4326: lat, lon
        coords = [coords[1], coords[0], coords[3], coords[2]]
    minx, miny, maxx, maxy = coords
    if crs.is_geographic:
        if not (-180 <= minx <= 180 and -180 <= maxx <= 180):
            raise InvalidInput(f"bbox: longitudes must lie in [-180, 180] (got {minx}, {maxx})")
        if not (-90 <= miny <= 90 and -90 <= maxy <= 90):
            raise InvalidInput(f"bbox: latitudes must lie in [-90, 90] (got {miny}, {maxy})")
        if minx > maxx:
            raise InvalidInput("bbox: a box crossing the antimeridian (minx > maxx) is not "
                               "supported; split it in two requests")
    if not (minx < maxx and miny < maxy):
        raise InvalidInput(f"bbox: the minimum must be below the maximum on both axes "
                           f"(got {value})")
    if not crs.equals(CRS.from_user_input("OGC:CRS84"), ignore_axis_order=True):
        try:
            minx, miny, maxx, maxy = transform_bounds(crs, "OGC:CRS84", minx, miny, maxx, maxy,
                                                      densify_pts=21)
        except Exception as err:  # noqa: BLE001 - any projection failure is the input's fault
            raise InvalidInput(f"bbox: cannot transform it from {crs_value} to lon/lat "
                               f"({err})") from err
        if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
            raise InvalidInput(f"bbox: it lies outside the area of use of {crs_value}")
    return box(minx, miny, maxx, maxy)


def parse_geometry(value: Any) -> BaseGeometry:
    """A GeoJSON Polygon/MultiPolygon (or Feature of one) in CRS84, valid per shapely."""
    if isinstance(value, dict) and value.get("type") == "Feature":
        value = value.get("geometry")
    if not isinstance(value, dict) or value.get("type") not in ("Polygon", "MultiPolygon"):
        raise InvalidInput("geometry must be a GeoJSON Polygon or MultiPolygon (or a Feature "
                           "of one) in longitude/latitude (CRS84)")
    try:
        geometry = shape(value)
    except Exception as err:  # noqa: BLE001 - shapely raises several types on bad coordinates
        raise InvalidInput(f"geometry: not a readable GeoJSON {value.get('type')} ({err})") \
            from err
    if geometry.is_empty:
        raise InvalidInput("geometry is empty")
    if not geometry.is_valid:
        raise InvalidInput(f"geometry is not valid: {explain_validity(geometry)}")
    west, south, east, north = geometry.bounds
    if not (-180 <= west <= east <= 180 and -90 <= south <= north <= 90):
        raise InvalidInput("geometry: coordinates must be longitude in [-180, 180] and "
                           "latitude in [-90, 90] (GeoJSON is lon/lat)")
    return geometry


def area_km2(geometry: BaseGeometry) -> float:
    """Geodesic area on the WGS84 ellipsoid."""
    area, _ = _GEOD.geometry_area_perimeter(geometry)
    return abs(area) / 1e6


SENTINEL2_FIRST_DAY = dt.datetime(2015, 6, 23, tzinfo=dt.timezone.utc)


def check_date_span(start: dt.datetime | None, end: dt.datetime | None,
                    max_days: float) -> float:
    """Days the interval covers (an open end counts from Sentinel-2's first day or to now);
    TooLarge past ``max_days``."""
    first = start or SENTINEL2_FIRST_DAY
    last = end or dt.datetime.now(dt.timezone.utc)
    days = (last - first).total_seconds() / 86400
    if days > max_days:
        raise TooLarge(f"the dates span {days:,.0f} days; this server accepts at most "
                       f"{max_days:,.0f} (limits.max_date_span_days)")
    return days


def check_area(geometry: BaseGeometry, max_area_km2: float) -> float:
    area = area_km2(geometry)
    if area > max_area_km2:
        raise TooLarge(f"the place covers {area:,.1f} km²; this server accepts places of at "
                       f"most {max_area_km2:,.0f} km² (limits.max_area_km2)")
    if area <= 0:
        raise InvalidInput("the place has no area")
    return area


def parse_cloud_cover(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not 0 <= value <= 100:
        raise InvalidInput(f"max_cloud_cover must be a percentage between 0 and 100 "
                           f"(got {value!r})")
    return float(value)


def parse_collection(value: Any) -> str:
    if not isinstance(value, str) or not _COLLECTION.match(value):
        raise InvalidInput(f"collection must be a STAC collection id such as sentinel-2-l2a "
                           f"(got {value!r})")
    return value
