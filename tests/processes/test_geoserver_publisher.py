"""The GeoServer publisher and the publishing fallback/retry, over real HTTP on loopback.

GeoServer cannot run here: these tests talk to ``geoserver_standin``, a STAND-IN for GeoServer's
REST API transcribed from GeoServer's published Swagger documentation (paths, methods, status
codes, content types, error bodies, and the documented schemas each request body is checked
against; see that module's docstring for the sources and where the controllers' source was
followed instead). It proves the publisher sends what the documentation asks for and copes with
GeoServer's failures; it does not prove that a real GeoServer renders the layers.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import logging
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

import pytest
import rasterio
import requests
from click.testing import CliRunner

from aquamask.processes.publishing import service as publishing
from aquamask.processes.publishing.geoserver import GeoServerError, GeoServerPublisher
from aquamask.processes.publishing.mapserver import raster_facts
from aquamask.processes.publishing.names import derived_id, job_of, series_name
from aquamask.processes.settings import Settings
from aquamask.processes.storage.jobstore import JobStore, job_store
from aquamask.processes.storage.results import results_store
from tests.support.geoserver_standin import SCHEMAS, GeoServerStandIn, SchemaError, check
from tests.support.mapserver import GRIDS, make_product, write_mask_cog

PASSWORD = "s3cret-Pa55"
ID1 = "3f2b8c1e-9a47-4d2e-8b1f-0c9d7e6a5b43"
ID2 = "5d0c1a2b-1111-4c3d-9e8f-223344556677"
ID3 = "7e6f5a4b-2222-4d3e-8f9a-aabbccddeeff"
WHEN1 = dt.datetime(2024, 5, 1, 10, 30, tzinfo=dt.timezone.utc)
WHEN2 = dt.datetime(2024, 6, 3, 10, 40, tzinfo=dt.timezone.utc)
SLD = Path(__file__).resolve().parents[2] / "config" / "styles" / "water.sld"


@pytest.fixture
def standin(tmp_path):
    server = GeoServerStandIn(tmp_path / "geoserver-data", password=PASSWORD).start()
    yield server
    server.stop()


@pytest.fixture
def env(tmp_path, standin, monkeypatch):
    """The environment of a deployment with GeoServer: the settings come from it (as in the
    worker and the retry process), the password only through AQUAMASK__GEOSERVER__PASSWORD."""
    home = tmp_path / "home"
    values = {
        "AQUAMASK__HOME": str(home),
        "AQUAMASK__SERVER__URL": "http://127.0.0.1:5000",
        "AQUAMASK__GEOSERVER__URL": standin.url,
        "AQUAMASK__GEOSERVER__USER": "admin",
        "AQUAMASK__GEOSERVER__PASSWORD": PASSWORD,
        "AQUAMASK__GEOSERVER__TIMEOUT_S": "2",
        "AQUAMASK__GEOSERVER__CONNECT_TIMEOUT_S": "1",
        "AQUAMASK__GEOSERVER__RETRY_DELAYS_S": "[0, 0, 0]",
    }
    monkeypatch.delenv("AQUAMASK_CONFIG", raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def load_settings(**overrides: str) -> Settings:
    """The settings of the environment, with the job store the server would have created."""
    import os
    settings = Settings.load(environ=dict(os.environ, **overrides))
    JobStore(settings.database_url)
    return settings


@pytest.fixture
def settings(env) -> Settings:
    s = load_settings()
    s.ensure_dirs()
    return s


def product_in_results(settings: Settings, product_id: str, when=WHEN1, crs="EPSG:32630"):
    mask = write_mask_cog(settings.results_dir / product_id / "mask.tif", crs)
    product = make_product(mask, product_id, title=f"Water mask of {product_id[:8]}")
    product.datetime = when
    return product


def add_job(settings: Settings, job_id: str, status: str = "successful") -> JobStore:
    store = JobStore(settings.database_url)
    if store.get(job_id) is None:
        store.add({"identifier": job_id, "process_id": "water-detection", "status": status,
                   "outputs": {"water_area_km2": 0.4, "layer": {"published": "pending"}}})
    return store


def geoserver_publish(settings: Settings, product, series: str | None = None):
    """GeoServer's publisher alone, on the layer row publishing would write first."""
    add_job(settings, job_of(product.id))
    row = publishing._layer_row(product, settings, series=series, engine="geoserver",
                                state="pending")
    job_store(settings).put_layer(row)
    return GeoServerPublisher.from_settings(settings).publish(product, row)


def geoserver_unpublish(settings: Settings, product_id: str) -> None:
    row = job_store(settings).layer(product_id) or {"product_id": product_id,
                                                   "name": f"water-{product_id}"}
    GeoServerPublisher.from_settings(settings).unpublish(row)


def row(settings: Settings, product_id: str) -> dict | None:
    return job_store(settings).layer(product_id)


