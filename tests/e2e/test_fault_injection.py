"""An operator's bad day (issue #20), each case on a real server on loopback (gunicorn, forked
job workers, MapServer, the SQLite or PostgreSQL job store): the job store stopped under running
jobs, the server killed in a burst of submissions, derived map files and the job store itself
lost, a fork server killed under a synchronous request, racing dismissals, a silent worker, a
synchronous request past its time limit. Every case ends the same way: no job is left in a
non-final state past the liveness window, and no published layer lacks its files."""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

from aquamask.processes.publishing.names import derived_id
from aquamask.processes.storage.jobstore import JobStore
from tests.support.faults import NO_LIMIT, fork_servers_by_web_worker, kill_server, new_home
from tests.support.server import Server, job_id_of, start_server, wait_running

FAST_LIVENESS = {"AQUAMASK__JOBS__SWEEP_S": "1", "AQUAMASK__JOBS__HEARTBEAT_S": "1",
                 "AQUAMASK__JOBS__STALE_AFTER_S": "6", **NO_LIMIT}


def store_of(srv: Server, url: str | None = None) -> JobStore:
    return JobStore(url or f"sqlite:///{srv.home}/jobs.sqlite")


def assert_settled(srv: Server, store: JobStore, timeout: float = 60) -> list[dict]:
    """No job non-final after the liveness window; every layer row with its COG and its
    mapfile; returns the jobs."""
    deadline = time.monotonic() + timeout
    while True:
        records, _ = store.list(limit=1000)
        active = [r for r in records if r["status"] in ("accepted", "running")]
        if not active:
            break
        assert time.monotonic() < deadline, [(r["identifier"], r["status"], r["message"])
                                             for r in active]
        requests.get(f"{srv.url}/jobs?limit=1000", timeout=30)  # a read also sweeps
        time.sleep(1)
    for row in store.layers():
        assert Path(row["facts"]["path"]).is_file(), row["product_id"]
        assert (srv.home / "mapserver" / "layers" / f"{row['name']}.layer").is_file()
        job = store.get(row["job_id"])
        assert job is not None and job["status"] == "successful", row["product_id"]
    return records


# -- 1. the job store goes away for a while ------------------------------------------------------
def test_jobs_wait_out_a_postgresql_restart(tmp_path, scenes, postgres_cluster):
    url = postgres_cluster.create_database()
    srv = start_server(new_home(tmp_path, scenes), {
        "AQUAMASK__JOBS__DATABASE": url, "AQUAMASK__JOBS__MAX_RUNNING": "2", **NO_LIMIT},
        workers=2)
    store = store_of(srv, url)
    try:
        urls = [srv.execute({"image": {"href": "big.tif"}, "probability": False},
                            asynchronous=True).headers["Location"] for _ in range(4)]
        wait_running(urls[0])
        postgres_cluster.pause()
        try:
            time.sleep(3)
            health = requests.get(f"{srv.url}/health", timeout=30)
            assert health.status_code == 503 and health.json()["status"] == "degraded"
            assert "job store" in health.json()["checks"]["job_store"]
            assert "SELECT" not in health.text and "catalogue" not in health.text
            busy = requests.get(urls[1], timeout=30)
            assert busy.status_code == 503 and busy.headers.get("Retry-After")
            time.sleep(15)  # ~20 s away in all, as a restart or fail-over takes
        finally:
            postgres_cluster.resume()
        finals = [srv.wait_job(u, timeout=240)[0] for u in urls]
        assert [f["status"] for f in finals] == ["successful"] * 4, finals
        assert requests.get(f"{srv.url}/health", timeout=30).status_code == 200
        assert_settled(srv, store)
    finally:
        srv.stop()


# -- 2. every accepted job has a process answering for it ----------------------------------------
def test_a_server_killed_in_a_burst_of_submissions_leaves_no_job_stuck(tmp_path, scenes):
    home = new_home(tmp_path, scenes)
    env = dict(FAST_LIVENESS, AQUAMASK__LIMITS__MAX_JOBS_PER_USER="40")
    srv = start_server(home, env, workers=2)
    answered: list[int] = []

    def submit(_):
        try:
            response = srv.execute({"image": {"href": "demo.tif"}, "method": "ndwi"},
                                   asynchronous=True)
            answered.append(response.status_code)
        except requests.RequestException:
            answered.append(0)  # cut off by the kill: never acknowledged

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(submit, i) for i in range(32)]
        time.sleep(0.8)
        kill_server(srv)
        for future in futures:
            future.result()
    store = store_of(srv)
    srv = start_server(home, env, workers=2)
    try:
        records = assert_settled(srv, store, timeout=60)
        acknowledged = answered.count(201)
        successful = [r for r in records if r["status"] == "successful"]
        # every job a client was told about ran or failed with its reason; the quota is free
        assert len(successful) + len([r for r in records if r["status"] == "failed"]) \
            >= acknowledged
        for record in records:
            if record["status"] == "failed":
                assert record["message"], record
        again = srv.execute({"image": {"href": "demo.tif"}, "method": "ndwi"})
        assert again.status_code == 200
    finally:
        srv.stop()


