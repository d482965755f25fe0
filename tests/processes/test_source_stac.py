"""The ``stac`` source against a STAC API stand-in on loopback (real HTTP).

Stand-in (see tests/support/standins.py): a STAC API - Item Search v1.0.0 server (landing page
with conformance classes, POST /search with bbox/intersects/datetime/collections/query), whose
items copy the shape of a recorded Earth Search v1 ``sentinel-2-l2a`` search response, and whose
COG assets are tiles the test builds from the real Sen1Floods11 chip in ../shared/data,
relocated to either side of the 0° meridian (UTM zones 30 and 31). GDAL reads them through
/vsicurl with range requests, as it reads Earth Search's COGs on S3. Schema validation of the
items (pystac/stac-validator) needs the schemas from the network, so the items are only parsed
with pystac here.
"""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pystac
import pytest
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

from aquamask.processes.constants import DETECTION_BANDS, INVALID
from aquamask.processes.errors import NoScene, UpstreamError
from aquamask.processes.pipeline.detection import detect
from aquamask.processes.pipeline.products import write_product
from aquamask.processes.pipeline.sources import place_source
from aquamask.processes.pipeline.sources import scl as scl_classes
from aquamask.processes.pipeline.sources.bands import radiometry
from aquamask.processes.pipeline.sources.grid import grid_for
from aquamask.processes.pipeline.sources.query import PlaceQuery, parse_bbox, parse_datetime
from aquamask.processes.settings import Settings
from tests.support.standins import CONFORMANCE, PLACE, Loopback, StacApi, build_tile, stac_item
from tests.support.water_scenes import pixels_in_box

WHEN = "2023-08-01T10:56:19.024000+00:00"
B03 = DETECTION_BANDS.index("B03")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("stac-world")
    files = root / "files"
    tiles = {
        # zone 30, east edge just past 0°, and zone 31, west edge just before: each holds
        # half of PLACE; baseline 05.09 DN carry the +1000 offset that raster:bands declares
        "west": build_tile(files, "30SYJ", 32630, 0.003, "west", offset_dn=1000),
        "east": build_tile(files, "31SBD", 32631, -0.003, "east", offset_dn=1000, flip=True),
        # the west tile again, with a cloud box (SCL 9), and a cloud-free flipped twin
        "cloudy": build_tile(files, "30SYJc", 32630, 0.003, "west", offset_dn=1000,
                             cloud=(slice(40, 90), slice(120, 200))),
        "twin": build_tile(files, "30SYJt", 32630, 0.003, "west", offset_dn=1000, flip=True),
        # Earth Search after the fix: offset already in the pixels, flag true
        "applied": build_tile(files, "30SYJa", 32630, 0.003, "west", offset_dn=0),
    }
    server = Loopback(files)
    api = StacApi(server)
    yield {"root": root, "server": server, "api": api, "tiles": tiles,
           "files_url": f"{server.url}"}
    server.close()


@pytest.fixture
def stac(world, tmp_path):
    """The stand-in emptied, and settings whose source 'standin' points at it."""
    world["server"].log.clear()
    world["server"].failures.clear()
    world["api"].items = []
    world["api"].searches.clear()

    def settings(cache: bool = True, **source) -> Settings:
        config = {"kind": "stac", "url": world["api"].url, "collection": "sentinel-2-l2a",
                  # no GDAL in-memory caching of the stand-in, so request counts are honest
                  "gdal": {"CPL_VSIL_CURL_NON_CACHED": f"/vsicurl/{world['server'].url}"},
                  **source}
        return Settings.load(environ={
            "AQUAMASK__HOME": str(tmp_path), "AQUAMASK__SOURCES__STANDIN": json.dumps(config),
            "AQUAMASK__SOURCES__HTTP": "{retries: 3, backoff: 0.05, timeout: 10}",
            "AQUAMASK__SOURCES__CACHE__ENABLED": "true" if cache else "false"})

    def item(name, when=WHEN, cloud=5.0, **kwargs):
        return stac_item(world["tiles"][name], world["api"].url, world["files_url"], when,
                         cloud, **kwargs)

    return {**world, "settings": settings, "item": item}


def query(bbox=PLACE, when="2023-07-15/2023-08-10", cloud=20.0, geometry=None):
    start, end = parse_datetime(when)
    return PlaceQuery(geometry=geometry or parse_bbox(list(bbox)), start=start, end=end,
                      max_cloud_cover=cloud, is_bbox=geometry is None)


