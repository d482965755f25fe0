"""The water-detection journey against a real server: gunicorn in a subprocess serving
pygeoapi, real HTTP on loopback, real job worker processes, real MapServer behind /ows.

The Sen1Floods11 Spain chip (../shared/data) is the real, hand-labelled fixture; tests that need
it skip with the reason when it is absent.
"""
from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import time

import numpy as np
import pytest
import rasterio
import requests
from owslib.wcs import WebCoverageService
from owslib.wms import WebMapService
from PIL import Image
from rio_cogeo.cogeo import cog_validate

from aquamask.model.indices import ndwi
from aquamask.processes.pipeline.products import SCENE_FILE
from aquamask.processes.styles import SCENE_VIEWS, STRETCH_TAG
from tests.support.server import SPAIN_IMAGE, SPAIN_LABEL, require_spain


def iou(pred: np.ndarray, label: np.ndarray) -> float:
    valid = label >= 0
    p, t = pred[valid] == 1, label[valid] == 1
    return float((p & t).sum() / (p | t).sum())


def fetch_raster(url: str, tmp_path, name: str) -> str:
    path = tmp_path / name
    response = requests.get(url, timeout=60)
    assert response.status_code == 200, response.text
    path.write_bytes(response.content)
    return str(path)


@pytest.fixture(scope="module")
def spain_job(server):
    """One synchronous execution on the Spain chip, shared by the checks below."""
    require_spain()
    response = server.execute({"image": {"href": SPAIN_IMAGE.name}})
    assert response.status_code == 200, response.text
    return response.json()


def test_sync_execution_gives_a_valid_cog_aligned_with_the_input(spain_job, tmp_path):
    mask_path = fetch_raster(spain_job["mask"]["href"], tmp_path, "mask.tif")
    valid, errors, _ = cog_validate(mask_path, quiet=True)
    assert valid, errors
    with rasterio.open(mask_path) as mask, rasterio.open(SPAIN_IMAGE) as image:
        assert mask.crs == image.crs
        assert mask.transform.almost_equals(image.transform)
        assert (mask.width, mask.height) == (image.width, image.height)
        assert mask.dtypes[0] == "uint8" and mask.nodata == 255
        assert mask.overviews(1), "a COG carries overviews"
        assert mask.colormap(1)[1][:3] == (0, 112, 255)
        assert set(np.unique(mask.read(1))) <= {0, 1, 255}


def spain_ious(spain_job, tmp_path) -> tuple[float, float]:
    """The served mask's water IoU on the hand label, and NDWI > 0's."""
    mask_path = fetch_raster(spain_job["mask"]["href"], tmp_path, "mask.tif")
    with rasterio.open(mask_path) as mask, rasterio.open(SPAIN_LABEL) as label, \
            rasterio.open(SPAIN_IMAGE) as image:
        predicted, truth = mask.read(1), label.read(1)
        green, nir = image.read(3).astype("float32"), image.read(8).astype("float32")
    return iou(predicted, truth), iou((ndwi(green, nir) > 0).astype(np.uint8), truth)


def test_the_served_mask_scores_on_the_hand_labelled_chip(spain_job, tmp_path):
    """The pipeline's mask (blocks, threshold, COG) scores what evaluate measures for the
    default model (docs/model.md: 0.674), within a point of NDWI."""
    model, baseline = spain_ious(spain_job, tmp_path)
    assert model > 0.65 and model > baseline - 0.01, (model, baseline)


@pytest.mark.xfail(strict=True, reason="issue #21: on the 10 m Spain chip the default model "
                   "(trained on 30 m chips only) is level with NDWI, not ahead")
def test_model_beats_ndwi_on_the_hand_labelled_chip(spain_job, tmp_path):
    model, baseline = spain_ious(spain_job, tmp_path)
    assert model > baseline, f"U-Net IoU {model:.3f} <= NDWI IoU {baseline:.3f}"


