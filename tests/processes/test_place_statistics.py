"""A place's statistics cover exactly the place: its grid is the UTM envelope of a lon/lat box
or polygon, and what lies outside the place is no data, counted in no area and no fraction
(issue #18, item 2). Scenes of open water everywhere (tests/support/water_scenes.py), so the
water area of a place is the place's own area on the ellipsoid."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio

from aquamask.processes.pipeline.flow import DetectionRequest, run_detection
from aquamask.processes.pipeline.sources.query import PlaceQuery, parse_bbox, parse_geometry
from aquamask.processes.settings import Settings
from aquamask.processes.storage.jobstore import JobStore
from aquamask.processes.types import no_progress
from tests.support.water_scenes import ellipsoidal_km2, inner_box, uniform_scene

DAY = "2024-07-01"


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    home = tmp_path_factory.mktemp("place-stats")
    uniform_scene(home / "scenes" / f"lake_{DAY}.tif")
    settings = Settings.load(environ={"AQUAMASK__HOME": str(home)})
    settings.ensure_dirs()
    JobStore(settings.database_url)
    return settings


def detect_place(settings: Settings, geometry, job: str):
    query = PlaceQuery(geometry=geometry, start=None, end=None).as_dict()
    query["datetime"] = DAY
    request = DetectionRequest(method="ndwi", place=query, source="local", probability=False)
    return run_detection(request, settings, job, no_progress)


def test_a_box_counts_the_box_not_its_utm_envelope(settings):
    bbox = inner_box()
    west, south, east, north = bbox
    product = detect_place(settings, parse_bbox(bbox), "box")
    expected = ellipsoidal_km2({"type": "Polygon", "coordinates": [[
        [west, south], [east, south], [east, north], [west, north], [west, south]]]})
    stats = product.stats
    assert stats.water_area_km2 == pytest.approx(expected, rel=0.005)
    assert stats.valid_area_km2 == pytest.approx(expected, rel=0.005)
    assert stats.valid_fraction == 1.0 and stats.water_fraction == 1.0
    with rasterio.open(product.mask_cog) as src:
        classes = src.read(1)
    # the envelope's corners, outside the box, are no data in the mask too
    assert classes[0, 0] == classes[-1, -1] == 255
    assert stats.total_pixels == np.count_nonzero(classes == 1) < classes.size


def test_a_polygon_counts_the_polygon_and_its_outside_lowers_no_fraction(settings):
    west, south, east, north = inner_box()
    triangle = {"type": "Polygon", "coordinates": [[
        [west, south], [east, south], [(west + east) / 2, north], [west, south]]]}
    product = detect_place(settings, parse_geometry(triangle), "triangle")
    stats = product.stats
    assert stats.valid_fraction == 1.0, "the grid outside the polygon is not invalid data"
    assert stats.water_area_km2 == pytest.approx(ellipsoidal_km2(triangle), rel=0.005)
