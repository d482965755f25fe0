"""Jobs on a Dask cluster: the real server (gunicorn, loopback HTTP) with ``jobs.scheduler``
pointing at a real dask.distributed LocalCluster whose workers are separate processes (nannies
restart a killed one), sharing the server's settings, job store and results folder."""
from __future__ import annotations

import os
import signal
import time

import pytest
import requests

from aquamask.processes.storage.jobstore import JobStore
from tests.support.server import start_server, wait_running

distributed = pytest.importorskip("distributed")

BIG = 2560  # px a side: a U-Net job of several seconds on one thread, long enough to kill


@pytest.fixture(scope="module")
def cluster_server(tmp_path_factory):
    from aquamask.processes.demo import make_demo_scene

    home = tmp_path_factory.mktemp("aquamask-dask")
    make_demo_scene(home / "data" / "demo.tif")
    make_demo_scene(home / "data" / "big.tif", size=BIG)
    # the workers get no settings of their own: every task carries the server's
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None,
                                       worker_dashboard_address="127.0.0.1:0")
    client = distributed.Client(cluster)
    # big.tif (6.5 Mpx) is over the fan-out size: its blocks are predicted across the workers
    srv = start_server(home, {"AQUAMASK__JOBS__STALE_AFTER_S": "20",
                              "AQUAMASK__DETECTION__FAN_OUT_PIXELS": "4000000",
                              "AQUAMASK__LIMITS__MAX_JOBS_PER_USER": "0",
                              "AQUAMASK__JOBS__SCHEDULER": cluster.scheduler_address})
    yield srv, client
    srv.stop()
    client.close()
    cluster.close()


def store(srv) -> JobStore:
    return JobStore(f"sqlite:///{srv.home}/jobs.sqlite")


def worker_pids(client) -> set[int]:
    return set(client.run(os.getpid).values())


def test_jobs_run_on_the_cluster_workers_and_results_are_served(cluster_server):
    srv, client = cluster_server
    done = srv.execute({"image": {"href": "demo.tif"}, "method": "ndwi"})
    assert done.status_code == 200, done.text
    assert done.json()["method"] == "ndwi"
    started = srv.execute({"image": {"href": "demo.tif"}}, asynchronous=True)
    assert started.status_code == 201, started.text
    status, seen = srv.wait_job(started.headers["Location"], timeout=120)
    assert status["status"] == "successful", status
    record = store(srv).get(status["jobID"])
    assert record["pid"] in worker_pids(client)  # ran on a Dask worker, not in the server
    results = requests.get(f"{srv.url}/jobs/{status['jobID']}/results?f=json", timeout=10).json()
    mask = requests.get(results["mask"]["href"], timeout=10)
    assert mask.status_code == 200 and mask.content[:4] in (b"II*\x00", b"II+\x00")
    assert 0 < results["water_fraction"] < 1
    # the worker plugin loaded the water model once on every worker
    from aquamask.processes.pipeline.methods import load_model
    loaded = client.run(lambda: load_model.cache_info().currsize)
    assert set(loaded.values()) == {1}, loaded


