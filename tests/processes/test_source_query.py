"""Place and date inputs of water-detection, checked before any job exists (no network)."""
from __future__ import annotations

import datetime as dt

import pytest

from aquamask.processes.errors import InvalidInput, MissingInput, TooLarge
from aquamask.processes.ogc.water_detection import parse_inputs
from aquamask.processes.pipeline.sources import scl
from aquamask.processes.pipeline.sources.grid import grid_for, utm_crs
from aquamask.processes.pipeline.sources.query import area_km2, parse_bbox, parse_datetime
from aquamask.processes.settings import Settings

UTC = dt.timezone.utc
BBOX = [-1.2, 38.0, -1.1, 38.1]


@pytest.fixture
def settings(tmp_path):
    return Settings.load(environ={"AQUAMASK__HOME": str(tmp_path)})


def test_a_bbox_and_a_date_make_a_place_request(settings):
    request = parse_inputs({"bbox": BBOX, "datetime": "2023-08-01", "method": "ndwi"},
                           settings)
    assert request.href is None and request.source == "local"
    query = request.query()
    assert query.bbox == pytest.approx(tuple(BBOX))
    assert (query.start, query.end) == (dt.datetime(2023, 8, 1, tzinfo=UTC),
                                        dt.datetime(2023, 8, 1, 23, 59, 59, 999999, tzinfo=UTC))
    assert query.max_cloud_cover == 30  # sources.max_cloud_cover
    assert request.parameters()["place"]["datetime"] == \
        "2023-08-01T00:00:00Z/2023-08-01T23:59:59.999999Z"


def test_a_geojson_polygon_and_the_options(settings):
    polygon = {"type": "Feature", "properties": {}, "geometry": {
        "type": "Polygon", "coordinates": [[[-1.2, 38.0], [-1.1, 38.0], [-1.15, 38.1],
                                            [-1.2, 38.0]]]}}
    request = parse_inputs({"geometry": polygon, "datetime": "2023-07-01/..",
                            "max_cloud_cover": 5, "source": "earth_search_c1",
                            "collection": "sentinel-2-c1-l2a"}, settings)
    query = request.query()
    assert not query.is_bbox and query.geometry.geom_type == "Polygon"
    assert query.end is None and query.max_cloud_cover == 5
    assert (request.source, query.collection) == ("earth_search_c1", "sentinel-2-c1-l2a")


def test_bbox_crs_follows_its_axis_order(settings):
    lonlat = parse_bbox(BBOX)
    latlon = parse_bbox({"bbox": [38.0, -1.2, 38.1, -1.1],
                         "crs": "http://www.opengis.net/def/crs/EPSG/0/4326"})
    assert latlon.bounds == pytest.approx(lonlat.bounds)
    utm = parse_bbox([670000, 4210000, 675000, 4215000], "EPSG:32630")
    west, south, east, north = utm.bounds
    assert -1.1 < west < east < -1.0 and 38.0 < south < north < 38.1