def embedded(settings: Settings, product_id: str) -> bool:
    """Whether the embedded engine serves the product's layer."""
    found = row(settings, product_id)
    return found is not None and found["engine"] == "embedded"


def body_json(request) -> dict:
    return json.loads(request.body)


# -- publishing to GeoServer ---------------------------------------------------------------------
def test_full_publish(settings, standin):
    product = product_in_results(settings, ID1)
    series = series_name("monitoring-job")
    layer = geoserver_publish(settings, product, series)

    # workspace and style, created because they were missing
    assert standin.workspaces == {"aquamask"}
    assert [r.status for r in standin.calls("POST", r"/rest/workspaces$")] == [201]
    style = standin.styles[("aquamask", "water")]
    assert style["sld"] == SLD.read_bytes()
    # one GeoTIFF store holding exactly the COG's bytes, coverage and layer of the same name
    name = f"water-{ID1}"
    store = standin.stores[("aquamask", name)]
    assert store.type == "GeoTIFF" and store.files[0].read_bytes() == product.mask_cog.read_bytes()
    upload = standin.calls("PUT", rf"coveragestores/{name}/file.geotiff$")
    assert len(upload) == 1 and upload[0].status == 201 and upload[0].content_type == "image/tiff"
    # the coverage's metadata, as sent (and checked against CoverageInfo by the stand-in)
    coverage = store.coverages[name]
    facts = raster_facts(product.mask_cog)
    assert coverage["title"] == product.title
    assert ID1 in coverage["abstract"] and "2024-05-01T10:30:00+00:00" in coverage["abstract"]
    assert "water" in coverage["keywords"]["string"]
    assert coverage["srs"] == "EPSG:32630"
    assert "UTM zone 30N" in coverage["nativeCRS"]
    native = coverage["nativeBoundingBox"]
    assert [native[k] for k in ("minx", "miny", "maxx", "maxy")] == pytest.approx(facts["extent"])
    latlon = coverage["latLonBoundingBox"]
    assert [latlon[k] for k in ("minx", "miny", "maxx", "maxy")] == \
        pytest.approx(list(product.bbox_wgs84))
    assert standin.layers[f"aquamask:{name}"]["defaultStyle"] == {"name": "aquamask:water"}
    # the job's time series: a mosaic with the granule named by its time, TIME enabled
    mosaic = standin.stores[("aquamask", series)]
    assert mosaic.type == "ImageMosaic"
    assert [g["location"] for g in mosaic.granules] == [f"20240501T103000_{ID1}.tif"]
    assert mosaic.granules[0]["time"].startswith("2024-05-01T10:30:00")
    entry = mosaic.coverages[series]["metadata"]["entry"][0]
    assert entry["@key"] == "time" and entry["dimensionInfo"]["enabled"] is True
    assert standin.layers[f"aquamask:{series}"]["defaultStyle"] == {"name": "aquamask:water"}
    # the layer's URLs are GeoServer's workspace services
    assert layer.publisher == "geoserver" and layer.name == name
    assert layer.wms_url == f"{standin.url}/aquamask/wms"
    query = parse_qs(urlsplit(layer.get_map_url).query)
    assert query["LAYERS"] == [name] and query["REQUEST"] == ["GetMap"]
    assert parse_qs(urlsplit(layer.get_coverage_url).query)["COVERAGEID"] == [name]
    # every request carried the credentials; none failed
    assert all(r.status < 300 or r.method == "GET" for r in standin.requests)


def test_republish_is_idempotent(settings, standin):
    product = product_in_results(settings, ID1)
    series = series_name("monitoring-job")
    first = geoserver_publish(settings, product, series)
    before = {k: len(standin.calls(m, p)) for k, (m, p) in {
        "workspace": ("POST", r"/workspaces$"), "style": ("POST", r"/styles$"),
        "upload": ("PUT", r"file\.geotiff$"), "mosaic": ("PUT", r"file\.imagemosaic$"),
        "harvest": ("POST", r"file\.imagemosaic$")}.items()}
    second = geoserver_publish(settings, product, series)
    after = {k: len(standin.calls(m, p)) for k, (m, p) in {
        "workspace": ("POST", r"/workspaces$"), "style": ("POST", r"/styles$"),
        "upload": ("PUT", r"file\.geotiff$"), "mosaic": ("PUT", r"file\.imagemosaic$"),
        "harvest": ("POST", r"file\.imagemosaic$")}.items()}
    assert before == after == {"workspace": 1, "style": 1, "upload": 1, "mosaic": 1,
                               "harvest": 0}
    assert first == second
    assert len(standin.stores) == 2 and len(standin.layers) == 2
    assert len(standin.stores[("aquamask", series)].granules) == 1


