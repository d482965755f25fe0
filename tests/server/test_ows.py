"""/ows: WMS 1.3.0 and WCS 2.0.1 of published masks through MapServer's CGI, via Flask's test
client and via OWSLib against a real HTTP server on loopback. Real MapServer, no mocks."""
from __future__ import annotations

import re
import threading

import numpy as np
import pytest
import rasterio
from rasterio.io import MemoryFile
from rasterio.warp import transform_bounds
from werkzeug.serving import make_server

from aquamask.processes.publishers.mapserver import MapServerPublisher
from aquamask.server.ows import make_ows_blueprint, sanitize_query, single_layer
from tests.processes.conftest_mapserver import (BASE_URL, BLUE, DRY_PIXEL, NODATA_PIXEL,
                                                WATER_PIXEL, coverage_ids, image_pixel,
                                                layer_names, make_product, masks,  # noqa: F401
                                                ows_app, png_rgba)

CRSS = ["EPSG:32630", "EPSG:4326"]


@pytest.fixture(scope="module")
def published(tmp_path_factory, masks):
    """One publisher with both masks: ``utm`` (EPSG:32630) and ``geo`` (EPSG:4326)."""
    pub = MapServerPublisher(tmp_path_factory.mktemp("ows") / "mapserver", BASE_URL)
    pub.publish(make_product(masks["EPSG:32630"], "utm", title="UTM mask"))
    pub.publish(make_product(masks["EPSG:4326"], "geo", title="Geographic mask"))
    return pub


@pytest.fixture(scope="module")
def client(published):
    return ows_app(published).test_client()


LAYERS = {"EPSG:32630": "water-utm", "EPSG:4326": "water-geo"}


def get(client, **params):
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return client.get(f"/ows?{query}")


def test_wms_capabilities_list_the_layers_with_their_bbox(client, masks):
    response = get(client, SERVICE="WMS", VERSION="1.3.0", REQUEST="GetCapabilities")
    assert response.status_code == 200
    assert response.content_type.startswith("text/xml")
    text = response.data.decode()
    assert layer_names(response.data) == ["water-utm", "water-geo"]
    assert "http://127.0.0.1:5000/ows?" in text
    for crs, name in LAYERS.items():
        block = text[text.index(f"<Name>{name}</Name>"):]
        box = {k: float(re.search(rf"<{k}>([^<]+)</{k}>", block).group(1))
               for k in ("westBoundLongitude", "southBoundLatitude",
                         "eastBoundLongitude", "northBoundLatitude")}
        west, south, east, north = masks[crs].bbox_wgs84
        assert box["westBoundLongitude"] == pytest.approx(west, abs=1e-5)
        assert box["eastBoundLongitude"] == pytest.approx(east, abs=1e-5)
        assert box["southBoundLatitude"] == pytest.approx(south, abs=1e-5)
        assert box["northBoundLatitude"] == pytest.approx(north, abs=1e-5)
        for srs in ("EPSG:4326", "EPSG:3857", crs):
            assert f"<CRS>{srs}</CRS>" in block[:block.index("</Layer>")]


@pytest.mark.parametrize("mask_crs", CRSS)
@pytest.mark.parametrize("map_crs", ["EPSG:4326", "EPSG:3857"])
def test_getmap_draws_water_blue_and_the_rest_transparent(client, masks, mask_crs, map_crs):
    mask = masks[mask_crs]
    bbox = transform_bounds(mask.crs, map_crs, *mask.bounds, densify_pts=21)
    # WMS 1.3.0: EPSG:4326 takes lat,lon; EPSG:3857 x,y
    order = (1, 0, 3, 2) if map_crs == "EPSG:4326" else (0, 1, 2, 3)
    size = 256
    response = get(client, SERVICE="WMS", VERSION="1.3.0", REQUEST="GetMap",
                   LAYERS=LAYERS[mask_crs], STYLES="", CRS=map_crs,
                   BBOX=",".join(repr(bbox[i]) for i in order), WIDTH=size, HEIGHT=size,
                   FORMAT="image/png", TRANSPARENT="TRUE")
    assert response.status_code == 200 and response.content_type == "image/png", response.data
    rgba = png_rgba(response.data)
    assert rgba.shape == (size, size, 4)
    for pixel, water in ((WATER_PIXEL, True), (DRY_PIXEL, False), (NODATA_PIXEL, False)):
        row, col = image_pixel(bbox, size, size, *mask.centre(*pixel, crs=map_crs))
        if water:
            assert tuple(rgba[row, col]) == (*BLUE, 255), (pixel, rgba[row, col])
        else:
            assert rgba[row, col, 3] == 0, (pixel, rgba[row, col])
    # only two colours: opaque blue and fully transparent
    opaque = rgba[rgba[..., 3] > 0]
    assert len(opaque) and (opaque == (*BLUE, 255)).all()


