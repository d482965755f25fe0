"""Hostile and malformed input against the real server: SSRF, path traversal, oversized and
malformed requests, and schemathesis fuzzing of every operation in the served OpenAPI document.
The server must answer each with a 4xx and stay healthy."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from flask import Flask, redirect, send_file
from werkzeug.serving import make_server

from tests.support.server import free_port


@pytest.fixture(scope="module")
def data_host(server):
    """An 'internal data server' on 127.0.0.2 (allowed by the server's config) that serves the
    demo scene with range requests, and redirects elsewhere on /to-loopback."""
    app = Flask("data-host")
    scene = server.data_root / "demo" / "demo-scene.tif"
    loopback = f"http://127.0.0.1:{free_port()}/scene.tif"

    @app.get("/scene.tif")
    def scene_file():
        return send_file(scene, conditional=True)

    @app.route("/to-loopback", methods=["GET", "HEAD"])
    def to_loopback():
        return redirect(loopback, 302)

    @app.route("/to-metadata", methods=["GET", "HEAD"])
    def to_metadata():
        return redirect("http://169.254.169.254/latest/meta-data/", 302)

    http = make_server("127.0.0.2", 0, app, threaded=True)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    yield f"http://127.0.0.2:{http.server_port}"
    http.shutdown()


def execute(server, href, **kwargs):
    return server.execute({"image": {"href": href}, "method": "ndwi"}, **kwargs)


def test_an_allowed_remote_cog_is_read_over_http(server, data_host):
    response = execute(server, f"{data_host}/scene.tif")
    assert response.status_code == 200, response.text
    assert response.json()["water_fraction"] > 0.1


@pytest.mark.parametrize("href,status,text", [
    ("file:///etc/passwd", 403, "outside the data root"),
    ("../../../../etc/passwd", 403, "outside the data root"),
    ("demo/../../../etc/passwd", 403, "outside the data root"),
    ("http://127.0.0.1:1/scene.tif", 403, "loopback, link-local or private"),
    ("http://localhost/scene.tif", 403, "loopback, link-local or private"),
    ("http://[::1]/scene.tif", 403, "loopback, link-local or private"),
    ("http://169.254.169.254/latest/meta-data/", 403, "loopback, link-local or private"),
    ("http://10.0.0.1/scene.tif", 403, "loopback, link-local or private"),
    ("ftp://example.org/scene.tif", 400, "unsupported scheme"),
    ("gopher://127.0.0.1/", 400, "unsupported scheme"),
])
def test_ssrf_and_traversal_are_refused(server, href, status, text):
    response = execute(server, href)
    assert response.status_code == status, response.text
    assert text in response.json()["description"]


@pytest.mark.parametrize("path", ["/to-loopback", "/to-metadata"])
def test_redirects_are_checked_hop_by_hop(server, data_host, path):
    response = execute(server, f"{data_host}{path}")
    assert response.status_code == 403, response.text
    assert "loopback, link-local or private" in response.json()["description"]


def test_oversized_and_malformed_requests(server):
    url = f"{server.url}/processes/water-detection/execution"
    big = requests.post(url, data=b'{"inputs": {"pad": "' + b"x" * 2_000_000 + b'"}}',
                        headers={"Content-Type": "application/json"}, timeout=30)
    assert big.status_code == 413 and big.json()["code"]
    broken = requests.post(url, data=b'{"inputs": {', timeout=30,
                           headers={"Content-Type": "application/json"})
    assert broken.status_code == 400
    wrong_type = requests.post(url, json={"inputs": {"image": ["a", "b"]}}, timeout=30)
    assert wrong_type.status_code == 400
    undecodable = requests.post(url, data=b"\xd7;\xe46", timeout=30,
                                headers={"Content-Type": "application/json"})
    assert undecodable.status_code == 400 and "UTF-8" in undecodable.json()["description"]
    for body in (b"[null, null]", b'"text"', b"3", b"null"):
        not_an_object = requests.post(url, data=body, timeout=30,
                                      headers={"Content-Type": "application/json"})
        assert not_an_object.status_code == 400, body
        assert "JSON object" in not_an_object.json()["description"]
    for job_path in ("/results/..%2f..%2fetc/passwd", "/results/x/..%2f..%2fjobs.sqlite",
                     "/jobs/%2e%2e", "/results/.staging-x/mask.tif"):
        assert requests.get(f"{server.url}{job_path}", timeout=10).status_code == 404, job_path


def test_every_response_carries_security_headers(server):
    for path in ("/", "/processes?f=json", "/jobs?f=json", "/health", "/nope"):
        headers = requests.get(f"{server.url}{path}", timeout=10).headers
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["X-Frame-Options"] == "DENY", path
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], path


def local_openapi(server, tmp_path: Path) -> Path:
    """The served OpenAPI document with its references to schemas.opengis.net (unreachable
    offline) replaced: the execute body by the process's own input schemas, the rest by an
    open schema. Operations and parameters are the server's own."""
    doc = requests.get(f"{server.url}/openapi?f=json", timeout=10).json()
    process = requests.get(f"{server.url}/processes/water-detection?f=json", timeout=10).json()
    execute_body = {"type": "object", "properties": {"inputs": {
        "type": "object",
        "properties": {k: v["schema"] for k, v in process["inputs"].items()}}}}

    def resolve(node, path=()):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and not ref.startswith("#"):
                return execute_body if ref.endswith("execute.yaml") else {}
            return {k: resolve(v, path + (k,)) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v, path) for v in node]
        return node

    target = tmp_path / "openapi.json"
    target.write_text(json.dumps(resolve(doc)))
    return target