def test_a_time_series_is_one_jobs_dates(settings, standin):
    job, other_job = "series-job", "another-job"
    first = product_in_results(settings, derived_id(job, "d1"), WHEN1)
    second = product_in_results(settings, derived_id(job, "d2"), WHEN2)
    elsewhere = product_in_results(settings, derived_id(other_job, "d1"), WHEN2,
                                   crs="EPSG:4326")
    series, other = series_name(job), series_name(other_job)
    geoserver_publish(settings, first, series)
    geoserver_publish(settings, second, series)
    geoserver_publish(settings, elsewhere, other)
    mosaic = standin.stores[("aquamask", series)]
    assert sorted(g["time"][:19] for g in mosaic.granules) == ["2024-05-01T10:30:00",
                                                               "2024-06-03T10:40:00"]
    assert [r.status for r in standin.calls("POST", rf"{series}/file\.imagemosaic$")] == [202]
    assert len(standin.stores[("aquamask", other)].granules) == 1
    publisher = GeoServerPublisher.from_settings(settings)
    when = "2024-06-03T10:40:00Z"
    url = publisher.series_urls(series, list(first.bbox_wgs84), [when])[when]
    assert parse_qs(urlsplit(url).query)["TIME"] == ["2024-06-03T10:40:00Z"]
    # removing one date keeps the mosaic; removing the last removes it, files and all
    geoserver_unpublish(settings, first.id)
    assert [g["location"] for g in mosaic.granules] == [f"20240603T104000_{second.id}.tif"]
    granule_file = mosaic.granules[0]["file"]
    geoserver_unpublish(settings, second.id)
    assert ("aquamask", series) not in standin.stores and not granule_file.exists()
    assert ("aquamask", other) in standin.stores


def test_unpublish_deletes_store_layer_and_files(settings, standin):
    product = product_in_results(settings, ID1, when=None)
    geoserver_publish(settings, product)
    name = f"water-{ID1}"
    uploaded = standin.stores[("aquamask", name)].files[0]
    assert uploaded.exists() and len(standin.stores) == 1  # no series: no mosaic
    geoserver_unpublish(settings, ID1)
    assert standin.stores == {} and standin.layers == {} and not uploaded.exists()
    delete = standin.calls("DELETE", rf"coveragestores/{name}$")[0]
    assert delete.query == {"recurse": "true", "purge": "all"} and delete.status == 200
    assert product.mask_cog.exists()  # aquamask's own file is the manager's to remove
    geoserver_unpublish(settings, ID1)  # again: GeoServer answers 404, nothing to do
    assert standin.calls("DELETE")[-1].status == 404


def test_external_store_references_the_shared_path(standin, tmp_path, monkeypatch, env):
    settings = load_settings(AQUAMASK__GEOSERVER__STORE_MODE="external",
                             AQUAMASK__GEOSERVER__SHARED_RESULTS_DIR="/srv/results/")
    settings.ensure_dirs()
    product = product_in_results(settings, ID1, when=None)
    geoserver_publish(settings, product)
    put = standin.calls("PUT", r"external\.geotiff$")
    assert len(put) == 1 and put[0].body == f"/srv/results/{ID1}/mask.tif".encode()
    assert put[0].content_type == "text/plain"
    geoserver_unpublish(settings, ID1)
    assert standin.calls("DELETE")[-1].query["purge"] == "metadata"
    assert product.mask_cog.exists()
    with pytest.raises(ValueError, match="shared_results_dir"):
        GeoServerPublisher.from_settings(load_settings(
            AQUAMASK__GEOSERVER__STORE_MODE="external"))


@pytest.mark.parametrize("overrides, message", [
    ({"AQUAMASK__GEOSERVER__WORKSPACE": "a b"}, "workspace"),
    ({"AQUAMASK__GEOSERVER__STORE_MODE": "copy"}, "store_mode"),
    ({"AQUAMASK__GEOSERVER__URL": "ftp://x"}, "http"),
])
def test_bad_configuration_is_a_clear_error(env, overrides, message):
    with pytest.raises(ValueError, match=message):
        GeoServerPublisher.from_settings(load_settings(**overrides))


def test_invalid_product_ids_never_reach_geoserver(settings, standin):
    product = product_in_results(settings, ID1)
    product.id = "../../etc"
    with pytest.raises(ValueError):
        publishing.publish(product, settings)
    assert standin.requests == []


# -- faults: the job still succeeds, served by the embedded engine, and is retried ----------
FAULTS = ["unreachable", "401", "500", "slow"]


