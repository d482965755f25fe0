"""/ows: WMS 1.3.0 and WCS 2.0.1 of published masks through the gateway and MapServer's FastCGI
pool, via Flask's test client and via OWSLib against a real HTTP server on loopback. Real
MapServer, a real job store, no mocks."""
from __future__ import annotations

import re
import threading

import numpy as np
import pytest
import rasterio
from rasterio.io import MemoryFile
from rasterio.warp import transform_bounds
from werkzeug.serving import make_server

from tests.support.mapserver import (
    BLUE,
    DRY_PIXEL,
    NODATA_PIXEL,
    WATER_PIXEL,
    catalogue_at,
    coverage_ids,
    image_pixel,
    layer_names,
    ows_app,
    png_rgba,
)

CRSS = ["EPSG:32630", "EPSG:4326"]


@pytest.fixture(scope="module")
def published(tmp_path_factory, masks):
    """One catalogue with both masks: ``utm`` (EPSG:32630) and ``geo`` (EPSG:4326)."""
    catalogue = catalogue_at(tmp_path_factory.mktemp("ows"))
    catalogue.publish(masks["EPSG:32630"], "utm", title="UTM mask")
    catalogue.publish(masks["EPSG:4326"], "geo", title="Geographic mask")
    return catalogue


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
    # GDAL 3.6's WCS driver asks for the XML it gets; any other format is still refused
    assert get(client, SERVICE="WCS", VERSION="2.0.1", REQUEST="DescribeCoverage",
               COVERAGEID="water-utm", FORMAT="text/xml").data == described.data
    assert get(client, SERVICE="WCS", VERSION="2.0.1", REQUEST="DescribeCoverage",
               COVERAGEID="water-utm", FORMAT="image/png").status_code == 400


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


def test_wcs_errors_keep_their_status_and_document(client):
    response = get(client, SERVICE="WCS", VERSION="2.0.1", REQUEST="DescribeCoverage",
                   COVERAGEID="water-nope")
    assert response.status_code == 404
    assert b"ExceptionReport" in response.data and b"NoSuchCoverage" in response.data
    response = get(client, SERVICE="WCS", VERSION="2.0.1", REQUEST="GetCoverage",
                   COVERAGEID="water-utm", SUBSET="E(0,1)")
    assert response.status_code in (400, 404) and b"InvalidAxisLabel" in response.data


def test_wms_errors_are_service_exceptions_with_a_4xx(client):
    response = get(client, SERVICE="WMS", VERSION="1.3.0", REQUEST="GetMap", LAYERS="water-nope",
                   STYLES="", CRS="EPSG:4326", BBOX="0,0,1,1", WIDTH=10, HEIGHT=10,
                   FORMAT="image/png")
    assert response.status_code == 400
    assert response.content_type.startswith("text/xml")
    assert b"ServiceException" in response.data and b"LayerNotDefined" in response.data
    # one that MapServer itself raises (a CRS the layer does not offer) is a 4xx too
    response = get(client, SERVICE="WMS", VERSION="1.3.0", REQUEST="GetMap", LAYERS="water-geo",
                   STYLES="", CRS="EPSG:2154", BBOX="0,0,1,1", WIDTH=10, HEIGHT=10,
                   FORMAT="image/png")
    assert response.status_code == 400 and b"Invalid CRS" in response.data


def test_errors_show_no_server_path(client, published):
    for query in ("foo=bar", "SERVICE=WMS&REQUEST=GetMap&VERSION=1.3.0&LAYERS=water-geo",
                  "SERVICE=WCS&VERSION=2.0.1&REQUEST=GetCoverage&COVERAGEID=water-geo"
                  "&SUBSET=Lat(90,91)"):
        response = client.get(f"/ows?{query}")
        assert 400 <= response.status_code < 500, query
        assert b"Exception" in response.data, query
        assert str(published.settings.home).encode() not in response.data, query


