"""Monitoring: water over a place through time, as plain functions the three processes call.

- ``run_timeseries``: every usable acquisition date of an interval -> water area, valid
  fraction, source products; JSON, CSV and a PNG chart; each date's mask published so that one
  WMS layer with a ``TIME`` dimension steps through the dates; optional field validation.
- ``run_change``: the water of two dates (or the best date of two intervals) -> a change COG
  (dry, gained, lost, permanent, no data) with the area of each class, published in its style.
- ``run_frequency``: the water of every usable date of an interval -> per pixel, the share
  (percent) of valid observations that saw water and the count of valid (and wet) observations.

Dates come from the place sources (search once, group by UTC day, ``compose.select`` and
``compose.place_scene`` per day, as ``water-detection`` does for one date) and are detected by
``detection.detect``: each date streams its scene block by block into its own files, so the
dates are independent and run in parallel through dask (``monitoring.scheduler``, threads by
default, at most ``monitoring.max_parallel_dates`` at once: memory stays bounded). A date that
fails is reported with its error and the others stand. Change and frequency are block-wise
functions over the dates' masks (one block of each date at a time). Results are reproducible:
the same request gives the same numbers (dates sorted, per-date sums in a fixed block order).

Every file is written under a staging folder renamed into ``{results}/{job_id}`` at the end.
The dates of a time series are published as products ``{job_id}--t<time>``
(``publishing.derived_id``), so dismissing the job removes them with ``unpublish(job_id)``; the
change and frequency rasters are published under the job id itself, on the embedded engine
(GeoServer's publisher knows only the water style so far).
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import math
import os
import shutil
import sys
import threading
import uuid
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from aquamask import __version__
from aquamask.processes.areas import pixel_areas_km2
from aquamask.processes.detection import METHODS, detect
from aquamask.processes.publishing import PUBLIC_INPUT, parse_public
from aquamask.processes.errors import (AquamaskError, Cancelled, InvalidInput, MissingInput,
                                       TooLarge)
from aquamask.processes.results import write_atomic
from aquamask.processes.settings import Settings
from aquamask.processes.sources.query import (CRS84, PlaceQuery, check_area, check_date_span,
                                              iso, parse_bbox,
                                              parse_cloud_cover, parse_collection,
                                              parse_datetime, parse_geometry)
from aquamask.processes.types import INVALID, WATER, MaskStats, Product, ProgressCallback
from aquamask.server.metrics import instrument_job

if TYPE_CHECKING:
    from aquamask.processes.results import ResultStore

LOGGER = logging.getLogger(__name__)

COG = "image/tiff; application=geotiff; profile=cloud-optimized"
BLOCK = 1024
# result files (served by /results/<job>/<name>: server/app.py RESULT_FILES lists them)
TIMESERIES_JSON, TIMESERIES_CSV, TIMESERIES_PNG = ("timeseries.json", "timeseries.csv",
                                                   "timeseries.png")
VALIDATION_CSV, VALIDATION_PNG = "field_validation.csv", "field_validation.png"
CHANGE_TIF, BEFORE_TIF, AFTER_TIF = "change.tif", "before.tif", "after.tif"
FREQUENCY_TIF, OBSERVATIONS_TIF = "frequency.tif", "observations.tif"
ITEM_JSON = "item.json"
DATES_DIR = "dates"
MEDIA_TYPES = {TIMESERIES_JSON: "application/json", TIMESERIES_CSV: "text/csv",
               TIMESERIES_PNG: "image/png", VALIDATION_CSV: "text/csv",
               VALIDATION_PNG: "image/png", CHANGE_TIF: COG, BEFORE_TIF: COG, AFTER_TIF: COG,
               FREQUENCY_TIF: COG, OBSERVATIONS_TIF: COG, ITEM_JSON: "application/geo+json"}
# charts: pixels (width, height) of every PNG
CHART_SIZE = (1200, 600)
CHART_DPI = 100
# change classes (uint8; 255 no data at either date)
CHANGE_DRY, CHANGE_GAINED, CHANGE_LOST, CHANGE_PERMANENT = 0, 1, 2, 3
CHANGE_NAMES = {CHANGE_DRY: "dry", CHANGE_GAINED: "gained", CHANGE_LOST: "lost",
                CHANGE_PERMANENT: "permanent", INVALID: "invalid"}
FREQUENCY_NODATA = 255  # frequency.tif: uint8 percent, 255 where no observation was valid
MAX_RADIUS_M = 50_000.0
STYLE_TAG = "AQUAMASK_STYLE"  # the embedded publisher draws each style (config/mapfile.j2)

OK, SKIPPED, FAILED = "ok", "skipped", "failed"


# -- settings ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MonitoringConfig:
    scheduler: str = "auto"
    max_parallel_dates: int = 2
    max_dates: int = 400
    max_scenes: int = 2000
    min_valid_fraction: float = 0.5
    field_tolerance_days: float = 1.0
    max_field_bytes: int = 1 << 20

    @classmethod
    def from_settings(cls, settings: Settings) -> "MonitoringConfig":
        raw = settings.raw.get("monitoring") or {}
        config = cls(**{k: type(getattr(cls, k))(raw[k]) for k in cls.__dataclass_fields__
                        if raw.get(k) is not None})
        if config.max_parallel_dates < 1:
            raise ValueError("monitoring.max_parallel_dates must be at least 1")
        if not (config.scheduler in ("auto", "threads", "synchronous")
                or "://" in config.scheduler):
            raise ValueError(f"monitoring.scheduler must be auto, threads, synchronous or a "
                             f"dask.distributed scheduler address (got {config.scheduler!r})")
        return config


# -- inputs --------------------------------------------------------------------------------------
PLACE_INPUTS: dict[str, dict[str, Any]] = {
    "bbox": {
        "title": "Place (bounding box)",
        "description": "[minx, miny, maxx, maxy] in bbox-crs (default CRS84: lon/lat), or "
                       "{\"bbox\": [...], \"crs\": \"...\"}. Give one of bbox, geometry or "
                       "point with radius_m.",
        "schema": {"type": "object", "format": "ogc-bbox", "required": ["bbox"],
                   "properties": {"bbox": {"type": "array", "items": {"type": "number"},
                                           "minItems": 4, "maxItems": 6},
                                  "crs": {"type": "string", "format": "uri",
                                          "default": CRS84}}},
        "minOccurs": 0, "maxOccurs": 1,
    },
    "bbox-crs": {
        "title": "CRS of bbox", "description": "CRS URI or code of bbox, in its axis order.",
        "schema": {"type": "string", "default": CRS84}, "minOccurs": 0, "maxOccurs": 1,
    },
    "geometry": {
        "title": "Place (polygon)",
        "description": "A GeoJSON Polygon or MultiPolygon in lon/lat; pixels outside it are "
                       "no data.",
        "schema": {"type": "object", "contentMediaType": "application/geo+json"},
        "minOccurs": 0, "maxOccurs": 1,
    },
    "point": {
        "title": "Place (point of interest)",
        "description": "[lon, lat] or a GeoJSON Point: with radius_m, the disc around it is the "
                       "place (pixels outside it are no data).",
        "schema": {"oneOf": [{"type": "array", "items": {"type": "number"},
                              "minItems": 2, "maxItems": 2}, {"type": "object"}]},
        "minOccurs": 0, "maxOccurs": 1,
    },
    "radius_m": {
        "title": "Radius around the point (m)",
        "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_RADIUS_M},
        "minOccurs": 0, "maxOccurs": 1,
    },
    "max_cloud_cover": {
        "title": "Maximum cloud cover (%)",
        "description": "Scenes with more cloud (their eo:cloud_cover) are not used; in a "
                       "series their dates are reported as skipped.",
        "schema": {"type": "number", "minimum": 0, "maximum": 100},
        "minOccurs": 0, "maxOccurs": 1,
    },
    "source": {
        "title": "Imagery source", "description": "A configured source (default from config).",
        "schema": {"type": "string"}, "minOccurs": 0, "maxOccurs": 1,
    },
    "collection": {
        "title": "STAC collection", "description": "Default: the source's.",
        "schema": {"type": "string"}, "minOccurs": 0, "maxOccurs": 1,
    },
    "method": {
        "title": "Method",
        "description": "unet (the trained model), ndwi or mndwi (spectral index > 0).",
        "schema": {"type": "string", "enum": list(METHODS), "default": "unet"},
        "minOccurs": 0, "maxOccurs": 1,
    },
    "threshold": {
        "title": "Threshold", "description": "Water probability at or above which a pixel is "
                                             "water (for the indices 0.5 is index > 0).",
        "schema": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
        "minOccurs": 0, "maxOccurs": 1,
    },
    "public": PUBLIC_INPUT,
}
MIN_VALID_INPUT = {
    "title": "Minimum valid fraction",
    "description": "Dates whose place has a smaller fraction of valid pixels (cloud, shadow, "
                   "no data) are reported as skipped (default monitoring.min_valid_fraction).",
    "schema": {"type": "number", "minimum": 0, "maximum": 1},
    "minOccurs": 0, "maxOccurs": 1,
}
INTERVAL_INPUT = {
    "title": "Dates",
    "description": "An interval start/end of RFC 3339 dates or date-times ('..' open), or a "
                   "single date.",
    "schema": {"type": "string"}, "minOccurs": 1, "maxOccurs": 1,
}


@dataclass
class MonitoringRequest:
    """The checked inputs of a monitoring process (JSON-able: the job re-parses its inputs)."""

    place: dict[str, Any]  # PlaceQuery.as_dict() over the whole interval, max_cloud_cover 100
    source: str
    method: str
    threshold: float
    max_cloud_cover: float
    min_valid_fraction: float = 0.0
    before: dict[str, Any] | None = None  # change: PlaceQuery.as_dict() of each side
    after: dict[str, Any] | None = None
    field: dict[str, Any] | None = None  # FieldSeries.as_dict()
    field_tolerance_days: float = 1.0

    def query(self, which: str = "place") -> PlaceQuery:
        return PlaceQuery.from_dict(getattr(self, which))

    def parameters(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "field"}
        if self.field:
            out["field"] = {"unit": self.field["unit"], "rows": len(self.field["rows"])}
        return out


def _number(data: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not low <= value <= high:
        raise InvalidInput(f"{key} must be a number between {low:g} and {high:g} "
                           f"(got {value!r})")
    return float(value)


def circle(lon: float, lat: float, radius_m: float, vertices: int = 72):
    """The geodesic disc of ``radius_m`` around (lon, lat) as a CRS84 polygon."""
    from pyproj import Geod
    from shapely.geometry import Polygon

    geod = Geod(ellps="WGS84")
    azimuths = np.linspace(0.0, 360.0, vertices, endpoint=False)
    lons, lats, _ = geod.fwd(np.full(vertices, lon), np.full(vertices, lat), azimuths,
                             np.full(vertices, radius_m))
    return Polygon(list(zip(lons, lats)))


def parse_point(value: Any, radius: Any):
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


def parse_place_inputs(data: dict[str, Any], settings: Settings):
    """The place (bbox, geometry or point + radius_m) as (CRS84 geometry, is_bbox), with the
    checks of water-detection: ranges, validity, area."""
    given = [k for k in ("bbox", "geometry", "point") if data.get(k) is not None]
    if not given:
        raise MissingInput("give the place: 'bbox', 'geometry', or 'point' with 'radius_m'")
    if len(given) > 1:
        raise InvalidInput(f"give the place once: {', '.join(given)} were all given")
    if data.get("bbox-crs") is not None and given[0] != "bbox":
        raise InvalidInput("bbox-crs goes with bbox; geometry and point are lon/lat (CRS84)")
    if data.get("radius_m") is not None and given[0] != "point":
        raise InvalidInput("radius_m goes with point")
    if given[0] == "bbox":
        geometry, is_bbox = parse_bbox(data["bbox"], data.get("bbox-crs")), True
    elif given[0] == "geometry":
        geometry, is_bbox = parse_geometry(data["geometry"]), False
    else:
        geometry, is_bbox = parse_point(data["point"], data.get("radius_m")), False
    check_area(geometry, float(settings.get("limits", "max_area_km2") or 2500))
    from aquamask.processes.sources.grid import grid_for

    pixels = grid_for(geometry).pixels
    max_pixels = int(settings.get("limits", "max_pixels"))
    if pixels > max_pixels:
        raise TooLarge(f"the place needs {pixels:,} pixels at 10 m; this server accepts at "
                       f"most {max_pixels:,}")
    return geometry, is_bbox


def parse_interval(data: dict[str, Any], key: str, settings: Settings
                   ) -> tuple[dt.datetime | None, dt.datetime | None]:
    if data.get(key) is None:
        raise MissingInput(f"'{key}' is required: an interval start/end (e.g. "
                           "2023-01-01/2023-12-31) or a date")
    try:
        start, end = parse_datetime(data[key])
    except InvalidInput as err:
        if key == "datetime":
            raise
        raise InvalidInput(f"{key}: {err.message.removeprefix('datetime: ')}") from None
    check_date_span(start, end, float(settings.get("limits", "max_date_span_days") or 5000))
    return start, end


def parse_request(data: dict[str, Any], settings: Settings, known: Sequence[str],
                  intervals: Sequence[str] = ("datetime",), min_valid: bool = True
                  ) -> MonitoringRequest:
    """The inputs every monitoring process shares: place, dates, source, method, threshold,
    cloud and valid-data limits. Each problem is a 4xx naming the input."""
    from aquamask.processes.sources import source_names

    if not isinstance(data, dict):
        raise InvalidInput("inputs must be a JSON object")
    unknown = set(data) - set(known)
    if unknown:
        raise InvalidInput(f"unknown input(s): {', '.join(sorted(unknown))}; expected some of "
                           + ", ".join(known))
    parse_public(data)
    geometry, is_bbox = parse_place_inputs(data, settings)
    sources = settings.raw.get("sources") or {}
    cloud = parse_cloud_cover(data.get("max_cloud_cover", sources.get("max_cloud_cover", 100)))
    collection = data.get("collection")
    if collection is not None:
        collection = parse_collection(collection)
    name = data.get("source", sources.get("default") or "local")
    if not isinstance(name, str) or name not in source_names(settings):
        raise InvalidInput(f"source must be one of {', '.join(source_names(settings))} "
                           f"(got {name!r})")
    method = data.get("method", settings.get("detection", "method"))
    if method not in METHODS:
        raise InvalidInput(f"method must be one of {', '.join(METHODS)} (got {method!r})")
    threshold = _number(data, "threshold", settings.get("detection", "threshold"), 0, 1)
    config = MonitoringConfig.from_settings(settings)
    min_valid_fraction = _number(data, "min_valid_fraction", config.min_valid_fraction, 0, 1) \
        if min_valid else 0.0
    queries = {}
    for key in intervals:
        start, end = parse_interval(data, key, settings)
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


# -- dates ---------------------------------------------------------------------------------------
@dataclass
class DatePlan:
    """One acquisition day over the place: the scenes to read (least cloudy first)."""

    day: dt.date
    acquired: dt.datetime
    items: list[Any]  # SourceItem
    coverage: float
    cloud_cover: float | None
    skip: str | None = None

    @property
    def stamp(self) -> str:
        return self.acquired.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")

    def record(self) -> dict[str, Any]:
        return {"date": self.day.isoformat(), "datetime": iso(self.acquired),
                "cloud_cover": None if self.cloud_cover is None else round(self.cloud_cover, 3),
                "coverage": round(self.coverage, 6),
                "source_ids": [it.product_id or it.id for it in self.items]}


def plan_dates(items: list[Any], query: PlaceQuery, max_cloud_cover: float) -> list[DatePlan]:
    """The found scenes grouped by UTC day, each day's scenes chosen as water-detection chooses
    them for one date; days clouder than ``max_cloud_cover`` are planned as skipped."""
    from aquamask.processes.sources.compose import _footprint, select

    by_day: dict[dt.date, list[Any]] = defaultdict(list)
    for item in items:
        by_day[item.datetime.astimezone(dt.timezone.utc).date()].append(item)
    everything = replace(query, max_cloud_cover=100.0)
    plans = []
    for day in sorted(by_day):
        chosen, coverage = select(by_day[day], everything)
        if not chosen:
            continue  # no scene of the day reaches the place
        parts = [_footprint(it, query.geometry).intersection(query.geometry).area
                 for it in chosen]
        clouds = [it.cloud_cover for it in chosen]
        cloud = None if all(c is None for c in clouds) else sum(
            (c or 0.0) * a for c, a in zip(clouds, parts)) / (sum(parts) or 1.0)
        # the least cloudy scene's time: the one place_scene gives the day's Scene
        plan = DatePlan(day=day, acquired=chosen[0].datetime, items=chosen,
                        coverage=coverage, cloud_cover=cloud)
        if cloud is not None and cloud > max_cloud_cover:
            plan.skip = (f"cloud cover {cloud:.1f} % above max_cloud_cover "
                         f"{max_cloud_cover:g} %")
        plans.append(plan)
    return plans


def find_dates(request: MonitoringRequest, settings: Settings, source,
               progress: ProgressCallback) -> list[DatePlan]:
    from aquamask.processes.sources.compose import no_scene

    config = MonitoringConfig.from_settings(settings)
    query = request.query()
    progress(1, f"searching {source.name} for {query.describe()}")
    items = source.search(query, limit=config.max_scenes)
    plans = plan_dates(items, query, request.max_cloud_cover)
    if not plans:
        raise no_scene(source.name, query, len(items))
    todo = [p for p in plans if p.skip is None]
    if len(todo) > config.max_dates:
        raise TooLarge(f"{len(todo)} dates match the place and the dates; this server "
                       f"processes at most {config.max_dates} in one request "
                       "(monitoring.max_dates): shorten the interval or lower max_cloud_cover")
    return plans


@dataclass
class DateContext:
    """What every date's detection shares (read-only in the worker threads)."""

    source: Any
    grid: Any
    query: PlaceQuery
    method: str
    threshold: float
    model: Any
    workdir: Path
    parameters: dict[str, Any]
    products_dir: Path | None = None  # write each date's product (COG + STAC item) here
    job_id: str = ""