def warped(tile, band, grid, resampling=Resampling.bilinear):
    """The tile's band warped into ``grid`` independently of the source (reference values)."""
    import rasterio
    with rasterio.open(tile.files[band]) as src:
        out = np.full((grid.height, grid.width), np.nan, np.float32)
        reproject(src.read(1).astype(np.float32), out, src_transform=src.transform,
                  src_crs=src.crs, src_nodata=0, dst_transform=grid.transform,
                  dst_crs=grid.crs, dst_nodata=np.nan, resampling=resampling)
    return out


def same_image(values, reference):
    """Equal up to resampling: GDAL's approximate transformer (WarpedVRT, 1/8 px tolerance)
    and an independent reproject differ by a fraction of a pixel on steep edges."""
    diff = np.abs(values - reference)
    return (np.corrcoef(values, reference)[0, 1] > 0.98 and np.median(diff) < 1.0
            and np.mean(diff < 5) > 0.9)


def read_all(scene):
    return scene.read(Window(0, 0, scene.width, scene.height))


def test_items_are_stac(stac):
    item = pystac.Item.from_dict(stac["item"]("west"))
    assert item.properties["s2:processing_baseline"] == "05.09"
    assert item.assets["swir16"].extra_fields["raster:bands"][0]["offset"] == -0.1


def test_search_by_bbox_dates_and_cloud(stac):
    stac["api"].items = [stac["item"]("west", cloud=5.0), stac["item"]("east", cloud=12.0),
                         stac["item"]("cloudy", when="2023-07-20T10:56:19+00:00", cloud=60.0),
                         stac["item"]("twin", when="2023-09-01T10:56:19+00:00", cloud=1.0),
                         stac["item"]("applied", collection="sentinel-2-c1-l2a")]
    source = place_source(stac["settings"](), "standin")
    found = source.search(query())
    assert sorted(i.id for i in found) == ["30SYJ", "31SBD"]
    sent = stac["api"].searches[-1]
    assert sent["collections"] == ["sentinel-2-l2a"]
    assert sent["bbox"] == list(PLACE)
    assert sent["datetime"] == "2023-07-15T00:00:00Z/2023-08-10T23:59:59.999999Z"
    assert sent["query"] == {"eo:cloud_cover": {"lte": 20.0}}
    first = next(i for i in found if i.id == "30SYJ")
    assert first.product_id.startswith("S2B_MSIL2A_20230801T105619_N0509")
    assert first.href == f"{stac['api'].url}/collections/sentinel-2-l2a/items/30SYJ"
    assert first.cloud_cover == 5.0 and first.datetime == dt.datetime.fromisoformat(WHEN)


def test_cloud_limit_is_applied_when_the_api_ignores_it(stac):
    stac["api"].conformance = [c for c in stac["api"].conformance if "query" not in c]
    try:
        stac["api"].items = [stac["item"]("west", cloud=5.0), stac["item"]("east", cloud=60.0)]
        found = place_source(stac["settings"](), "standin").search(query())
    finally:
        stac["api"].conformance = list(CONFORMANCE)
    assert "query" not in stac["api"].searches[-1]
    assert [i.id for i in found] == ["30SYJ"]


def test_a_polygon_is_searched_with_intersects(stac):
    stac["api"].items = [stac["item"]("west")]
    polygon = {"type": "Polygon", "coordinates": [[[-0.03, 38.09], [-0.01, 38.09],
                                                   [-0.02, 38.11], [-0.03, 38.09]]]}
    from aquamask.processes.pipeline.sources.query import parse_geometry
    found = place_source(stac["settings"](), "standin").search(
        query(geometry=parse_geometry(polygon)))
    assert stac["api"].searches[-1]["intersects"]["type"] == "Polygon"
    assert [i.id for i in found] == ["30SYJ"]


def test_a_place_across_two_utm_zones_reads_both_tiles(stac):
    stac["api"].items = [stac["item"]("west", cloud=5.0), stac["item"]("east", cloud=12.0)]
    scene = place_source(stac["settings"](cache=False), "standin").read(query())
    try:
        grid = grid_for(query().geometry)
        assert scene.profile["crs"] == grid.crs and grid.crs.to_epsg() == 32631  # centre 0°E
        assert scene.width == grid.width and 3500 <= scene.width * 10 <= 3700  # rotated box
        bands = read_all(scene)
    finally:
        scene.close()
    assert scene.source_ids[0].startswith("S2B_MSIL2A_") and len(scene.source_ids) == 2
    assert {s["id"] for s in scene.source_items} == {"30SYJ", "31SBD"}
    west = warped(stac["tiles"]["west"], "B03", grid) - 1000
    east = warped(stac["tiles"]["east"], "B03", grid) - 1000
    place = pixels_in_box(PLACE, grid)  # the box, rotated in UTM: the grid's corners are not
    assert not np.isfinite(bands[:, ~place]).any()
    only_west = np.isfinite(west) & np.isnan(east) & place
    only_east = np.isfinite(east) & np.isnan(west) & place
    assert only_west.sum() > 0.3 * grid.pixels and only_east.sum() > 0.3 * grid.pixels
    valid_w = only_west & np.isfinite(bands[B03])
    valid_e = only_east & np.isfinite(bands[B03])
    assert valid_w.sum() > 0.95 * only_west.sum() and valid_e.sum() > 0.95 * only_east.sum()
    assert same_image(bands[B03][valid_w], west[valid_w])
    assert same_image(bands[B03][valid_e], east[valid_e])
    assert stac["server"].requests(r"/31SBD/B11\.tif$", "GET")