def inject(fault: str, standin: GeoServerStandIn, monkeypatch) -> None:
    if fault == "unreachable":
        standin.stop()
    elif fault == "401":
        monkeypatch.setenv("AQUAMASK__GEOSERVER__PASSWORD", "wrong-password")
    elif fault == "500":
        standin.fail(500)
    elif fault == "slow":
        standin.delay_s = 1.5
        monkeypatch.setenv("AQUAMASK__GEOSERVER__TIMEOUT_S", "0.3")


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_falls_back_to_embedded_then_retry_switches(fault, env, standin, monkeypatch):
    spawned = []
    monkeypatch.setattr(publishing, "spawn_retrier", lambda pid, s: spawned.append(pid))
    inject(fault, standin, monkeypatch)
    settings = load_settings()
    settings.ensure_dirs()
    product = product_in_results(settings, ID1)
    started = time.monotonic()
    layer = publishing.publish(product, settings)
    assert time.monotonic() - started < 5
    # served locally at once, marked pending, retry started
    assert layer.publisher == "pending" and layer.wms_url == "http://127.0.0.1:5000/ows"
    assert embedded(settings, ID1)
    assert spawned == [ID1]
    state = row(settings, ID1)
    assert state["state"] == "pending" and state["attempts"] == 1
    expected = {"unreachable": "unreachable", "401": "HTTP 401", "500": "HTTP 500",
                "slow": "timeout"}[fault]
    assert expected in state["last_error"]
    store = add_job(settings, ID1)
    store.update(ID1, {"outputs": {"water_area_km2": 0.4,
                                   "layer": publishing.layer_output(layer)}})
    # GeoServer comes back: the next retry publishes and switches the job's layer URLs
    if fault == "unreachable":
        standin.start()  # a new port: point the settings at it
        monkeypatch.setenv("AQUAMASK__GEOSERVER__URL", standin.url)
    monkeypatch.setenv("AQUAMASK__GEOSERVER__PASSWORD", PASSWORD)
    monkeypatch.setenv("AQUAMASK__GEOSERVER__TIMEOUT_S", "2")
    standin.heal()
    settings = load_settings()
    assert publishing.retry(ID1, settings, sleep=lambda s: None) == "geoserver"
    outputs = store.get(ID1)["outputs"]
    assert outputs["water_area_km2"] == 0.4  # the rest of the outputs kept
    assert outputs["layer"]["published"] == "geoserver"
    assert outputs["layer"]["wms"] == f"{standin.url}/aquamask/wms"
    assert not embedded(settings, ID1)
    assert row(settings, ID1)["engine"] == "geoserver"
    # published once: one store, one granule, one upload
    assert len(standin.calls("PUT", r"file\.geotiff$")) == 1
    assert len([s for s in standin.stores.values() if s.type == "GeoTIFF"]) == 1
    # a further retry (a stray process) changes nothing
    calls = len(standin.requests)
    assert publishing.retry(ID1, settings, sleep=lambda s: None) == "geoserver"
    assert len(standin.requests) == calls


def test_retries_are_bounded_then_the_layer_stays_embedded(env, standin, monkeypatch):
    monkeypatch.setattr(publishing, "spawn_retrier", lambda pid, s: None)
    monkeypatch.setenv("AQUAMASK__GEOSERVER__RETRY_DELAYS_S", "[1, 2, 4]")
    standin.fail(500)
    settings = load_settings()
    settings.ensure_dirs()
    product = product_in_results(settings, ID1)
    publishing.publish(product, settings)
    store = add_job(settings, ID1)
    slept = []
    assert publishing.retry(ID1, settings, sleep=slept.append) == "embedded"
    assert slept == [1, 2, 4]
    # 1 first try + 3 retries, each stopped at its first request (the workspace lookup)
    assert len(standin.calls("GET", r"/workspaces/aquamask$")) == 4
    state = row(settings, ID1)
    assert state["engine"] == "embedded" and state["state"] == "published"
    assert state["attempts"] == 4
    layer = store.get(ID1)["outputs"]["layer"]
    assert layer["published"] == "embedded" and "HTTP 500" in layer["publish_error"]
    assert layer["wms"] == "http://127.0.0.1:5000/ows"
    assert embedded(settings, ID1)


def test_partial_publish_is_completed_not_duplicated(env, standin, monkeypatch):
    """GeoServer fails after the store exists: the retry finishes the job without a 2nd store."""
    monkeypatch.setattr(publishing, "spawn_retrier", lambda pid, s: None)
    standin.fail(500, count=1, match=r"^PUT .*/coverages/")
    settings = load_settings()
    settings.ensure_dirs()
    publishing.publish(product_in_results(settings, ID1), settings,
                       series=series_name("monitoring-job"))
    assert row(settings, ID1)["state"] == "pending"
    add_job(settings, ID1)
    assert publishing.retry(ID1, settings, sleep=lambda s: None) == "geoserver"
    assert len(standin.calls("PUT", r"file\.geotiff$")) == 1
    assert len(standin.calls("PUT", r"file\.imagemosaic$")) == 1
    assert standin.layers[f"aquamask:water-{ID1}"]["defaultStyle"]["name"] == "aquamask:water"