def detect_date(plan: DatePlan, ctx: DateContext) -> dict[str, Any]:
    """Detect water on one date: its record with the statistics, the mask's path and (with
    ``products_dir``) its product. Any error is caught and reported as the date's failure."""
    from aquamask.processes.products import write_cogs, write_product
    from aquamask.processes.sources.compose import place_scene

    record = plan.record()
    work = ctx.workdir / plan.stamp
    started = dt.datetime.now(dt.timezone.utc)
    try:
        ready = [ctx.source.materialize(item) for item in plan.items]
        scene = place_scene(ready, ctx.grid, ctx.query, ctx.source.cache,
                            ctx.source.gdal_options)
        try:
            mask = detect(scene, ctx.method, ctx.threshold, work, model=ctx.model,
                          with_probability=False)
            stats = mask.stats
            record.update(status=OK, water_area_km2=stats.water_area_km2,
                          valid_area_km2=stats.valid_area_km2,
                          water_fraction=stats.water_fraction,
                          valid_fraction=stats.valid_fraction, method=ctx.method)
            if ctx.products_dir is not None:
                from aquamask.processes.publishing import derived_id

                product_id = derived_id(ctx.job_id, f"t{plan.stamp}")
                product = write_product(product_id, mask, scene, ctx.parameters,
                                        ctx.products_dir, started)
                record["_product"] = product
            else:
                write_cogs(mask, work)  # a compressed mask.tif beside the classes
                record["_mask"] = work / "mask.tif"
        finally:
            scene.close()
            (work / "classes.tif").unlink(missing_ok=True)
    except Cancelled:  # dismissed (synchronous scheduler: the dates run in the job's thread)
        raise
    except Exception as err:  # noqa: BLE001 - one date's failure is reported, the rest stands
        LOGGER.warning("date %s failed: %s", plan.day, err, exc_info=not isinstance(
            err, AquamaskError))
        message = err.message if isinstance(err, AquamaskError) else f"{type(err).__name__}: {err}"
        record.update(status=FAILED, error=message)
    return record