def test_statistics_and_provenance(spain_job):
    assert 0 < spain_job["water_fraction"] < 1
    assert spain_job["valid_fraction"] > 0.99
    # 512 x 512 pixels of ~10 m x 7.9 m near 38° N: ~20.6 km² in all, 26.7 % water by the label
    assert 3 < spain_job["water_area_km2"] < 8
    assert spain_job["valid_area_km2"] == pytest.approx(20.59, rel=0.01)
    item = requests.get(spain_job["stac_item"]["href"], timeout=10).json()
    lineage = item["properties"]["aquamask:lineage"]
    assert lineage["input"]["href"] == SPAIN_IMAGE.name
    assert len(lineage["input"]["sha256"]) == 64
    assert lineage["model"]["name"] and lineage["model"]["version"]
    assert len(lineage["model"]["weights_sha256"]) == 64
    assert lineage["parameters"]["threshold"] == 0.5
    assert item["properties"]["processing:software"]["aquamask"]
    assert item["assets"]["mask"]["href"] == "./mask.tif"


def test_wms_getmap_draws_water_blue_and_dry_transparent(spain_job, server, tmp_path):
    layer = spain_job["layer"]["value"]
    wms = WebMapService(f"{server.url}/ows", version="1.3.0")
    assert layer["name"] in wms.contents
    mask_path = fetch_raster(spain_job["mask"]["href"], tmp_path, "mask.tif")
    with rasterio.open(mask_path) as mask:
        classes = mask.read(1)
        west, south, east, north = mask.bounds
    size = classes.shape[0]
    image = wms.getmap(layers=[layer["name"]], srs="EPSG:4326",
                       bbox=(west, south, east, north),  # OWSLib swaps to lat,lon itself
                       size=(size, size), format="image/png", transparent=True)
    rgba = np.asarray(Image.open(io.BytesIO(image.read())).convert("RGBA"))
    water_rows, water_cols = np.nonzero(classes == 1)
    dry_rows, dry_cols = np.nonzero(classes == 0)
    # pick pixels well inside their class so resampling cannot blur them
    for rows, cols, want_water in ((water_rows, water_cols, True), (dry_rows, dry_cols, False)):
        for r, c in zip(rows[::997], cols[::997]):
            if (classes[max(r - 2, 0):r + 3, max(c - 2, 0):c + 3] == classes[r, c]).all():
                pixel = rgba[r, c]
                if want_water:
                    assert pixel[3] > 200 and pixel[2] > 200 and pixel[0] < 50, pixel
                else:
                    assert pixel[3] == 0, pixel
                break


def test_the_input_scene_is_published_under_the_mask_stretched(spain_job, server):
    """Each view of the scene draws its COG's bands stretched from their 2-98 % range."""
    name = spain_job["layer"]["value"]["name"]
    wms = WebMapService(f"{server.url}/ows", version="1.3.0")
    with rasterio.open(server.results / name.removeprefix("water-") / SCENE_FILE) as src:
        data = {band: src.read(i + 1).astype(float) for i, band in enumerate(src.descriptions)}
        stretch = json.loads(src.tags()[STRETCH_TAG])
        srs, bounds, size = f"EPSG:{src.crs.to_epsg()}", tuple(src.bounds), (src.width,
                                                                             src.height)
    valid = data["B04"] > 0
    for view, (title, bands) in SCENE_VIEWS.items():
        layer = f"{name}--{view}"
        assert layer in wms.contents and wms[layer].title.startswith(title)
        image = wms.getmap(layers=[layer], srs=srs, bbox=bounds, size=size,
                           format="image/png", transparent=True)
        rgba = np.asarray(Image.open(io.BytesIO(image.read())).convert("RGBA")).astype(float)
        assert (rgba[..., 3][valid] == 255).all()
        for channel, band in enumerate(bands):
            low, high = stretch[band]
            want = np.clip((data[band] - low) / (high - low) * 255, 0, 255)
            assert np.median(np.abs(rgba[..., channel] - want)[valid]) <= 2, (view, band)