def test_style_whose_upload_failed_half_way_is_uploaded_again(env, standin, monkeypatch):
    monkeypatch.setattr(publishing, "spawn_retrier", lambda pid, s: None)
    standin.fail(500, count=1, match=r"^PUT .*/styles/water$")
    settings = load_settings()
    settings.ensure_dirs()
    publishing.publish(product_in_results(settings, ID1), settings)
    assert row(settings, ID1)["state"] == "pending"
    assert ("aquamask", "water") not in standin.styles  # the empty entry was removed
    add_job(settings, ID1)
    assert publishing.retry(ID1, settings, sleep=lambda s: None) == "geoserver"
    assert standin.styles[("aquamask", "water")]["sld"] == SLD.read_bytes()


def test_dismissed_while_pending_is_never_published(env, standin, monkeypatch):
    monkeypatch.setattr(publishing, "spawn_retrier", lambda pid, s: None)
    standin.fail(503)
    settings = load_settings()
    settings.ensure_dirs()
    publishing.publish(product_in_results(settings, ID1), settings)
    standin.heal()
    assert publishing.unpublish(ID1, settings) == "none"
    calls = len(standin.requests)
    assert publishing.retry(ID1, settings, sleep=lambda s: None) == "none"
    assert len(standin.requests) == calls and standin.stores == {}
    assert row(settings, ID1) is None


def test_unpublish_while_geoserver_is_down_is_retried(env, standin, monkeypatch):
    spawned = []
    monkeypatch.setattr(publishing, "spawn_retrier", lambda pid, s: spawned.append(pid))
    settings = load_settings()
    settings.ensure_dirs()
    publishing.publish(product_in_results(settings, ID1), settings,
                       series=series_name("monitoring-job"))
    assert len(standin.stores) == 2
    standin.fail(500)
    assert publishing.unpublish(ID1, settings) == "unpublish-pending" and spawned == [ID1]
    assert row(settings, ID1)["state"] == "unpublish-pending"
    assert not embedded(settings, ID1)  # not served here meanwhile
    standin.heal()
    assert publishing.retry(ID1, settings, sleep=lambda s: None) == "none"
    assert standin.stores == {} and row(settings, ID1) is None


def test_the_real_retry_process_switches_the_job(env, standin, monkeypatch):
    """The background retry as it runs in production: a separate process, settings from the
    environment, the job's outputs switched in the SQL job store."""
    monkeypatch.setenv("AQUAMASK__GEOSERVER__RETRY_DELAYS_S", "[1, 1, 1, 1, 1]")
    settings = load_settings()
    settings.ensure_dirs()
    product = product_in_results(settings, ID1)
    store = add_job(settings, ID1, status="running")
    standin.fail(500)
    layer = publishing.publish(product, settings)
    assert layer.publisher == "pending"
    pid = row(settings, ID1)["retrier_pid"]
    started = time.monotonic()  # its command line shows once Python has started
    while not publishing.retrier_alive(pid, ID1) and time.monotonic() - started < 5:
        time.sleep(0.05)
    assert pid and publishing.retrier_alive(pid, ID1)
    store.update(ID1, {"status": "successful",
                       "outputs": {"layer": publishing.layer_output(layer)}})
    standin.heal()
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        if store.get(ID1)["outputs"]["layer"]["published"] == "geoserver":
            break
        time.sleep(0.2)
    assert store.get(ID1)["outputs"]["layer"]["published"] == "geoserver"
    assert len([s for s in standin.stores.values() if s.type == "GeoTIFF"]) == 1


# -- secrets -------------------------------------------------------------------------------------
def test_credentials_never_appear_in_logs_state_or_outputs(env, standin, monkeypatch, caplog):
    monkeypatch.setattr(publishing, "spawn_retrier", lambda pid, s: None)
    caplog.set_level(logging.DEBUG)  # urllib3 and requests included
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    settings = load_settings()
    settings.ensure_dirs()
    store = add_job(settings, ID1)
    texts = []
    for fault in ("500", "401", "slow", None):
        standin.heal()
        if fault == "500":
            standin.fail(500)
        elif fault == "401":
            standin.password = "another"  # GeoServer's password changed: ours is refused
        elif fault == "slow":
            standin.password = PASSWORD
            standin.delay_s = 3
        settings = load_settings(AQUAMASK__GEOSERVER__TIMEOUT_S="0.3" if fault == "slow"
                                 else "2")
        layer = publishing.publish(product_in_results(settings, ID1), settings)
        output = publishing.layer_output(layer, (row(settings, ID1) or {}).get("last_error"))
        store.update(ID1, {"outputs": {"layer": output}})
        texts.append(json.dumps(store.get(ID1)))
        for path in settings.home.rglob("*"):
            if path.is_file() and path.suffix in (".json", ".log", ".map", ".conf"):
                texts.append(path.read_text(errors="replace"))
        try:
            geoserver_publish(settings, product_in_results(settings, ID1))
        except GeoServerError as err:
            texts.append(str(err) + repr(err))
    texts.append(repr(GeoServerPublisher.from_settings(settings)))
    texts.append(repr(GeoServerPublisher.from_settings(settings).client))
    texts.append(caplog.text)
    assert "HTTP 401" in caplog.text and "HTTP 500" in caplog.text  # the faults were logged
    everything = "\n".join(texts)
    assert PASSWORD not in everything and token not in everything
    # ...while the stand-in did receive them: the check above is not vacuous
    assert any(r.authorization == f"Basic {token}" for r in standin.requests)


