"""The ``sentinelsat`` source against a DHuS stand-in on loopback (real HTTP, Basic auth).

Stand-in (tests/support/standins.py): the DHuS OpenSearch JSON feed (``/dhus/search?q=...
&format=json``) and OData v1 product entries, online flag and ``$value`` download (with
Content-Disposition and byte ranges) in the documented DHuS shapes that sentinelsat itself
parses; the product is a SAFE-structured zip the test builds (MTD_MSIL2A.xml with baseline
05.09, BOA_QUANTIFICATION_VALUE 10000 and BOA_ADD_OFFSET -1000, JPEG2000 bands under
GRANULE/.../IMG_DATA/R10m and R20m) from a tile of the real Sen1Floods11 chip in
../shared/data. sentinelsat is used as is: its query, download, resume and checksum code runs.
"""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from rasterio.windows import Window

from aquamask.processes.constants import DETECTION_BANDS
from aquamask.processes.errors import UpstreamError
from aquamask.processes.pipeline.sources import place_source
from aquamask.processes.pipeline.sources.grid import grid_for
from aquamask.processes.pipeline.sources.query import PlaceQuery, parse_bbox, parse_datetime
from aquamask.processes.pipeline.sources.sentinelsat_ import safe_assets
from aquamask.processes.settings import Settings
from tests.support.standins import Dhus, DhusProduct, Loopback, build_tile, safe_zip
from tests.support.water_scenes import pixels_in_box

TITLE = "S2B_MSIL2A_20230801T105619_N0509_R094_T30SYJ_20230801T134512"
UUID = "8a2c5f3e-1d4b-4c7a-9f0e-2b6d8e1a3c55"
BBOX = (-0.04, 38.085, -0.005, 38.11)  # inside the tile, in its own UTM zone (30)
B03 = DETECTION_BANDS.index("B03")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("dhus")
    tile = build_tile(root / "tiles", "30SYJ", 32630, 0.003, "west", offset_dn=0)
    data = safe_zip(root / f"{TITLE}.zip", tile, TITLE).read_bytes()
    server = Loopback()
    server.auth = ("aquamask", "s3cret")
    dhus = Dhus(server, products=[DhusProduct(
        uuid=UUID, title=TITLE, when=dt.datetime(2023, 8, 1, 10, 56, 19, 24000,
                                                 tzinfo=dt.timezone.utc),
        cloud=7.5, footprint=tile.footprint, data=data)])
    yield {"server": server, "dhus": dhus, "tile": tile, "data": data, "root": root}
    server.close()


@pytest.fixture
def settings(hub, tmp_path):
    hub["server"].log.clear()
    hub["server"].failures.clear()

    def make(password="s3cret", user="aquamask", cache=False) -> Settings:
        config = {"kind": "sentinelsat", "url": hub["dhus"].url}
        return Settings.load(environ={
            "AQUAMASK__HOME": str(tmp_path), "AQUAMASK__SOURCES__HUB": json.dumps(config),
            "AQUAMASK__SOURCES__HUB__USER": user, "AQUAMASK__SOURCES__HUB__PASSWORD": password,
            "AQUAMASK__SOURCES__HTTP": "{retries: 3, backoff: 0.05, timeout: 10}",
            "AQUAMASK__SOURCES__CACHE__ENABLED": "true" if cache else "false"})
    return make


def query(when="2023-07-25/2023-08-05", cloud=20.0, bbox=BBOX):
    start, end = parse_datetime(when)
    return PlaceQuery(geometry=parse_bbox(list(bbox)), start=start, end=end,
                      max_cloud_cover=cloud)


def test_search_sends_place_dates_cloud_and_product_type(hub, settings):
    found = place_source(settings(), "hub").search(query())
    assert [(i.id, i.cloud_cover) for i in found] == [(TITLE, 7.5)]
    assert found[0].href == f"{hub['dhus'].url}odata/v1/Products('{UUID}')"
    assert found[0].datetime == dt.datetime(2023, 8, 1, 10, 56, 19, 24000,
                                            tzinfo=dt.timezone.utc)
    q = hub["dhus"].queries[-1]
    assert 'beginPosition:["2023-07-25T00:00:00Z" TO "2023-08-05T23:59:59Z"]' in q
    assert 'cloudcoverpercentage:["0" TO "20.0"]' in q
    assert 'producttype:"S2MSI2A"' in q and 'platformname:"Sentinel-2"' in q
    assert 'footprint:"Intersects(POLYGON ((-0.005 38.085' in q
    assert place_source(settings(), "hub").search(query(cloud=5.0)) == []
    assert place_source(settings(), "hub").search(query(when="2023-08-02/2023-08-05")) == []


