"""/metrics and /health against real servers: gunicorn in a subprocess (several web workers),
job worker processes forked from the fork server, real HTTP on loopback, and the GeoServer
stand-in (tests/support/geoserver_standin.py) for GeoServer's side of /health."""
from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from aquamask.processes.settings import Settings
from aquamask.server.metrics import default_multiprocess_dir
from tests.support.geoserver_standin import GeoServerStandIn
from tests.support.server import start_server

LATENCY = "aquamask_http_request_duration_seconds"
PROCESS_ROUTE = "/processes/<process_id>"
TOKEN = "scrape-" + uuid.uuid4().hex
GEOSERVER_PASSWORD = "s3cret-Pa55"


class Scrape:
    """One /metrics answer, parsed by prometheus_client's own parser."""

    def __init__(self, text: str) -> None:
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sample ``name`` with exactly these labels (0 when absent)."""
        found = [s.value for s in self.samples if s.name == name and s.labels == labels]
        assert len(found) <= 1, (name, labels, found)
        return found[0] if found else 0.0


def scrape(url: str, **kwargs) -> Scrape:
    response = requests.get(f"{url}/metrics", timeout=30, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return Scrape(response.text)


def route_count_by_process(metrics_dir: Path, route: str) -> dict[str, float]:
    """How many GETs of ``route`` answered 200 each process's own file holds (white box: what
    the multiprocess collector sums; a histogram stores one count per bucket)."""
    counts: dict[str, float] = {}
    for path in metrics_dir.glob("histogram_*.db"):
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, name, labels, _ = json.loads(key)
            if name == f"{LATENCY}_bucket" and value and (
                    labels["method"], labels["route"], labels["status"]) == ("GET", route, "200"):
                identity = path.stem.split("_", 1)[1]
                counts[identity] = counts.get(identity, 0) + value
    return counts


def ndwi_detections_in_job_files(metrics_dir: Path) -> float:
    """The NDWI detections the job workers' files hold (``job-N``: a web worker's is its pid)."""
    total = 0.0
    for path in metrics_dir.glob("histogram_job-*.db"):
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, name, labels, _ = json.loads(key)
            if name == "aquamask_inference_seconds_bucket" and labels["method"] == "ndwi":
                total += value
    return total


def test_metrics_sum_every_web_worker_and_job_worker(server):
    metrics_dir = default_multiprocess_dir(Settings.load(environ={
        "AQUAMASK__HOME": str(server.home)}))
    before = scrape(server.url)
    in_job_files = ndwi_detections_in_job_files(metrics_dir)
    assert before.value("aquamask_job_store_up") == 1
    health = requests.get(f"{server.url}/health", timeout=10).json()
    assert "geoserver" not in health["checks"], "no GeoServer configured, none checked"

    # an asynchronous execution always runs in a job worker process
    response = server.execute({"image": {"href": "demo/demo-scene.tif"}, "method": "ndwi"},
                              asynchronous=True)
    assert response.status_code == 201, response.text
    job_url = response.headers["Location"]
    status, _ = server.wait_job(job_url)
    assert status["status"] == "successful", status

    # requests on fresh connections, until both web workers have answered some
    made = 0
    with ThreadPoolExecutor(8) as pool:
        for _ in range(40):
            codes = list(pool.map(lambda _: requests.get(
                f"{server.url}/processes/water-detection", timeout=30).status_code, range(8)))
            assert codes == [200] * 8
            made += 8
            if len(route_count_by_process(metrics_dir, PROCESS_ROUTE)) >= 2:
                break
    per_worker = route_count_by_process(metrics_dir, PROCESS_ROUTE)
    assert len(per_worker) >= 2 and all(k.isdigit() for k in per_worker), per_worker
    stray = f"/no-such-thing/{uuid.uuid4().hex}"
    assert requests.get(server.url + stray, timeout=10).status_code == 404

    after = scrape(server.url)
    # the latency histogram: every request counted once, whichever worker answered it
    ok = {"method": "GET", "route": PROCESS_ROUTE, "status": "200"}
    assert after.value(f"{LATENCY}_count", **ok) - before.value(f"{LATENCY}_count", **ok) \
        == made
    assert after.value(f"{LATENCY}_count", **ok) == sum(per_worker.values())
    assert after.value(f"{LATENCY}_bucket", le="+Inf", **ok) == after.value(f"{LATENCY}_count",
                                                                            **ok)
    assert after.value(f"{LATENCY}_sum", **ok) > 0
    # route templates, never raw paths: the job id and the stray path are no label value
    routes = {s.labels["route"] for s in after.samples if s.name == f"{LATENCY}_count"}
    assert "/jobs/<job_id>" in routes and "unmatched" in routes, routes
    assert not any(job_url.rsplit("/", 1)[1] in r or "no-such-thing" in r for r in routes)
    assert after.value(f"{LATENCY}_count", method="GET", route="unmatched", status="404") >= 1
    assert after.value("aquamask_http_requests_in_progress", method="GET") == 1  # this scrape

    # jobs by state, from the job store at scrape time
    assert after.value("aquamask_jobs", state="successful") \
        == before.value("aquamask_jobs", state="successful") + 1
    assert {"accepted", "running", "failed", "dismissed"} <= {
        s.labels["state"] for s in after.samples if s.name == "aquamask_jobs"}

    # observed in the job worker process, summed in by the web worker that answered
    def grew(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert grew("aquamask_inference_seconds_count", method="ndwi") == 1
    assert grew("aquamask_inference_seconds_sum", method="ndwi") > 0
    for stage in ("read", "predict", "write"):
        assert grew("aquamask_inference_stage_seconds_count", method="ndwi", stage=stage) == 1
    assert grew("aquamask_inference_pixels_total", method="ndwi") == 512 * 512
    assert grew("aquamask_job_duration_seconds_count", process="water-detection",
                method="ndwi") == 1
    assert grew("aquamask_jobs_finished_total", process="water-detection",
                outcome="successful") == 1
    assert ndwi_detections_in_job_files(metrics_dir) == in_job_files + 1


# -- a server with GeoServer configured (the stand-in), anonymous access off, a scrape token --
@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    geoserver = GeoServerStandIn(tmp_path_factory.mktemp("geoserver-data"),
                                 password=GEOSERVER_PASSWORD).start()
    yield geoserver
    geoserver.stop()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, standin):
    home = tmp_path_factory.mktemp("aquamask-guarded")
    srv = start_server(home, {"AQUAMASK__GEOSERVER__URL": standin.url,
                              "AQUAMASK__GEOSERVER__PASSWORD": GEOSERVER_PASSWORD,
                              "AQUAMASK__GEOSERVER__CONNECT_TIMEOUT_S": "1",
                              "AQUAMASK__AUTH__ANONYMOUS": "nobody",
                              "AQUAMASK__METRICS__TOKEN": TOKEN}, workers=1)
    yield srv
    srv.stop()


def test_metrics_need_the_scrape_token_when_anonymous_access_is_off(guarded):
    assert requests.get(f"{guarded.url}/metrics", timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert requests.get(f"{guarded.url}/metrics", headers=wrong, timeout=10).status_code == 401
    metrics = scrape(guarded.url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert metrics.value("aquamask_job_store_up") == 1
    assert metrics.value("aquamask_jobs", state="successful") == 0
    assert requests.get(f"{guarded.url}/health", timeout=10).status_code == 200  # still open


def health(url: str) -> tuple[int, dict, float]:
    start = time.monotonic()
    response = requests.get(f"{url}/health", timeout=30)
    return response.status_code, response.json(), time.monotonic() - start


def test_health_checks_geoserver_and_never_hangs_on_it(guarded, standin):
    code, body, _ = health(guarded.url)
    assert (code, body) == (200, {"status": "ok", "checks": {
        "job_store": "ok", "map_engine": "ok", "geoserver": "ok"}})
    call = standin.calls("GET", r"/rest/about/version")[-1]
    assert call.path == "/geoserver/rest/about/version.json" and call.status == 200

    standin.delay_s = 5  # hangs: /health answers after geoserver.connect_timeout_s (1 s)
    code, body, took = health(guarded.url)
    standin.heal()
    assert (code, body["status"]) == (503, "degraded")
    assert body["checks"]["geoserver"] == "error: no answer within 1 s"
    assert body["checks"]["job_store"] == "ok" and took < 4, took

    standin.password = "changed"
    code, body, _ = health(guarded.url)
    standin.password = GEOSERVER_PASSWORD
    assert code == 503
    assert body["checks"]["geoserver"].startswith("error: HTTP 401"), body
    assert GEOSERVER_PASSWORD not in json.dumps(body)

    assert health(guarded.url)[0] == 200
    standin.stop()  # down: connection refused
    code, body, took = health(guarded.url)
    assert (code, body["status"]) == (503, "degraded") and took < 4, took
    assert body["checks"]["geoserver"] == "error: unreachable (ConnectionError)"