def test_a_silent_worker_is_failed_killed_and_its_slot_freed(tmp_path, scenes):
    srv = start_server(new_home(tmp_path, scenes),
                       dict(FAST_LIVENESS, AQUAMASK__JOBS__MAX_RUNNING="1"), workers=1)
    store = store_of(srv)
    try:
        url = srv.execute({"image": {"href": "big.tif"}, "probability": False},
                          asynchronous=True).headers["Location"]
        wait_running(url)
        pid = store.get(job_id_of(url))["pid"]
        os.kill(pid, signal.SIGSTOP)  # alive but silent: no heartbeat, holding its slot
        status, _ = srv.wait_job(url, timeout=60)
        assert status["status"] == "failed" and "no heartbeat" in status["message"], status
        deadline = time.monotonic() + 10
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie":
            assert time.monotonic() < deadline, "the silent worker was not killed"
            time.sleep(0.1)
        # its slot is free: the next job runs at once
        follow = srv.execute({"image": {"href": "demo.tif"}, "method": "ndwi"})
        assert follow.status_code == 200, follow.text
        assert_settled(srv, store)
    finally:
        srv.stop()


# -- 3. the map engine's files are derived: losing them loses nothing ----------------------------
def test_lost_and_broken_map_files_are_rebuilt_and_dismissals_never_break_readers(tmp_path,
                                                                                   scenes):
    home = new_home(tmp_path, scenes)
    srv = start_server(home, NO_LIMIT, workers=2)
    store = store_of(srv)
    try:
        jobs = [srv.execute({"image": {"href": "demo.tif"}, "method": "ndwi"}).json()
                for _ in range(6)]
        names = [j["layer"]["value"]["name"] for j in jobs]
        caps = f"{srv.url}/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities"
        layers = home / "mapserver" / "layers"
        (layers / f"{names[0]}.layer").write_text("  LAYER\n    NAME \"cut")  # truncated
        (layers / f"{names[1]}.map").unlink()
        shutil.rmtree(home / "mapserver" / "views")
        response = requests.get(caps, timeout=30)
        assert response.status_code == 200
        assert all(f"<Name>{n}</Name>" in response.text for n in names)
        for job in jobs[:2]:
            drawn = requests.get(job["layer"]["value"]["getmap"], timeout=30)
            assert drawn.headers["Content-Type"] == "image/png", drawn.text[:300]
        # dismissals while clients read the capabilities and draw other layers: no errors
        errors: list[str] = []
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                for url in (caps, jobs[-1]["layer"]["value"]["getmap"]):
                    answer = requests.get(url, timeout=30)
                    if answer.status_code != 200:
                        errors.append(f"{answer.status_code} {answer.text[:200]}")

        readers = [threading.Thread(target=read) for _ in range(3)]
        for reader in readers:
            reader.start()
        for job in jobs[:5]:
            job_url = f"{srv.url}/jobs/{job['mask']['href'].split('/')[-2]}"
            assert requests.delete(job_url, timeout=30).status_code == 200
        stop.set()
        for reader in readers:
            reader.join(60)
        assert errors == []
        # the last job's layers alone: its mask and the views beside it (scene, probability)
        assert {r["name"].split("--")[0] for r in store.layers()} == {names[-1]}
        assert_settled(srv, store)
    finally:
        srv.stop()