def test_wcs_getcoverage_returns_the_mask_values(spain_job, server, tmp_path):
    layer = spain_job["layer"]["value"]
    coverage = fetch_raster(layer["getcoverage"], tmp_path, "coverage.tif")
    mask_path = fetch_raster(spain_job["mask"]["href"], tmp_path, "mask.tif")
    with rasterio.open(coverage) as cov, rasterio.open(mask_path) as mask:
        assert cov.shape == mask.shape
        assert np.array_equal(cov.read(1), mask.read(1))
    wcs = WebCoverageService(f"{server.url}/ows", version="2.0.1")
    assert layer["name"] in wcs.contents


def test_async_execution_reports_progress_and_results(server):
    response = server.execute({"image": {"href": "demo/demo-scene.tif"}, "method": "unet"},
                              asynchronous=True)
    assert response.status_code == 201, response.text
    job_url = response.headers["Location"]
    status, progress = server.wait_job(job_url)
    assert status["status"] == "successful", status
    assert progress == sorted(progress), "progress never goes backwards"
    assert status["progress"] == 100
    results = requests.get(f"{job_url}/results?f=json", timeout=10).json()
    assert results["water_fraction"] > 0.1
    listing = requests.get(f"{server.url}/jobs", timeout=10).json()
    assert status["jobID"] in [j["jobID"] for j in listing["jobs"]]




@pytest.mark.parametrize("inputs,status,text", [
    ({"image": {"href": "../../etc/passwd"}}, 403, "outside the data root"),
    ({"image": {"href": "/etc/passwd"}}, 403, "outside the data root"),
    ({"image": {"href": "nope.tif"}}, 400, "no such file"),
    ({"image": {"href": "demo/demo-scene.tif"}, "threshold": 2}, 400, "between 0 and 1"),
    ({"image": {"href": "demo/demo-scene.tif"}, "method": "guess"}, 400, "method"),
    ({}, 400, "'image' is required"),
])
def test_bad_inputs_are_ogc_exceptions_and_leave_nothing(server, inputs, status, text):
    before = sorted(p.name for p in server.results.iterdir())
    jobs_before = server.job_count()
    response = server.execute(inputs)
    assert response.status_code == status, response.text
    body = response.json()
    assert text in body["description"] and body["code"]
    assert sorted(p.name for p in server.results.iterdir()) == before
    assert server.job_count() == jobs_before


def test_images_are_checked_before_a_job_exists(server):
    """Band count and size are read from the file's header before any job is stored."""
    with rasterio.open(server.data_root / "two-bands.tif", "w", driver="GTiff", width=8,
                       height=8, count=2, dtype="int16", crs="EPSG:4326",
                       transform=rasterio.transform.from_origin(0, 1, 0.1, 0.1)) as dst:
        dst.write(np.ones((2, 8, 8), np.int16))
    (server.data_root / "junk.tif").write_text("not a raster")
    jobs_before = server.job_count()
    response = server.execute({"image": {"href": "two-bands.tif"}})
    assert response.status_code == 400, response.text
    assert "2 bands" in response.json()["description"]
    response = server.execute({"image": {"href": "junk.tif"}}, asynchronous=True)
    assert response.status_code == 400 and "cannot be read" in response.json()["description"]
    assert server.job_count() == jobs_before


def test_images_over_the_pixel_limit_are_413(server, data_files):
    from aquamask.processes.demo import make_demo_scene
    data_files.append(server.data_root / "huge.tif")
    make_demo_scene(server.data_root / "huge.tif", size=2400)  # 5.76 Mpx > the 5 Mpx limit
    response = server.execute({"image": {"href": "huge.tif"}})
    assert response.status_code == 413, response.text
    assert "at most 5,000,000" in response.json()["description"]


