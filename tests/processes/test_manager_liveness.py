"""How the manager tells a dead job from a live one, on a real SQLite job store: a worker on
another host that stopped sending heartbeats, a local worker process that is gone, and the
start-up sweep. (The worker processes and Dask workers themselves are exercised end to end in
tests/e2e/test_faults.py and tests/e2e/test_dask_server.py.)"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from pygeoapi.util import get_current_datetime

from aquamask.processes.jobs.manager import AquamaskManager
from aquamask.processes.jobs.worker import HOST
from aquamask.processes.procfs import process_start


@pytest.fixture
def store_url(tmp_path, monkeypatch):
    monkeypatch.setenv("AQUAMASK__HOME", str(tmp_path))
    monkeypatch.setenv("AQUAMASK__JOBS__STALE_AFTER_S", "30")
    return f"sqlite:///{tmp_path}/jobs.sqlite"


def manager(url: str) -> AquamaskManager:
    return AquamaskManager({"name": "aquamask", "connection": url})


def add(m: AquamaskManager, job_id: str, **fields) -> None:
    now = get_current_datetime()
    m.store.add({"identifier": job_id, "process_id": "water-detection", "type": "process",
                 "status": "running", "progress": 40, "created": now, "started": now,
                 "submitted": True, **fields})


def test_a_worker_elsewhere_without_heartbeat_is_failed_and_a_beating_one_is_not(store_url,
                                                                                  tmp_path):
    m = manager(store_url)
    add(m, "silent", host="gpu-node-7", pid=4242, heartbeat=time.time() - 31)
    add(m, "beating", host="gpu-node-7", pid=4242, heartbeat=time.time() - 5)
    (tmp_path / "results" / "silent").mkdir(parents=True)
    silent = m.get_job("silent")
    assert silent["status"] == "failed"
    assert "gpu-node-7" in silent["message"] and "no heartbeat" in silent["message"]
    assert not (tmp_path / "results" / "silent").exists()
    assert m.get_job("beating")["status"] == "running"


def test_jobs_by_state_in_the_metrics_count_a_dead_worker_s_job_as_failed(store_url):
    """Nobody read the job: the scrape's sweep finds it dead before counting."""
    from aquamask.server.metrics import JobStates

    m = manager(store_url)
    add(m, "silent", host="gpu-node-7", pid=4242, heartbeat=time.time() - 31)
    add(m, "beating", host="gpu-node-7", pid=4242, heartbeat=time.time() - 5)
    families = {f.name: f for f in JobStates(m.store, m.sweep).collect()}
    counts = {s.labels["state"]: s.value for s in families["aquamask_jobs"].samples}
    assert counts["running"] == 1 and counts["failed"] == 1, counts
    assert m.store.get("silent")["status"] == "failed"


def test_a_local_worker_that_is_gone_is_failed_and_a_live_one_is_not(store_url):
    m = manager(store_url)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        gone_start = process_start(gone.pid)
        gone.wait()
        add(m, "live", host=HOST, pid=live.pid, pid_start=process_start(live.pid),
            heartbeat=time.time())
        add(m, "gone", host=HOST, pid=gone.pid, pid_start=gone_start or "1",
            heartbeat=time.time())
        assert m.get_job("live")["status"] == "running"
        gone_job = m.get_job("gone")
        assert gone_job["status"] == "failed" and "killed or crashed" in gone_job["message"]
    finally:
        live.kill()
        live.wait()


def test_the_start_up_sweep_fails_dead_jobs_before_any_request(store_url):
    m = manager(store_url)
    add(m, "left-over", host="old-node", pid=1, heartbeat=time.time() - 3600)
    add(m, "finished", host="old-node", pid=1, heartbeat=time.time() - 3600,
        status="successful")
    restarted = manager(store_url)  # the sweep runs as the manager starts
    assert restarted.store.get("left-over")["status"] == "failed"
    assert restarted.store.get("finished")["status"] == "successful"
    assert restarted.sweep() == 0