@pytest.mark.parametrize("inputs,error,match", [
    ({}, MissingInput, "'image' is required"),
    ({"image": {"href": "a.tif"}, "bbox": BBOX, "datetime": "2023-08-01"}, InvalidInput,
     "either 'image' or a place"),
    ({"image": {"href": "a.tif"}, "max_cloud_cover": 20}, InvalidInput,
     "only go with a place"),
    ({"bbox": BBOX, "geometry": {"type": "Polygon", "coordinates": []},
      "datetime": "2023-08-01"}, InvalidInput, "not both"),
    ({"bbox": BBOX}, MissingInput, "'datetime' is required"),
    ({"bbox": BBOX, "datetime": "2023-08-01", "bands": {"B02": 1}}, InvalidInput,
     "bands applies to an image"),
    ({"bbox": [-1.1, 38.0, -1.2, 38.1], "datetime": "2023-08-01"}, InvalidInput,
     "antimeridian"),
    ({"bbox": [-1.2, 38.1, -1.1, 38.0], "datetime": "2023-08-01"}, InvalidInput,
     "minimum must be below"),
    ({"bbox": [-1.2, 95.0, -1.1, 96.0], "datetime": "2023-08-01"}, InvalidInput, "latitudes"),
    ({"bbox": [-1.2, 38.0, -1.1], "datetime": "2023-08-01"}, InvalidInput, "4 numbers"),
    ({"bbox": BBOX, "bbox-crs": "EPSG:999999", "datetime": "2023-08-01"}, InvalidInput,
     "coordinate reference system"),
    ({"geometry": {"type": "Point", "coordinates": [0, 0]}, "datetime": "2023-08-01"},
     InvalidInput, "Polygon or MultiPolygon"),
    ({"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1],
                                                       [0, 0]]]},
      "datetime": "2023-08-01"}, InvalidInput, "not valid: Self-intersection"),
    ({"bbox": BBOX, "datetime": "01-08-2023"}, InvalidInput, "RFC 3339"),
    ({"bbox": BBOX, "datetime": "2023-08-01T10:00:00"}, InvalidInput, "RFC 3339"),
    ({"bbox": BBOX, "datetime": "2023-02-30"}, InvalidInput, "not a valid date"),
    ({"bbox": BBOX, "datetime": "2023-08-10/2023-08-01"}, InvalidInput, "starts .* after"),
    ({"bbox": BBOX, "datetime": "../.."}, InvalidInput, "at least one end"),
    ({"bbox": BBOX, "datetime": "2023-08-01", "max_cloud_cover": 120}, InvalidInput,
     "between 0 and 100"),
    ({"bbox": BBOX, "datetime": "2023-08-01", "source": "nowhere"}, InvalidInput,
     "source must be one of local, earth_search"),
    ({"bbox": BBOX, "datetime": "2023-08-01", "collection": "a b"}, InvalidInput,
     "collection id"),
    ({"bbox": [-2.0, 37.0, 0.0, 39.0], "datetime": "2023-08-01"}, TooLarge,
     "max_area_km2"),
])
def test_bad_places_and_dates_are_4xx_before_a_job(settings, inputs, error, match):
    with pytest.raises(error, match=match) as info:
        parse_inputs(inputs, settings)
    assert 400 <= int(info.value.http_status_code) < 500


def test_rfc3339_instants_and_intervals():
    start, end = parse_datetime("2023-08-01T12:30:00+02:00")
    assert start == end == dt.datetime(2023, 8, 1, 10, 30, tzinfo=UTC)
    start, end = parse_datetime("2023-08-01T10:00:00.5Z/2023-08-03")
    assert start == dt.datetime(2023, 8, 1, 10, 0, 0, 500000, tzinfo=UTC)
    assert end.date() == dt.date(2023, 8, 3) and end.hour == 23
    assert parse_datetime("../2023-08-03")[0] is None


def test_area_limit_is_a_setting(tmp_path):
    small = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path),
                                   "AQUAMASK__LIMITS__MAX_AREA_KM2": "10"})
    assert area_km2(parse_bbox(BBOX)) == pytest.approx(97.4, rel=0.01)
    with pytest.raises(TooLarge, match="97.4 km²; this server accepts places of at most 10"):
        parse_inputs({"bbox": BBOX, "datetime": "2023-08-01"}, small)


def test_grid_is_the_utm_zone_of_the_centre_at_10_m():
    assert utm_crs(-0.5, 38).to_epsg() == 32630 and utm_crs(0.5, -10).to_epsg() == 32731
    grid = grid_for(parse_bbox(BBOX))
    assert grid.crs.to_epsg() == 32630 and grid.transform.a == 10 and grid.transform.e == -10
    assert grid.transform.c % 10 == 0 and grid.transform.f % 10 == 0
    assert 880 < grid.width < 910 and 1100 < grid.height < 1130


def test_scl_classes():
    import numpy as np
    classes = np.arange(12)
    assert scl.invalid(classes).tolist() == [True, True, False, True, False, False, False,
                                             False, True, True, True, False]
    assert scl.rank(np.array([4, 5, 6])).tolist() == [3, 3, 3]
    assert scl.rank(np.array([2, 7, 11])).tolist() == [2, 2, 2]