def test_password_file_is_read_and_env_wins(env, tmp_path, monkeypatch):
    secret = tmp_path / "geoserver_password"
    secret.write_text("from-file\n")
    monkeypatch.delenv("AQUAMASK__GEOSERVER__PASSWORD")
    settings = load_settings(AQUAMASK__GEOSERVER__PASSWORD_FILE=str(secret))
    assert GeoServerPublisher.from_settings(settings).client.password == "from-file"
    monkeypatch.setenv("AQUAMASK__GEOSERVER__PASSWORD", "0123")  # not parsed as YAML: a string
    settings = load_settings(AQUAMASK__GEOSERVER__PASSWORD_FILE=str(secret))
    assert GeoServerPublisher.from_settings(settings).client.password == "0123"
    monkeypatch.delenv("AQUAMASK__GEOSERVER__PASSWORD")
    with pytest.raises(ValueError, match="password_file"):
        GeoServerPublisher.from_settings(load_settings(
            AQUAMASK__GEOSERVER__PASSWORD_FILE=str(tmp_path / "missing")))


# -- without GeoServer ---------------------------------------------------------------------------
def test_without_geoserver_everything_is_embedded(tmp_path, monkeypatch):
    monkeypatch.delenv("AQUAMASK__GEOSERVER__URL", raising=False)
    settings = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path)})
    settings.ensure_dirs()
    JobStore(settings.database_url)
    product = product_in_results(settings, ID1)
    layer = publishing.publish(product, settings)
    assert layer.publisher == "embedded" and layer.as_output()["published"] == "embedded"
    assert row(settings, ID1)["engine"] == "embedded"
    assert publishing.unpublish(ID1, settings) == "none"
    assert row(settings, ID1) is None


# -- the operators' commands ---------------------------------------------------------------------
def test_cli_publish_and_unpublish(env, standin, monkeypatch):
    from aquamask.server.cli_publish import publish_command, unpublish_command

    monkeypatch.setattr(publishing, "spawn_retrier", lambda pid, s: None)
    settings = load_settings()
    settings.ensure_dirs()
    standin.fail(500)
    layer = publishing.publish(product_in_results(settings, ID1), settings)
    store = add_job(settings, ID1)
    store.update(ID1, {"outputs": {"layer": publishing.layer_output(layer)}})
    runner = CliRunner()
    failed = runner.invoke(publish_command, [ID1])  # GeoServer still failing
    assert failed.exit_code == 1 and "HTTP 500" in failed.output
    assert store.get(ID1)["outputs"]["layer"]["published"] == "embedded"
    standin.heal()
    result = runner.invoke(publish_command, [ID1])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["published"] == "geoserver"
    assert store.get(ID1)["outputs"]["layer"]["published"] == "geoserver"
    assert PASSWORD not in result.output
    result = runner.invoke(unpublish_command, [ID1])
    assert result.exit_code == 0, result.output
    assert standin.stores == {} and store.get(ID1)["outputs"]["layer"]["published"] == "none"
    assert runner.invoke(publish_command, ["no-such-job"]).exit_code == 2
    assert runner.invoke(publish_command, ["../x"]).exit_code == 2


