"""The SQL job store: records, guarded updates, paging, and concurrent writers, each against a
real SQLite file (WAL) and a real PostgreSQL server (tests/support/postgres.py: Debian's binaries, a
throwaway cluster, a new database per test)."""
from __future__ import annotations

import multiprocessing as mp
import time

import pytest
from sqlalchemy import create_engine, inspect, text

from aquamask.processes.storage.jobstore import JobStore, jobs, metadata


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    """A fresh store's URL: a new SQLite file, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/jobs.sqlite"
    return request.getfixturevalue("fresh_postgres_url")


def record(i: int, status: str = "accepted") -> dict:
    return {"identifier": f"job-{i:04d}", "process_id": "water-detection", "type": "process",
            "status": status, "progress": 0, "created": f"2026-01-01T00:00:{i % 60:02d}Z",
            "started": f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z", "message": "m"}


def test_round_trip_with_json_columns(url):
    """JSON columns come back as they went in, on the real database."""
    store = JobStore(url)
    store.add(dict(record(1), inputs={"image": {"href": "a.tif"}}))
    store.update("job-0001", {"outputs": {"water_area_km2": 1.5}, "status": "successful"})
    job = store.get("job-0001")
    assert job["inputs"] == {"image": {"href": "a.tif"}}
    assert job["outputs"] == {"water_area_km2": 1.5}
    assert job["status"] == "successful"
    assert store.get("missing") is None


def test_guarded_update_does_not_resurrect_a_finished_job(url):
    """The status guard is part of the real UPDATE's WHERE clause."""
    store = JobStore(url)
    store.add(record(1, status="dismissed"))
    assert not store.update("job-0001", {"progress": 50}, only_if_status=("running",))
    assert store.get("job-0001")["progress"] == 0


def test_list_is_paged_newest_first_and_counts_all(url):
    """Paging, ordering and counting are done by the real database."""
    store = JobStore(url)
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


def test_concurrent_processes_lose_no_record(url):
    """Four real processes (spawned) write 25 jobs each through their own engines."""
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


def _creator(url: str, barrier, i: int) -> None:
    barrier.wait(120)
    JobStore(url).add(record(i))


def test_processes_creating_the_schema_at_once_all_succeed(url):
    """Six real processes (spawned, released together by a barrier) each construct a JobStore
    on an empty database, as gunicorn workers and job workers do at start: the schema is made
    once, the losers of the creation race retry, and every process writes its job."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(6)
    procs = [ctx.Process(target=_creator, args=(url, barrier, i)) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = JobStore(url)
    jobs_found, total = store.list()
    assert total == 6
    assert {j["identifier"] for j in jobs_found} == {f"job-{i:04d}" for i in range(6)}
    found = inspect(store.engine)
    assert {c["name"] for c in found.get_columns("jobs")} == {c.name for c in jobs.columns}
    assert {ix.name for ix in jobs.indexes} <= {ix["name"] for ix in found.get_indexes("jobs")}


def _create_store(url: str) -> None:
    JobStore(url)


def test_a_creation_race_lost_on_postgresql_is_retried(fresh_postgres_url):
    """Real PostgreSQL, deterministically: this test's own transaction creates the table and
    holds it uncommitted until four spawned processes constructing a JobStore are all blocked
    behind it (pg_stat_activity), then commits; their CREATE TABLE then fails (a unique
    violation in the catalogue) and each must retry, see the table and carry on."""
    engine = create_engine(fresh_postgres_url)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_create_store, args=(fresh_postgres_url,)) for _ in range(4)]
    with engine.connect() as conn:
        with conn.begin():
            metadata.create_all(conn)
            for p in procs:
                p.start()
            waiting = text("select count(*) from pg_stat_activity where datname = "
                           "current_database() and wait_event_type = 'Lock'")
            deadline = time.monotonic() + 120
            with engine.connect() as watcher:
                while watcher.execute(waiting).scalar_one() < len(procs):
                    watcher.rollback()  # activity is read once per transaction
                    assert time.monotonic() < deadline, "the processes never blocked"
                    assert all(p.exitcode is None for p in procs)
                    time.sleep(0.05)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    engine.dispose()


def _write_and_exit(url: str, i: int) -> None:
    JobStore(url, create=False).add(record(1000 + i))


def test_forked_children_never_corrupt_the_parents_sqlite_store(tmp_path):
    """gunicorn forks web workers from a master that used the store: the master's pooled
    connections are closed before every fork, so a child's exit cannot checkpoint or remove
    the WAL under the parent (it did: "database disk image is malformed")."""
    url = f"sqlite:///{tmp_path}/jobs.sqlite"
    store = JobStore(url)
    ctx = mp.get_context("fork")
    for i in range(20):
        store.add(record(i))
        assert store.get(f"job-{i:04d}") is not None  # a pooled connection is open now
        child = ctx.Process(target=_write_and_exit, args=(url, i))
        child.start()
        store.update(f"job-{i:04d}", {"progress": 50})
        child.join(30)
        assert child.exitcode == 0
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"
    assert store.list()[1] == 40


def test_a_deleted_sqlite_file_is_reported_not_silently_recreated(tmp_path):
    url = f"sqlite:///{tmp_path}/jobs.sqlite"
    JobStore(url).add(record(1))
    worker_side = JobStore(url, create=False, retry_s=1)
    assert worker_side.get("job-0001") is not None
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"jobs.sqlite{suffix}").unlink(missing_ok=True)
    from aquamask.processes.storage.jobstore import StoreUnavailable
    with pytest.raises(StoreUnavailable, match="missing"):
        worker_side.get("job-0001")
    assert not (tmp_path / "jobs.sqlite").exists()
    assert "missing" in worker_side.check()