def test_legend_is_a_png(client):
    response = get(client, SERVICE="WMS", VERSION="1.3.0", REQUEST="GetLegendGraphic",
                   LAYER="water-utm", FORMAT="image/png", SLD_VERSION="1.1.0")
    assert response.status_code == 200 and response.content_type == "image/png"
    rgba = png_rgba(response.data)
    assert (rgba[..., :3] == BLUE).all(axis=-1).any()


def test_wcs_capabilities_and_describe_coverage(client):
    caps = get(client, SERVICE="WCS", VERSION="2.0.1", REQUEST="GetCapabilities")
    assert caps.status_code == 200
    assert coverage_ids(caps.data) == ["water-utm", "water-geo"]
    described = get(client, SERVICE="WCS", VERSION="2.0.1", REQUEST="DescribeCoverage",
                    COVERAGEID="water-utm")
    assert described.status_code == 200
    text = described.data.decode()
    assert 'gml:id="water-utm"' in text
    assert "http://www.opengis.net/def/crs/EPSG/0/32630" in text
    assert "<gml:high>255 255</gml:high>" in text
    assert "<wcs:nativeFormat>image/tiff</wcs:nativeFormat>" in text
    assert "<swe:nilValue" in text and ">255</swe:nilValue>" in text


def read_tiff(data: bytes):
    with MemoryFile(data) as memfile, memfile.open() as src:
        return src.read(1), src.crs, src.bounds, src.nodata


@pytest.mark.parametrize("mask_crs", CRSS)
def test_getcoverage_returns_the_raw_classes(client, masks, mask_crs):
    mask = masks[mask_crs]
    response = get(client, SERVICE="WCS", VERSION="2.0.1", REQUEST="GetCoverage",
                   COVERAGEID=LAYERS[mask_crs], FORMAT="image/tiff")
    assert response.status_code == 200 and response.content_type == "image/tiff"
    values, crs, bounds, nodata = read_tiff(response.data)
    assert crs == rasterio.crs.CRS.from_string(mask_crs)
    assert tuple(bounds) == pytest.approx(mask.bounds)
    assert nodata == 255
    np.testing.assert_array_equal(values, mask.classes)


def test_getcoverage_subset_in_native_axes(client, masks):
    """UTM coverage: the native axes are x/y (metres); a pixel-aligned subset is exact."""
    mask = masks["EPSG:32630"]
    t = mask.transform
    x0, x1 = t.c + 48 * t.a, t.c + 112 * t.a            # cols 48..111
    y1, y0 = t.f + 40 * t.e, t.f + 200 * t.e             # rows 40..199
    response = get(client, SERVICE="WCS", VERSION="2.0.1", REQUEST="GetCoverage",
                   COVERAGEID="water-utm", FORMAT="image/tiff",
                   SUBSET=f"x({x0:.0f},{x1:.0f})&SUBSET=y({y0:.0f},{y1:.0f})")
    assert response.status_code == 200, response.data
    values, crs, bounds, _ = read_tiff(response.data)
    assert crs.to_epsg() == 32630
    assert tuple(bounds) == pytest.approx((x0, y0, x1, y1))
    np.testing.assert_array_equal(values, mask.classes[40:200, 48:112])


