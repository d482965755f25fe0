"""The ``local`` source (the offline default): a static STAC catalog or a folder of dated
GeoTIFFs under ``{home}/scenes``, and the whole place-and-date journey through the real server.

Material: tiles built from the real Sen1Floods11 chip in ../shared/data (see
tests/support/standins.py), written by pystac as a self-contained static catalog (relative asset
hrefs) or as one 6-band + SCL GeoTIFF stack with the acquisition time in its name, in tmp dirs.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pystac
import pytest
import rasterio
import requests
from rasterio.windows import Window

from aquamask.processes.constants import DETECTION_BANDS
from aquamask.processes.errors import NoScene
from aquamask.processes.pipeline.sources import place_source
from aquamask.processes.pipeline.sources.grid import grid_for
from aquamask.processes.pipeline.sources.query import PlaceQuery, parse_bbox, parse_datetime
from aquamask.processes.settings import Settings
from tests.support.server import start_server
from tests.support.standins import BANDS, build_tile, stac_item
from tests.support.water_scenes import pixels_in_box

BBOX = [-0.04, 38.085, -0.005, 38.11]
B03 = DETECTION_BANDS.index("B03")


def catalog(folder, tiles_and_dates):
    """A self-contained static STAC catalog of Earth Search-shaped items, relative hrefs."""
    cat = pystac.Catalog(id="scenes", description="aquamask test scenes")
    for tile, when, cloud in tiles_and_dates:
        raw = stac_item(tile, "http://unused", "http://files", when, cloud)
        raw["links"] = []
        item = pystac.Item.from_dict(raw)
        for key, asset in item.assets.items():
            band = next(b for b, k in {"B02": "blue", "B03": "green", "B04": "red",
                                       "B08": "nir", "B11": "swir16", "B12": "swir22",
                                       "SCL": "scl"}.items() if k == key)
            asset.href = str(tile.files[band])
        cat.add_item(item)
    cat.normalize_and_save(str(folder), catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return folder


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    root = tmp_path_factory.mktemp("local-tiles")
    return {"clear": build_tile(root, "30SYJ", 32630, 0.003, "west", offset_dn=1000),
            "cloudy": build_tile(root, "30SYJc", 32630, 0.003, "west", offset_dn=1000,
                                 cloud=(slice(0, 256), slice(0, 256)))}


def settings_for(home) -> Settings:
    return Settings.load(environ={"AQUAMASK__HOME": str(home)})


def query(when="2023-07-01/2023-08-31", cloud=30.0):
    start, end = parse_datetime(when)
    return PlaceQuery(geometry=parse_bbox(BBOX), start=start, end=end, max_cloud_cover=cloud)


def test_a_static_catalog_is_searched_and_read(tiles, tmp_path):
    catalog(tmp_path / "scenes", [(tiles["clear"], "2023-08-01T10:56:19+00:00", 4.0),
                                  (tiles["cloudy"], "2023-07-20T10:56:19+00:00", 25.0)])
    source = place_source(settings_for(tmp_path))  # sources.default: local
    assert source.name == "local"
    found = source.search(query())
    assert [i.id for i in found] == ["30SYJ", "30SYJc"]  # newest first
    assert found[0].assets["B02"].offset == -1000.0  # raster:bands of the item
    assert [i.id for i in source.search(query(cloud=10))] == ["30SYJ"]
    assert source.search(query(when="2023-07-20")) [0].id == "30SYJc"
    scene = source.read(query())
    bands = scene.read(Window(0, 0, scene.width, scene.height))
    scene.close()
    assert scene.source_ids[0].startswith("S2B_MSIL2A_20230801")
    place = pixels_in_box(BBOX, grid_for(query().geometry))
    assert np.isfinite(bands[:, place]).mean() > 0.95
    assert 300 < np.nanmean(bands[B03]) < 3000


def test_a_folder_of_dated_geotiffs(tiles, tmp_path):
    tile = tiles["clear"]
    folder = tmp_path / "scenes"
    folder.mkdir()
    with rasterio.open(tile.files["B02"]) as ref:
        profile = dict(driver="GTiff", width=ref.width, height=ref.height, count=7,
                       dtype="uint16", crs=ref.crs, transform=ref.transform, nodata=0)
    path = folder / "S2B_MSIL2A_20230801T105619_T30SYJ.tif"
    with rasterio.open(path, "w", **profile) as dst:
        for i, band in enumerate(BANDS, start=1):
            with rasterio.open(tile.files[band]) as src:  # 20 m bands repeated onto 10 m
                data = src.read(1, out_shape=(ref.height, ref.width),
                                resampling=rasterio.enums.Resampling.nearest)
            dst.write(data, i)
            dst.set_band_description(i, band)
        with rasterio.open(tile.files["SCL"]) as src:
            dst.write(src.read(1, out_shape=(ref.height, ref.width)).astype("uint16"), 7)
        dst.set_band_description(7, "SCL")
        dst.update_tags(BOA_ADD_OFFSET="-1000", CLOUDY_PIXEL_PERCENTAGE="3.5")
    (folder / "undated.tif").write_bytes(path.read_bytes())  # no date: cannot be found
    source = place_source(settings_for(tmp_path), "local")
    found = source.search(query())
    assert [(i.id, i.cloud_cover, i.datetime.isoformat()) for i in found] == [
        (path.stem, 3.5, "2023-08-01T10:56:19+00:00")]
    assert found[0].radiometry == "BOA_ADD_OFFSET tag" and "SCL" in found[0].assets
    scene = source.read(query())
    bands = scene.read(Window(0, 0, scene.width, scene.height))
    scene.close()
    assert 300 < np.nanmean(bands[B03]) < 3000


def test_nothing_on_those_dates(tiles, tmp_path):
    catalog(tmp_path / "scenes", [(tiles["clear"], "2023-08-01T10:56:19+00:00", 4.0)])
    with pytest.raises(NoScene, match="2023-09-01T00:00:00Z/2023-09-02T23:59:59"):
        place_source(settings_for(tmp_path)).read(query(when="2023-09-01/2023-09-02"))


def test_search_command_lists_scenes(tiles, tmp_path):
    catalog(tmp_path / "scenes", [(tiles["clear"], "2023-08-01T10:56:19+00:00", 4.0),
                                  (tiles["cloudy"], "2023-07-20T10:56:19+00:00", 25.0)])
    env = {"AQUAMASK__HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "aquamask.server.cli", "search", "--bbox",
         ",".join(map(str, BBOX)), "--datetime", "2023-07-01/2023-08-31"],
        capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].startswith("* 2023-08-01 10:56:19      4.0  S2B_MSIL2A_20230801T105619")
    assert lines[2].startswith("  2023-07-20 10:56:19     25.0  S2B_MSIL2A_20230720T105619")
    as_json = subprocess.run(
        [sys.executable, "-m", "aquamask.server.cli", "search", "--bbox",
         ",".join(map(str, BBOX)), "--datetime", "2023-07-01/2023-08-31", "--json",
         "--max-cloud-cover", "10"], capture_output=True, text=True, timeout=120, env=env)
    assert [s["id"] for s in json.loads(as_json.stdout)] == ["30SYJ"]
    bad = subprocess.run(
        [sys.executable, "-m", "aquamask.server.cli", "search", "--bbox", "1,2,3",
         "--datetime", "2023-08-01"], capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2 and "bbox must be 4 numbers" in bad.stderr


def test_place_and_date_through_the_server(tiles, tmp_path):
    """The seed's promise over real HTTP: name a place and a date, get water."""
    catalog(tmp_path / "scenes", [(tiles["clear"], "2023-08-01T10:56:19+00:00", 4.0)])
    (tmp_path / "data").mkdir()
    server = start_server(tmp_path, workers=1)
    try:
        url = f"{server.url}/processes/water-detection/execution"
        response = requests.post(url, json={"inputs": {
            "bbox": BBOX, "datetime": "2023-07-25/2023-08-05", "method": "ndwi"}}, timeout=120)
        assert response.status_code == 200, response.text
        outputs = response.json()
        assert 0.9 < outputs["valid_fraction"] <= 1.0 and outputs["water_area_km2"] > 0
        assert outputs["crs"] == "EPSG:32630"
        item = requests.get(outputs["stac_item"]["href"], timeout=10).json()
        lineage = item["properties"]["aquamask:lineage"]
        assert lineage["input"]["source_ids"][0].startswith("S2B_MSIL2A_20230801T105619")
        assert lineage["parameters"]["place"]["datetime"].startswith("2023-07-25T00:00:00Z/")
        assert item["properties"]["datetime"].startswith("2023-08-01T10:56:19")
        assert str(tmp_path) not in json.dumps(item), "no server paths in the provenance"
        # no scene: a 4xx naming the place, the dates and the cloud limit, after the search
        missing = requests.post(url, json={"inputs": {
            "bbox": BBOX, "datetime": "2020-01-01/2020-01-31", "method": "ndwi"}}, timeout=60)
        assert missing.status_code == 422, missing.text
        assert "2020-01-01T00:00:00Z/2020-01-31T23:59:59" in missing.text
        # a malformed place is refused before any job exists
        jobs = requests.get(f"{server.url}/jobs", timeout=10).json()
        before = len(jobs.get("jobs", []))
        bad = requests.post(url, json={"inputs": {"bbox": [0, 0, 1], "datetime": "2023-08-01"}},
                            headers={"Prefer": "respond-async"}, timeout=30)
        assert bad.status_code == 400 and "bbox must be 4 numbers" in bad.text
        after = len(requests.get(f"{server.url}/jobs", timeout=10).json().get("jobs", []))
        assert after == before
    finally:
        server.stop()