def test_a_deleted_job_store_is_reported_and_its_results_can_be_imported(tmp_path, scenes):
    home = new_home(tmp_path, scenes)
    srv = start_server(home, NO_LIMIT, workers=1)
    try:
        done = srv.execute({"image": {"href": "demo.tif"}, "method": "ndwi",
                            "public": True}).json()
        job_id = done["mask"]["href"].split("/")[-2]
        for suffix in ("", "-wal", "-shm"):
            (home / f"jobs.sqlite{suffix}").unlink(missing_ok=True)
        health = requests.get(f"{srv.url}/health", timeout=30)
        assert health.status_code == 503 and "missing" in health.json()["checks"]["job_store"]
        refused = srv.execute({"image": {"href": "demo.tif"}, "method": "ndwi"})
        assert refused.status_code == 503, refused.text
        assert not (home / "jobs.sqlite").exists()  # never silently recreated
    finally:
        srv.stop()
    srv = start_server(home, NO_LIMIT, workers=1)  # a restart makes a new, empty store
    try:
        log = (home / "server.log").read_text()
        assert "have no job record" in log and job_id in log
        from click.testing import CliRunner

        from aquamask.server.cli import main
        env = {"AQUAMASK__HOME": str(home), "AQUAMASK__SERVER__URL": srv.url}
        listed = CliRunner().invoke(main, ["reconcile"], env=env)
        assert listed.exit_code == 0 and job_id in listed.output
        imported = CliRunner().invoke(main, ["reconcile", "--import"], env=env)
        assert imported.exit_code == 0 and f"{job_id}: imported" in imported.output
        store = store_of(srv)
        assert store.get(job_id)["status"] == "successful"
        assert store.layer(job_id) is not None
        for view in ("truecolor", "falsecolor", "probability"):  # the viewer's toggles again
            assert store.layer(derived_id(job_id, view)) is not None, view
        assert_settled(srv, store)
    finally:
        srv.stop()


# -- 6. synchronous clients get what the store says ----------------------------------------------
def test_a_sync_client_gets_its_jobs_outcome_when_the_fork_server_dies(tmp_path, scenes):
    srv = start_server(new_home(tmp_path, scenes),
                       dict(NO_LIMIT, AQUAMASK__JOBS__INLINE_MAX_PIXELS="0"), workers=1)
    try:
        deadline = time.monotonic() + 60
        while not all(fork_servers_by_web_worker(srv).values()):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        answer: dict = {}
        thread = threading.Thread(target=lambda: answer.update(response=srv.execute(
            {"image": {"href": "big.tif"}, "probability": False})))
        thread.start()
        store = store_of(srv)
        while not store.list(status="running")[0]:
            time.sleep(0.05)
        for fork_servers in fork_servers_by_web_worker(srv).values():
            for pid in fork_servers:
                os.kill(pid, signal.SIGKILL)
        thread.join(300)
        response = answer["response"]
        assert response.status_code == 200, response.text
        assert response.json()["mask"]["href"].endswith("/mask.tif")
        assert_settled(srv, store)
    finally:
        srv.stop()


def test_racing_dismissals_and_a_dismissed_sync_job(tmp_path, scenes):
    srv = start_server(new_home(tmp_path, scenes), NO_LIMIT, workers=2)
    store = store_of(srv)
    try:
        for _ in range(3):
            url = srv.execute({"image": {"href": "big.tif"}, "probability": False},
                              asynchronous=True).headers["Location"]
            with ThreadPoolExecutor(2) as pool:
                codes = sorted(pool.map(lambda _: requests.delete(url, timeout=60).status_code,
                                        range(2)))
            assert codes == [200, 404]
        # a synchronous client whose job is dismissed meanwhile gets a clear 409
        answer: dict = {}
        thread = threading.Thread(target=lambda: answer.update(response=srv.execute(
            {"image": {"href": "big.tif"}, "probability": False})))
        thread.start()
        while not store.list(status="running")[0]:
            time.sleep(0.05)
        running = store.list(status="running")[0][0]["identifier"]
        assert requests.delete(f"{srv.url}/jobs/{running}", timeout=60).status_code == 200
        thread.join(120)
        response = answer["response"]
        assert response.status_code == 409 and "dismissed" in response.json()["description"]
        # dismissals leave no file of the job behind (the publishing locks are gone)
        assert not [p for p in srv.home.rglob(f"*{running}*") if "server.log" not in p.name]
        assert_settled(srv, store)
    finally:
        srv.stop()


# -- 7. no request outlives its time limit -------------------------------------------------------
def test_a_synchronous_request_past_server_timeout_is_stopped(tmp_path, scenes):
    srv = start_server(new_home(tmp_path, scenes),
                       dict(NO_LIMIT, AQUAMASK__SERVER__TIMEOUT="2",
                            AQUAMASK__JOBS__INLINE_MAX_PIXELS="0"), workers=1)
    store = store_of(srv)
    try:
        started = time.monotonic()
        response = srv.execute({"image": {"href": "big.tif"}, "probability": False})
        assert response.status_code == 504, response.text
        assert "Prefer: respond-async" in response.json()["description"]
        assert time.monotonic() - started < 30
        records = assert_settled(srv, store)
        assert [r["status"] for r in records] == ["failed"]
    finally:
        srv.stop()
