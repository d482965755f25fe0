"""OGC conformance as real clients see it, against the real server (gunicorn, job workers,
MapServer behind /ows) over loopback.

* Every OGC API - Processes answer (landing page, conformance, process list and descriptions,
  execution sync and async, statusInfo in each state, job list, results, dismissal,
  exceptions) is validated against the official 1.0 schemas of ../shared/ogc (skipped, saying
  so, when they are absent), and checked for what the schemas cannot say.
* OWSLib runs a job asynchronously end to end and asks GetFeatureInfo in every format the WMS
  capabilities advertise; GDAL's WCS driver reads a coverage with the COG's georeferencing and
  NoData.
* Callbacks are received by an HTTP server of the test's own; one the allow-list refuses never
  arrives.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import rasterio.warp
import requests
from owslib.ogcapi.processes import Processes
from owslib.wms import WebMapService
from pyproj import Transformer
from rasterio.vrt import WarpedVRT

from tests.support.ogc_schemas import assert_valid, require_schemas
from tests.support.server import start_server

SPEC = "http://www.opengis.net/def/exceptions/ogcapi-processes-1/1.0/"
CONF = "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/"
FAST = {"image": {"href": "demo.tif"}, "method": "ndwi", "probability": False}
INFO_FORMATS = ["text/plain", "application/vnd.ogc.gml", "application/json"]


class Receiver:
    """An HTTP server on loopback keeping every POST it gets: (path, JSON body)."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path, json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait(self, path: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for got, body in list(self.received):
                if got == path:
                    return body
            time.sleep(0.1)
        raise TimeoutError(f"no callback to {path}: {[p for p, _ in self.received]}")