def worker_samples(client, name: str, **labels: str) -> float:
    """The sum over the Dask workers' own /metrics (their dashboard port) of one sample."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for worker in client.scheduler_info()["workers"].values():
        port = worker["services"]["dashboard"]
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        total += sum(sample.value for family in text_string_to_metric_families(text)
                     for sample in family.samples
                     if sample.name == name and labels.items() <= sample.labels.items())
    return total


def test_job_metrics_are_served_by_the_workers_that_ran_them(cluster_server):
    """Prometheus scrapes a Dask worker's dashboard /metrics: the detections and jobs it ran
    are there (the server's /metrics has only what ran in its own processes)."""
    srv, client = cluster_server
    finished = dict(name="aquamask_jobs_finished_total", process="water-detection",
                    outcome="successful")
    inferred = dict(name="aquamask_inference_seconds_count", method="mndwi")
    jobs_before = worker_samples(client, **finished)
    scenes_before = worker_samples(client, **inferred)
    done = srv.execute({"image": {"href": "demo.tif"}, "method": "mndwi"})
    assert done.status_code == 200, done.text
    assert worker_samples(client, **finished) == jobs_before + 1
    assert worker_samples(client, **inferred) == scenes_before + 1


def test_health_reports_the_cluster(cluster_server):
    srv, _ = cluster_server
    health = requests.get(f"{srv.url}/health", timeout=10).json()
    assert health["checks"]["dask"] == "ok", health


def _start_big_job(srv) -> str:
    started = srv.execute({"image": {"href": "big.tif"}, "probability": False},
                          asynchronous=True)
    assert started.status_code == 201, started.text
    url = started.headers["Location"]
    wait_running(url)
    return url


def test_a_killed_worker_fails_its_job_with_the_reason_and_the_server_goes_on(cluster_server):
    srv, client = cluster_server
    url = _start_big_job(srv)
    job_id = url.rstrip("/").split("/")[-1]
    pid = store(srv).get(job_id)["pid"]
    assert pid in worker_pids(client)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    status, _ = srv.wait_job(url, timeout=30)
    assert status["status"] == "failed"
    assert "killed or crashed" in status["message"]
    assert time.monotonic() - killed < 30
    assert not (srv.results / job_id).exists()
    # the nanny restarts the worker; the cluster and the server take the next job
    again = srv.execute({"image": {"href": "demo.tif"}, "method": "ndwi"})
    assert again.status_code == 200, again.text


def test_dismissing_a_job_running_on_a_worker_stops_it(cluster_server):
    srv, client = cluster_server
    url = _start_big_job(srv)
    job_id = url.rstrip("/").split("/")[-1]
    assert requests.delete(url, timeout=30).status_code == 200
    assert requests.get(url, timeout=10).status_code == 404
    # the task sees the dismissal at its next progress report and leaves nothing behind
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(client.processing().values()):
        time.sleep(0.1)
    assert not any(client.processing().values())
    assert not (srv.results / job_id).exists()
    assert not list(srv.results.glob(f".*-{job_id}*"))


def test_a_series_fans_its_dates_out_as_tasks_on_the_cluster(cluster_server):
    """water-timeseries on the cluster: the job's task hands each date to the workers as a
    task of its own (monitoring.scheduler auto), and the series matches the scenes."""
    from tests.support.monitoring_scenes import USABLE, build_scenes

    srv, client = cluster_server
    scenes = build_scenes(srv.home / "scenes")  # skips without the shared Spain chip
    response = requests.post(
        f"{srv.url}/processes/water-timeseries/execution",
        json={"inputs": {"bbox": scenes.bbox, "datetime": "2023-01-01/2023-08-31",
                         "method": "ndwi", "max_cloud_cover": 50}},
        headers={"Prefer": "respond-async"}, timeout=60)
    assert response.status_code == 201, response.text
    status, seen = srv.wait_job(response.headers["Location"], timeout=240)
    assert status["status"] == "successful", status
    assert seen == sorted(seen)
    results = requests.get(f"{response.headers['Location']}/results?f=json", timeout=10).json()
    detected = [r for r in results["timeseries"] if r["status"] == "ok"]
    assert len(detected) == len(USABLE)
    prefixes = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
    assert "aquamask-date" in prefixes, prefixes


def test_a_large_scene_has_its_blocks_predicted_across_the_workers(cluster_server, tmp_path):
    """The same mask as detection in one process, block for block."""
    import numpy as np
    import rasterio

    from aquamask.processes.pipeline.detection import detect
    from aquamask.processes.pipeline.sources.raster import RasterSource

    srv, client = cluster_server
    done = srv.execute({"image": {"href": "big.tif"}, "method": "ndwi", "probability": False})
    assert done.status_code == 200, done.text
    prefixes = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
    assert "aquamask-block" in prefixes, prefixes
    served = tmp_path / "served.tif"
    served.write_bytes(requests.get(done.json()["mask"]["href"], timeout=30).content)
    scene = RasterSource(srv.home / "data", 10**9, []).read("big.tif")
    local = detect(scene, "ndwi", 0.5, tmp_path / "local", with_probability=False)
    scene.close()
    with rasterio.open(served) as a, rasterio.open(local.path) as b:
        assert np.array_equal(a.read(1), b.read(1))