def test_a_small_place_reads_only_the_tiles_under_it(stac):
    """Range requests for the COG blocks under the place, not the whole file."""
    stac["api"].items = [stac["item"]("west")]
    bbox = (-0.045, 38.10, -0.043, 38.102)  # ~170 x 220 m in a 5 x 5 km tile
    scene = place_source(stac["settings"](cache=False), "standin").read(query(bbox=bbox))
    place = pixels_in_box(bbox, grid_for(query(bbox=bbox).geometry))
    assert np.isfinite(read_all(scene)[:, place]).mean() > 0.9
    scene.close()
    for band in ("B02", "B08"):  # 10 m bands: 4 blocks of 256 px each
        gets = stac["server"].requests(rf"/30SYJ/{band}\.tif$", "GET")
        assert gets and all(r.headers.get("Range") for r in gets)
        size = stac["tiles"]["west"].files[band].stat().st_size
        fetched = sum(int(r.headers["Range"].split("-")[1]) - int(
            r.headers["Range"].split("=")[1].split("-")[0]) + 1 for r in gets
            if "," not in r.headers["Range"])
        assert fetched < 0.6 * size, (band, fetched, size)


def test_scl_marks_clouds_invalid_and_the_detector_says_255(stac, tmp_path):
    stac["api"].items = [stac["item"]("cloudy", cloud=8.0)]
    # inside the west tile, in its own zone: the grid is aligned with the tile's pixels
    bbox = (-0.04, 38.085, -0.005, 38.11)
    scene = place_source(stac["settings"](cache=False), "standin").read(query(bbox=bbox))
    grid = grid_for(query(bbox=bbox).geometry)
    assert grid.crs.to_epsg() == 32630
    tile = stac["tiles"]["cloudy"]
    scl = warped(tile, "SCL", grid, Resampling.nearest)
    scl = np.nan_to_num(scl, nan=0).astype(np.uint8)
    bands = read_all(scene)
    outside = ~pixels_in_box(bbox, grid)  # the grid's corners outside the lon/lat box
    expected_invalid = scl_classes.invalid(scl) | np.isnan(warped(tile, "B03", grid)) | outside
    assert (scl == 9).sum() > 1000, "the cloud box lies in the place"
    assert np.array_equal(np.isnan(bands).any(axis=0), expected_invalid)
    # 10 m band on an aligned grid: exactly the values the tile was made from (DN - 1000)
    col0 = round((grid.transform.c - tile.transform.c) / 10)
    row0 = round((tile.transform.f - grid.transform.f) / 10)
    truth = tile.values["B03"][row0:row0 + grid.height, col0:col0 + grid.width]
    ok = ~expected_invalid
    assert np.allclose(bands[B03][ok], truth[ok], atol=0.01)
    mask = detect(scene, "ndwi", 0.5, tmp_path / "work")
    import rasterio
    with rasterio.open(mask.path) as ds:
        classes = ds.read(1)
    assert np.array_equal(classes == INVALID, expected_invalid)
    assert mask.stats.total_pixels == (~outside).sum()
    assert mask.stats.valid_fraction == pytest.approx(
        (~expected_invalid).sum() / (~outside).sum())
    scene.close()