def test_safe_metadata_gives_the_offset_and_the_jp2_paths(hub):
    assets, rule, extra = safe_assets(hub["root"] / f"{TITLE}.zip")
    assert extra["processing_baseline"] == "05.09"
    assert "BOA_ADD_OFFSET" in rule
    assert (assets["B02"].scale, assets["B02"].offset, assets["B02"].nodata) == (1.0, -1000.0,
                                                                                0.0)
    assert assets["B02"].path.startswith("/vsizip/") and assets["B02"].path.endswith(
        "IMG_DATA/R10m/T30SXH_20230801T105619_B02_10m.jp2")
    assert assets["B11"].path.endswith("R20m/T30SXH_20230801T105619_B11_20m.jp2")
    assert assets["SCL"].path.endswith("R20m/T30SXH_20230801T105619_SCL_20m.jp2")


def test_download_resumes_checks_the_checksum_and_reads_from_the_zip(hub, settings, tmp_path):
    products = tmp_path / "cache" / "products"
    products.mkdir(parents=True)
    half = len(hub["data"]) // 2
    (products / f"{TITLE}.zip.incomplete").write_bytes(hub["data"][:half])
    scene = place_source(settings(), "hub").read(query())
    try:
        bands = scene.read(Window(0, 0, scene.width, scene.height))
    finally:
        scene.close()
    gets = hub["server"].requests(r"/\$value$", "GET")
    product_gets = [r for r in gets if "/Online/" not in r.path]
    assert [r.headers.get("Range") for r in product_gets] == [f"bytes={half}-"], "resumed"
    assert (products / f"{TITLE}.zip").stat().st_size == len(hub["data"])
    assert not (products / f"{TITLE}.zip.incomplete").exists()
    assert (products / f"{TITLE}.zip.sha256").exists()
    assert scene.source_ids == [TITLE]
    assert scene.source_items[0]["href"].endswith(f"Products('{UUID}')")
    # values: JP2 DN (reflectance + 1000) minus the BOA_ADD_OFFSET read from MTD_MSIL2A.xml
    tile = hub["tile"]
    grid = grid_for(query().geometry)
    col0 = round((grid.transform.c - tile.transform.c) / 10)
    row0 = round((tile.transform.f - grid.transform.f) / 10)
    truth = tile.values["B03"][row0:row0 + grid.height, col0:col0 + grid.width]
    ok = np.isfinite(bands[B03])
    assert ok[pixels_in_box(BBOX, grid)].mean() > 0.95
    assert np.allclose(bands[B03][ok], truth[ok], atol=0.01)
    # the product is reused from the cache without asking the hub again
    hub["server"].log.clear()
    scene = place_source(settings(), "hub").read(query())
    scene.close()
    assert not hub["server"].requests(r"\$value", "GET")


def test_a_corrupt_cached_product_is_downloaded_again(hub, settings, tmp_path):
    source = place_source(settings(), "hub")
    item = source.search(query())[0]
    path = source.download(item)
    path.write_bytes(b"garbage" + path.read_bytes()[7:])
    hub["server"].log.clear()
    again = source.download(item)
    assert again.read_bytes() == hub["data"]
    assert [r for r in hub["server"].requests(r"\)/\$value$", "GET")]


def test_a_download_that_does_not_match_the_checksum_is_refused(hub, settings, tmp_path):
    product = hub["dhus"].products[0]
    product.announced_md5 = "0" * 32  # the bytes served no longer match the OData checksum
    try:
        source = place_source(settings(), "hub")
        with pytest.raises(UpstreamError, match="checksum"):
            source.download(source.search(query())[0])
    finally:
        product.announced_md5 = None
    assert not list((tmp_path / "cache" / "products").glob("*.zip")), "nothing kept"


def test_retries_on_503_from_the_hub(hub, settings):
    hub["server"].fail(r"^/dhus/search", [503, 502])
    found = place_source(settings(), "hub").search(query())
    assert [i.id for i in found] == [TITLE]
    assert [r.status for r in hub["server"].requests(r"^/dhus/search")] == [503, 502, 200]


def test_bad_credentials_are_a_clear_error(settings):
    with pytest.raises(UpstreamError, match="refused the credentials of user 'aquamask'") \
            as info:
        place_source(settings(password="wrong"), "hub").search(query())
    assert int(info.value.http_status_code) == 502
    assert "AQUAMASK__SOURCES__HUB__USER/PASSWORD" in info.value.message


def test_missing_credentials_are_refused_before_a_job(settings):
    with pytest.raises(UpstreamError, match="AQUAMASK__SOURCES__HUB__USER"):
        place_source(settings(password=""), "hub").check()
