"""Limits that keep one user from holding the server (issue #15, items 6 and 7), on a real
server (gunicorn, several web workers, job worker processes) over loopback: the per-user job
limit holds under concurrent submissions, a job that runs past jobs.max_runtime_s is stopped and
failed with the reason, and owners are told apart by issuer and subject."""
from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from aquamask.processes.demo import make_demo_scene
from tests.support.server import start_server


@pytest.fixture
def limited(tmp_path):
    make_demo_scene(tmp_path / "data" / "scene.tif", size=1024)
    server = start_server(tmp_path, {"AQUAMASK__LIMITS__MAX_JOBS_PER_USER": "4",
                                     "AQUAMASK__JOBS__MAX_RUNNING": "1"}, workers=2)
    yield server
    server.stop()


def test_the_per_user_limit_holds_under_concurrent_submissions(limited):
    """Twelve submissions released together across two web workers: exactly four accepted
    (the count and the insert are one transaction), the rest 429, and as many records."""
    barrier = threading.Barrier(12)
    answers: list[int] = []

    def submit() -> None:
        barrier.wait(30)
        response = limited.execute({"image": {"href": "scene.tif"}}, asynchronous=True)
        answers.append(response.status_code)

    threads = [threading.Thread(target=submit) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(answers) == [201] * 4 + [429] * 8
    listed = requests.get(f"{limited.url}/jobs?limit=50", timeout=30).json()
    assert len(listed["jobs"]) == 4


def test_a_job_past_its_runtime_limit_is_stopped_and_failed(tmp_path):
    make_demo_scene(tmp_path / "data" / "big.tif", size=2048)
    make_demo_scene(tmp_path / "data" / "small.tif", size=64)
    server = start_server(tmp_path, {"AQUAMASK__JOBS__MAX_RUNTIME_S": "1",
                                     "AQUAMASK__JOBS__MAX_RUNNING": "1"}, workers=1)
    try:
        started = time.monotonic()
        response = server.execute({"image": {"href": "big.tif"}, "method": "unet"},
                                  asynchronous=True)
        assert response.status_code == 201, response.text
        status, _ = server.wait_job(response.headers["Location"], timeout=60)
        assert status["status"] == "failed", status
        assert "jobs.max_runtime_s" in status["message"], status
        assert time.monotonic() - started < 30
        job_id = response.headers["Location"].rstrip("/").rsplit("/", 1)[1]
        assert not (server.results / job_id).exists()
        # its slot is free: the next job runs
        assert server.execute({"image": {"href": "small.tif"}, "method": "ndwi"}) \
            .status_code == 200
    finally:
        server.stop()


def test_owners_are_issuer_and_subject_and_anonymous_clients_apart(tmp_path):
    """A token whose subject is "anonymous" is not the anonymous loopback client, and the same
    subject from another issuer is another owner."""
    from tests.server.test_auth import RESEARCHER, Issuer

    issuer, other = Issuer(), Issuer()
    for idp in (issuer, other):
        idp.add_key("k1")
    make_demo_scene(tmp_path / "data" / "demo.tif", size=128)
    server = start_server(tmp_path, {
        "AQUAMASK__AUTH__MODE": "oidc", "AQUAMASK__AUTH__ISSUER": issuer.url,
        "AQUAMASK__AUTH__ANONYMOUS": "loopback",
        "AQUAMASK__AUTH__ROLES__RESEARCHER": json.dumps([RESEARCHER]),
        "AQUAMASK__DETECTION__METHOD": "ndwi"}, workers=1)
    try:
        def call(method: str, path: str, token: str | None = None, **kwargs):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return requests.request(method, f"{server.url}{path}", headers=headers,
                                    timeout=60, **kwargs)

        mine = call("POST", "/processes/water-detection/execution",
                    json={"inputs": {"image": {"href": "demo.tif"}}})
        assert mine.status_code == 200, mine.text
        job_id = mine.json()["mask"]["href"].split("/")[-2]
        impostor = issuer.token(sub="anonymous")
        assert call("GET", f"/jobs/{job_id}", impostor).status_code == 404
        assert call("GET", "/jobs", impostor).json()["jobs"] == []
        assert call("GET", f"/jobs/{job_id}").status_code == 200  # the anonymous client's own
        # a token of an issuer this server does not trust is refused outright
        assert call("GET", "/jobs", other.token(sub="anonymous")).status_code == 401
    finally:
        server.stop()
        issuer.httpd.shutdown()
        other.httpd.shutdown()