def test_getcoverage_subset_lat_long(client, masks):
    """EPSG:4326 coverage: Lat/Long are its native axes; a pixel-aligned subset is exact."""
    mask = masks["EPSG:4326"]
    t = mask.transform
    lon0, lon1 = t.c + 48 * t.a, t.c + 112 * t.a
    lat1, lat0 = t.f + 40 * t.e, t.f + 200 * t.e
    response = get(client, SERVICE="WCS", VERSION="2.0.1", REQUEST="GetCoverage",
                   COVERAGEID="water-geo", FORMAT="image/tiff",
                   SUBSET=f"Lat({lat0:.4f},{lat1:.4f})&SUBSET=Long({lon0:.4f},{lon1:.4f})")
    assert response.status_code == 200, response.data
    values, crs, bounds, _ = read_tiff(response.data)
    assert tuple(bounds) == pytest.approx((lon0, lat0, lon1, lat1))
    np.testing.assert_array_equal(values, mask.classes[40:200, 48:112])


def test_getcoverage_lat_long_subset_of_a_utm_coverage_needs_subsettingcrs(client, masks):
    mask = masks["EPSG:32630"]
    west, south, east, north = mask.bbox_wgs84
    lat = f"Lat({south + (north - south) * 0.3!r},{north - (north - south) * 0.3!r})"
    lon = f"Long({west + (east - west) * 0.3!r},{east - (east - west) * 0.3!r})"
    base = dict(SERVICE="WCS", VERSION="2.0.1", REQUEST="GetCoverage", COVERAGEID="water-utm",
                FORMAT="image/tiff", SUBSET=f"{lat}&SUBSET={lon}")
    assert get(client, **base).status_code == 400   # read as metres: outside the coverage
    response = get(client, **base, SUBSETTINGCRS="http://www.opengis.net/def/crs/EPSG/0/4326",
                   OUTPUTCRS="http://www.opengis.net/def/crs/EPSG/0/32630")
    assert response.status_code == 200, response.data
    values, crs, bounds, _ = read_tiff(response.data)
    assert crs.to_epsg() == 32630
    assert 0 < values.shape[0] < 256 and 0 < values.shape[1] < 256
    assert set(np.unique(values)) <= {0, 1, 255} and 1 in values


def test_wcs_errors_keep_mapserver_status_and_document(client):
    response = get(client, SERVICE="WCS", VERSION="2.0.1", REQUEST="DescribeCoverage",
                   COVERAGEID="water-nope")
    assert response.status_code == 404
    assert b"ExceptionReport" in response.data and b"NoSuchCoverage" in response.data
    response = get(client, SERVICE="WCS", VERSION="2.0.1", REQUEST="GetCoverage",
                   COVERAGEID="water-utm", SUBSET="E(0,1)")
    assert response.status_code in (400, 404) and b"InvalidAxisLabel" in response.data


def test_wms_errors_are_service_exceptions(client):
    response = get(client, SERVICE="WMS", VERSION="1.3.0", REQUEST="GetMap", LAYERS="water-nope",
                   STYLES="", CRS="EPSG:4326", BBOX="0,0,1,1", WIDTH=10, HEIGHT=10,
                   FORMAT="image/png")
    assert response.status_code == 200   # as WMS 1.3.0 and MapServer do
    assert response.content_type.startswith("text/xml")
    assert b"ServiceException" in response.data and b"LayerNotDefined" in response.data


def test_cgi_level_errors_are_ogc_exceptions_without_paths(client, published):
    response = client.get("/ows?foo=bar")
    assert response.status_code == 400
    assert b"ExceptionReport" in response.data
    assert str(published.workdir).encode() not in response.data