@pytest.mark.parametrize("properties,asset,expected", [
    # Earth Search sentinel-2-l2a today: flag true, raster:bands still says -0.1 -> none again
    ({"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": True},
     {"raster:bands": [{"scale": 0.0001, "offset": -0.1}]}, (1.0, 0.0)),
    # Earth Search sentinel-2-c1-l2a / CDSE: declared, applied
    ({"s2:processing_baseline": "05.10"},
     {"raster:bands": [{"scale": 0.0001, "offset": -0.1}]}, (1.0, -1000.0)),
    # Planetary Computer: no raster:bands, baseline 04.00+ -> ESA's BOA_ADD_OFFSET
    ({"s2:processing_baseline": "04.00"}, {}, (1.0, -1000.0)),
    # before baseline 04.00 there is no offset, whatever a catalogue copied into raster:bands
    ({"s2:processing_baseline": "02.14"},
     {"raster:bands": [{"scale": 0.0001, "offset": -0.1}]}, (1.0, 0.0)),
    ({}, {}, (1.0, 0.0)),
])
def test_scale_and_offset_come_from_metadata(properties, asset, expected):
    scale, offset, rule = radiometry(properties, asset)
    assert (scale, offset) == pytest.approx(expected) and rule


def test_offset_is_applied_once_end_to_end(stac):
    """Same place, same reflectance: DN + 1000 with a declared -0.1, and DN already offset
    (earthsearch:boa_offset_applied) with the same stale -0.1 declared."""
    bbox = (-0.04, 38.085, -0.005, 38.11)
    values = {}
    for name, applied in (("west", False), ("applied", True)):
        stac["api"].items = [stac["item"](name, boa_offset_applied=applied)]
        scene = place_source(stac["settings"](cache=False), "standin").read(query(bbox=bbox))
        values[name] = read_all(scene)
        scene.close()
    assert np.nanmean(values["west"][B03]) > 300  # not 1000 too low, not 1000 too high
    assert np.allclose(values["west"], values["applied"], equal_nan=True, atol=0.01)


def test_same_day_mosaic_takes_each_pixel_from_the_clearest_scene(stac, tmp_path):
    stac["api"].items = [stac["item"]("cloudy", cloud=3.0), stac["item"]("twin", cloud=10.0)]
    bbox = (-0.04, 38.085, -0.005, 38.11)
    scene = place_source(stac["settings"](cache=False), "standin").read(query(bbox=bbox))
    grid = grid_for(query(bbox=bbox).geometry)
    bands = read_all(scene)
    assert [s["id"] for s in scene.source_items] == ["30SYJc", "30SYJt"], "least cloudy first"
    cloud = warped(stac["tiles"]["cloudy"], "SCL", grid, Resampling.nearest) == 9
    assert cloud.sum() > 1000
    twin = warped(stac["tiles"]["twin"], "B03", grid) - 1000
    first = warped(stac["tiles"]["cloudy"], "B03", grid) - 1000
    place = pixels_in_box(bbox, grid)
    filled = cloud & np.isfinite(twin) & place
    assert np.isfinite(bands[B03][filled]).all(), "clouds of the first are filled by the second"
    assert same_image(bands[B03][filled], twin[filled])
    assert not same_image(bands[B03][filled], first[filled])  # the cloud's 6000s are gone
    clear = ~cloud & np.isfinite(first) & np.isfinite(bands[B03]) & place
    assert same_image(bands[B03][clear], first[clear])
    assert not same_image(bands[B03][clear], twin[clear])
    # provenance: the result's STAC item links both source items and names the ESA products
    mask = detect(scene, "ndwi", 0.5, tmp_path / "work")
    product = write_product("job-1", mask, scene, {"method": "ndwi"}, tmp_path / "results",
                            dt.datetime.now(dt.timezone.utc))
    item = json.loads(product.stac_item.read_text())
    links = [link for link in item["links"] if link["rel"] == "derived_from"]
    assert [link["href"] for link in links] == [
        f"{stac['api'].url}/collections/sentinel-2-l2a/items/30SYJc",
        f"{stac['api'].url}/collections/sentinel-2-l2a/items/30SYJt"]
    assert all(link["title"].startswith("S2B_MSIL2A_") for link in links)
    assert item["properties"]["aquamask:lineage"]["input"]["source_ids"] == scene.source_ids
    assert item["properties"]["datetime"].startswith("2023-08-01T10:56:19")
    scene.close()


def test_least_cloudy_date_wins_over_a_range(stac):
    stac["api"].items = [stac["item"]("cloudy", when="2023-07-20T10:56:19+00:00", cloud=15.0),
                         stac["item"]("twin", when="2023-08-05T10:56:19+00:00", cloud=2.0),
                         stac["item"]("applied", when="2023-08-09T10:56:19+00:00", cloud=9.0)]
    bbox = (-0.04, 38.085, -0.005, 38.11)
    scene = place_source(stac["settings"](cache=False), "standin").read(query(bbox=bbox))
    assert [s["id"] for s in scene.source_items] == ["30SYJt"]
    assert scene.acquired.date() == dt.date(2023, 8, 5)
    scene.close()


