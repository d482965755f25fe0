"""Results on an object store through the real server (gunicorn, job workers, MapServer behind
/ows, real HTTP on loopback): ``paths.results`` is ``s3://<bucket>/results`` and no results
folder exists. Jobs upload their COGs and STAC item; the server streams them from the store at
/results (range requests too), MapServer draws them from /vsis3/, dismissal deletes the
objects, and a store that goes down fails the job with a clear message and loses nothing.

The S3 store is moto's S3 server on loopback (tests/support/objectstore.py): it implements the S3
REST API that s3fs and GDAL's /vsis3/ speak, and stands in for S3 because no real object store can
run here."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
import rasterio
import requests
from PIL import Image
from rio_cogeo.cogeo import cog_validate

from aquamask.processes.pipeline.products import SCENE_FILE
from aquamask.processes.styles import style_files
from tests.support.server import job_id_of, start_server

# a water mask's objects: the COGs, the scene's display bands (scene views), the STAC item and
# the style files beside the mask
MASK_FILES = sorted(["item.json", "mask.tif", "probability.tif", SCENE_FILE,
                     *style_files("mask.tif", "water")])

BLUE = np.array([0, 112, 255])


@pytest.fixture(scope="module")
def site(s3, tmp_path_factory):
    from aquamask.processes.demo import make_demo_scene

    home = tmp_path_factory.mktemp("object-store-server")
    make_demo_scene(home / "data" / "demo.tif")
    scenes = None
    try:
        from tests.support.monitoring_scenes import build_scenes
        scenes = build_scenes(home / "scenes")
    except pytest.skip.Exception:  # the shared chip is absent: the series test skips
        pass
    bucket = s3.new_bucket()
    server = start_server(home, {**s3.environment(bucket),
                                 "AQUAMASK__LIMITS__MAX_JOBS_PER_USER": "0"})
    yield server, bucket, scenes
    server.stop()




def run_async(server, inputs: dict) -> dict:
    """Execute asynchronously and wait: the job's final status."""
    started = server.execute(inputs, asynchronous=True)
    assert started.status_code == 201, started.text
    return server.wait_job(started.headers["Location"], timeout=120)[0]


def blue_pixels(url: str) -> int:
    response = requests.get(url, timeout=30)
    assert response.status_code == 200, response.text[:500]
    assert response.headers["Content-Type"].startswith("image/png"), response.text[:500]
    image = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))
    return int(((image[..., :3] == BLUE).all(-1) & (image[..., 3] == 255)).sum())