def test_map_parameter_cannot_change_the_mapfile(client, published):
    plain = get(client, SERVICE="WMS", VERSION="1.3.0", REQUEST="GetCapabilities")
    for evil in ("map=/etc/passwd", "MAP=/etc/passwd", "map=%2Fetc%2Fpasswd", "%6Dap=/etc/passwd",
                 "map=AQUAMASK", "map.web.imagepath=/tmp/",
                 "map.layer[water-utm]=DATA+%22/etc/passwd%22", "map_web_template=/etc/passwd"):
        response = client.get(f"/ows?{evil}&SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities")
        assert response.status_code == 200, evil
        assert response.data == plain.data, evil
    assert b"root:" not in plain.data


@pytest.mark.parametrize("query, layer", [
    ("SERVICE=WMS&REQUEST=GetMap&LAYERS=water-a&STYLES=", "water-a"),
    ("service=WMS&request=getmap&layers=water-a,water-b", None),
    ("REQUEST=GetMap&LAYERS=", None),
    ("REQUEST=GetFeatureInfo&LAYERS=water-a&QUERY_LAYERS=water-a", "water-a"),
    ("REQUEST=GetFeatureInfo&LAYERS=water-a&QUERY_LAYERS=water-b", None),
    ("REQUEST=GetLegendGraphic&LAYER=water-a", "water-a"),
    ("SERVICE=WCS&REQUEST=GetCoverage&COVERAGEID=water-a&SUBSET=x(0,1)", "water-a"),
    ("SERVICE=WCS&REQUEST=DescribeCoverage&CoverageId=water-a", "water-a"),
    ("SERVICE=WMS&REQUEST=GetCapabilities&LAYERS=water-a", None),
])
def test_single_layer_of_a_request(query, layer):
    assert single_layer(query) == layer


def test_one_layer_requests_are_answered_from_the_layers_own_mapfile(published, tmp_path):
    """With the catalogue's mapfile broken, a GetMap of one layer still draws (its own
    mapfile) while capabilities, which need every layer, fail: proof of which file was read."""
    import shutil

    copy = MapServerPublisher(shutil.copytree(published.workdir, tmp_path / "mapserver"),
                              BASE_URL)
    client = ows_app(copy).test_client()
    copy.mapfile_path.write_text("MAP broken\n")
    caps = get(client, SERVICE="WMS", VERSION="1.3.0", REQUEST="GetCapabilities")
    assert caps.status_code >= 400 or b"ServiceException" in caps.data
    drawn = get(client, SERVICE="WMS", VERSION="1.3.0", REQUEST="GetMap", LAYERS="water-geo",
                STYLES="", CRS="EPSG:3857", BBOX="-20000,-20000,20000,20000", WIDTH=64,
                HEIGHT=64, FORMAT="image/png")
    assert drawn.status_code == 200 and drawn.content_type == "image/png", drawn.data[:300]
    described = get(client, SERVICE="WCS", VERSION="2.0.1", REQUEST="DescribeCoverage",
                    COVERAGEID="water-utm")
    assert described.status_code == 200 and b'gml:id="water-utm"' in described.data


def test_sanitize_query():
    assert sanitize_query(b"map=/x&SERVICE=WMS&Map.layer[a]=b&mapx=1&REQUEST=a%26b") == \
        "SERVICE=WMS&mapx=1&REQUEST=a%26b"
    assert sanitize_query("") == ""


def test_post_form_and_xml(client, published):
    form = client.post("/ows?map=/etc/passwd", data={
        "SERVICE": "WMS", "VERSION": "1.3.0", "REQUEST": "GetCapabilities", "map": "/etc/passwd"})
    assert form.status_code == 200 and layer_names(form.data) == ["water-utm", "water-geo"]
    xml = ('<?xml version="1.0"?><wcs:DescribeCoverage xmlns:wcs="http://www.opengis.net/wcs/2.0"'
           ' service="WCS" version="2.0.1"><wcs:CoverageId>water-geo</wcs:CoverageId>'
           '</wcs:DescribeCoverage>')
    described = client.post("/ows", data=xml, content_type="text/xml")
    assert described.status_code == 200, described.data
    assert b'gml:id="water-geo"' in described.data
    assert client.post("/ows", data=b"x", content_type="image/png").status_code == 415


