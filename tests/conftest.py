"""Fixtures shared by the rooms' tests: the shared data, a georeferenced demo scene, and a real
aquamask server (tests/support/server.py: gunicorn in a subprocess, real HTTP on loopback)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support.server import SPAIN_IMAGE, Server, start_server

# fixtures of the support modules, for every test that names them
pytest_plugins = ["tests.support.mapserver"]

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
    srv.stop()


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


# --- PostgreSQL (support/postgres.py): one throwaway cluster for the session, started at first use
@pytest.fixture(scope="session")
def postgres_cluster():
    """A real PostgreSQL server (Debian's binaries) in a temporary directory on a free port."""
    from tests.support.postgres import running_cluster
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


# --- S3 (support/objectstore.py): moto's S3 server on loopback, the stand-in object store
@pytest.fixture(scope="session")
def s3():
    pytest.importorskip("moto.server", reason="moto (the S3 stand-in) is not installed")
    pytest.importorskip("s3fs")
    from tests.support.objectstore import start_s3

    standin = start_s3()
    yield standin
    standin.server.stop()