def test_a_sync_result_is_stored_served_and_drawn_from_the_bucket(site, s3, tmp_path):
    from aquamask.processes.pipeline.flow import detect_to_file
    from aquamask.processes.settings import Settings

    server, bucket, _ = site
    response = server.execute({"image": {"href": "demo.tif"}, "method": "ndwi"})
    assert response.status_code == 200, response.text
    outputs = response.json()
    job = job_id_of(response.json())
    assert s3.keys(bucket, f"results/{job}/") == [
        f"results/{job}/{name}" for name in MASK_FILES]
    assert not (server.home / "results").exists()  # nothing written to a local results folder
    assert not any((server.home / "staging").iterdir())  # the staging copy is gone

    mask = requests.get(outputs["mask"]["href"], timeout=30)
    assert mask.status_code == 200 and mask.headers["Content-Type"].startswith("image/tiff")
    (tmp_path / "served.tif").write_bytes(mask.content)
    valid, errors, _ = cog_validate(str(tmp_path / "served.tif"), quiet=True)
    assert valid, errors
    # the same mask as a run on this machine with local files
    local = detect_to_file(str(server.data_root / "demo.tif"), tmp_path / "local.tif",
                           Settings.load(), method="ndwi", with_probability=False)
    assert local is not None
    with rasterio.open(tmp_path / "served.tif") as served, \
            rasterio.open(tmp_path / "local.tif") as here:
        np.testing.assert_array_equal(served.read(), here.read())
        assert served.crs == here.crs and served.transform == here.transform
    # a range reads only its bytes (GDAL reads a COG remotely so), conditional requests work
    part = requests.get(outputs["mask"]["href"], headers={"Range": "bytes=100-1099"},
                        timeout=30)
    assert part.status_code == 206 and part.content == mask.content[100:1100]
    assert part.headers["Content-Range"] == f"bytes 100-1099/{len(mask.content)}"
    again = requests.get(outputs["mask"]["href"], timeout=30,
                         headers={"If-None-Match": mask.headers["ETag"]})
    assert again.status_code == 304
    beyond = requests.get(outputs["mask"]["href"], timeout=30,
                          headers={"Range": f"bytes={len(mask.content) + 10}-"})
    assert beyond.status_code == 416
    changed = requests.get(outputs["mask"]["href"], timeout=30,  # If-Range: another version
                           headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert changed.status_code == 200 and changed.content == mask.content
    item = requests.get(outputs["stac_item"]["href"], timeout=30).json()
    assert item["id"] == job
    assert requests.get(outputs["mask"]["href"].replace(job, "0" * 8),
                        timeout=30).status_code == 404
    # MapServer draws the layer from /vsis3/
    assert blue_pixels(outputs["layer"]["value"]["getmap"]) > 1000
    health = requests.get(f"{server.url}/health", timeout=30).json()
    assert health["checks"]["results_store"] == "ok", health


def test_an_async_unet_job_is_stored_and_dismissal_deletes_its_objects(site, s3):
    server, bucket, _ = site
    status = run_async(server, {"image": {"href": "demo.tif"}})
    assert status["status"] == "successful", status
    job = status["jobID"]
    results = requests.get(f"{server.url}/jobs/{job}/results?f=json", timeout=10).json()
    assert 0 < results["water_fraction"] < 1
    assert len(s3.keys(bucket, f"results/{job}/")) == len(MASK_FILES)
    assert blue_pixels(results["layer"]["value"]["getmap"]) > 1000
    assert requests.delete(f"{server.url}/jobs/{job}", timeout=30).status_code == 200
    assert s3.keys(bucket, f"results/{job}/") == []
    caps = requests.get(f"{server.url}/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities",
                        timeout=30).text
    assert results["layer"]["value"]["name"] not in caps


def test_a_time_series_publishes_its_dates_from_the_bucket(site, s3):
    server, bucket, scenes = site
    if scenes is None:
        pytest.skip("the Sen1Floods11 chip of the monitoring scenes is absent")
    response = requests.post(
        f"{server.url}/processes/water-timeseries/execution", timeout=300,
        json={"inputs": {"bbox": scenes.bbox, "datetime": "2023-07-01/2023-08-31",
                         "method": "ndwi", "max_cloud_cover": 50, "min_valid_fraction": 0.5}})
    assert response.status_code == 200, response.text
    outputs = response.json()
    layer = outputs["layer"]["value"]
    assert len(layer["times"]) == 2
    job = outputs["json"]["href"].split("/results/", 1)[1].split("/", 1)[0]
    keys = s3.keys(bucket, f"results/{job}/")
    assert f"results/{job}/timeseries.json" in keys and f"results/{job}/timeseries.csv" in keys
    assert sum(k.endswith("/mask.tif") for k in keys) == 2
    # the TIME tile index names the dates' COGs on /vsis3/
    for when in layer["times"]:
        assert blue_pixels(layer["getmap_by_time"][when]) > 1000
    assert requests.get(outputs["csv"]["href"], timeout=30).text.startswith("date,")
    assert requests.delete(f"{server.url}/jobs/{job}", timeout=30).status_code == 200
    assert s3.keys(bucket, f"results/{job}/") == []


def test_a_change_is_stored_and_drawn_from_the_bucket(site, s3):
    server, bucket, scenes = site
    if scenes is None:
        pytest.skip("the Sen1Floods11 chip of the monitoring scenes is absent")
    response = requests.post(
        f"{server.url}/processes/water-change/execution", timeout=300,
        json={"inputs": {"bbox": scenes.bbox, "before": scenes.dates["d1"].day,
                         "after": scenes.dates["d8"].day, "method": "ndwi"}})
    assert response.status_code == 200, response.text
    outputs = response.json()
    job = outputs["change"]["href"].split("/results/", 1)[1].split("/", 1)[0]
    assert s3.keys(bucket, f"results/{job}/") == [
        f"results/{job}/{name}" for name in sorted(
            ["after.tif", "before.tif", "change.tif", "item.json",
             *style_files("after.tif", "water"), *style_files("before.tif", "water"),
             *style_files("change.tif", "change")])], outputs
    image = requests.get(outputs["layer"]["value"]["getmap"], timeout=30)
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/png", \
        image.text[:500]
    pixels = np.asarray(Image.open(io.BytesIO(image.content)).convert("RGBA"))
    assert (pixels[..., 3] == 255).sum() > 1000  # the classes are drawn from /vsis3/
    with rasterio.MemoryFile(requests.get(outputs["change"]["href"], timeout=30).content) as f:
        with f.open() as change:
            assert change.dtypes[0] == "uint8" and set(np.unique(change.read())) <= {
                0, 1, 2, 3, 255}


def test_a_store_that_goes_down_fails_the_job_clearly_and_loses_nothing(site, s3):
    server, bucket, _ = site
    kept = server.execute({"image": {"href": "demo.tif"}, "method": "ndwi",
                           "probability": False})
    assert kept.status_code == 200, kept.text
    before = s3.keys(bucket, "results/")
    mask = requests.get(kept.json()["mask"]["href"], timeout=30).content

    s3.server.stop()
    try:
        status = run_async(server, {"image": {"href": "demo.tif"}, "method": "ndwi"})
        assert status["status"] == "failed", status
        message = status["message"]
        assert message.startswith("the server could not write the results: storing the "
                                  f"results in s3://{bucket}/results failed: unreachable")
        assert "nothing of this job was kept" in message and "Traceback" not in message
        refused = server.execute({"image": {"href": "demo.tif"}, "method": "ndwi"})
        assert refused.status_code == 500
        assert "unreachable" in refused.json()["description"]
        began = time.monotonic()
        health = requests.get(f"{server.url}/health", timeout=30)
        assert health.status_code == 503 and time.monotonic() - began < 15
        assert health.json()["checks"]["results_store"].startswith("error: ")
        assert s3.endpoint not in health.text
    finally:
        s3.server.start()
    assert s3.keys(bucket, "results/") == before  # no partial objects, nothing lost
    assert requests.get(kept.json()["mask"]["href"], timeout=30).content == mask
    assert not any((server.home / "staging").iterdir())  # local partial files removed


def test_jobs_on_dask_workers_upload_to_the_bucket(s3, tmp_path_factory):
    """A Dask LocalCluster (worker processes) runs the job: the worker uploads the result, the
    server serves it and its map; no results folder is involved."""
    distributed = pytest.importorskip("distributed")
    from aquamask.processes.demo import make_demo_scene

    home = tmp_path_factory.mktemp("object-store-dask")
    make_demo_scene(home / "data" / "demo.tif", size=256)
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None)
    client = distributed.Client(cluster)
    bucket = s3.new_bucket()
    server = start_server(home, {**s3.environment(bucket),
                                 "AQUAMASK__JOBS__SCHEDULER": cluster.scheduler_address})
    try:
        status = run_async(server, {"image": {"href": "demo.tif"}, "method": "ndwi"})
        assert status["status"] == "successful", status
        job = status["jobID"]
        from aquamask.processes.storage.jobstore import JobStore
        record = JobStore(f"sqlite:///{home}/jobs.sqlite").get(job)
        assert record["runner"] == "dask"
        assert record["pid"] in set(client.run(__import__("os").getpid).values())
        assert len(s3.keys(bucket, f"results/{job}/")) == len(MASK_FILES)
        results = requests.get(f"{server.url}/jobs/{job}/results?f=json", timeout=10).json()
        mask = requests.get(results["mask"]["href"], timeout=30)
        assert mask.status_code == 200 and mask.content[:4] in (b"II*\x00", b"II+\x00")
        assert blue_pixels(results["layer"]["value"]["getmap"]) > 100
        assert not (home / "results").exists()
        assert requests.delete(f"{server.url}/jobs/{job}", timeout=30).status_code == 200
        assert s3.keys(bucket, f"results/{job}/") == []
    finally:
        server.stop()
        client.close()
        cluster.close()