def test_missing_binary_is_a_503(published, tmp_path):
    client = ows_app(published, binary=str(tmp_path / "no-mapserv")).test_client()
    response = client.get("/ows?SERVICE=WMS&REQUEST=GetCapabilities")
    assert response.status_code == 503
    assert b"ExceptionReport" in response.data and b"not available" in response.data


def test_timeout_is_a_503(published, tmp_path):
    slow = tmp_path / "slow-mapserv"
    slow.write_text("#!/bin/sh\nexec sleep 5\n")
    slow.chmod(0o755)
    client = ows_app(published, binary=str(slow), timeout=0.3).test_client()
    response = client.get("/ows?SERVICE=WMS&REQUEST=GetCapabilities")
    assert response.status_code == 503 and b"did not answer" in response.data


def test_make_ows_blueprint_from_settings(tmp_path, masks):
    from flask import Flask

    from aquamask.processes.settings import Settings

    settings = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path)})
    MapServerPublisher.from_settings(settings).publish(make_product(masks["EPSG:4326"], "s1"))
    app = Flask("settings-test")
    app.register_blueprint(make_ows_blueprint(settings))
    response = app.test_client().get("/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities")
    assert layer_names(response.data) == ["water-s1"]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, masks):
    """A real HTTP server on loopback whose publisher's base_url is that server, so the
    capabilities advertise URLs that OWSLib can follow."""
    from flask import Flask

    from aquamask.server.ows import ows_blueprint

    holder = {}
    app = Flask("ows-live")
    app.register_blueprint(ows_blueprint(lambda: holder["publisher"]))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    pub = MapServerPublisher(tmp_path_factory.mktemp("live") / "mapserver", url)
    pub.publish(make_product(masks["EPSG:32630"], "utm"))
    pub.publish(make_product(masks["EPSG:4326"], "geo"))
    holder["publisher"] = pub
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield url
    server.shutdown()
    thread.join(10)


def test_owslib_wms(live_server, masks):
    from owslib.wms import WebMapService

    wms = WebMapService(f"{live_server}/ows", version="1.3.0", timeout=30)
    assert {"water-utm", "water-geo"} <= set(wms.contents)
    layer = wms["water-utm"]
    west, south, east, north = masks["EPSG:32630"].bbox_wgs84
    assert layer.boundingBoxWGS84 == pytest.approx((west, south, east, north), abs=1e-5)
    assert "EPSG:3857" in layer.crsOptions and "EPSG:32630" in layer.crsOptions
    image = wms.getmap(layers=["water-utm"], styles=[""], srs="EPSG:3857",
                       bbox=transform_bounds("EPSG:4326", "EPSG:3857", west, south, east, north),
                       size=(256, 256), format="image/png", transparent=True,
                       method="Get")
    rgba = png_rgba(image.read())
    assert (rgba[..., :3] == BLUE).all(axis=-1).any() and (rgba[..., 3] == 0).any()


def test_owslib_wcs(live_server, masks):
    from owslib.wcs import WebCoverageService

    wcs = WebCoverageService(f"{live_server}/ows", version="2.0.1", timeout=30)
    assert {"water-utm", "water-geo"} <= set(wcs.contents)
    result = wcs.getCoverage(identifier="water-geo", format="image/tiff",
                             subsets=[("Lat", 42.984, 42.996), ("Long", -2.9952, -2.9888)])
    values, crs, bounds, _ = read_tiff(result.read())
    t = masks["EPSG:4326"].transform
    row0, col0 = round((42.996 - t.f) / t.e), round((-2.9952 - t.c) / t.a)
    np.testing.assert_array_equal(values, masks["EPSG:4326"].classes[
        row0:row0 + values.shape[0], col0:col0 + values.shape[1]])
    assert values.shape == (120, 64)


