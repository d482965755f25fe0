"""The URL the server publishes (links, Location, WMS/WCS OnlineResource): ``server.url``, else
the bind address, where a wildcard (``serve --host 0.0.0.0`` or ``::``) stands for this
machine's name: no client can reach 0.0.0.0 or ``::``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import requests

from aquamask.processes.settings import Settings, machine_name
from aquamask.server.cli import _serve_environment
from tests.support.server import free_port


def url_of(tmp_path, **environ: str) -> str:
    return Settings.load(environ={"AQUAMASK__HOME": str(tmp_path), **environ}).url


@pytest.mark.parametrize("bind, expected", [
    ("127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("0.0.0.0:5000", f"http://{machine_name()}:5000"),
    ('"[::]:5001"', f"http://{machine_name()}:5001"),
    ('"[::1]:5002"', "http://[::1]:5002"),
])
def test_the_url_follows_the_bind_address(tmp_path, bind, expected):
    assert url_of(tmp_path, AQUAMASK__SERVER__BIND=bind) == expected


def test_a_configured_url_wins_and_a_wildcard_in_it_is_made_reachable(tmp_path):
    assert url_of(tmp_path, AQUAMASK__SERVER__URL="https://water.example.org/",
                  AQUAMASK__SERVER__BIND="0.0.0.0:5000") == "https://water.example.org"
    assert url_of(tmp_path, AQUAMASK__SERVER__URL="http://0.0.0.0:8080") \
        == f"http://{machine_name()}:8080"


def test_serve_host_sets_the_bind_address(monkeypatch):
    monkeypatch.delenv("AQUAMASK__SERVER__URL", raising=False)
    env = _serve_environment("::", 5003)
    assert json.loads(env["AQUAMASK__SERVER__BIND"]) == "[::]:5003"
    assert "AQUAMASK__SERVER__URL" not in env


def serve_on_every_address(home) -> tuple[subprocess.Popen, int]:
    """``aquamask serve --host 0.0.0.0`` answering /health. A port probed free can be taken by
    another program before the server binds it; the CLI then refuses it and another is tried."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AQUAMASK__SERVER__")}
    env["AQUAMASK__HOME"] = str(home)
    log_path = home / "server.log"
    for _ in range(3):
        port = free_port()
        with open(log_path, "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "aquamask.server.cli", "serve",
                                        "--host", "0.0.0.0", "--port", str(port),
                                        "--workers", "1"],
                                       env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    return process, port
            except requests.ConnectionError:
                time.sleep(0.3)
        process.terminate()
        process.wait(timeout=30)
        if "cannot listen on" not in log_path.read_text():
            break
    pytest.fail(log_path.read_text()[-2000:])


def test_a_server_on_every_address_publishes_no_wildcard_link(tmp_path):
    """``aquamask serve --host 0.0.0.0``, as an operator starts it (no server.url)."""
    process, port = serve_on_every_address(tmp_path)
    local = f"http://127.0.0.1:{port}"
    try:
        public = f"http://{machine_name()}:{port}"
        for path in ("/?f=json", "/processes", "/jobs",
                     "/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities"):
            body = requests.get(local + path, timeout=30).text
            assert "0.0.0.0" not in body and public in body, path
    finally:
        process.terminate()
        process.wait(timeout=30)