def test_post_form_works_and_xml_is_refused(client):
    form = client.post("/ows", data={"SERVICE": "WMS", "VERSION": "1.3.0",
                                     "REQUEST": "GetCapabilities"})
    assert form.status_code == 200 and layer_names(form.data) == ["water-utm", "water-geo"]
    xml = ('<?xml version="1.0"?><wcs:DescribeCoverage xmlns:wcs="http://www.opengis.net/wcs/2.0"'
           ' service="WCS" version="2.0.1"><wcs:CoverageId>water-geo</wcs:CoverageId>'
           '</wcs:DescribeCoverage>')
    refused = client.post("/ows", data=xml, content_type="text/xml")
    assert refused.status_code == 415 and b"OperationNotSupported" in refused.data
    assert client.post("/ows", data=b"x", content_type="image/png").status_code == 415
    big = client.post("/ows", data="SERVICE=WMS&REQUEST=GetCapabilities&x=" + "a" * 200_000,
                      content_type="application/x-www-form-urlencoded")
    assert big.status_code == 413 and b"Exception" in big.data


def test_missing_binary_is_a_503(tmp_path, masks):
    catalogue = catalogue_at(tmp_path, AQUAMASK__MAPSERVER__BINARY=str(tmp_path / "none"))
    response = ows_app(catalogue).test_client().get("/ows?SERVICE=WMS&REQUEST=GetCapabilities")
    assert response.status_code == 503
    assert b"ExceptionReport" in response.data and b"not available" in response.data


def test_a_map_engine_past_its_timeout_is_killed_and_a_503(tmp_path):
    slow = tmp_path / "slow-mapserv"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    catalogue = catalogue_at(tmp_path, AQUAMASK__MAPSERVER__BINARY=str(slow),
                             AQUAMASK__MAPSERVER__TIMEOUT="0.5",
                             AQUAMASK__MAPSERVER__PROCESSES="1")
    client = ows_app(catalogue).test_client()
    response = client.get("/ows?SERVICE=WMS&REQUEST=GetCapabilities")
    assert response.status_code == 503 and b"did not answer" in response.data
    import subprocess
    alive = subprocess.run(["pgrep", "-f", str(slow)], capture_output=True, text=True)
    assert alive.stdout.strip() == ""  # the stuck process was killed, not left behind


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, masks):
    """A real HTTP server on loopback whose base URL is that server, so the capabilities
    advertise URLs that OWSLib can follow."""
    listener = make_server("127.0.0.1", 0, None, threaded=True)
    url = f"http://127.0.0.1:{listener.server_port}"
    catalogue = catalogue_at(tmp_path_factory.mktemp("live"), url)
    catalogue.publish(masks["EPSG:32630"], "utm")
    catalogue.publish(masks["EPSG:4326"], "geo")
    listener.app = ows_app(catalogue)
    thread = threading.Thread(target=listener.serve_forever, daemon=True)
    thread.start()
    yield url
    listener.shutdown()
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


def test_owslib_wms_111(live_server, masks):
    from owslib.wms import WebMapService

    wms = WebMapService(f"{live_server}/ows", version="1.1.1", timeout=30)
    west, south, east, north = masks["EPSG:4326"].bbox_wgs84
    image = wms.getmap(layers=["water-geo"], styles=[""], srs="EPSG:4326",
                       bbox=(west, south, east, north), size=(128, 128), format="image/png",
                       transparent=True)
    assert (png_rgba(image.read())[..., :3] == BLUE).all(axis=-1).any()


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


