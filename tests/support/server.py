"""A real aquamask server for the tests (gunicorn in a subprocess, real HTTP on loopback), the
shared data, and what tests ask of a server's jobs."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("AQUAMASK_SHARED_DATA", REPO.parent / "shared" / "data"))
SPAIN = SHARED_DATA / "sen1floods11-sample"
SPAIN_IMAGE = SPAIN / "Spain_7370579_S2Hand.tif"
SPAIN_LABEL = SPAIN / "Spain_7370579_LabelHand.tif"


def require_spain() -> None:
    if not SPAIN_IMAGE.exists():
        pytest.skip(f"the Sen1Floods11 sample is absent ({SPAIN_IMAGE}); "
                    "set AQUAMASK_SHARED_DATA to the shared data folder")


def free_port() -> int:
    """A port no socket uses on any address: probing loopback alone may hand out a port that a
    connection on another interface holds, which a server on 0.0.0.0 then cannot bind."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    home: Path
    data_root: Path
    process: subprocess.Popen

    @property
    def results(self) -> Path:
        return self.home / "results"

    def stop(self) -> None:
        """Stop the server (gunicorn ends its workers, their MapServer processes with them)."""
        self.process.terminate()
        self.process.wait(timeout=30)

    def execute(self, inputs: dict, asynchronous: bool = False,
                process_id: str = "water-detection", **kwargs) -> requests.Response:
        headers = {"Prefer": "respond-async"} if asynchronous else {}
        return requests.post(f"{self.url}/processes/{process_id}/execution",
                             json={"inputs": inputs}, headers=headers, timeout=300, **kwargs)

    def job_count(self) -> int:
        """The jobs the server lists (up to 1000)."""
        return len(requests.get(f"{self.url}/jobs?limit=1000", timeout=10).json()["jobs"])

    def wait_job(self, job_url: str, timeout: float = 300) -> tuple[dict, list[float]]:
        """Poll a job until it ends; returns its last status and the progress values seen."""
        seen: list[float] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = requests.get(job_url, timeout=10).json()
            seen.append(status["progress"])
            if status["status"] not in ("accepted", "running"):
                return status, seen
            time.sleep(0.1)
        raise TimeoutError(job_url)


def start_server(home: Path, env_overrides: dict[str, str] | None = None,
                 workers: int = 2) -> Server:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, AQUAMASK__HOME=str(home), AQUAMASK__SERVER__URL=url,
               AQUAMASK__SERVER__BIND=f"127.0.0.1:{port}", **(env_overrides or {}))
    log = open(home / "server.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "aquamask.server.cli", "serve", "--workers", str(workers)],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {(home / 'server.log').read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=5).status_code == 200:
                break
        except (requests.ConnectionError, requests.Timeout):  # not up yet, or busy starting
            time.sleep(0.2)
    else:
        process.kill()
        raise RuntimeError("server did not start in 90 s")
    return Server(url=url, home=home, data_root=home / "data", process=process)


def job_id_of(found: str | dict) -> str:
    """The id of a job: from its URL (an execution's Location), or from its outputs (a
    water-detection result: the folder of its mask)."""
    if isinstance(found, dict):
        found = found["mask"]["href"].rsplit("/", 1)[0]
    return found.rstrip("/").rsplit("/", 1)[-1]


def wait_running(url: str, timeout: float = 60) -> dict:
    """Poll a job until it runs and has made some progress; its status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = requests.get(url, timeout=10).json()
        if status["status"] == "running" and status["progress"] >= 5:
            return status
        assert status["status"] in ("accepted", "running"), status
        time.sleep(0.05)
    raise TimeoutError(url)
