"""The SQL job store: records, guarded updates, paging, and concurrent writers (real SQLite)."""
from __future__ import annotations

import multiprocessing as mp

from aquamask.processes.jobstore import JobStore


def record(i: int, status: str = "accepted") -> dict:
    return {"identifier": f"job-{i:04d}", "process_id": "water-detection", "type": "process",
            "status": status, "progress": 0, "created": f"2026-01-01T00:00:{i % 60:02d}Z",
            "started": f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z", "message": "m"}


def test_round_trip_with_json_columns(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path}/jobs.sqlite")
    store.add(dict(record(1), inputs={"image": {"href": "a.tif"}}))
    store.update("job-0001", {"outputs": {"water_area_km2": 1.5}, "status": "successful"})
    job = store.get("job-0001")
    assert job["inputs"] == {"image": {"href": "a.tif"}}
    assert job["outputs"] == {"water_area_km2": 1.5}
    assert job["status"] == "successful"
    assert store.get("missing") is None


def test_guarded_update_does_not_resurrect_a_finished_job(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path}/jobs.sqlite")
    store.add(record(1, status="dismissed"))
    assert not store.update("job-0001", {"progress": 50}, only_if_status=("running",))
    assert store.get("job-0001")["progress"] == 0


def test_list_is_paged_newest_first_and_counts_all(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path}/jobs.sqlite")
    for i in range(30):
        store.add(record(i, "successful" if i % 3 else "failed"))
    page, total = store.list(limit=5, offset=5)
    assert total == 30
    assert [j["identifier"] for j in page] == [f"job-{i:04d}" for i in range(24, 19, -1)]
    failed, n_failed = store.list(status="failed")
    assert n_failed == 10 and all(j["status"] == "failed" for j in failed)
    assert store.delete("job-0000") and not store.delete("job-0000")


def _writer(url: str, start: int) -> None:
    store = JobStore(url)
    for i in range(start, start + 25):
        store.add(record(i))
        store.update(f"job-{i:04d}", {"progress": 50, "status": "running"})


def test_concurrent_processes_lose_no_record(tmp_path):
    url = f"sqlite:///{tmp_path}/jobs.sqlite"
    JobStore(url)
    procs = [mp.get_context("spawn").Process(target=_writer, args=(url, k * 25))
             for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    jobs, total = JobStore(url).list()
    assert total == 100
    assert {j["identifier"] for j in jobs} == {f"job-{i:04d}" for i in range(100)}
    assert all(j["status"] == "running" and j["progress"] == 50 for j in jobs)
