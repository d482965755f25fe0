"""Faults the server survives, on the real server (gunicorn, loopback HTTP, the SQLite job store,
forked job workers): many concurrent executions, a server killed and restarted during a job, a
job worker killed with the server, a results disk that fills up or turns read-only (a real
tmpfs, mounted by the test; needs root)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from aquamask.processes.storage.jobstore import JobStore
from tests.support.faults import NO_LIMIT, fork_servers_by_web_worker, kill_server, new_home
from tests.support.server import job_id_of, start_server, wait_running
from tests.support.tmpfs import mounted_tmpfs


def test_fifty_concurrent_async_executions_on_four_workers(tmp_path, scenes):
    srv = start_server(new_home(tmp_path, scenes), NO_LIMIT, workers=4)
    try:
        # each web worker starts its fork server when it starts, not at its first job
        deadline = time.monotonic() + 90
        # (gunicorn may still be forking the last workers when the first one answers)
        while time.monotonic() < deadline:
            servers = fork_servers_by_web_worker(srv)
            if len(servers) == 4 and all(servers.values()):
                break
            time.sleep(0.5)
        assert len(servers) == 4 and all(len(s) == 1 for s in servers.values()), servers

        def submit(_):
            return srv.execute({"image": {"href": "demo.tif"}, "method": "ndwi",
                                "probability": False}, asynchronous=True)

        with ThreadPoolExecutor(50) as pool:
            responses = list(pool.map(submit, range(50)))
        assert [r.status_code for r in responses] == [201] * 50
        urls = [r.headers["Location"] for r in responses]
        assert len({job_id_of(u) for u in urls}) == 50
        finals = [srv.wait_job(u, timeout=300)[0] for u in urls]
        assert [s["status"] for s in finals] == ["successful"] * 50
        listed = requests.get(f"{srv.url}/jobs?limit=100&f=json", timeout=30).json()
        listed_ids = [j["jobID"] for j in listed["jobs"]]
        assert sorted(listed_ids) == sorted(job_id_of(u) for u in urls)  # none lost or doubled
        for url in urls:
            results = requests.get(f"{url}/results?f=json", timeout=10).json()
            mask = requests.get(results["mask"]["href"], timeout=10)
            assert mask.status_code == 200 and mask.content[:2] == b"II"
    finally:
        srv.stop()


def test_a_job_outlives_a_killed_server_and_is_listed_after_the_restart(tmp_path, scenes):
    home = new_home(tmp_path, scenes)
    srv = start_server(home, NO_LIMIT)
    finished = srv.execute({"image": {"href": "demo.tif"}, "method": "ndwi"})
    assert finished.status_code == 200
    url = srv.execute({"image": {"href": "big.tif"}, "probability": False},
                      asynchronous=True).headers["Location"]
    wait_running(url)
    kill_server(srv)
    srv = start_server(home, NO_LIMIT)  # same home and job store, a new port
    try:
        # the worker ran on in its own session: the job ends successful, nothing lost
        status, _ = srv.wait_job(f"{srv.url}/jobs/{job_id_of(url)}", timeout=120)
        assert status["status"] == "successful", status
        listed = requests.get(f"{srv.url}/jobs?f=json", timeout=10).json()
        assert len(listed["jobs"]) == 2
        for job in listed["jobs"]:
            results = requests.get(f"{srv.url}/jobs/{job['jobID']}/results?f=json",
                                   timeout=10).json()
            mask = results["mask"]["href"].split("/results/", 1)[1]
            assert requests.get(f"{srv.url}/results/{mask}", timeout=10).status_code == 200
    finally:
        srv.stop()


def test_a_job_whose_worker_died_with_the_server_is_failed_at_restart(tmp_path, scenes):
    home = new_home(tmp_path, scenes)
    srv = start_server(home, NO_LIMIT)
    url = srv.execute({"image": {"href": "big.tif"}, "probability": False},
                      asynchronous=True).headers["Location"]
    wait_running(url)
    job_id = job_id_of(url)
    store = JobStore(f"sqlite:///{home}/jobs.sqlite")
    worker_pid = store.get(job_id)["pid"]
    kill_server(srv)
    os.killpg(worker_pid, signal.SIGKILL)  # the machine went down with everything on it
    while Path(f"/proc/{worker_pid}").exists() and \
            "Z" not in Path(f"/proc/{worker_pid}/stat").read_text().rsplit(")", 1)[1][:3]:
        time.sleep(0.05)
    assert store.get(job_id)["status"] == "running"  # nothing has noticed yet
    srv = start_server(home, NO_LIMIT)
    try:
        # the start-up sweep marked it, before any request about it
        record = store.get(job_id)
        assert record["status"] == "failed"
        assert "killed or crashed" in record["message"]
        status = requests.get(f"{srv.url}/jobs/{job_id}?f=json", timeout=10).json()
        assert status["status"] == "failed"
        assert not (home / "results" / job_id).exists()
        assert not list((home / "results").glob(f".*-{job_id}*"))
    finally:
        srv.stop()


@pytest.fixture
def small_results_disk(tmp_path, scenes):
    """The results folder on a 3 MiB tmpfs of its own."""
    home = new_home(tmp_path, scenes)
    with mounted_tmpfs(home / "results", "3m"):
        yield home


def test_a_full_or_read_only_results_disk_fails_the_job_cleanly(small_results_disk):
    home = small_results_disk
    results = home / "results"
    srv = start_server(home, NO_LIMIT)
    try:
        kept = srv.execute({"image": {"href": "demo.tif"}, "method": "ndwi",
                            "probability": False})
        assert kept.status_code == 200, kept.text
        kept_mask = results / kept.json()["mask"]["href"].split("/results/", 1)[1]
        before = kept_mask.read_bytes()

        # a 2560 x 2560 scene needs far more than the 3 MiB disk for its work files
        url = srv.execute({"image": {"href": "big.tif"}, "method": "ndwi"},
                          asynchronous=True).headers["Location"]
        status, _ = srv.wait_job(url, timeout=120)
        assert status["status"] == "failed"
        assert "No space left on device" in status["message"], status["message"]
        assert "could not write the results" in status["message"]
        job_id = job_id_of(url)
        assert not (results / job_id).exists()
        assert not list(results.glob(f".*-{job_id}*"))  # partial files removed
        assert kept_mask.read_bytes() == before  # what was stored is intact

        subprocess.run(["mount", "-o", "remount,ro", str(results)], check=True)
        refused = srv.execute({"image": {"href": "demo.tif"}, "method": "ndwi"})
        assert refused.status_code == 500
        body = refused.json()
        assert "Read-only file system" in body["description"], body
        assert requests.get(f"{srv.url}/health", timeout=10).status_code in (200, 503)
        assert requests.get(kept.json()["mask"]["href"], timeout=10).content == before
    finally:
        srv.stop()
