"""Monitoring through the real server (gunicorn, job workers, MapServer on /ows) over loopback:
a water time series as an async job with progress, its files, its time-enabled WMS layer (two
TIME values, two different maps), a change and a frequency with their styled layers, the
errors refused before any job exists, and a dismissal that takes every date's layer away.

Scenes: eight dates built from the real Sen1Floods11 chip (tests/support/monitoring_scenes.py)
in the server's local source."""
from __future__ import annotations

import csv
import io
import time

import numpy as np
import pytest
import rasterio
import requests
from owslib.util import ServiceException
from owslib.wms import WebMapService
from PIL import Image

from aquamask.processes.styles import CHANGE_CLASSES
from tests.support.monitoring_scenes import USABLE, build_scenes, field_csv
from tests.support.server import start_server

PIXEL_KM2 = 1e-4


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    home = tmp_path_factory.mktemp("monitoring-server")
    scenes = build_scenes(home / "scenes")  # skips without the shared chip
    (home / "data").mkdir()
    server = start_server(home, {"AQUAMASK__MONITORING__MAX_PARALLEL_DATES": "2"}, workers=2)
    yield server, scenes
    server.stop()






def png(response) -> np.ndarray:
    assert response.status_code == 200, response.text[:500]
    assert response.headers["Content-Type"].startswith("image/png"), response.text[:500]
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGBA"))


def series_inputs(scenes, **more):
    return {"bbox": scenes.bbox, "datetime": "2023-01-01/2023-08-31", "method": "ndwi",
            "max_cloud_cover": 50, "min_valid_fraction": 0.5, **more}


def test_the_processes_are_listed(site):
    server, _ = site
    listed = [p["id"] for p in requests.get(f"{server.url}/processes?f=json",
                                            timeout=10).json()["processes"]]
    assert {"water-detection", "water-timeseries", "water-change", "water-frequency"} \
        <= set(listed)
    description = requests.get(f"{server.url}/processes/water-timeseries?f=json",
                               timeout=10).json()
    assert {"bbox", "point", "radius_m", "datetime", "field_data",
            "min_valid_fraction"} <= set(description["inputs"])


def test_a_series_as_a_job_with_progress_files_and_a_time_layer(site):
    server, scenes = site
    areas = {k: scenes.water(k).sum() * PIXEL_KM2 for k in USABLE}
    text, rho = field_csv(scenes, areas)
    started = time.monotonic()
    response = server.execute(series_inputs(scenes, field_data=text), asynchronous=True,
                              process_id="water-timeseries")
    assert response.status_code == 201, response.text
    job_url = response.headers["Location"]
    job_id = job_url.rsplit("/", 1)[1]
    messages, progress = [], []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        status = requests.get(job_url, timeout=10).json()
        messages.append(status.get("message") or "")
        progress.append(status["progress"])
        if status["status"] not in ("accepted", "running"):
            break
        time.sleep(0.05)
    assert status["status"] == "successful", status
    assert progress == sorted(progress) and progress[-1] == 100
    print(f"series of 8 dates (7 detected) as a job: {time.monotonic() - started:.1f} s")
    results = requests.get(f"{job_url}/results?f=json", timeout=10).json()
    rows = {r["date"]: r for r in results["timeseries"]}
    assert [rows[scenes.dates[k].day]["status"] for k in scenes.dates] == [
        "ok", "ok", "skipped", "skipped", "ok", "failed", "ok", "ok"]
    for key in USABLE:
        assert rows[scenes.dates[key].day]["water_area_km2"] == pytest.approx(areas[key],
                                                                               rel=1e-3)
    assert results["field_validation"]["value"]["spearman_rho"] == pytest.approx(rho)
    # the files, served by /results
    table = requests.get(results["csv"]["href"], timeout=10)
    assert table.status_code == 200 and table.headers["Content-Type"].startswith("text/csv")
    assert len(list(csv.DictReader(io.StringIO(table.text)))) == 8
    chart = requests.get(results["chart"]["href"], timeout=10)
    assert chart.headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(chart.content)) as image:
        assert image.format == "PNG" and image.size == (1200, 600)
    document = requests.get(results["json"]["href"], timeout=10).json()
    assert document["summary"] == results["summary"]["value"]
    validation = requests.get(results["field_validation"]["value"]["chart"]["href"], timeout=10)
    assert Image.open(io.BytesIO(validation.content)).size == (1200, 600)
    # one WMS layer with a TIME dimension: two dates, two different maps
    layer = results["layer"]["value"]
    times = [scenes.dates[k].time for k in USABLE]
    assert layer["times"] == times
    caps = requests.get(f"{server.url}/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities",
                        timeout=30).text
    assert f"<Name>{layer['name']}</Name>" in caps and ",".join(times) in caps
    first = png(requests.get(layer["getmap_by_time"][times[0]], timeout=30))
    last = png(requests.get(layer["getmap_by_time"][times[-1]], timeout=30))
    assert first.shape == last.shape
    blue = np.array([0, 112, 255])
    wet_first = ((first[..., :3] == blue).all(-1) & (first[..., 3] == 255)).sum()
    wet_last = ((last[..., :3] == blue).all(-1) & (last[..., 3] == 255)).sum()
    assert wet_last > wet_first > 1000, "the planted lakes show on the later date"
    assert not np.array_equal(first, last)
    # the same through OWSLib: a TIME of the dimension draws, one outside it is an exception
    wms = WebMapService(f"{server.url}/ows", version="1.3.0")
    assert wms.contents[layer["name"]].dimensions["time"]["values"] == times
    box = wms.contents[layer["name"]].boundingBoxWGS84
    shown = wms.getmap(layers=[layer["name"]], srs="EPSG:4326", bbox=box, size=(64, 64),
                       format="image/png", time=times[0], transparent=True)
    assert Image.open(io.BytesIO(shown.read())).size == (64, 64)
    for wrong in ("2019-01-01T00:00:00Z", "not-a-date"):
        with pytest.raises(ServiceException) as refused:
            wms.getmap(layers=[layer["name"]], srs="EPSG:4326", bbox=box, size=(64, 64),
                       format="image/png", time=wrong)
        assert "InvalidDimensionValue" in str(refused.value) or \
            "TIME" in str(refused.value), refused.value
    # each date is also a coverage of its own
    d2 = rows[scenes.dates["d2"].day]
    coverage = requests.get(f"{server.url}/ows?SERVICE=WCS&VERSION=2.0.1&REQUEST=GetCoverage"
                            f"&COVERAGEID={d2['layer']}&FORMAT=image/tiff", timeout=30)
    assert coverage.status_code == 200, coverage.text[:300]
    with rasterio.open(io.BytesIO(coverage.content)) as cov:
        assert (cov.read(1) == 1).sum() == scenes.water("d2").sum()
    # dismissal takes every date's layer and every file away
    assert requests.delete(job_url, timeout=30).status_code == 200
    caps = requests.get(f"{server.url}/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities",
                        timeout=30).text
    assert job_id not in caps and layer["name"] not in caps
    assert requests.get(results["csv"]["href"], timeout=10).status_code == 404
    assert not [p for p in server.results.iterdir() if job_id in p.name]