def test_schemathesis_finds_no_server_error(server, tmp_path):
    report = tmp_path / "schemathesis.json"
    result = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", str(local_openapi(server, tmp_path)),
         "--url", server.url, "--checks", "not_a_server_error", "--max-examples", "10",
         "--generation-deterministic", "--request-timeout", "60",
         "--report-json-path", str(report)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    summary = result.stdout[-3000:]
    assert result.returncode == 0, summary
    assert "generated" in summary and " passed" in summary, summary
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200


def test_jobs_beyond_the_per_user_limit_are_429(tmp_path):
    from aquamask.processes.demo import make_demo_scene
    from tests.support.server import start_server

    make_demo_scene(tmp_path / "data" / "scene.tif", size=1024)
    limited = start_server(tmp_path, {"AQUAMASK__LIMITS__MAX_JOBS_PER_USER": "1",
                                      "AQUAMASK__JOBS__MAX_RUNNING": "1"}, workers=1)
    try:
        first = limited.execute({"image": {"href": "scene.tif"}}, asynchronous=True)
        assert first.status_code == 201
        second = limited.execute({"image": {"href": "scene.tif"}}, asynchronous=True)
        assert second.status_code == 429, second.text
        assert "limit is 1" in second.json()["description"]
        requests.delete(first.headers["Location"], timeout=30)
        third = limited.execute({"image": {"href": "scene.tif"}, "method": "ndwi"})
        assert third.status_code == 200, "a dismissed job frees its place"
    finally:
        limited.stop()


def test_job_list_offsets(server):
    """No offset is the first page, quietly (pygeoapi 0.21 logs a warning for each such
    request, which viewers make every few seconds); a negative or non-numeric one is a 400."""
    log = server.home / "server.log"
    before = log.stat().st_size
    assert requests.get(f"{server.url}/jobs?f=json&limit=1", timeout=10).status_code == 200
    for bad in ("-1", "x"):
        response = requests.get(f"{server.url}/jobs?f=json&offset={bad}", timeout=10)
        assert response.status_code == 400 and "offset" in response.json()["description"]
    assert b"NoneType" not in log.read_bytes()[before:]


@pytest.mark.parametrize("process", ["water-detection", "water-timeseries"])
def test_deeply_nested_json_is_a_400_not_a_500(server, process):
    """#15.9: a geometry nested 5,000 deep made the JSON parser raise RecursionError (a 500)."""
    deep = "[" * 5000 + "]" * 5000
    body = ('{"inputs": {"geometry": {"type": "Polygon", "coordinates": ' + deep + '}, '
            '"datetime": "2023-07-01"}}')
    response = requests.post(f"{server.url}/processes/{process}/execution", data=body,
                             headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 400, response.text[:300]
    assert "nested" in response.json()["description"]
    assert requests.get(f"{server.url}/health/live", timeout=10).status_code == 200