def test_sizes_are_capped_by_configuration_not_by_what_is_published(tmp_path):
    """WMS images up to mapserver.max_image_size; MAXSIZE (WCS) is mapserver.max_size, whatever
    was published: a 1-pixel-high strip 5000 px wide raises it for nobody."""
    from tests.support.mapserver import write_mask_cog

    big = write_mask_cog(tmp_path / "big" / "mask.tif", "EPSG:4326")
    with rasterio.open(big.path) as src:
        profile = dict(src.profile, width=5000, height=16, blockxsize=512, blockysize=16)
    wide = tmp_path / "wide.tif"
    with rasterio.open(wide, "w", **profile) as dst:
        dst.write(np.ones((1, 16, 5000), np.uint8))
    catalogue = catalogue_at(tmp_path / "home", AQUAMASK__MAPSERVER__MAX_SIZE="4800")
    catalogue.add_job("wide")
    from aquamask.processes.publishing import service as publishing
    from tests.support.mapserver import make_product
    product = make_product(big, "wide")
    product.mask_cog = wide
    publishing.publish(product, catalogue.settings)
    mapfile = catalogue.publisher.layer_mapfile(catalogue.store.layer("wide"))
    assert "MAXSIZE 4800" in mapfile.read_text()
    client = ows_app(catalogue).test_client()
    coverage = get(client, SERVICE="WCS", VERSION="2.0.1", REQUEST="GetCoverage",
                   COVERAGEID="water-wide", FORMAT="image/tiff")
    assert coverage.status_code >= 400 and b"MAXSIZE" in coverage.data  # 5000 > 4800
    part = get(client, SERVICE="WCS", VERSION="2.0.1", REQUEST="GetCoverage",
               COVERAGEID="water-wide", FORMAT="image/tiff", SCALESIZE="Long(2500),Lat(8)")
    assert part.status_code == 200, part.data
    assert read_tiff(part.data)[0].shape == (8, 2500)
    for width in ("4097", "8192abc", "1e4", "-1", "0x100", "4096.5"):
        too_big = get(client, SERVICE="WMS", VERSION="1.3.0", REQUEST="GetMap",
                      LAYERS="water-wide", STYLES="", CRS="EPSG:4326", BBOX="42,-3,43,-2",
                      WIDTH=width, HEIGHT=10, FORMAT="image/png")
        assert too_big.status_code == 400 and b"WIDTH" in too_big.data, width
    scaled = get(client, SERVICE="WCS", VERSION="2.0.1", REQUEST="GetCoverage",
                 COVERAGEID="water-wide", SCALESIZE="Long(99999),Lat(8)")
    assert scaled.status_code == 400


def test_capabilities_revalidate_with_an_etag_that_a_publish_changes(tmp_path, masks):
    catalogue = catalogue_at(tmp_path)
    catalogue.publish(masks["EPSG:4326"], "first")
    client = ows_app(catalogue).test_client()
    caps = "/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities"
    first = client.get(caps)
    etag = first.headers["ETag"]
    assert first.status_code == 200 and layer_names(first.data) == ["water-first"] and etag
    assert "no-cache" in first.headers["Cache-Control"]
    assert "Authorization" in first.headers["Vary"]
    again = client.get(caps)
    assert again.data == first.data and again.headers["ETag"] == etag
    unchanged = client.get(caps, headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and not unchanged.data
    wcs = client.get("/ows?SERVICE=WCS&VERSION=2.0.1&REQUEST=GetCapabilities")
    assert wcs.headers["ETag"] != etag and coverage_ids(wcs.data) == ["water-first"]
    catalogue.publish(masks["EPSG:32630"], "second")
    after = client.get(caps, headers={"If-None-Match": etag})
    assert after.status_code == 200 and after.headers["ETag"] != etag
    assert layer_names(after.data) == ["water-first", "water-second"]


def test_map_tiles_revalidate_with_etags_until_the_layer_is_published_again(tmp_path, masks):
    catalogue = catalogue_at(tmp_path)
    catalogue.publish(masks["EPSG:4326"], "tiles")
    client = ows_app(catalogue).test_client()
    tile = ("/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS=water-tiles&STYLES="
            "&CRS=EPSG:3857&BBOX=-340000,5300000,-320000,5320000&WIDTH=256&HEIGHT=256"
            "&FORMAT=image/png&TRANSPARENT=TRUE")
    first = client.get(tile)
    etag = first.headers["ETag"]
    assert first.status_code == 200 and etag and "max-age" in first.headers["Cache-Control"]
    assert "private" in first.headers["Cache-Control"]
    again = client.get(tile, headers={"If-None-Match": etag})
    assert again.status_code == 304 and not again.data
    other = client.get(tile.replace("WIDTH=256&HEIGHT=256", "WIDTH=128&HEIGHT=128"),
                       headers={"If-None-Match": etag})
    assert other.status_code == 200 and other.headers["ETag"] != etag
    catalogue.publish(masks["EPSG:4326"], "tiles", title="published again")
    assert client.get(tile, headers={"If-None-Match": etag}).status_code == 200
