"""The dates of a place: found once (one search over the interval), grouped by UTC day, each
day's scenes chosen as water-detection chooses them for one date, then each usable date detected
on its own (``flow.detect_product``), in parallel. A date that fails is reported with its error
and the others stand; every record is sorted by date, so a request gives the same numbers."""
from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from aquamask.processes.errors import AquamaskError, Cancelled, TooLarge
from aquamask.processes.monitoring.parallel import run_parallel
from aquamask.processes.monitoring.request import MonitoringRequest
from aquamask.processes.pipeline import methods
from aquamask.processes.pipeline.detection import detect
from aquamask.processes.pipeline.flow import detect_product
from aquamask.processes.pipeline.products import write_cogs
from aquamask.processes.pipeline.sources import PlaceSource, place_source
from aquamask.processes.pipeline.sources.bands import SourceItem
from aquamask.processes.pipeline.sources.compose import footprint, no_scene, select
from aquamask.processes.pipeline.sources.grid import Grid, PlaceMask, grid_for, place_mask
from aquamask.processes.pipeline.sources.query import PlaceQuery, iso
from aquamask.processes.publishing.names import derived_id
from aquamask.processes.settings import Settings
from aquamask.processes.types import ProgressCallback

LOGGER = logging.getLogger(__name__)

OK, SKIPPED, FAILED = "ok", "skipped", "failed"


@dataclass
class DatePlan:
    """One acquisition day over the place: the scenes to read (least cloudy first)."""

    day: dt.date
    acquired: dt.datetime
    items: list[SourceItem]
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


def plan_dates(items: list[SourceItem], query: PlaceQuery,
               max_cloud_cover: float) -> list[DatePlan]:
    """The found scenes grouped by UTC day, each day's scenes chosen as water-detection chooses
    them for one date; days clouder than ``max_cloud_cover`` are planned as skipped."""
    by_day: dict[dt.date, list[SourceItem]] = defaultdict(list)
    for item in items:
        by_day[item.datetime.astimezone(dt.timezone.utc).date()].append(item)
    everything = replace(query, max_cloud_cover=100.0)
    plans = []
    for day in sorted(by_day):
        chosen, coverage = select(by_day[day], everything)
        if not chosen:
            continue  # no scene of the day reaches the place
        parts = [footprint(it, query.geometry).intersection(query.geometry).area
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


def find_dates(request: MonitoringRequest, settings: Settings, source: PlaceSource,
               progress: ProgressCallback) -> list[DatePlan]:
    config = settings.monitoring
    query = request.query()  # every cloud cover: a cloudier date is planned as skipped
    asked = replace(query, max_cloud_cover=request.max_cloud_cover)  # what messages repeat
    progress(1, f"searching {source.name} for {asked.describe()}")
    items = source.search(query, limit=config.max_scenes)
    plans = plan_dates(items, query, request.max_cloud_cover)
    if not plans:
        raise no_scene(source.name, asked, len(items))
    todo = [p for p in plans if p.skip is None]
    if len(todo) > config.max_dates:
        raise TooLarge(f"{len(todo)} dates match the place and the dates; this server "
                       f"processes at most {config.max_dates} in one request "
                       "(monitoring.max_dates): shorten the interval or lower max_cloud_cover")
    return plans


def best_date(source: PlaceSource, query: PlaceQuery) -> DatePlan:
    """The one date water-detection would read for ``query`` (full coverage, least cloud)."""
    chosen, _ = source.choose(query)
    return plan_dates(chosen, query, 100.0)[0]


@dataclass
class DateContext:
    """What every date's detection shares (read-only in the worker threads)."""

    source: PlaceSource
    grid: Grid
    place: PlaceMask  # the place's pixels on the grid: change and frequency count only them
    query: PlaceQuery
    method: str
    threshold: float
    model: Any
    workdir: Path
    parameters: dict[str, Any]
    products_dir: Path | None = None  # write each date's product (COG + STAC item) here
    job_id: str = ""


def date_context(request: MonitoringRequest, settings: Settings, job_id: str, workdir: Path,
                 process: str, products_dir: Path | None, progress: ProgressCallback
                 ) -> DateContext:
    query = request.query()
    if methods.get(request.method).needs_model:
        progress(3, "loading the water model")
    parameters = {"process": process, "method": request.method,
                  "threshold": request.threshold, "place": request.place,
                  "source": request.source, "max_cloud_cover": request.max_cloud_cover,
                  "min_valid_fraction": request.min_valid_fraction, "job": job_id}
    grid = grid_for(query.geometry)
    return DateContext(source=place_source(settings, request.source), grid=grid,
                       place=place_mask(query.geometry, grid), query=query,
                       method=request.method,
                       threshold=request.threshold,
                       model=methods.model_for(request.method, settings), workdir=workdir,
                       parameters=parameters, products_dir=products_dir, job_id=job_id)


def detect_date(plan: DatePlan, ctx: DateContext) -> dict[str, Any]:
    """Detect water on one date: its record with the statistics, the mask's path and (with
    ``products_dir``) its product. Any error is caught and reported as the date's failure."""
    record = plan.record()
    work = ctx.workdir / plan.stamp
    started = dt.datetime.now(dt.timezone.utc)
    try:
        scene = ctx.source.open(plan.items, ctx.grid, ctx.query)
        try:
            if ctx.products_dir is not None:
                mask, product = detect_product(
                    scene, ctx.method, ctx.threshold, ctx.model, work,
                    derived_id(ctx.job_id, f"t{plan.stamp}"), ctx.parameters,
                    ctx.products_dir, started, with_probability=False)
                record["_product"] = product
            else:
                mask = detect(scene, ctx.method, ctx.threshold, work, model=ctx.model,
                              with_probability=False)
                write_cogs(mask, work)  # a compressed mask.tif beside the classes
                record["_mask"] = work / "mask.tif"
            stats = mask.stats
            record.update(status=OK, water_area_km2=stats.water_area_km2,
                          valid_area_km2=stats.valid_area_km2,
                          water_fraction=stats.water_fraction,
                          valid_fraction=stats.valid_fraction, method=ctx.method)
        finally:
            scene.close()
    except Cancelled:  # dismissed (synchronous scheduler: the dates run in the job's thread)
        raise
    except Exception as err:  # noqa: BLE001 - one date's failure is reported, the rest stands
        LOGGER.warning("date %s failed: %s", plan.day, err, exc_info=not isinstance(
            err, AquamaskError))
        message = err.message if isinstance(err, AquamaskError) else f"{type(err).__name__}: {err}"
        record.update(status=FAILED, error=message)
    return record


def detect_dates(plans: list[DatePlan], ctx: DateContext, settings: Settings,
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
    results = run_parallel([partial(detect_date, p, ctx) for p in todo], on_done,
                           scheduler=settings.monitoring.scheduler,
                           workers=settings.monitoring.max_parallel_dates)
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


def record_time(record: dict[str, Any]) -> dt.datetime:
    """The acquisition time of a date's record."""
    return dt.datetime.fromisoformat(record["datetime"].replace("Z", "+00:00"))


def fail_if_nothing(records: list[dict[str, Any]]) -> None:
    """A request all of whose detected dates failed fails, with the first error."""
    detected = [r for r in records if r["status"] != SKIPPED or "valid_fraction" in r]
    failed = [r for r in records if r["status"] == FAILED]
    if failed and len(failed) == len(detected):
        raise RuntimeError(f"every date failed; {failed[0]['date']}: {failed[0]['error']}")
