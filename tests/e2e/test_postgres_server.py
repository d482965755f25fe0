"""The server on a PostgreSQL job store: the real server (gunicorn with three web workers,
loopback HTTP, forked job workers) with jobs.database set to a database on a real PostgreSQL
server (tests/support/postgres.py: Debian's binaries, a throwaway cluster). NDWI on the
512 x 512 demo scene keeps the compute to a few seconds."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from aquamask.processes.storage.jobstore import JobStore
from tests.support.server import Server, job_id_of, start_server

NDWI = {"image": {"href": "demo/demo-scene.tif"}, "method": "ndwi", "probability": False}




@pytest.fixture(scope="module")
def pg_server(tmp_path_factory, postgres_url) -> Server:
    from aquamask.processes.demo import make_demo_scene

    home = tmp_path_factory.mktemp("aquamask-pg-home")
    make_demo_scene(home / "data" / "demo" / "demo-scene.tif")
    srv = start_server(home, {"AQUAMASK__JOBS__DATABASE": postgres_url,
                              "AQUAMASK__SERVER__WORKERS": "3",
                              "AQUAMASK__LIMITS__MAX_JOBS_PER_USER": "0"}, workers=3)
    yield srv
    srv.stop()


def listed(srv: Server) -> dict:
    response = requests.get(f"{srv.url}/jobs?limit=1000&f=json", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_sync_and_async_jobs_are_stored_in_postgresql_listed_and_readable(pg_server,
                                                                         postgres_url):
    """A sync and an async NDWI execution through real HTTP; the records are read back from
    the real PostgreSQL database, and the server has no SQLite store."""
    sync = pg_server.execute(NDWI)
    assert sync.status_code == 200, sync.text
    sync_id = job_id_of(sync.json())
    response = pg_server.execute(NDWI, asynchronous=True)
    assert response.status_code == 201, response.text
    job_url = response.headers["Location"]
    async_id = job_url.rsplit("/", 1)[1]
    status, progress = pg_server.wait_job(job_url, timeout=120)
    assert status["status"] == "successful", status
    assert progress == sorted(progress) and status["progress"] == 100

    jobs = {j["jobID"]: j for j in listed(pg_server)["jobs"]}
    assert {sync_id, async_id} <= set(jobs)
    for job_id in (sync_id, async_id):
        assert jobs[job_id]["status"] == "successful"
        results = requests.get(f"{pg_server.url}/jobs/{job_id}/results?f=json", timeout=10)
        assert results.status_code == 200, results.text
        assert 0 < results.json()["water_fraction"] < 1
        mask = requests.get(results.json()["mask"]["href"], timeout=10)
        assert mask.status_code == 200 and mask.content[:2] == b"II"

    store = JobStore(postgres_url)
    assert store.get(sync_id)["runner"] == "inline"
    assert store.get(async_id)["runner"] == "fork"
    stored, document = store.get(async_id)["outputs"], results.json()
    # the results document is the stored outputs as OGC API - Processes 1.0 answers them
    assert {k: stored[k] for k in ("mask", "water_fraction", "water_area_km2")} == \
        {k: document[k] for k in ("mask", "water_fraction", "water_area_km2")}
    assert document["layer"]["value"]["name"] == stored["layer"]["name"]
    assert not (pg_server.home / "jobs.sqlite").exists()


def test_concurrent_jobs_on_several_workers_lose_no_record(pg_server, postgres_url):
    """Twelve executions at once (six sync in the web workers, six async in forked job
    workers) write to the real PostgreSQL store from many processes: each is listed once,
    successful, and the count grows by exactly twelve."""
    before = len(listed(pg_server)["jobs"])

    def submit(i: int) -> requests.Response:
        return pg_server.execute(NDWI, asynchronous=bool(i % 2))

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(submit, range(12)))
    ids = []
    for i, response in enumerate(responses):
        if i % 2:
            assert response.status_code == 201, response.text
            status, _ = pg_server.wait_job(response.headers["Location"], timeout=120)
            assert status["status"] == "successful", status
            ids.append(status["jobID"])
        else:
            assert response.status_code == 200, response.text
            ids.append(job_id_of(response.json()))
    assert len(set(ids)) == 12
    listed_ids = [j["jobID"] for j in listed(pg_server)["jobs"]]
    assert len(listed_ids) == before + 12
    assert sorted(set(listed_ids) & set(ids)) == sorted(ids)
    assert len(listed_ids) == len(set(listed_ids))  # none doubled
    store = JobStore(postgres_url)
    assert all(store.get(i)["status"] == "successful" for i in ids)


def test_dismissal_removes_the_job_from_postgresql(pg_server, postgres_url):
    """DELETE /jobs/{id} through real HTTP removes the record from the real database, the
    listing and the results folder."""
    response = pg_server.execute(NDWI, asynchronous=True)
    job_url = response.headers["Location"]
    job_id = job_url.rsplit("/", 1)[1]
    status, _ = pg_server.wait_job(job_url, timeout=120)
    assert status["status"] == "successful", status
    dismissed = requests.delete(job_url, timeout=30)
    assert dismissed.status_code == 200, dismissed.text
    assert dismissed.json()["status"] == "dismissed"
    assert requests.get(job_url, timeout=10).status_code == 404
    assert job_id not in [j["jobID"] for j in listed(pg_server)["jobs"]]
    assert JobStore(postgres_url).get(job_id) is None
    assert not [p for p in pg_server.results.iterdir() if job_id in p.name]