def _cluster_client(scheduler: str):
    """A context giving a dask.distributed client when the dates go to a cluster: the one
    ``scheduler`` names, or (``auto``) the one this job runs on, whose worker thread is
    handed back while the dates run (``worker_client``); None for local threads."""
    if "://" in scheduler:
        try:
            from distributed import Client
        except ImportError as err:
            raise RuntimeError("monitoring.scheduler names a dask.distributed scheduler but "
                               "the distributed package is not installed") from err
        return Client(scheduler)
    if scheduler == "auto" and "distributed" in sys.modules:
        from distributed import get_worker, worker_client
        try:
            get_worker()
        except ValueError:  # not in a Dask task
            return None
        return worker_client()
    return None


def run_parallel(tasks: list[Callable[[], Any]], config: MonitoringConfig,
                 on_done: Callable[[int, Any], None]) -> list[Any]:
    """Run independent ``tasks`` through dask (``monitoring.scheduler``), at most
    ``max_parallel_dates`` at once; ``on_done(index, result)`` is called in this thread as each
    finishes (it may raise to stop: the job was dismissed). Results in the tasks' order."""
    import dask
    from dask.callbacks import Callback

    if not tasks:
        return []
    # When on_done raises (dismissal) dask stops waiting but its threads finish the dates they
    # started: those are let finish and counted, so the caller's clean-up sees all they did,
    # and dates not yet started do not start.
    stopped = threading.Event()
    running = [0]
    idle = threading.Condition()

    def guarded(task: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with idle:
                if stopped.is_set():
                    raise Cancelled()
                running[0] += 1
            try:
                return task()
            finally:
                with idle:
                    running[0] -= 1
                    idle.notify_all()
        return run

    cluster = _cluster_client(config.scheduler)
    if cluster is not None:  # a dask.distributed cluster: each date a task on its workers
        from distributed import as_completed
        results: list[Any] = [None] * len(tasks)
        # leaving the client releases the futures: dates not started do not start
        with cluster as client:
            batch = uuid.uuid4().hex
            futures = client.compute([dask.delayed(task, pure=False)(
                dask_key_name=f"aquamask-date-{batch}-{i}") for i, task in enumerate(tasks)])
            index = {f.key: i for i, f in enumerate(futures)}
            for future in as_completed(futures):
                i = index[future.key]
                results[i] = future.result()
                on_done(i, results[i])
        return results
    scheduler = "threads" if config.scheduler == "auto" else config.scheduler
    delayed = [dask.delayed(guarded(task), pure=False, name=f"aquamask-date-{i}")()
               for i, task in enumerate(tasks)]
    keys = {d.key: i for i, d in enumerate(delayed)}
    done: dict[int, Any] = {}

    def posttask(key, result, dsk, state, worker_id):
        if key in keys and keys[key] not in done:
            done[keys[key]] = result
            on_done(keys[key], result)

    try:
        with Callback(posttask=posttask):
            results = dask.compute(*delayed, scheduler=scheduler,
                                   num_workers=config.max_parallel_dates)
    except BaseException:
        stopped.set()
        with idle:
            idle.wait_for(lambda: running[0] == 0)
        raise
    return list(results)


def detect_dates(plans: list[DatePlan], ctx: DateContext, config: MonitoringConfig,
                 min_valid_fraction: float, progress: ProgressCallback,
                 start: float = 5.0, end: float = 88.0) -> list[dict[str, Any]]:
    """Every planned date's record, sorted by date: skipped ones as planned, the others
    detected in parallel; a date below ``min_valid_fraction`` is skipped after detection."""
    todo = [p for p in plans if p.skip is None]
    total = len(todo)
    finished = [0]

    def on_done(i: int, record: dict[str, Any]) -> None:
        finished[0] += 1
        progress(start + (end - start) * finished[0] / max(total, 1),
                 f"{finished[0]} of {total} dates done ({todo[i].day.isoformat()}: "
                 f"{record['status']})")

    progress(start, f"detecting water on {total} date(s)"
                    + (f", {len(plans) - total} skipped for clouds" if len(plans) > total
                       else ""))
    results = run_parallel([lambda p=p: detect_date(p, ctx) for p in todo], config, on_done)
    records = []
    by_day = {p.day: r for p, r in zip(todo, results)}
    for plan in plans:
        if plan.skip is not None:
            records.append(dict(plan.record(), status=SKIPPED, reason=plan.skip))
            continue
        record = by_day[plan.day]
        if record["status"] == OK and record["valid_fraction"] < min_valid_fraction:
            record.update(status=SKIPPED, reason=(
                f"valid fraction {record['valid_fraction']:.3f} below min_valid_fraction "
                f"{min_valid_fraction:g} (cloud, shadow or no data over the place)"))
        records.append(record)
    return records


def _context(request: MonitoringRequest, settings: Settings, job_id: str, workdir: Path,
             process: str, products_dir: Path | None, progress: ProgressCallback
             ) -> DateContext:
    from aquamask.processes.pipeline import load_model
    from aquamask.processes.sources import place_source
    from aquamask.processes.sources.grid import grid_for

    query = request.query()
    model = None
    if request.method == "unet":
        progress(3, "loading the water model")
        model = load_model(settings.get("detection", "weights"),
                           settings.get("detection", "device"))
    parameters = {"process": process, "method": request.method,
                  "threshold": request.threshold, "place": request.place,
                  "source": request.source, "max_cloud_cover": request.max_cloud_cover,
                  "min_valid_fraction": request.min_valid_fraction, "job": job_id}
    return DateContext(source=place_source(settings, request.source),
                       grid=grid_for(query.geometry), query=query, method=request.method,
                       threshold=request.threshold, model=model, workdir=workdir,
                       parameters=parameters, products_dir=products_dir, job_id=job_id)


def public_record(record: dict[str, Any]) -> dict[str, Any]:
    """A date's record as reported: rounded numbers, no private keys."""
    out = {k: v for k, v in record.items() if not k.startswith("_")}
    for key in ("water_area_km2", "valid_area_km2", "water_fraction", "valid_fraction"):
        if out.get(key) is not None:
            out[key] = round(float(out[key]), 6)
    if out.get("status") == SKIPPED and "water_area_km2" in out:
        # measured but not usable: kept for the record, never plotted or matched
        out["water_area_km2_unusable"] = out.pop("water_area_km2")
    return out


def fail_if_nothing(records: list[dict[str, Any]]) -> None:
    """A request all of whose detected dates failed fails, with the first error."""
    detected = [r for r in records if r["status"] != SKIPPED or "valid_fraction" in r]
    failed = [r for r in records if r["status"] == FAILED]
    if failed and len(failed) == len(detected):
        raise RuntimeError(f"every date failed; {failed[0]['date']}: {failed[0]['error']}")


# -- files ---------------------------------------------------------------------------------------
class Staging:
    """A job's results written into the results store's staging folder, committed at once
    (a folder: renamed to ``{job_id}``; an object store: uploaded, the STAC items last)."""

    def __init__(self, results: "Path | ResultStore", job_id: str) -> None:
        from aquamask.processes.results import LocalResultStore

        self.store = LocalResultStore(results) if isinstance(results, (str, os.PathLike)) \
            else results
        self.job_id = job_id
        self.path = self.store.staging(job_id)

    def commit(self) -> Path:
        """The committed result's folder, as GDAL reads it (``ResultStore.gdal_path``)."""
        self.store.commit(self.job_id, self.path)
        return Path(self.store.gdal_path(self.job_id))

    def discard(self) -> None:
        self.store.discard(self.path)


def link(base_url: str, job_id: str, name: str, title: str) -> dict[str, str]:
    return {"href": f"{base_url}/results/{job_id}/{name}", "type": MEDIA_TYPES[name],
            "title": title}


CSV_COLUMNS = ("date", "datetime", "status", "water_area_km2", "valid_fraction",
               "water_fraction", "valid_area_km2", "cloud_cover", "coverage", "method",
               "source_ids", "reason")


def series_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        values = []
        for column in CSV_COLUMNS:
            value = row.get(column)
            if column == "source_ids":
                value = " ".join(value or [])
            elif column == "reason":
                value = row.get("reason") or row.get("error")
            values.append("" if value is None else value)
        writer.writerow(values)
    return out.getvalue()


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    return Figure(figsize=(CHART_SIZE[0] / CHART_DPI, CHART_SIZE[1] / CHART_DPI),
                  dpi=CHART_DPI)


def _save(figure, path: Path) -> None:
    buffer = io.BytesIO()
    # no bbox_inches: every chart is exactly CHART_SIZE; no software/date metadata, so the same
    # request gives the same bytes
    figure.savefig(buffer, format="png", dpi=CHART_DPI, metadata={"Software": None})
    write_atomic(path, buffer.getvalue())


def _day(row: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(row["datetime"].replace("Z", "+00:00"))


def timeseries_chart(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Water area over time; skipped (cloudy) dates marked as grey crosses and failed dates as
    red crosses along the bottom."""
    import matplotlib.dates as mdates

    figure = _figure()
    axes = figure.add_subplot(1, 1, 1)
    ok = [r for r in rows if r["status"] == OK]
    skipped = [r for r in rows if r["status"] == SKIPPED]
    failed = [r for r in rows if r["status"] == FAILED]
    if ok:
        axes.plot([_day(r) for r in ok], [r["water_area_km2"] for r in ok], "-o",
                  color="#0070ff", label="water area (km²)")
    top = max([r["water_area_km2"] for r in ok] or [1.0]) or 1.0
    if skipped:
        axes.plot([_day(r) for r in skipped], [0.0] * len(skipped), "x", color="#808080",
                  markersize=9, label="skipped: cloudy or too little valid data")
    if failed:
        axes.plot([_day(r) for r in failed], [0.0] * len(failed), "x", color="#d73027",
                  markersize=9, label="failed")
    axes.set_ylim(-0.04 * top, 1.1 * top)
    axes.set_ylabel("water area (km²)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    locator = mdates.AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    if rows:
        axes.legend(loc="upper left")
    figure.subplots_adjust(left=0.08, right=0.97, top=0.92, bottom=0.1)
    _save(figure, path)


def validation_chart(result: dict[str, Any], rows: list[dict[str, Any]], field: Any,
                     path: Path) -> None:
    """The water area and the field measurements on one time axis (two y axes), the matched
    pairs joined by a line, the coefficients in the title."""
    import matplotlib.dates as mdates

    figure = _figure()
    axes = figure.add_subplot(1, 1, 1)
    ok = [r for r in rows if r["status"] == OK]
    axes.plot([_day(r) for r in ok], [r["water_area_km2"] for r in ok], "-o", color="#0070ff",
              label="water area (km²)")
    axes.set_ylabel("water area (km²)", color="#0070ff")
    other = axes.twinx()
    other.plot([m.when for m in field.measurements], [m.value for m in field.measurements],
               "-s", color="#e66100", markersize=4, label=f"field ({field.unit})")
    for pair in result["pairs"]:
        when = dt.datetime.fromisoformat(pair["field_datetime"].replace("Z", "+00:00"))
        other.plot([when], [pair["field_value"]], "o", color="#e66100", markersize=9,
                   markerfacecolor="none")
    other.set_ylabel(f"field value ({field.unit})", color="#e66100")

    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    axes.set_title(f"Water area and field measurements: n = {result['n']}, Pearson r = "
                   f"{fmt(result['pearson_r'])}, Spearman rho = {fmt(result['spearman_rho'])}")
    locator = mdates.AutoDateLocator()
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes.grid(True, alpha=0.3)
    handles = axes.get_legend_handles_labels()
    more = other.get_legend_handles_labels()
    axes.legend(handles[0] + more[0], handles[1] + more[1], loc="upper left")
    figure.subplots_adjust(left=0.08, right=0.92, top=0.92, bottom=0.1)
    _save(figure, path)


# -- block-wise rasters --------------------------------------------------------------------------
def _windows(width: int, height: int, block: int = BLOCK):
    from rasterio.windows import Window

    for row in range(0, height, block):
        for col in range(0, width, block):
            yield Window(col, row, min(block, width - col), min(block, height - row))


def _gtiff(profile: dict[str, Any], dtype: str, nodata, count: int = 1) -> dict[str, Any]:
    out = {k: profile[k] for k in ("width", "height", "crs", "transform")}
    out.update(driver="GTiff", count=count, dtype=dtype, nodata=nodata, tiled=True,
               blockxsize=256, blockysize=256, BIGTIFF="IF_SAFER")
    return out


def to_cog(source: Path, target: Path, nodata, resampling: str) -> Path:
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    profile = dict(cog_profiles.get("deflate"), blockxsize=256, blockysize=256)
    cog_translate(source, target, profile, nodata=nodata, overview_resampling=resampling,
                  quiet=True, in_memory=False, config={"GDAL_NUM_THREADS": "ALL_CPUS"})
    return target


def change_classes(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Per pixel: 0 dry at both dates, 1 water gained, 2 water lost, 3 permanent water,
    255 no data at either date."""
    out = np.full(before.shape, INVALID, np.uint8)
    valid = (before != INVALID) & (after != INVALID)
    was, now = before == WATER, after == WATER
    out[valid & ~was & ~now] = CHANGE_DRY
    out[valid & ~was & now] = CHANGE_GAINED
    out[valid & was & ~now] = CHANGE_LOST
    out[valid & was & now] = CHANGE_PERMANENT
    return out


def change_raster(before: Path, after: Path, target: Path, block: int = BLOCK
                  ) -> dict[str, dict[str, float]]:
    """The change GeoTIFF of two masks on one grid, block by block; area (km², ellipsoidal) and
    pixels of each class."""
    import rasterio

    totals = {name: {"area_km2": 0.0, "pixels": 0} for name in CHANGE_NAMES.values()}
    with rasterio.open(before) as b, rasterio.open(after) as a:
        if (b.width, b.height, b.transform, b.crs) != (a.width, a.height, a.transform, a.crs):
            raise ValueError("the two masks are not on one grid")
        profile = {"width": b.width, "height": b.height, "crs": b.crs, "transform": b.transform}
        crs_wkt = b.crs.to_wkt()
        with rasterio.open(target, "w", **_gtiff(profile, "uint8", INVALID)) as out:
            out.update_tags(**{STYLE_TAG: "change"})
            for window in _windows(b.width, b.height, block):
                classes = change_classes(b.read(1, window=window), a.read(1, window=window))
                out.write(classes, 1, window=window)
                areas = pixel_areas_km2(profile["transform"], crs_wkt, window)
                for value, name in CHANGE_NAMES.items():
                    hit = classes == value
                    totals[name]["pixels"] += int(np.count_nonzero(hit))
                    totals[name]["area_km2"] += float(np.sum(areas, where=hit))
    return totals


def frequency_rasters(masks: list[Path], profile: dict[str, Any], frequency: Path,
                      observations: Path, block: int = BLOCK) -> dict[str, Any]:
    """Per pixel over the date masks: the percentage of valid observations that saw water
    (uint8 0-100 rounded half up, 255 where none was valid: a byte layer like every other; the
    exact fraction is wet / valid of the counts) and the counts of valid and wet observations
    (uint16, 2 bands). One block of each date at a time: memory does not grow with the
    dates."""
    import rasterio

    from aquamask.processes.publishers.mapserver import FREQUENCY_CLASSES

    crs_wkt = profile["crs"].to_wkt()
    stats = {"valid_area_km2": 0.0, "ever_wet_area_km2": 0.0, "never_wet_area_km2": 0.0,
             "no_observation_area_km2": 0.0, "wet_weighted": 0.0, "max_observations": 0,
             "min_observations": None,
             "classes": [{"label": label, "above_percent": low, "up_to_percent": high,
                          "area_km2": 0.0}
                         for label, low, high, _ in FREQUENCY_CLASSES]}
    with ExitStack() as stack:
        freq_out = stack.enter_context(rasterio.open(
            frequency, "w", **_gtiff(profile, "uint8", FREQUENCY_NODATA)))
        freq_out.update_tags(**{STYLE_TAG: "frequency"})
        freq_out.set_band_description(1, "water frequency (%)")
        obs_out = stack.enter_context(rasterio.open(
            observations, "w", **_gtiff(profile, "uint16", None, count=2)))
        obs_out.set_band_description(1, "valid observations")
        obs_out.set_band_description(2, "water observations")
        for window in _windows(profile["width"], profile["height"], block):
            shape = (int(window.height), int(window.width))
            valid = np.zeros(shape, np.uint16)
            wet = np.zeros(shape, np.uint16)
            for path in masks:
                with rasterio.open(path) as src:
                    classes = src.read(1, window=window)
                valid += classes != INVALID
                wet += classes == WATER
            seen = valid > 0
            fraction = np.zeros(shape, np.float64)
            np.divide(wet, valid, out=fraction, where=seen)
            percent = np.floor(fraction * 100.0 + 0.5).astype(np.uint8)
            percent[~seen] = FREQUENCY_NODATA
            freq_out.write(percent, 1, window=window)
            obs_out.write(np.stack([valid, wet]), window=window)
            areas = pixel_areas_km2(profile["transform"], crs_wkt, window)
            stats["valid_area_km2"] += float(np.sum(areas, where=seen))
            stats["ever_wet_area_km2"] += float(np.sum(areas, where=wet > 0))
            stats["never_wet_area_km2"] += float(np.sum(areas, where=seen & (wet == 0)))
            stats["no_observation_area_km2"] += float(np.sum(areas, where=~seen))
            stats["wet_weighted"] += float(np.sum(areas * fraction, where=seen))
            if seen.any():
                stats["max_observations"] = max(stats["max_observations"],
                                                int(valid[seen].max()))
                low = int(valid[seen].min())
                stats["min_observations"] = low if stats["min_observations"] is None \
                    else min(stats["min_observations"], low)
            for entry in stats["classes"]:
                hit = seen & (percent > entry["above_percent"]) & \
                    (percent <= entry["up_to_percent"])
                entry["area_km2"] += float(np.sum(areas, where=hit))
    weighted = stats.pop("wet_weighted")
    stats["mean_frequency"] = weighted / stats["valid_area_km2"] if stats["valid_area_km2"] \
        else None
    return stats


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def write_item(path: Path, item_id: str, profile: dict[str, Any], records: list[dict],
               title: str, properties: dict[str, Any], assets: dict[str, dict[str, Any]]) -> None:
    """A STAC Item of a monitoring product: its time span, statistics and provenance."""
    import pystac
    from shapely.geometry import box, mapping

    from aquamask.processes.products import (PROCESSING_EXTENSION, PROJECTION_EXTENSION,
                                             wgs84_bounds)

    bbox = wgs84_bounds(profile)
    times = sorted(_day(r) for r in records)
    epsg = profile["crs"].to_epsg()
    item = pystac.Item(
        id=item_id, geometry=mapping(box(*bbox)), bbox=list(bbox), datetime=None,
        start_datetime=times[0], end_datetime=times[-1],
        properties={"title": title, "created": dt.datetime.now(dt.timezone.utc).isoformat(),
                    **{f"aquamask:{k}": _rounded(v) for k, v in properties.items()},
                    "aquamask:dates": [public_record(r) for r in records],
                    "processing:software": {"aquamask": __version__},
                    "proj:code": f"EPSG:{epsg}" if epsg else None,
                    "proj:shape": [profile["height"], profile["width"]],
                    "proj:transform": list(profile["transform"])[:6]},
        stac_extensions=[PROCESSING_EXTENSION, PROJECTION_EXTENSION])
    for key, asset in assets.items():
        item.add_asset(key, pystac.Asset(href=f"./{asset['name']}", media_type=COG,
                                         roles=["data"], title=asset["title"]))
    write_atomic(path, json.dumps(item.to_dict(include_self_link=False), indent=2))


def publish_styled(job_id: str, directory: Path, cog: str, profile: dict[str, Any],
                   title: str, settings: Settings, area_km2: float = 0.0,
                   valid_km2: float = 0.0) -> dict[str, Any]:
    """Publish a change or frequency COG under the job's id on the embedded engine (it draws
    their styles; removed by ``publishing.unpublish(job_id)`` like any job's layer)."""
    from pyproj import CRS

    from aquamask.processes import publishing
    from aquamask.processes.products import wgs84_bounds

    crs = CRS.from_user_input(profile["crs"])
    product = Product(id=job_id, directory=directory, mask_cog=directory / cog,
                      stac_item=directory / ITEM_JSON,
                      stats=MaskStats(0, 0, 0, area_km2, valid_km2),
                      bbox_wgs84=wgs84_bounds(profile),
                      crs=f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else crs.to_wkt(),
                      title=title)
    return publishing.publish_embedded(product, settings).as_output()


# -- the processes -------------------------------------------------------------------------------
def _describe_place(query: PlaceQuery) -> str:
    west, south, east, north = query.bbox
    return f"[{west:.4f}, {south:.4f}, {east:.4f}, {north:.4f}]"


def _describe_dates(query: PlaceQuery) -> str:
    return (f"{query.start.date().isoformat() if query.start else '..'} to "
            f"{query.end.date().isoformat() if query.end else '..'}")


def _scaled(progress: ProgressCallback, start: float, end: float) -> ProgressCallback:
    return lambda pct, msg: progress(start + (end - start) * pct / 100.0, msg)


def series_layer(products: list[tuple[dict[str, Any], Product, Any]], settings: Settings,
                 job_id: str) -> dict[str, Any] | None:
    """The time-enabled WMS layer of the job's dates, with a GetMap per date."""
    from aquamask.processes import publishing
    from aquamask.processes.publishers.mapserver import series_name, utc_time

    if not products:
        return None
    _, first, layer = products[0]
    times = [utc_time(p.datetime.isoformat()) for _, p, _ in products]
    name = series_name(job_id)
    engine = "geoserver" if layer.publisher == "geoserver" else "embedded"
    urls = publishing.series_urls(name, list(first.bbox_wgs84), times, engine, settings)
    return {"name": name, "published": layer.publisher, "wms": layer.wms_url,
            "getcapabilities": layer.get_capabilities_url, "dimension": "time",
            "times": times, "getmap": urls[times[-1]], "getmap_by_time": urls}


def run_timeseries(request: MonitoringRequest, settings: Settings, job_id: str,
                   progress: ProgressCallback) -> dict[str, Any]:
    from aquamask.processes import field_validation, publishing
    from aquamask.processes.publishers.mapserver import series_name

    config = MonitoringConfig.from_settings(settings)
    store = settings.results_store
    staging = Staging(store, job_id)
    work = store.work_dir(job_id)
    published: list[str] = []
    try:
        ctx = _context(request, settings, job_id, work, "water-timeseries",
                       staging.path / DATES_DIR, progress)
        (staging.path / DATES_DIR).mkdir()
        plans = find_dates(request, settings, ctx.source, _scaled(progress, 1, 5))
        records = detect_dates(plans, ctx, config, request.min_valid_fraction, progress)
        fail_if_nothing(records)
        rows = [public_record(r) for r in records]
        query = request.query()
        title = (f"Water area over {_describe_place(query)} ({request.method}), "
                 f"{_describe_dates(query)}")
        progress(89, "writing the series, its CSV and its chart")
        write_atomic(staging.path / TIMESERIES_CSV, series_csv(rows))
        timeseries_chart(rows, staging.path / TIMESERIES_PNG, title)
        validation = None
        if request.field:
            field = field_validation.FieldSeries.from_dict(request.field)
            validation = field_validation.validate_series(rows, field,
                                                          request.field_tolerance_days)
            write_atomic(staging.path / VALIDATION_CSV, field_validation.pairs_csv(validation))
            validation_chart(validation, rows, field, staging.path / VALIDATION_PNG)
        for record in records:  # drop the skipped dates' products: nothing to publish
            product = record.get("_product")
            if product is not None and record["status"] != OK:
                shutil.rmtree(product.directory, ignore_errors=True)
                record.pop("_product")
        final = staging.commit()
        progress(93, "publishing the dates as one time-enabled layer")
        products = []
        for record, row in zip(records, rows):
            product = record.get("_product")
            if product is None:
                continue
            moved = replace(product, directory=final / DATES_DIR / product.id,
                            mask_cog=final / DATES_DIR / product.id / product.mask_cog.name,
                            stac_item=final / DATES_DIR / product.id / product.stac_item.name,
                            title=f"Water mask ({request.method}) of {row['date']}")
            published.append(moved.id)
            layer = publishing.publish(moved, settings, background=False,
                                       series=series_name(job_id))
            row["layer"] = layer.name
            products.append((row, moved, layer))
        layer = series_layer(products, settings, job_id)
        if layer is not None:
            for (row, _, _), time in zip(products, layer["times"]):
                row["layer_time"] = time
        usable = [r for r in rows if r["status"] == OK]
        areas = [r["water_area_km2"] for r in usable]
        summary = {"dates": len(rows), "usable": len(usable),
                   "skipped": sum(r["status"] == SKIPPED for r in rows),
                   "failed": sum(r["status"] == FAILED for r in rows),
                   "water_area_km2_min": min(areas) if areas else None,
                   "water_area_km2_max": max(areas) if areas else None,
                   "water_area_km2_mean": round(float(np.mean(areas)), 6) if areas else None}
        base = settings.url
        outputs: dict[str, Any] = {
            "timeseries": rows,
            "summary": summary,
            "method": request.method, "threshold": request.threshold,
            "datetime": query.datetime_text, "bbox": list(query.bbox),
            "max_cloud_cover": request.max_cloud_cover,
            "min_valid_fraction": request.min_valid_fraction,
            "json": link(base, job_id, TIMESERIES_JSON, "the series as JSON"),
            "csv": link(base, job_id, TIMESERIES_CSV, "the series as CSV"),
            "chart": link(base, job_id, TIMESERIES_PNG, "water area over time (PNG)"),
            "layer": layer,
        }
        if validation is not None:
            outputs["field_validation"] = dict(
                validation,
                csv=link(base, job_id, VALIDATION_CSV, "matched pairs (CSV)"),
                chart=link(base, job_id, VALIDATION_PNG, "water area and field values (PNG)"))
        store.put(job_id, TIMESERIES_JSON, json.dumps(
            {k: v for k, v in outputs.items() if k not in ("json",)}, indent=1))
        return outputs
    except BaseException:
        staging.discard()
        for product_id in published:
            try:
                publishing.unpublish(product_id, settings, background=False)
            except Exception:  # noqa: BLE001 - the job's failure is what is reported
                LOGGER.exception("%s: could not unpublish after a failure", product_id)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_frequency(request: MonitoringRequest, settings: Settings, job_id: str,
                  progress: ProgressCallback) -> dict[str, Any]:
    config = MonitoringConfig.from_settings(settings)
    store = settings.results_store
    staging = Staging(store, job_id)
    work = store.work_dir(job_id)
    try:
        ctx = _context(request, settings, job_id, work, "water-frequency", None, progress)
        plans = find_dates(request, settings, ctx.source, _scaled(progress, 1, 5))
        records = detect_dates(plans, ctx, config, request.min_valid_fraction, progress,
                               end=80.0)
        fail_if_nothing(records)
        used = [r for r in records if r["status"] == OK]
        if not used:
            from aquamask.processes.errors import NoScene

            raise NoScene(f"none of the {len(records)} date(s) over "
                          f"{_describe_place(request.query())} is usable "
                          "(see max_cloud_cover and min_valid_fraction): no frequency")
        progress(82, f"counting water in {len(used)} observation(s), block by block")
        profile = ctx.grid.profile()
        frequency_gtiff, observations_gtiff = work / "frequency.tif", work / "observations.tif"
        stats = frequency_rasters([r["_mask"] for r in used], profile, frequency_gtiff,
                                  observations_gtiff)
        progress(92, "writing the cloud-optimized GeoTIFFs")
        to_cog(frequency_gtiff, staging.path / FREQUENCY_TIF, FREQUENCY_NODATA, "nearest")
        to_cog(observations_gtiff, staging.path / OBSERVATIONS_TIF, None, "nearest")
        rows = [public_record(r) for r in records]
        query = request.query()
        write_item(staging.path / ITEM_JSON, job_id, profile, used,
                   f"Water frequency over {_describe_place(query)}",
                   {"frequency": stats, "parameters": request.parameters()},
                   {"frequency": {"name": FREQUENCY_TIF,
                                  "title": "water frequency: percent of the valid "
                                           "observations, 255 none valid"},
                    "observations": {"name": OBSERVATIONS_TIF,
                                     "title": "valid observations (band 1), water "
                                              "observations (band 2)"}})
        final = staging.commit()
        progress(96, "publishing the frequency layer")
        layer = publish_styled(job_id, final, FREQUENCY_TIF, profile,
                               f"Water frequency {query.datetime_text}", settings,
                               stats["ever_wet_area_km2"], stats["valid_area_km2"])
        base = settings.url
        return {
            "frequency": link(base, job_id, FREQUENCY_TIF,
                              "water frequency: uint8 percent of the valid observations that "
                              "saw water, 255 where none was valid"),
            "observations": link(base, job_id, OBSERVATIONS_TIF,
                                 "uint16: valid observations (band 1), water observations "
                                 "(band 2)"),
            "stac_item": link(base, job_id, ITEM_JSON, "STAC Item with provenance"),
            "statistics": _rounded(stats),
            "observations_used": len(used),
            "dates": rows,
            "method": request.method, "threshold": request.threshold,
            "datetime": query.datetime_text, "bbox": list(query.bbox),
            "layer": layer,
        }
    except BaseException:
        staging.discard()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_change(request: MonitoringRequest, settings: Settings, job_id: str,
               progress: ProgressCallback) -> dict[str, Any]:
    """The water of the best date of each side (as water-detection picks one date in an
    interval: full coverage, least cloud), then the change classes, block by block."""
    from aquamask.processes.sources.compose import no_scene, select

    config = MonitoringConfig.from_settings(settings)
    store = settings.results_store
    staging = Staging(store, job_id)
    work = store.work_dir(job_id)
    try:
        ctx = _context(request, settings, job_id, work, "water-change", None, progress)
        plans = []
        for n, side in enumerate(("before", "after")):
            query = request.query(side)
            progress(2 + 2 * n, f"searching {ctx.source.name} for the {side} date: "
                                f"{query.describe()}")
            items = ctx.source.search(query)
            chosen, coverage = select(items, query)
            if not chosen:
                raise no_scene(ctx.source.name, query, len(items))
            plan = plan_dates(chosen, query, 100.0)[0]
            plans.append(plan)
        if plans[0].day == plans[1].day:
            raise InvalidInput(f"before and after chose the same date ({plans[0].day}); give "
                               "two different dates or intervals")
        finished = []

        def on_done(i: int, record: dict[str, Any]) -> None:
            finished.append(i)
            progress(10 + 35 * len(finished), f"{len(finished)} of 2 dates done "
                                               f"({('before', 'after')[i]}: {record['status']})")

        progress(8, f"detecting water on {plans[0].day} and {plans[1].day}")
        records = run_parallel([lambda p=p: detect_date(p, ctx) for p in plans], config,
                               on_done)
        for side, record in zip(("before", "after"), records):
            if record["status"] == FAILED:
                raise RuntimeError(f"the {side} date {record['date']} failed: "
                                   f"{record['error']}")
        progress(82, "classifying the change block by block")
        profile = ctx.grid.profile()
        masks = [work / p.stamp / "mask.tif" for p in plans]
        change_gtiff = work / "change.tif"
        totals = change_raster(masks[0], masks[1], change_gtiff)
        to_cog(change_gtiff, staging.path / CHANGE_TIF, INVALID, "mode")
        shutil.copyfile(masks[0], staging.path / BEFORE_TIF)
        shutil.copyfile(masks[1], staging.path / AFTER_TIF)
        rows = [public_record(r) for r in records]
        areas = {name: round(v["area_km2"], 6) for name, v in totals.items()}
        pixels = {name: v["pixels"] for name, v in totals.items()}
        net = areas["gained"] - areas["lost"]
        query = request.query("before")
        write_item(staging.path / ITEM_JSON, job_id, profile, records,
                   f"Water change over {_describe_place(query)}",
                   {"change_area_km2": areas, "change_pixels": pixels,
                    "parameters": request.parameters()},
                   {"change": {"name": CHANGE_TIF, "title": "0 dry, 1 gained, 2 lost, "
                                                            "3 permanent, 255 no data"},
                    "before": {"name": BEFORE_TIF, "title": "water mask, before"},
                    "after": {"name": AFTER_TIF, "title": "water mask, after"}})
        final = staging.commit()
        progress(95, "publishing the change layer")
        layer = publish_styled(job_id, final, CHANGE_TIF, profile,
                               f"Water change {rows[0]['date']} to {rows[1]['date']}",
                               settings, areas["gained"] + areas["permanent"],
                               sum(v for k, v in areas.items() if k != "invalid"))
        base = settings.url
        return {
            "change": link(base, job_id, CHANGE_TIF,
                           "change classes: 0 dry, 1 gained, 2 lost, 3 permanent, 255 no data"),
            "before_mask": link(base, job_id, BEFORE_TIF, "water mask of the before date"),
            "after_mask": link(base, job_id, AFTER_TIF, "water mask of the after date"),
            "stac_item": link(base, job_id, ITEM_JSON, "STAC Item with provenance"),
            "area_km2": areas,
            "pixels": pixels,
            "net_change_km2": round(net, 6),
            "before": rows[0], "after": rows[1],
            "method": request.method, "threshold": request.threshold,
            "bbox": list(query.bbox),
            "layer": layer,
        }
    except BaseException:
        staging.discard()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


class MonitoringProcessor:
    """The shared body of the three monitoring processors (pygeoapi BaseProcessor mixin):
    ``validate`` before a job exists, ``run`` in the job's worker. Subclasses set ``parse``
    (inputs -> MonitoringRequest) and ``runner`` (one of the run_* functions)."""

    parse: Callable[[dict[str, Any], Settings], MonitoringRequest]
    runner: Callable[..., dict[str, Any]]

    def validate(self, data: dict[str, Any]) -> None:
        from aquamask.processes.sources import place_source

        request = type(self).parse(data, self.settings)
        place_source(self.settings, request.source).check()

    @instrument_job
    def run(self, data: dict[str, Any], job_id: str,
            progress: ProgressCallback) -> dict[str, Any]:
        request = type(self).parse(data, self.settings)
        return type(self).runner(request, self.settings, job_id, progress)

    def execute(self, data: dict[str, Any], outputs=None):
        return "application/json", self.run(data, self.job_id, lambda pct, msg: None)
