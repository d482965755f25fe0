"""The files of a monitoring result: written under a staging folder of the results store and
committed at once (a folder renamed into ``{results}/{job_id}``; an object store uploaded, the
STAC items last); the series' CSV; the STAC Item of a change or frequency raster; and that
raster published in its style on the embedded engine (which draws the monitoring styles)."""
from __future__ import annotations

import csv
import datetime as dt
import io
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from pyproj import CRS

from aquamask.processes.monitoring.dates import public_record, record_time
from aquamask.processes.pipeline.products import cog_asset, new_item, wgs84_bounds, write_item
from aquamask.processes.publishing import service as publishing
from aquamask.processes.settings import Settings
from aquamask.processes.storage.results import ResultStore, results_store
from aquamask.processes.types import MaskStats, Product

TIMESERIES_JSON, TIMESERIES_CSV, TIMESERIES_PNG = ("timeseries.json", "timeseries.csv",
                                                   "timeseries.png")
VALIDATION_CSV, VALIDATION_PNG = "field_validation.csv", "field_validation.png"
CHANGE_TIF, BEFORE_TIF, AFTER_TIF = "change.tif", "before.tif", "after.tif"
FREQUENCY_TIF, OBSERVATIONS_TIF = "frequency.tif", "observations.tif"
ITEM_JSON = "item.json"
DATES_DIR = "dates"
Links = Callable[[str, str], dict[str, str]]
"""(file name, title) -> the output's link to that result file; the processor makes it (it knows
the server's URLs and each file's media type)."""
CSV_COLUMNS = ("date", "datetime", "status", "water_area_km2", "valid_fraction",
               "water_fraction", "valid_area_km2", "cloud_cover", "coverage", "method",
               "source_ids", "reason")


class Staging:
    """A job's results written into the results store's staging folder, committed at once."""

    def __init__(self, store: ResultStore, job_id: str) -> None:
        self.store = store
        self.job_id = job_id
        self.path = self.store.staging(job_id)

    def commit(self) -> Path:
        """The committed result's folder, as GDAL reads it (``ResultStore.gdal_path``)."""
        self.store.commit(self.job_id, self.path)
        return Path(self.store.gdal_path(self.job_id))

    def discard(self) -> None:
        self.store.discard(self.path)


@contextmanager
def job_files(settings: Settings, job_id: str) -> Iterator[tuple[Staging, Path]]:
    """A job's staging folder (discarded when the job fails) and scratch folder (removed
    when it ends)."""
    store = results_store(settings)
    staging = Staging(store, job_id)
    work = store.work_dir(job_id)
    try:
        yield staging, work
    except BaseException:
        staging.discard()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


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


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def write_raster_item(path: Path, item_id: str, profile: dict[str, Any], records: list[dict],
                      title: str, properties: dict[str, Any],
                      assets: dict[str, dict[str, Any]]) -> None:
    """A STAC Item of a monitoring raster: its time span, statistics and provenance."""
    times = sorted(record_time(r) for r in records)
    item = new_item(item_id, profile, {
        "title": title, "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        **{f"aquamask:{k}": rounded(v) for k, v in properties.items()},
        "aquamask:dates": [public_record(r) for r in records]},
        start=times[0], end=times[-1])
    for key, asset in assets.items():
        item.add_asset(key, cog_asset(asset["name"], asset["title"]))
    write_item(item, path)


def publish_styled(job_id: str, directory: Path, cog: str, profile: dict[str, Any],
                   title: str, settings: Settings, area_km2: float = 0.0,
                   valid_km2: float = 0.0) -> dict[str, Any]:
    """Publish a change or frequency COG under the job's id on the embedded engine (it draws
    their styles; removed by unpublishing the job like any job's layer)."""
    crs = CRS.from_user_input(profile["crs"])
    product = Product(id=job_id, directory=directory, mask_cog=directory / cog,
                      stac_item=directory / ITEM_JSON,
                      stats=MaskStats(0, 0, 0, area_km2, valid_km2),
                      bbox_wgs84=wgs84_bounds(profile),
                      crs=f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else crs.to_wkt(),
                      title=title)
    return publishing.publish_embedded(product, settings).as_output()
