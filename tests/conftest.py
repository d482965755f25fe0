"""Fixtures shared by the rooms' tests: the shared data, a georeferenced demo scene, and a real
aquamask server (gunicorn in a subprocess, real HTTP on loopback)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AQUAMASK_SHARED_DATA", REPO.parent / "shared" / "data"))
SPAIN = SHARED_DATA / "sen1floods11-sample"
SPAIN_IMAGE = SPAIN / "Spain_7370579_S2Hand.tif"
SPAIN_LABEL = SPAIN / "Spain_7370579_LabelHand.tif"


def require_spain() -> None:
    if not SPAIN_IMAGE.exists():
        pytest.skip(f"the Sen1Floods11 sample is absent ({SPAIN_IMAGE}); "
                    "set AQUAMASK_SHARED_DATA to the shared data folder")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
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

    def execute(self, inputs: dict, asynchronous: bool = False, **kwargs) -> requests.Response:
        headers = {"Prefer": "respond-async"} if asynchronous else {}
        return requests.post(f"{self.url}/processes/water-detection/execution",
                             json={"inputs": inputs}, headers=headers, timeout=300, **kwargs)

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


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    """One real server for the session, its data root holding the demo scene and, when
    present, the Sen1Floods11 Spain chip."""
    from aquamask.processes.demo import make_demo_scene

    home = tmp_path_factory.mktemp("aquamask-home")
    data = home / "data"
    make_demo_scene(data / "demo" / "demo-scene.tif")
    if SPAIN_IMAGE.exists():
        shutil.copy(SPAIN_IMAGE, data / SPAIN_IMAGE.name)
    # 127.0.0.2 stands for an internal data server the operator allows hrefs to
    srv = start_server(home, {"AQUAMASK__LIMITS__MAX_PIXELS": "5000000",
                              "AQUAMASK__LIMITS__HREF_PRIVATE_HOSTS": '["127.0.0.2"]'})
    yield srv
    srv.process.terminate()
    srv.process.wait(timeout=30)


@pytest.fixture
def data_files(server):
    """Files a test puts in the session server's data root, removed after it: the viewer's
    tests read that folder's scene list."""
    added: list[Path] = []
    yield added
    for path in added:
        path.unlink(missing_ok=True)


@pytest.fixture
def demo_scene(tmp_path) -> Path:
    from aquamask.processes.demo import make_demo_scene
    return make_demo_scene(tmp_path / "demo-scene.tif")


# --- PostgreSQL (tests/postgres.py): one throwaway cluster for the session, started on first use
@pytest.fixture(scope="session")
def postgres_cluster():
    """A real PostgreSQL server (Debian's binaries) in a temporary directory on a free port."""
    from tests.postgres import running_cluster
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster) -> str:
    """The SQLAlchemy URL of a database shared by the session."""
    return postgres_cluster.create_database("aquamask")


@pytest.fixture
def fresh_postgres_url(postgres_cluster):
    """The URL of a new, empty database of its own for one test, dropped after it."""
    url = postgres_cluster.create_database()
    yield url
    postgres_cluster.drop_database(url.rsplit("/", 1)[1])


# --- S3 (tests/objectstore.py): moto's S3 server on loopback, the stand-in object store
@pytest.fixture(scope="session")
def s3():
    pytest.importorskip("moto.server", reason="moto (the S3 stand-in) is not installed")
    pytest.importorskip("s3fs")
    from tests.objectstore import start_s3

    standin = start_s3()
    yield standin
    standin.server.stop()
