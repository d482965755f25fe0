"""The date of a result is when its image was acquired, from the file's metadata, its name or
the request's ``datetime``; unknown when none says, never the processing time (issue #18,
item 4)."""
from __future__ import annotations

import datetime as dt
import json
import shutil

import pytest
import rasterio

from aquamask.processes.errors import InvalidInput
from aquamask.processes.ogc.water_detection import parse_inputs
from aquamask.processes.pipeline.flow import run_detection
from aquamask.processes.pipeline.sources.acquired import acquisition_time
from aquamask.processes.settings import Settings
from aquamask.processes.storage.jobstore import JobStore
from aquamask.processes.types import no_progress

UTC = dt.timezone.utc


@pytest.mark.parametrize("tags,name,expected", [
    ({"datetime": "2019-09-15T10:56:19Z"}, "scene", dt.datetime(2019, 9, 15, 10, 56, 19,
                                                              tzinfo=UTC)),
    ({"SENSING_TIME": "2019-09-15T10:56:19.024Z"}, "x", dt.datetime(2019, 9, 15, 10, 56, 19,
                                                                   24000, tzinfo=UTC)),
    # GDAL's IMAGERY domain, and a SAFE's product start
    ({"ACQUISITIONDATETIME": "2019-09-15T10:56:19.000Z"}, "x",
     dt.datetime(2019, 9, 15, 10, 56, 19, tzinfo=UTC)),
    ({"PRODUCT_START_TIME": "2019-09-15T10:56:19.024Z"}, "x",
     dt.datetime(2019, 9, 15, 10, 56, 19, 24000, tzinfo=UTC)),
    ({}, "S2B_MSIL1C_20190915T105619_N0208_R051_T30SXH",
     dt.datetime(2019, 9, 15, 10, 56, 19, tzinfo=UTC)),
    ({}, "flood_2019-09-15", dt.datetime(2019, 9, 15, tzinfo=UTC)),
    # the file's own time says when it was written, and a 7-digit id is no date
    ({"TIFFTAG_DATETIME": "2024:01:02 03:04:05"}, "Spain_7370579_S2Hand", None),
])
def test_the_file_says_when_it_was_acquired(tags, name, expected):
    assert acquisition_time(tags, name) == expected


@pytest.fixture
def settings(tmp_path) -> Settings:
    settings = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path)})
    settings.ensure_dirs()
    JobStore(settings.database_url)
    return settings


def detect(settings: Settings, inputs: dict, job: str):
    product = run_detection(parse_inputs(inputs, settings), settings, job, no_progress)
    return product, json.loads(product.stac_item.read_text())


def test_an_undated_image_has_an_unknown_date_not_the_processing_time(settings, demo_scene):
    shutil.copy(demo_scene, settings.data_root / "scene.tif")
    before = dt.datetime.now(UTC)
    product, item = detect(settings, {"image": {"href": "scene.tif"}, "method": "ndwi"}, "u")
    properties = item["properties"]
    assert product.datetime is None
    assert properties["datetime"] is None and properties["aquamask:acquired"] is None
    # STAC wants a time: the interval that surely holds it, not a made-up instant
    assert properties["start_datetime"].startswith("1972-07-23")
    assert dt.datetime.fromisoformat(properties["end_datetime"]) >= before
    assert "acquisition date unknown" in properties["title"] and "acquired" not in product.title


def test_the_date_comes_from_the_file_or_from_the_request(settings, demo_scene):
    tagged = settings.data_root / "tagged.tif"
    shutil.copy(demo_scene, tagged)
    with rasterio.open(tagged, "r+") as dst:
        dst.update_tags(ACQUISITION_DATE="2019-09-15T10:56:19Z")
    product, item = detect(settings, {"image": {"href": "tagged.tif"}, "method": "ndwi"}, "t")
    assert item["properties"]["datetime"] == "2019-09-15T10:56:19Z"
    assert item["properties"]["aquamask:acquired"] == "2019-09-15T10:56:19+00:00"
    assert product.datetime == dt.datetime(2019, 9, 15, 10, 56, 19, tzinfo=UTC)
    assert "acquired 2019-09-15" in product.title
    shutil.copy(demo_scene, settings.data_root / "plain.tif")
    product, item = detect(settings, {"image": {"href": "plain.tif"}, "method": "ndwi",
                                      "datetime": "2019-09-16"}, "r")
    assert item["properties"]["datetime"] == "2019-09-16T00:00:00Z"


def test_an_images_datetime_is_one_instant(settings):
    with pytest.raises(InvalidInput, match="not an interval"):
        parse_inputs({"image": {"href": "x.tif"}, "datetime": "2019-09-01/2019-09-30"}, settings)
    assert parse_inputs({"image": {"href": "x.tif"}, "datetime": "2019-09-15T10:56:19+02:00"},
                        settings).acquired == "2019-09-15T08:56:19Z"