def test_wms_images_are_capped_but_whole_large_coverages_are_served(tmp_path):
    """MAXSIZE follows the largest coverage (WCS returns it whole); /ows caps WMS at 4096."""
    from tests.processes.conftest_mapserver import write_mask_cog

    big = write_mask_cog(tmp_path / "big" / "mask.tif", "EPSG:4326")
    with rasterio.open(big.path) as src:
        profile = dict(src.profile, width=4200, height=64, blockxsize=512, blockysize=64)
    wide = tmp_path / "wide.tif"
    with rasterio.open(wide, "w", **profile) as dst:
        dst.write(np.ones((1, 64, 4200), np.uint8))
    pub = MapServerPublisher(tmp_path / "mapserver", BASE_URL)
    product = make_product(big, "wide")
    product.mask_cog = wide
    pub.publish(product)
    assert "MAXSIZE 4200" in pub.mapfile_path.read_text()
    client = ows_app(pub).test_client()
    coverage = get(client, SERVICE="WCS", VERSION="2.0.1", REQUEST="GetCoverage",
                   COVERAGEID="water-wide", FORMAT="image/tiff")
    assert coverage.status_code == 200, coverage.data
    assert read_tiff(coverage.data)[0].shape == (64, 4200)
    too_big = get(client, SERVICE="WMS", VERSION="1.3.0", REQUEST="GetMap", LAYERS="water-wide",
                  STYLES="", CRS="EPSG:4326", BBOX="42,-3,43,-2", WIDTH=4200, HEIGHT=10,
                  FORMAT="image/png")
    assert too_big.status_code == 400 and b"ServiceException" in too_big.data


def test_capabilities_revalidate_with_an_etag_that_a_publish_changes(tmp_path, masks):
    pub = MapServerPublisher(tmp_path / "mapserver", BASE_URL)
    pub.publish(make_product(masks["EPSG:4326"], "first"))
    client = ows_app(pub).test_client()
    caps = "/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities"
    first = client.get(caps)
    etag = first.headers["ETag"]
    assert first.status_code == 200 and layer_names(first.data) == ["water-first"] and etag
    assert first.headers["Cache-Control"] == "no-cache"
    again = client.get(caps)
    assert again.data == first.data and again.headers["ETag"] == etag
    unchanged = client.get(caps, headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and not unchanged.data
    wcs = client.get("/ows?SERVICE=WCS&VERSION=2.0.1&REQUEST=GetCapabilities")
    assert wcs.headers["ETag"] != etag and coverage_ids(wcs.data) == ["water-first"]
    pub.publish(make_product(masks["EPSG:32630"], "second"))
    after = client.get(caps, headers={"If-None-Match": etag})
    assert after.status_code == 200 and after.headers["ETag"] != etag
    assert layer_names(after.data) == ["water-first", "water-second"]


def test_capabilities_are_built_once_per_state_of_the_mapfile(tmp_path):
    """The cache itself: the engine runs again only when the mapfile is replaced."""
    from flask import Flask, Response

    from aquamask.server.ows import CapabilitiesCache

    mapfile = tmp_path / "aquamask.map"
    mapfile.write_text("MAP END\n")
    cache, runs = CapabilitiesCache(mapfile, entries=2), []

    def engine() -> Response:
        runs.append(1)
        return Response(f"capabilities {len(runs)}", content_type="text/xml")

    def get(query: str) -> bytes:
        with Flask("t").test_request_context("/ows"):
            return cache.answer(query, engine).get_data()

    assert get("REQUEST=GetCapabilities") == b"capabilities 1"
    assert get("REQUEST=GetCapabilities") == b"capabilities 1" and len(runs) == 1
    assert get("SERVICE=WCS&REQUEST=GetCapabilities") == b"capabilities 2"
    # the same parameters in another order and case are the same request
    assert get("request=GetCapabilities&service=WCS") == b"capabilities 2" and len(runs) == 2
    replaced = tmp_path / "new.map"
    replaced.write_text("MAP END\n")
    replaced.replace(mapfile)  # as the publisher writes it: a new file renamed into place
    assert get("REQUEST=GetCapabilities") == b"capabilities 3" and len(runs) == 3