def test_windows_are_cached_on_disk_and_checked(stac, tmp_path):
    stac["api"].items = [stac["item"]("west")]
    bbox = (-0.04, 38.085, -0.005, 38.11)

    def read(settings):
        scene = place_source(settings, "standin").read(query(bbox=bbox))
        try:
            return read_all(scene), len(stac["server"].requests(r"\.tif$"))
        finally:
            scene.close()

    settings = stac["settings"](cache=True)
    first, before = read(settings)
    assert before > 0
    again, after = read(settings)
    assert after == before, "a cache hit makes no request for imagery"
    assert np.array_equal(first, again, equal_nan=True)
    # a damaged entry is noticed (sha256) and read again from the source
    entries = list((tmp_path / "cache" / "windows").glob("*/*.npz"))
    assert entries
    entries[0].write_bytes(entries[0].read_bytes()[:-10] + b"0123456789")
    third, later = read(settings)
    assert later > after
    assert np.array_equal(first, third, equal_nan=True)
    # control: without the cache every read goes back to the COGs
    nocache = stac["settings"](cache=False)
    _, n1 = read(nocache)
    _, n2 = read(nocache)
    assert n2 > n1


def test_retries_on_503_for_search_and_for_cog_ranges(stac):
    stac["api"].items = [stac["item"]("west")]
    stac["server"].fail(r"^/search", [503, 503])
    stac["server"].fail(r"/30SYJ/B03\.tif$", [503])
    bbox = (-0.04, 38.085, -0.005, 38.11)
    scene = place_source(stac["settings"](cache=False), "standin").read(query(bbox=bbox))
    bands = read_all(scene)
    scene.close()
    assert [r.status for r in stac["server"].requests(r"^/search")] == [503, 503, 200]
    statuses = [r.status for r in stac["server"].requests(r"/30SYJ/B03\.tif$")]
    assert statuses[0] == 503 and set(statuses[1:]) <= {200, 206} and len(statuses) > 1
    assert np.isfinite(bands[B03]).mean() > 0.9


def test_an_api_that_keeps_failing_is_a_502_with_the_reason(stac):
    stac["server"].fail(r"^/search", [503] * 10)
    with pytest.raises(UpstreamError, match="standin") as info:
        place_source(stac["settings"](), "standin").search(query())
    assert int(info.value.http_status_code) == 502


def test_no_scene_is_a_clear_4xx_naming_place_dates_and_cloud_limit(stac):
    stac["api"].items = [stac["item"]("west", when="2023-06-01T10:56:19+00:00")]
    with pytest.raises(NoScene) as info:
        place_source(stac["settings"](), "standin").read(
            query(when="2023-08-01/2023-08-03", cloud=20))
    message = str(info.value.message)
    assert int(info.value.http_status_code) == 422
    assert "-0.02000, 38.09000, 0.02000, 38.11000" in message
    assert "2023-08-01T00:00:00Z/2023-08-03T23:59:59.999999Z" in message
    assert "at most 20 %" in message and "standin" in message


def test_planetary_computer_assets_are_signed_before_reading(stac, monkeypatch):
    import planetary_computer
    from planetary_computer import sas
    from planetary_computer import settings as pc_settings

    from tests.support.standins import json_response

    tokens = []

    def token(match, **_):
        tokens.append(match.group(0))
        expiry = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat()
        return json_response({"msft:expiry": expiry, "token": "st=2023&se=2024&sp=rl&sig=abc"})

    stac["server"].route(r"/sas/token/([^/]+)/([^/]+)", token)
    monkeypatch.setenv("PC_SDK_SAS_URL", f"{stac['server'].url}/sas/token")
    pc_settings.Settings.get.cache_clear()
    sas.TOKEN_CACHE.clear()
    try:
        item = stac["item"]("west")
        for asset in item["assets"].values():  # as on the Planetary Computer: Azure blobs
            asset["href"] = asset["href"].replace(
                stac["files_url"], "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2")
        stac["api"].items = [item]
        source = place_source(stac["settings"](sign="planetary_computer"), "standin")
        found = source.search(query())
        assert "sig=" not in found[0].assets["B02"].path, "not signed at search time"
        ready = source.materialize(found[0])
    finally:
        pc_settings.Settings.get.cache_clear()
        sas.TOKEN_CACHE.clear()
    assert tokens == ["/sas/token/sentinel2l2a01/sentinel2-l2"]
    assert ready.assets["B02"].path == ("/vsicurl/https://sentinel2l2a01.blob.core.windows.net/"
                                        "sentinel2-l2/30SYJ/B02.tif?st=2023&se=2024&sp=rl&sig=abc")
    assert planetary_computer.sign_url  # the package's own signing did it