def damaged_tile(source: Path, target: Path) -> Path:
    """``source`` as a tiled DEFLATE GeoTIFF whose top-left tile's bytes are garbage."""
    rasterio.shutil.copy(source, target, driver="GTiff", tiled=True, blockxsize=256,
                         blockysize=256, compress="deflate")
    with rasterio.open(target) as tiff:  # pixel-interleaved: one block holds every band
        offset = int(tiff.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        size = int(tiff.get_tag_item("BLOCK_SIZE_0_0", "TIFF", bidx=1))
    with open(target, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * size)
    return target

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from aquamask.processes.demo import make_demo_scene

    home = tmp_path_factory.mktemp("ogc-server")
    data = home / "data"
    make_demo_scene(data / "demo.tif", size=256)
    make_demo_scene(data / "big.tif", size=2048)  # U-Net for several seconds: a running job
    # one damaged tile in a corner: the file opens and the pixels sampled at submission (for
    # the reflectance scale, away from the corners) read, so a job on it starts and fails
    # as it runs
    damaged_tile(make_demo_scene(home / "whole.tif", size=2048), data / "broken.tif")
    # the demo scene in lon/lat: a coverage whose steps (~9e-05 degrees) need every digit
    with rasterio.open(data / "demo.tif") as demo, WarpedVRT(demo, crs="EPSG:4326") as vrt:
        rasterio.shutil.copy(vrt, data / "geo.tif", driver="GTiff")
    receiver = Receiver()
    # one job at a time, so that a second waits (accepted); loopback callbacks by IP only
    server = start_server(home, {"AQUAMASK__JOBS__MAX_RUNNING": "1",
                                 "AQUAMASK__LIMITS__HREF_PRIVATE_HOSTS": '["127.0.0.1"]'})
    yield server, receiver
    server.stop()
    receiver.httpd.shutdown()


@pytest.fixture(scope="module")
def detection(site):
    """A synchronous water detection as a results document, shared by the checks below."""
    server, _ = site
    response = requests.post(f"{server.url}/processes/water-detection/execution",
                             json={"inputs": FAST, "response": "document"}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def geographic(site):
    """The same detection on the scene in EPSG:4326."""
    server, _ = site
    response = requests.post(f"{server.url}/processes/water-detection/execution",
                             json={"inputs": {**FAST, "image": {"href": "geo.tif"}},
                                   "response": "document"}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def get(url: str, status: int = 200, **kwargs) -> requests.Response:
    response = requests.get(url, timeout=30, **kwargs)
    assert response.status_code == status, response.text[:500]
    return response


def wait_until(url: str, states: tuple[str, ...], timeout: float = 120) -> dict:
    """Poll a job (each statusInfo schema-checked) until its status is one of ``states``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = get(url).json()
        assert_valid(info, "statusInfo")
        if info["status"] in states:
            return info
        time.sleep(0.1)
    raise TimeoutError(f"{url} never {states}")


def assert_exception(response: requests.Response, status: int, kind: str | None = None
                     ) -> dict:
    """An exception document of ``status`` (and of the spec's ``kind``), schema-valid."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert_valid(body, "exception")
    assert body["status"] == status and body["title"] and body["detail"]
    if kind:
        assert body["type"] == SPEC + kind, body
    return body


# -- discovery --------------------------------------------------------------------------------
def test_landing_page_and_conformance(site):
    server, _ = site
    require_schemas()
    assert_valid(get(server.url + "/?f=json").json(), "landingPage")
    classes = get(server.url + "/conformance").json()
    assert_valid(classes, "confClasses")
    for name in ("core", "ogc-process-description", "json", "oas30", "job-list", "dismiss",
                 "callback"):
        assert CONF + name in classes["conformsTo"], name
    # OGC API - Common's classes, as pygeoapi declares them: an OpenAPI 3.0 document, HTML
    # pages, and collections (none here: the layers are WMS/WCS)
    assert get(server.url + "/openapi?f=json").json()["openapi"].startswith("3.0")
    for path in ("/", "/processes", "/jobs"):
        page = get(server.url + path + "?f=html")
        assert page.headers["Content-Type"].startswith("text/html"), path
    assert get(server.url + "/collections?f=json").json()["collections"] == []


def test_process_list_descriptions_and_paging(site):
    server, _ = site
    require_schemas()
    listed = get(server.url + "/processes").json()
    assert_valid(listed, "processList")
    ids = [p["id"] for p in listed["processes"]]
    assert {"water-detection", "water-timeseries", "water-change", "water-frequency"} <= set(ids)
    for process_id in ids:
        description = get(f"{server.url}/processes/{process_id}").json()
        assert_valid(description, "process")
    # one per page: a next link to the second, and no more pages than processes
    seen, url = [], server.url + "/processes?limit=1"
    while url:
        page = get(url).json()
        seen += [p["id"] for p in page["processes"]]
        url = next((link["href"] for link in page["links"] if link["rel"] == "next"), None)
    assert seen == ids
    assert_exception(get(server.url + "/processes/nope", 404), 404, "no-such-process")


# -- execution --------------------------------------------------------------------------------
def test_sync_results_document(site, detection):
    server, _ = site
    require_schemas()
    assert_valid(detection, "results")
    declared = get(f"{server.url}/processes/water-detection").json()["outputs"]
    assert set(detection) <= set(declared)
    assert "probability" not in detection  # not made: not sent
    layer = detection["layer"]  # an object: a qualified value, never bare
    assert layer["mediaType"] == "application/json" and layer["value"]["name"]
    assert detection["mask"]["href"].startswith(server.url + "/results/")
    assert isinstance(detection["water_fraction"], float)


def test_outputs_response_and_transmission_mode(site):
    server, _ = site
    url = f"{server.url}/processes/water-detection/execution"
    # raw, one output by value: the value itself
    raw = requests.post(url, json={"inputs": FAST, "response": "raw",
                                   "outputs": {"water_fraction": {}}}, timeout=120)
    assert raw.status_code == 200, raw.text
    assert 0 < raw.json() < 1
    # raw, one file by reference: a redirect to the file
    ref = requests.post(url, json={"inputs": FAST, "outputs": {
        "mask": {"transmissionMode": "reference"}}}, timeout=120, allow_redirects=False)
    assert ref.status_code == 303 and "/results/" in ref.headers["Location"]
    # a document of the outputs asked for only: a file by value, a value by reference
    doc = requests.post(url, json={"inputs": FAST, "response": "document", "outputs": {
        "stac_item": {"transmissionMode": "value"},
        "water_area_km2": {"transmissionMode": "reference"}}}, timeout=120)
    assert doc.status_code == 200, doc.text
    body = doc.json()
    assert set(body) == {"stac_item", "water_area_km2"}
    assert body["stac_item"]["value"]["type"] == "Feature"
    assert get(body["water_area_km2"]["href"]).json() > 0
    # an output the process does not declare, or a bad mode: 400 before any job
    for outputs in ({"valid_pixels": {}}, {"mask": {"transmissionMode": "inline"}}):
        assert_exception(requests.post(url, json={"inputs": FAST, "outputs": outputs},
                                       timeout=30), 400)


def test_async_end_to_end_with_owslib_and_callbacks(site):
    server, receiver = site
    require_schemas()
    base = f"http://127.0.0.1:{receiver.port}"
    client = Processes(server.url)
    accepted = client.execute("water-detection", FAST, async_=True)
    assert_valid(accepted, "statusInfo")
    assert accepted["status"] == "accepted" and accepted["jobID"]
    assert not any(link["rel"].endswith("/results") for link in accepted["links"])
    job_url = f"{server.url}/jobs/{accepted['jobID']}"
    done = wait_until(job_url, ("successful", "failed"))
    assert done["status"] == "successful" and done["progress"] == 100, done
    assert "started" in done and "finished" in done
    assert any(link["rel"].endswith("/results") for link in done["links"])
    # results are JSON with no Accept and no f= (OWSLib's request, a bare requests.get)
    results = client._request(path=f"jobs/{accepted['jobID']}/results")
    assert_valid(results, "results")
    assert get(job_url + "/results").headers["Content-Type"].startswith("application/json")

    # OWSLib sends no subscriber: once more with callbacks, one of which the guard refuses
    # (localhost is not the allow-listed 127.0.0.1)
    subscribed = requests.post(
        f"{server.url}/processes/water-detection/execution",
        json={"inputs": FAST, "response": "document", "subscriber": {
            "successUri": f"{base}/success", "inProgressUri": f"{base}/running",
            "failedUri": f"http://localhost:{receiver.port}/refused"}},
        headers={"Prefer": "respond-async"}, timeout=30)
    assert subscribed.status_code == 201, subscribed.text
    assert subscribed.headers["Location"].endswith(subscribed.json()["jobID"])
    success = receiver.wait("/success")
    assert_valid(success, "results")
    assert success["mask"]["href"].startswith(server.url)
    running = receiver.wait("/running")
    assert_valid(running, "statusInfo")
    assert running["status"] == "running"
    failed = requests.post(
        f"{server.url}/processes/water-detection/execution",
        json={"inputs": {**FAST, "image": {"href": "broken.tif"}}, "subscriber": {
            "successUri": f"{base}/never", "failedUri": f"{base}/failed"}},
        headers={"Prefer": "respond-async"}, timeout=30)
    assert failed.status_code == 201, failed.text
    assert_valid(receiver.wait("/failed"), "exception")
    assert "/refused" not in [p for p, _ in receiver.received]
    # a scheme the href allow-list lacks, or a private address not allow-listed, is refused
    # before a job exists
    for refused in ("file:///etc/passwd", "http://169.254.169.254/latest/meta-data",
                    f"http://127.0.0.2:{receiver.port}/"):
        assert_exception(requests.post(
            f"{server.url}/processes/water-detection/execution",
            json={"inputs": FAST, "subscriber": {"successUri": refused}},
            headers={"Prefer": "respond-async"}, timeout=30), 403)


def test_status_info_in_every_state_and_dismissal(site):
    server, _ = site
    require_schemas()
    url = f"{server.url}/processes/water-detection/execution"
    async_ = {"Prefer": "respond-async"}
    big = requests.post(url, json={"inputs": {"image": {"href": "big.tif"}, "method": "unet",
                                              "probability": False}},
                        headers=async_, timeout=30)
    assert big.status_code == 201, big.text
    big_url = big.headers["Location"]
    running = wait_until(big_url, ("running",))
    assert isinstance(running["progress"], int) and "finished" not in running
    # the only slot is taken: the next job waits, accepted, not started
    queued = requests.post(url, json={"inputs": FAST}, headers=async_, timeout=30)
    assert queued.status_code == 201, queued.text
    info = queued.json()
    assert_valid(info, "statusInfo")
    assert info["status"] == "accepted" and "started" not in info and "finished" not in info
    assert_exception(get(queued.headers["Location"] + "/results", 404), 404,
                     "result-not-ready")
    for job_url in (queued.headers["Location"], big_url):
        dismissed = requests.delete(job_url, timeout=60)
        assert dismissed.status_code == 200, dismissed.text
        assert dismissed.headers["Content-Type"].startswith("application/json")
        body = dismissed.json()
        assert_valid(body, "statusInfo")
        assert body["status"] == "dismissed" and body["type"] == "process"
        assert_exception(get(job_url, 404), 404, "no-such-job")


def test_failed_job_and_exceptions(site):
    server, _ = site
    require_schemas()
    response = requests.post(f"{server.url}/processes/water-detection/execution",
                             json={"inputs": {**FAST, "image": {"href": "broken.tif"}}},
                             headers={"Prefer": "respond-async"}, timeout=30)
    assert response.status_code == 201, response.text
    failed = wait_until(response.headers["Location"], ("failed", "successful"))
    assert failed["status"] == "failed" and failed["message"]
    # its results are its failure: the reason, with its status
    results = requests.get(response.headers["Location"] + "/results", timeout=30)
    body = assert_exception(results, results.status_code)
    assert results.status_code >= 400 and body["detail"] == failed["message"]
    assert_exception(get(f"{server.url}/jobs/no-such-job", 404), 404, "no-such-job")
    assert_exception(requests.delete(f"{server.url}/jobs/no-such-job", timeout=30), 404,
                     "no-such-job")
    assert_exception(requests.post(f"{server.url}/processes/nope/execution",
                                   json={"inputs": FAST}, timeout=30), 404, "no-such-process")
    assert_exception(requests.post(f"{server.url}/processes/water-detection/execution",
                                   json={"inputs": FAST, "response": "multipart"},
                                   timeout=30), 400)
    bad = requests.post(f"{server.url}/processes/water-detection/execution",
                        data=b"{not json", headers={"Content-Type": "application/json"},
                        timeout=30)
    assert 400 <= bad.status_code < 500
    assert_valid(bad.json(), "exception")


def test_job_list_and_its_filters(site, detection):
    server, _ = site
    require_schemas()
    everything = get(server.url + "/jobs?limit=100").json()
    assert_valid(everything, "jobList")
    assert everything["jobs"], "the module's jobs are listed"
    for info in everything["jobs"]:
        assert_valid(info, "statusInfo")
    successful = get(server.url + "/jobs?status=successful&limit=100").json()["jobs"]
    assert successful and {j["status"] for j in successful} == {"successful"}
    assert get(server.url + "/jobs?processID=water-change").json()["jobs"] == []
    assert get(server.url + "/jobs?type=process&limit=100").json()["jobs"]
    assert get(server.url + "/jobs?type=openeo").json()["jobs"] == []
    one = get(server.url + "/jobs?limit=1").json()
    assert len(one["jobs"]) == 1 and any(link["rel"] == "next" for link in one["links"])
    assert_exception(get(server.url + "/jobs?status=bogus", 400), 400)


# -- WMS GetFeatureInfo, WCS through GDAL -----------------------------------------------------
def test_get_feature_info_in_every_advertised_format(site, detection):
    server, _ = site
    name = detection["layer"]["value"]["name"]
    wms = WebMapService(f"{server.url}/ows", version="1.3.0")
    # a title that says what the layer is: process, method, input and when it ran
    title = wms.contents[name].title
    assert title.startswith("Water detection (ndwi): demo.tif, run 20"), title
    assert title.endswith(" UTC") and name not in title
    formats = wms.getOperationByName("GetFeatureInfo").formatOptions
    assert sorted(formats) == sorted(INFO_FORMATS)
    with rasterio.open(f"/vsicurl/{detection['mask']['href']}") as mask:
        classes = mask.read(1)
        to_mask = Transformer.from_crs("EPSG:3857", mask.crs, always_xy=True)
        west, south, east, north = Transformer.from_crs(
            mask.crs, "EPSG:3857", always_xy=True).transform_bounds(*mask.bounds)
        size = 64
        # a water pixel and a dry one, as the mask has them
        found: dict[int, tuple[int, int]] = {}
        for j in range(4, size - 4, 3):
            for i in range(4, size - 4, 3):
                x = west + (i + 0.5) * (east - west) / size
                y = north - (j + 0.5) * (north - south) / size
                row, col = mask.index(*to_mask.transform(x, y))
                if 0 <= row < mask.height and 0 <= col < mask.width:
                    found.setdefault(int(classes[row, col]), (i, j))
    assert {0, 1} <= set(found), found
    for value in (0, 1):
        for info_format in formats:
            answer = wms.getfeatureinfo(
                layers=[name], query_layers=[name], srs="EPSG:3857",
                bbox=(west, south, east, north), size=(size, size), format="image/png",
                info_format=info_format, xy=found[value]).read()
            assert pixel_value(answer, info_format) == value, (info_format, answer[:300])


def pixel_value(answer: bytes, info_format: str) -> int:
    """The class a GetFeatureInfo answer gives its pixel."""
    if info_format == "application/json":
        (feature,) = json.loads(answer)["features"]
        return int(float(feature["properties"]["value_0"]))
    if info_format == "application/vnd.ogc.gml":
        values = [e.text for e in ET.fromstring(answer).iter() if e.tag.endswith("value_0")]
        assert len(values) == 1, answer
        return int(float(values[0] or "nan"))
    text = answer.decode()
    assert text.startswith("GetFeatureInfo results"), text
    (line,) = [line for line in text.splitlines() if line.strip().startswith("value_0")]
    return int(float(line.split("=")[1].strip().strip("'")))


@pytest.mark.parametrize("job", ["detection", "geographic"])
def test_gdal_wcs_driver_reads_the_cog_grid_and_nodata(site, job, request, tmp_path):
    """GDAL's WCS client puts the coverage on the COG's grid (DescribeCoverage's origin and
    offsets are exact) and reads its pixels. GDAL (3.10 here) takes a band's NoData only from
    a ``swe:nilValues/swe:NilValue`` the SWE schema does not have, not from the standard
    ``swe:nilValues/swe:NilValues/swe:nilValue`` MapServer writes, so NoData is checked where a
    client finds it: in the description, and in the GeoTIFF GetCoverage answers."""
    server, _ = site
    detection = request.getfixturevalue(job)
    name = detection["layer"]["value"]["name"]
    source = f"WCS:{server.url}/ows?version=2.0.1&coverage={name}"
    with rasterio.Env(GDAL_HTTP_TIMEOUT="30"), rasterio.open(
            source, CACHE=str(tmp_path / "wcs-cache")) as wcs, \
            rasterio.open(f"/vsicurl/{detection['mask']['href']}") as cog:
        assert wcs.crs == cog.crs
        assert (wcs.width, wcs.height) == (cog.width, cog.height)
        a, b = wcs.transform, cog.transform
        # origin and steps within 0.01 pixel
        assert abs(a.c - b.c) < 0.01 * abs(b.a) and abs(a.f - b.f) < 0.01 * abs(b.e), (a, b)
        assert a.a == pytest.approx(b.a, rel=1e-6) and a.e == pytest.approx(b.e, rel=1e-6)
        assert np.array_equal(wcs.read(1), cog.read(1))
        assert cog.nodata == 255
    system_gdal = shutil.which("gdalinfo")
    if system_gdal:  # the system's GDAL too (3.6 on Debian 12, QGIS's)
        found = subprocess.run([system_gdal, "-json", "-oo", f"CACHE={tmp_path / 'cache-36'}",
                                source], capture_output=True, text=True, timeout=60)
        assert found.returncode == 0, found.stderr
        origin_x, step_x, _, origin_y, _, step_y = json.loads(found.stdout)["geoTransform"]
        assert abs(origin_x - b.c) < 0.01 * abs(b.a) and abs(origin_y - b.f) < 0.01 * abs(b.e)
        assert step_x == pytest.approx(b.a, rel=1e-6) and step_y == pytest.approx(b.e, rel=1e-6)
    ows = f"{server.url}/ows?SERVICE=WCS&VERSION=2.0.1"
    described = ET.fromstring(get(f"{ows}&REQUEST=DescribeCoverage&COVERAGEID={name}").content)
    nils = [e.text for e in described.iter("{http://www.opengis.net/swe/2.0}nilValue")]
    assert nils == ["255"]
    coverage = get(f"{ows}&REQUEST=GetCoverage&COVERAGEID={name}&FORMAT=image/tiff")
    with rasterio.MemoryFile(coverage.content) as memory, memory.open() as tiff:
        assert tiff.nodata == 255 and tiff.transform.almost_equals(b)


def test_wcs_capabilities_give_each_coverage_a_wgs84_box(site, detection):
    server, _ = site
    name = detection["layer"]["value"]["name"]
    caps = ET.fromstring(get(f"{server.url}/ows?SERVICE=WCS&VERSION=2.0.1"
                             "&REQUEST=GetCapabilities").content)
    ns = {"wcs": "http://www.opengis.net/wcs/2.0", "ows": "http://www.opengis.net/ows/2.0"}
    (summary,) = [s for s in caps.iter(f"{{{ns['wcs']}}}CoverageSummary")
                  if s.findtext("wcs:CoverageId", namespaces=ns) == name]
    west, south = map(float, summary.findtext("ows:WGS84BoundingBox/ows:LowerCorner",
                                              namespaces=ns).split())
    east, north = map(float, summary.findtext("ows:WGS84BoundingBox/ows:UpperCorner",
                                              namespaces=ns).split())
    with rasterio.open(f"/vsicurl/{detection['mask']['href']}") as cog:
        box = rasterio.warp.transform_bounds(cog.crs, "EPSG:4326", *cog.bounds)
    assert (west, south, east, north) == pytest.approx(box, abs=1e-6)



def test_not_found_is_logged_without_a_traceback(site):
    server, _ = site
    log = server.home / "server.log"
    before = log.read_text().count("Traceback")
    missing = "0b1ec7ed-0000-4000-8000-000000000404"
    for path in (f"/jobs/{missing}", f"/jobs/{missing}/results", f"/processes/{missing}",
                 f"/collections/{missing}", f"/results/{missing}/mask.tif"):
        assert requests.get(server.url + path, timeout=30).status_code == 404, path
    time.sleep(0.5)  # the log is written by the server's processes
    text = log.read_text()
    assert text.count("Traceback") == before
    assert not [line for line in text.splitlines() if " ERROR " in line and missing in line]
    assert [line for line in text.splitlines() if "INFO" in line and missing in line]