def _job_pid(server, job_id: str) -> int:
    with sqlite3.connect(server.home / "jobs.sqlite") as db:
        return db.execute("select pid from jobs where identifier = ?", (job_id,)).fetchone()[0]


@pytest.fixture
def big_scene(server, data_files) -> str:
    """A 2048² scene in the session server's data root, removed after the test (the viewer's
    tests pick scenes from that folder)."""
    from aquamask.processes.demo import make_demo_scene
    path = server.data_root / "big" / "scene.tif"
    make_demo_scene(path, size=2048)
    data_files.append(path)
    return "big/scene.tif"


def _wait_running(server, job_url: str) -> None:
    deadline = time.monotonic() + 60
    while requests.get(job_url, timeout=10).json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_dismissing_a_running_job_stops_it_and_removes_everything(server, big_scene):
    response = server.execute({"image": {"href": big_scene}}, asynchronous=True)
    job_url = response.headers["Location"]
    job_id = job_url.rsplit("/", 1)[1]
    _wait_running(server, job_url)
    pid = _job_pid(server, job_id)
    dismissed = requests.delete(job_url, timeout=30)
    assert dismissed.status_code == 200 and dismissed.json()["status"] == "dismissed"
    assert requests.get(job_url, timeout=10).status_code == 404
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.05)
    assert not [p for p in server.results.iterdir() if job_id in p.name]


def test_a_killed_worker_ends_the_job_failed_with_the_reason(server, big_scene):
    response = server.execute({"image": {"href": big_scene}}, asynchronous=True)
    job_url = response.headers["Location"]
    job_id = job_url.rsplit("/", 1)[1]
    _wait_running(server, job_url)
    os.kill(_job_pid(server, job_id), signal.SIGKILL)
    status, _ = server.wait_job(job_url, timeout=30)
    assert status["status"] == "failed"
    assert "ended without finishing" in status["message"]
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200


def test_the_probability_output_can_be_left_out(server):
    response = server.execute({"image": {"href": "demo/demo-scene.tif"}, "method": "ndwi",
                               "probability": False})
    assert response.status_code == 200, response.text
    outputs = response.json()
    assert "probability" not in outputs
    job_id = outputs["mask"]["href"].split("/")[-2]
    assert not (server.results / job_id / "probability.tif").exists()
    item = requests.get(outputs["stac_item"]["href"], timeout=10).json()
    assert set(item["assets"]) == {"mask", "qgis_style", "sld", "gdal_metadata"}
    bad = server.execute({"image": {"href": "demo/demo-scene.tif"}, "probability": "no"})
    assert bad.status_code == 400 and "true or false" in bad.json()["description"]


def _job_record(server, job_id: str) -> dict:
    from aquamask.processes.storage.jobstore import JobStore
    return JobStore(f"sqlite:///{server.home}/jobs.sqlite").get(job_id)


def test_small_sync_jobs_run_in_the_web_worker_and_large_ones_in_a_worker_process(server,
                                                                                big_scene):
    web_workers = {int(p) for p in subprocess.run(
        ["pgrep", "-P", str(server.process.pid)], capture_output=True, text=True).stdout.split()}
    small = server.execute({"image": {"href": "demo/demo-scene.tif"}, "method": "ndwi"})
    assert small.status_code == 200, small.text
    record = _job_record(server, small.json()["mask"]["href"].split("/")[-2])
    assert record["runner"] == "inline" and record["pid"] in web_workers
    assert record["status"] == "successful" and record["progress"] == 100
    large = server.execute({"image": {"href": big_scene}, "method": "ndwi",
                            "probability": False})  # 2048² px: over jobs.inline_max_pixels
    assert large.status_code == 200, large.text
    record = _job_record(server, large.json()["mask"]["href"].split("/")[-2])
    assert record["runner"] == "fork" and record["pid"] not in web_workers