# -- the stand-in checks what it receives, and the SLD -------------------------------------------
def test_standin_refuses_what_geoserver_would(standin):
    auth = ("admin", PASSWORD)
    base = f"{standin.url}/rest"
    assert requests.get(f"{base}/workspaces/x", auth=("admin", "bad"), timeout=5).status_code \
        == 401
    requests.post(f"{base}/workspaces", json={"workspace": {"name": "ws"}}, auth=auth, timeout=5)
    bad = requests.post(f"{base}/workspaces", json={"workspace": {"name": "y", "nam": "x"}},
                        auth=auth, timeout=5)
    assert bad.status_code == 400 and "unknown property 'nam'" in bad.text
    wrong_type = requests.post(f"{base}/workspaces", data="name=x", auth=auth, timeout=5,
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert wrong_type.status_code == 415
    missing = requests.get(f"{base}/workspaces/ws/coveragestores/nope.json", auth=auth,
                           timeout=5)
    assert missing.status_code == 404 and missing.text == "No such coverage store: ws,nope"
    assert missing.headers["Content-Type"].startswith("text/plain")
    with pytest.raises(SchemaError, match="expected a number"):
        check({"coverage": {"nativeBoundingBox": {"minx": "west"}}}, SCHEMAS["CoverageInfo"])
    with pytest.raises(SchemaError, match="unknown property"):
        check({"coverage": {"projection": "x"}}, SCHEMAS["CoverageInfo"])


def test_water_sld_is_sld_1_0():
    """The SLD 1.0 XML Schema could not be had from a package here (none of PyPI's, Debian's or
    npm's packages ships StyledLayerDescriptor.xsd), so this checks the structure the schema
    requires by hand: root, version, namespaces, element order, and the colour map itself."""
    sld = "{http://www.opengis.net/sld}"
    root = ElementTree.parse(SLD).getroot()
    assert root.tag == f"{sld}StyledLayerDescriptor" and root.get("version") == "1.0.0"
    layer = root.find(f"{sld}NamedLayer")
    assert [c.tag for c in layer] == [f"{sld}Name", f"{sld}UserStyle"]
    style = layer.find(f"{sld}UserStyle")
    order = [c.tag.replace(sld, "") for c in style]
    assert order == ["Name", "Title", "Abstract", "IsDefault", "FeatureTypeStyle"]
    symbolizer = style.find(f"{sld}FeatureTypeStyle/{sld}Rule/{sld}RasterSymbolizer")
    assert [c.tag.replace(sld, "") for c in symbolizer] == ["Opacity", "ColorMap"]
    entries = symbolizer.findall(f"{sld}ColorMap/{sld}ColorMapEntry")
    assert [(e.get("quantity"), e.get("color"), e.get("opacity")) for e in entries] == [
        ("0", "#000000", "0"), ("1", "#0070ff", "1"), ("255", "#000000", "0")]
    assert symbolizer.find(f"{sld}ColorMap").get("type") == "values"


# -- the embedded engine's time series: the same TIME dimension without GeoServer -----------------
def test_embedded_time_series_steps_through_dates(tmp_path):
    """Real MapServer through /ows: two dates of one job's series, WMS TIME= picks one, a
    TIME that is not one of its dates is an InvalidDimensionValue (never the default map)."""
    import numpy as np

    from tests.support.mapserver import (
        BLUE,
        SIZE,
        MaskFile,
        catalogue_at,
        image_pixel,
        ows_app,
        png_rgba,
    )

    catalogue = catalogue_at(tmp_path)
    client = ows_app(catalogue).test_client()
    job = "series-job"
    series = series_name(job)
    first = write_mask_cog(tmp_path / "d1" / "mask.tif", "EPSG:32630")
    # the second date: water moved to the lower-left block of the same grid
    transform = GRIDS["EPSG:32630"]
    second_path = tmp_path / "d2" / "mask.tif"
    second_path.parent.mkdir(parents=True)
    classes = np.zeros((SIZE, SIZE), np.uint8)
    classes[160:192, 16:48] = 1
    with rasterio.open(second_path, "w", driver="GTiff", width=SIZE, height=SIZE, count=1,
                       dtype="uint8", crs="EPSG:32630", transform=transform, nodata=255) as dst:
        dst.write(classes, 1)
    second = MaskFile(second_path, "EPSG:32630", transform, classes)
    d1, d2 = derived_id(job, "d1"), derived_id(job, "d2")
    catalogue.publish(first, d1, when=WHEN1, series=series)
    catalogue.publish(second, d2, when=WHEN2, series=series)
    caps = client.get("/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities").data.decode()
    assert f"<Name>{series}</Name>" in caps and f"{series}-index" not in caps
    assert ('<Dimension name="time" units="ISO8601" default="2024-06-03T10:40:00Z"'
            in caps and "2024-05-01T10:30:00Z,2024-06-03T10:40:00Z</Dimension>" in caps)

    left, bottom, right, top = raster_facts(first.path)["extent"]
    bbox = (left, bottom, right, top)
    base = (f"/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS={series}&STYLES="
            f"&CRS=EPSG:32630&BBOX={left},{bottom},{right},{top}&WIDTH={SIZE}"
            f"&HEIGHT={SIZE}&FORMAT=image/png&TRANSPARENT=TRUE")

    def pixel(time: str | None, row: int, col: int) -> list[int]:
        response = client.get(base + (f"&TIME={time}" if time else ""))
        assert response.status_code == 200 and response.mimetype == "image/png"
        x, y = transform * (col + 0.5, row + 0.5)
        r, c = image_pixel(bbox, SIZE, SIZE, x, y)
        return png_rgba(response.data)[r, c].tolist()

    water1, water2 = (96, 96), (176, 32)   # centres of each date's water block
    assert pixel("2024-05-01T10:30:00Z", *water1)[:3] == list(BLUE)
    assert pixel("2024-05-01T10:30:00Z", *water2)[3] == 0
    assert pixel("2024-06-03T10:40:00Z", *water2)[:3] == list(BLUE)
    assert pixel("2024-06-03T10:40:00Z", *water1)[3] == 0
    assert pixel(None, *water2)[:3] == list(BLUE)  # default: the latest date
    for bad in ("2024-05-02T10:30:00Z", "2030-01-01", "yesterday", "2024-13-45T99:00:00Z"):
        refused = client.get(base + f"&TIME={bad}")
        assert refused.status_code == 400, bad
        assert b"InvalidDimensionValue" in refused.data, (bad, refused.data)
    # unpublishing a date removes it from the dimension; the last one removes the layer
    catalogue.unpublish(d2)
    caps = client.get("/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities").data.decode()
    assert "2024-05-01T10:30:00Z</Dimension>" in caps and "2024-06-03" not in caps
    catalogue.unpublish(d1)
    caps = client.get("/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities").data.decode()
    assert series not in caps


# -- the whole path: server, worker, retry process, dismissal ------------------------------------
def test_server_job_pending_then_switched_then_dismissed(tmp_path, standin):
    """A real aquamask server (gunicorn, job worker processes) configured with the stand-in:
    GeoServer fails -> the job succeeds as `pending` on the embedded engine -> the background
    retry switches it to GeoServer -> dismissing the job deletes the GeoServer store."""
    from aquamask.processes.demo import make_demo_scene
    from tests.support.server import start_server

    home = tmp_path / "server-home"
    make_demo_scene(home / "data" / "demo" / "demo-scene.tif")
    server = start_server(home, {
        "AQUAMASK__GEOSERVER__URL": standin.url, "AQUAMASK__GEOSERVER__PASSWORD": PASSWORD,
        "AQUAMASK__GEOSERVER__RETRY_DELAYS_S": "[1, 1, 1, 1, 1]",
        "AQUAMASK__GEOSERVER__TIMEOUT_S": "2"}, workers=1)
    standin.fail(500)  # once up: start_server waits for /health, which checks GeoServer too
    try:
        response = server.execute({"image": {"href": "demo/demo-scene.tif"},
                                   "method": "ndwi"}, asynchronous=True)
        assert response.status_code == 201
        job_url = response.headers["Location"]
        job_id = job_url.rstrip("/").rsplit("/", 1)[1]
        status, _ = server.wait_job(job_url, timeout=120)
        assert status["status"] == "successful"
        first = requests.get(f"{job_url}/results?f=json", timeout=10).json()["layer"]["value"]
        assert first["published"] == "pending" and first["wms"] == f"{server.url}/ows"
        assert requests.get(first["getmap"], timeout=30).headers["Content-Type"] == "image/png"
        standin.heal()
        deadline = time.monotonic() + 30
        layer = first
        while time.monotonic() < deadline and layer["published"] != "geoserver":
            time.sleep(0.3)
            layer = requests.get(f"{job_url}/results?f=json", timeout=10).json()["layer"]["value"]
        assert layer["published"] == "geoserver"
        assert layer["wms"] == f"{standin.url}/aquamask/wms"
        assert ("aquamask", f"water-{job_id}") in standin.stores
        assert requests.delete(job_url, timeout=30).status_code == 200
        assert ("aquamask", f"water-{job_id}") not in standin.stores
    finally:
        server.stop()
    log = (home / "server.log").read_text(errors="replace")
    assert "HTTP 500" in log and PASSWORD not in log


# -- results on an object store (paths.results s3://...; moto's S3 server, support/objectstore.py)
def test_a_result_on_an_object_store_is_uploaded_as_a_copy(settings, standin, s3, tmp_path,
                                                           monkeypatch):
    bucket = s3.new_bucket()
    for key, value in s3.environment(bucket).items():
        monkeypatch.setenv(key, value)
    remote = load_settings()
    store = results_store(remote)
    staging = store.staging(ID1)
    cog = write_mask_cog(staging / "mask.tif", "EPSG:32630")
    data = cog.path.read_bytes()
    product = make_product(cog, ID1, title="on S3")
    store.commit(ID1, staging)
    product = dataclasses.replace(product, directory=Path(store.gdal_path(ID1)),
                                  mask_cog=Path(store.gdal_path(ID1, "mask.tif")))
    JobStore(remote.database_url)
    geoserver_publish(remote, product)
    publisher = GeoServerPublisher.from_settings(remote)
    uploaded = standin.stores[("aquamask", f"water-{ID1}")]
    assert uploaded.files[0].read_bytes() == data  # the object's bytes, fetched for upload
    assert not list(publisher.workdir.glob(".copy-*"))  # the local copy is gone

    monkeypatch.setenv("AQUAMASK__GEOSERVER__STORE_MODE", "external")
    monkeypatch.setenv("AQUAMASK__GEOSERVER__SHARED_RESULTS_DIR", "/srv/results")
    with pytest.raises(ValueError, match="paths.results is an object store"):
        GeoServerPublisher.from_settings(load_settings())
