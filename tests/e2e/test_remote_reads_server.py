"""The attacks of tests/processes/test_remote_reads.py against the real server: each answered
with a 4xx OGC exception that names no server path, before a job exists, and the internal
listener never reached (the session server allows 127.0.0.2, the attacker, as a data host)."""
from __future__ import annotations

import pytest
import requests

from tests.processes.test_remote_reads import (
    INTERNAL,
    RAW_PASSWD,
    Attacker,
    Internal,
    huge_block,
    simple_source,
    vrt,
)


@pytest.fixture(scope="module")
def internal():
    listener = Internal()
    yield listener
    listener.sock.close()


@pytest.fixture(scope="module")
def attacker(internal):
    host = Attacker()
    host.routes["/sneaky.tif"] = lambda handler, head: (
        (200, {"Content-Length": "4096"}, b"") if head
        else (302, {"Location": internal.url()}, b""))
    host.serve("/image.vrt", vrt(simple_source(f"/vsicurl/{internal.url()}")))
    yield host
    host.httpd.shutdown()
    host.httpd.server_close()




@pytest.mark.parametrize("href,status,text", [
    ("/sneaky.tif", 403, "loopback, link-local or private"),
    ("/image.vrt", 400, "GeoTIFF and Cloud-Optimized GeoTIFF images only"),
    ("passwd.vrt", 400, "GeoTIFF and Cloud-Optimized GeoTIFF images only"),
    ("huge.tif", 413, "gdal_translate"),
    ("scene.tif\x00.vrt", 400, "control character"),
    ("http://2130706435:{port}/secret.tif", 403, "loopback, link-local or private"),
    ("http://user:pass@127.0.0.2:{port}/scene.tif", 400, "credentials"),
    ("file://server/etc/passwd", 400, "names no host"),
])
def test_attacks_are_4xx_ogc_exceptions_before_a_job_exists(server, attacker, internal, href,
                                                            status, text, data_files):
    data_files += [server.data_root / "passwd.vrt", server.data_root / "huge.tif"]
    (server.data_root / "passwd.vrt").write_bytes(RAW_PASSWD)
    # under this server's 5 Mpx limit: 2048 x 2048 x 6 float64, 192 MiB a block
    huge_block(server.data_root / "huge.tif", tiled=True, size=2048, dtype="float64")
    if href.startswith("/"):
        href = attacker.url(href)
    href = href.replace("{port}", str(internal.port))
    jobs = server.job_count()
    response = server.execute({"image": {"href": href}, "method": "ndwi"})
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] and text in body["description"]
    assert str(server.data_root) not in response.text and str(server.home) not in response.text
    assert server.job_count() == jobs
    assert internal.connections == [], f"{INTERNAL} was reached"
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