def test_change_and_frequency_layers_in_their_styles(site):
    server, scenes = site
    change = server.execute({"bbox": scenes.bbox, "before": "2023-01-10",
                             "after": "2023-02-01/2023-02-28", "method": "ndwi"},
                            process_id="water-change")
    assert change.status_code == 200, change.text
    outputs = change.json()
    assert outputs["after"]["value"]["date"] == scenes.dates["d2"].day
    gained = (scenes.water("d2") & ~scenes.water("d1") & scenes.valid("d1")).sum()
    assert outputs["pixels"]["value"]["gained"] == gained
    image = png(requests.get(outputs["layer"]["value"]["getmap"], timeout=30))
    colours = {label: rgb for label, _, rgb in CHANGE_CLASSES}
    gained_px = ((image[..., :3] == colours["Water gained"]).all(-1)).sum()
    lost_px = ((image[..., :3] == colours["Water lost"]).all(-1)).sum()
    assert gained_px > 500 and lost_px > 500, "gained and lost water drawn in their colours"
    with rasterio.open(f"/vsicurl/{outputs['change']['href']}") as cog:
        assert cog.tags()["AQUAMASK_STYLE"] == "change" and (cog.read(1) == 1).sum() == gained
    frequency = server.execute(series_inputs(scenes), process_id="water-frequency")
    assert frequency.status_code == 200, frequency.text
    result = frequency.json()
    assert result["observations_used"] == 5
    image = png(requests.get(result["layer"]["value"]["getmap"], timeout=30))
    darkest = ((image[..., :3] == (8, 48, 107)).all(-1)).sum()
    assert darkest > 1000, "always-wet water in the darkest blue"
    legend = requests.get(result["layer"]["value"]["legend"], timeout=30)
    assert legend.status_code == 200 and legend.headers["Content-Type"] == "image/png"


@pytest.mark.parametrize("process, inputs, status, text", [
    ("water-timeseries", {"datetime": "2023-01-01/2023-02-01"}, 400, "give the place"),
    ("water-timeseries", {"bbox": [-0.7, 38.07, -0.69, 38.08], "datetime": "2023-01-01/..",
                          "field_data": "date,value,unit\n2023-01-10,1,m\n2023-02-31,2,m\n"},
     400, "field_data line 3, column 'date'"),
    ("water-timeseries", {"bbox": [-0.7, 38.07, -0.69, 38.08], "datetime": "2023-01-01/..",
                          "field_data": "day,value\n2023-01-10,1\n"}, 400,
     "missing column(s) 'date', 'unit'"),
    ("water-timeseries", {"point": [-0.7, 38.07], "radius_m": 100, "datetime": "2023",
                          "source": "local"}, 400, "datetime"),
    ("water-change", {"bbox": [-0.7, 38.07, -0.69, 38.08], "before": "2023-03-01",
                      "after": "2023-02-01"}, 400, "must end before after"),
    ("water-frequency", {"bbox": [-0.7, 38.07, -0.69, 38.08], "datetime": "2023-01-01/..",
                         "source": "nowhere"}, 400, "source must be one of"),
    ("water-frequency", {"bbox": [-1.5, 37.5, -0.5, 38.5], "datetime": "2023-01-01/.."},
     413, "max_area_km2"),
])
def test_bad_requests_are_refused_before_any_job(site, process, inputs, status, text):
    server, _ = site
    before = server.job_count()
    response = server.execute(inputs, asynchronous=True, process_id=process)
    assert response.status_code == status, response.text
    assert text in response.json()["description"]
    assert server.job_count() == before


def test_no_scene_is_a_422_after_the_search(site):
    server, scenes = site
    response = server.execute(series_inputs(scenes, datetime="2020-01-01/2020-06-30"),
                              process_id="water-timeseries")
    assert response.status_code == 422, response.text
    assert "2020-01-01T00:00:00Z/2020-06-30" in response.text
