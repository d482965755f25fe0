"""Monitoring (processes/monitoring/): a time series, a change and a frequency over a local source
of eight dated scenes built from the real Sen1Floods11 chip (tests/support/monitoring_scenes.py),
each number checked against what the scenes were built to give (NDWI water: green >= NIR)."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import rasterio
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

from aquamask.processes.errors import Cancelled, InvalidInput, MissingInput, TooLarge
from aquamask.processes.monitoring.change import run_change
from aquamask.processes.monitoring.charts import CHART_SIZE, timeseries_figure, validation_figure
from aquamask.processes.monitoring.frequency import run_frequency
from aquamask.processes.monitoring.insitu import parse_field_csv
from aquamask.processes.monitoring.parallel import run_parallel
from aquamask.processes.monitoring.timeseries import run_timeseries
from aquamask.processes.ogc import water_change, water_frequency, water_timeseries
from aquamask.processes.ogc.outputs import result_links
from aquamask.processes.pipeline import flow
from aquamask.processes.publishing import service as publishing
from aquamask.processes.settings import Settings
from aquamask.processes.storage.jobstore import JobStore, job_store
from tests.support.mapserver import view_text
from tests.support.monitoring_scenes import DATES, GAIN, USABLE, build_scenes, field_csv

PIXEL_KM2 = 1e-4  # a 10 m UTM pixel; the ellipsoidal area differs by < 0.05 % here
JOB = "0f6c1c1e-5b7a-11ef-9d3a-0242ac120002"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return build_scenes(tmp_path_factory.mktemp("monitoring-scenes") / "scenes")


@pytest.fixture(scope="module")
def home(tmp_path_factory, scenes):
    return tmp_path_factory.mktemp("monitoring-home")


def settings_for(home, scenes, **extra) -> Settings:
    environ = {"AQUAMASK__HOME": str(home), "AQUAMASK__SOURCES__LOCAL__PATH": str(scenes.folder),
               "AQUAMASK__SERVER__URL": "http://127.0.0.1:9", "AQUAMASK__DETECTION__METHOD": "ndwi"}
    environ.update({f"AQUAMASK__{k.upper()}": str(v) for k, v in extra.items()})
    settings = Settings.load(environ=environ)
    settings.ensure_dirs()
    JobStore(settings.database_url)  # as the server creates it
    return settings


def run_series(request, settings: Settings, job_id: str, progress) -> dict:
    """water-timeseries' run, its outputs linked as its processor links them."""
    return run_timeseries(request, settings, job_id, progress, result_links(
        settings.url, job_id, water_timeseries.WaterTimeseriesProcessor.RESULT_FILES))


def run_change_of(request, settings: Settings, job_id: str, progress) -> dict:
    return run_change(request, settings, job_id, progress, result_links(
        settings.url, job_id, water_change.WaterChangeProcessor.RESULT_FILES))


def run_frequency_of(request, settings: Settings, job_id: str, progress) -> dict:
    return run_frequency(request, settings, job_id, progress, result_links(
        settings.url, job_id, water_frequency.WaterFrequencyProcessor.RESULT_FILES))


def expected_areas(scenes) -> dict[str, float]:
    return {k: scenes.water(k).sum() * PIXEL_KM2 for k in DATES}


def inputs(scenes, **more):
    return {"bbox": scenes.bbox, "datetime": "2023-01-01/2023-08-31", "method": "ndwi",
            "max_cloud_cover": 50, "min_valid_fraction": 0.5, **more}


@pytest.fixture(scope="module")
def series(scenes, home):
    """One water-timeseries run with field data, through the process's own parse and run."""
    settings = settings_for(home, scenes)
    text, rho = field_csv(scenes, expected_areas(scenes))
    request = water_timeseries.parse_inputs(inputs(scenes, field_data=text), settings)
    seen = []
    outputs = run_series(request, settings, JOB, lambda pct, msg: seen.append((pct, msg)))
    return {"outputs": outputs, "settings": settings, "progress": seen, "rho": rho,
            "csv": text}


def test_every_date_is_reported_with_its_numbers(series, scenes):
    rows = {r["date"]: r for r in series["outputs"]["timeseries"]}
    assert list(rows) == [s.day for s in scenes.dates.values()], "one row per date, in order"
    status = {k: rows[scenes.dates[k].day]["status"] for k in DATES}
    assert status == {"d1": "ok", "d2": "ok", "d3": "skipped", "d4": "skipped", "d5": "ok",
                      "d6": "failed", "d7": "ok", "d8": "ok"}
    total = scenes.pixels()
    for key in USABLE:
        row = rows[scenes.dates[key].day]
        water, valid = scenes.water(key).sum(), scenes.valid(key).sum()
        assert row["water_area_km2"] == pytest.approx(water * PIXEL_KM2, rel=1e-3)
        assert row["water_fraction"] == pytest.approx(water / valid, abs=1e-6)
        assert row["valid_fraction"] == pytest.approx(valid / total, abs=1e-6)
        assert row["method"] == "ndwi" and row["cloud_cover"] == DATES[key][1]
        assert row["source_ids"] == [scenes.dates[key].path.stem]
        assert row["datetime"] == scenes.dates[key].time
    # the planted change moves the area the way it was planted
    areas = {k: rows[scenes.dates[k].day]["water_area_km2"] for k in USABLE}
    assert areas["d8"] > areas["d5"] > areas["d1"] > areas["d7"]
    cloudy = rows[scenes.dates["d3"].day]
    assert cloudy["valid_fraction"] == pytest.approx(scenes.valid("d3").sum() / total, abs=1e-6)
    assert 0.2 < cloudy["valid_fraction"] < 0.5
    assert cloudy["reason"].startswith(f"valid fraction {cloudy['valid_fraction']:.3f} below "
                                       "min_valid_fraction 0.5")
    assert "water_area_km2" not in cloudy, "a skipped date's area is not offered as usable"
    assert rows[scenes.dates["d4"].day]["reason"] == \
        "cloud cover 80.0 % above max_cloud_cover 50 %"
    failed = rows[scenes.dates["d6"].day]
    assert "read" in failed["error"].lower() and failed["source_ids"]
    summary = series["outputs"]["summary"]
    assert summary == {"dates": 8, "usable": 5, "skipped": 2, "failed": 1,
                       "water_area_km2_min": min(areas.values()),
                       "water_area_km2_max": max(areas.values()),
                       "water_area_km2_mean": pytest.approx(np.mean(list(areas.values())))}


def test_progress_counts_dates(series):
    messages = [m for _, m in series["progress"] if " dates done " in m]
    assert [m.split(" (")[0] for m in messages] == [f"{i} of 7 dates done"
                                                     for i in range(1, 8)]
    percents = [p for p, _ in series["progress"]]
    assert percents == sorted(percents) and percents[-1] < 100


def test_files_csv_json_chart(series, scenes):
    outputs, settings = series["outputs"], series["settings"]
    folder = settings.results_dir / JOB
    assert outputs["csv"]["href"] == f"http://127.0.0.1:9/results/{JOB}/timeseries.csv"
    assert outputs["chart"]["type"] == "image/png"
    table = list(csv.DictReader(io.StringIO((folder / "timeseries.csv").read_text())))
    assert [r["date"] for r in table] == [r["date"] for r in outputs["timeseries"]]
    for line, row in zip(table, outputs["timeseries"]):
        assert line["status"] == row["status"]
        if row["status"] == "ok":
            assert float(line["water_area_km2"]) == row["water_area_km2"]
        else:
            assert line["water_area_km2"] == "" and line["reason"]
    document = json.loads((folder / "timeseries.json").read_text())
    assert document["timeseries"] == outputs["timeseries"]
    assert document["layer"]["name"] == outputs["layer"]["name"]
    for name in ("timeseries.png", "field_validation.png"):
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and image.size == CHART_SIZE
            colours = image.convert("RGB").getcolors(1 << 20)
            assert len(colours) > 20, "a drawn chart, not a blank image"
    assert not list(settings.results_dir.glob(f".*{JOB}*")), "no staging or work left"


def test_chart_legends_hide_no_point_and_no_label(series):
    """The legend has its own band under the date axis: inside the plot it covered the first
    dates' points (issue #18)."""
    rows = series["outputs"]["timeseries"]
    figures = [timeseries_figure(rows, "a title"),
               validation_figure(series["outputs"]["field_validation"], rows,
                                 parse_field_csv(series["csv"]))]
    for figure in figures:
        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        renderer = canvas.get_renderer()
        legend = figure.legends[0].get_window_extent(renderer)
        assert figure.bbox.contains(legend.x0, legend.y0) \
            and figure.bbox.contains(legend.x1, legend.y1)
        for axes in figure.axes:
            assert not legend.overlaps(axes.get_window_extent(renderer))
            labels = axes.get_xticklabels() + axes.get_yticklabels() \
                + [axes.xaxis.get_offset_text(), axes.xaxis.label, axes.yaxis.label]
            for label in labels:
                if label.get_visible() and label.get_text():
                    assert not legend.overlaps(label.get_window_extent(renderer)), \
                        label.get_text()
        assert len(figure.legends[0].get_texts()) >= 2


def test_field_validation(series, scenes):
    result = series["outputs"]["field_validation"]
    assert result["n"] == 5 and result["unit"] == "m" and result["measurements"] == 7
    assert result["spearman_rho"] == pytest.approx(series["rho"], abs=1e-9)  # 0.9
    expected = expected_areas(scenes)
    levels = {p["date"]: p["field_value"] for p in result["pairs"]}
    x = [expected[k] for k in USABLE]
    y = [levels[scenes.dates[k].day] for k in USABLE]
    assert result["pearson_r"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-3)
    d5 = next(p for p in result["pairs"] if p["date"] == scenes.dates["d5"].day)
    assert d5["field_datetime"] == "2023-05-11T00:00:00Z" and 0.5 < d5["gap_days"] < 0.6
    table = list(csv.reader(io.StringIO(
        (series["settings"].results_dir / JOB / "field_validation.csv").read_text())))
    assert table[0][4] == "field_value (m)" and len(table) == 6
    assert result["csv"]["href"].endswith(f"/results/{JOB}/field_validation.csv")


def test_dates_are_one_time_enabled_layer(series, scenes):
    layer = series["outputs"]["layer"]
    times = [scenes.dates[k].time for k in USABLE]
    assert layer["name"].startswith("series-") and layer["times"] == times
    assert layer["published"] == "embedded" and layer["dimension"] == "time"
    assert set(layer["getmap_by_time"]) == set(times)
    assert f"TIME={times[0]}" in layer["getmap_by_time"][times[0]]
    rows = job_store(series["settings"]).layers(job_id=JOB)
    ids = sorted(r["product_id"] for r in rows)
    assert ids == [f"{JOB}--t{t.replace('-', '').replace(':', '').rstrip('Z')}" for t in times]
    assert {r["series"] for r in rows} == {layer["name"]} == {f"series-{JOB}"}
    mapfile = view_text(series["settings"])
    assert f'"wms_timeextent" "{",".join(times)}"' in mapfile
    rows = {r["date"]: r for r in series["outputs"]["timeseries"]}
    assert rows[scenes.dates["d2"].day]["layer_time"] == times[1]
    assert rows[scenes.dates["d2"].day]["layer"].startswith(f"water-{JOB}--t")


def test_same_request_same_numbers(series, scenes, home):
    settings = series["settings"]
    request = water_timeseries.parse_inputs(inputs(scenes, field_data=series["csv"]), settings)
    again = run_series(request, settings, "repeat", lambda pct, msg: None)
    strip = ("layer",)
    first = [{k: v for k, v in r.items() if k not in strip} for r in
             series["outputs"]["timeseries"]]
    second = [{k: v for k, v in r.items() if k not in strip} for r in again["timeseries"]]
    assert first == second
    assert again["field_validation"]["pearson_r"] == \
        series["outputs"]["field_validation"]["pearson_r"]
    folder = settings.results_dir
    assert (folder / "repeat" / "timeseries.png").read_bytes() == \
        (folder / JOB / "timeseries.png").read_bytes()
    publishing.unpublish("repeat", settings)


def test_unpublish_removes_every_date(scenes, home):
    settings = settings_for(home, scenes)
    request = water_timeseries.parse_inputs(
        inputs(scenes, datetime="2023-01-01/2023-02-28"), settings)
    run_series(request, settings, "gone", lambda pct, msg: None)
    assert len(job_store(settings).layers(job_id="gone")) == 2
    assert "water-gone--" in view_text(settings)
    publishing.unpublish("gone", settings)
    assert not job_store(settings).layers(job_id="gone")
    assert "gone--" not in view_text(settings) and "series-gone" not in view_text(settings)


@pytest.mark.parametrize("scheduler", ["threads", "synchronous"])
def test_a_dismissed_series_stops_and_leaves_nothing(scenes, tmp_path, scheduler,
                                                      monkeypatch):
    settings = settings_for(tmp_path, scenes, monitoring__scheduler=scheduler)
    request = water_timeseries.parse_inputs(inputs(scenes), settings)

    def progress(pct, msg):
        if "dates done" in msg:
            raise Cancelled()

    def dismissed(*args, **kwargs):
        raise Cancelled()

    if scheduler == "synchronous":  # the dates run in this thread: a dismissal lands in one
        monkeypatch.setattr(flow, "detect", dismissed)  # each date detects through the flow
    with pytest.raises(Cancelled):
        run_series(request, settings, "stopped", progress)
    assert not (settings.results_dir / "stopped").exists()
    assert not list(settings.results_dir.glob(".*stopped*"))
    assert not job_store(settings).layers()


def test_change_between_two_dates(scenes, home):
    settings = settings_for(home, scenes)
    request = water_change.parse_inputs(
        {"bbox": scenes.bbox, "before": "2023-01-10", "after": "2023-02-01/2023-02-20",
         "method": "ndwi"}, settings)
    outputs = run_change_of(request, settings, "change-job", lambda pct, msg: None)
    before, after = scenes.water("d1"), scenes.water("d2")
    valid = scenes.valid("d1") & scenes.valid("d2")
    expected = {"dry": (valid & ~before & ~after).sum(), "gained": (valid & ~before & after).sum(),
                "lost": (valid & before & ~after).sum(),
                "permanent": (valid & before & after).sum(),
                "invalid": (~valid & scenes.inside).sum()}  # outside the box: no class
    assert outputs["pixels"] == expected
    assert expected["gained"] > 1000 and expected["lost"] > 1000, "the planted change"
    for name, count in expected.items():
        assert outputs["area_km2"][name] == pytest.approx(count * PIXEL_KM2, rel=1e-3, abs=1e-9)
    assert outputs["net_change_km2"] == pytest.approx(
        outputs["area_km2"]["gained"] - outputs["area_km2"]["lost"], abs=1e-6)
    assert outputs["before"]["date"] == "2023-01-10" and outputs["after"]["date"] == "2023-02-09"
    folder = settings.results_dir / "change-job"
    with rasterio.open(folder / "change.tif") as src:
        classes = src.read(1)
        assert src.tags()["AQUAMASK_STYLE"] == "change" and src.nodata == 255
        assert src.overviews(1) or max(src.shape) <= 512
    row0, col0, height, width = scenes.window
    rows, cols = GAIN
    gain_in_place = classes[rows.start - row0:rows.stop - row0, cols.start - col0:cols.stop - col0]
    assert np.isin(gain_in_place, (1, 3)).all(), "the planted lake is gained (or was water)"
    assert outputs["layer"]["name"] == "water-change-job"
    entry = job_store(settings).layer("change-job")
    assert entry["facts"]["style"] == "change" and entry["datetime"] is None
    mapfile = view_text(settings)
    assert 'NAME "Water gained"' in mapfile and 'PROCESSING "NODATA=OFF"' in mapfile
    item = json.loads((folder / "item.json").read_text())
    assert item["properties"]["aquamask:change_pixels"] == {k: int(v) for k, v in expected.items()}
    publishing.unpublish("change-job", settings)
    assert "water-change-job" not in view_text(settings)


def test_frequency_over_the_interval(scenes, home):
    settings = settings_for(home, scenes)
    # min_valid_fraction 0.2 keeps the cloudy d3: its clouds are simply not observations
    request = water_frequency.parse_inputs(inputs(scenes, min_valid_fraction=0.2), settings)
    outputs = run_frequency_of(request, settings, "freq-job", lambda pct, msg: None)
    used = ("d1", "d2", "d3", "d5", "d7", "d8")
    assert outputs["observations_used"] == 6
    assert [r["date"] for r in outputs["dates"] if r["status"] == "ok"] == \
        [scenes.dates[k].day for k in used]
    valid = np.sum([scenes.valid(k) for k in used], axis=0)
    wet = np.sum([scenes.water(k) for k in used], axis=0)
    folder = settings.results_dir / "freq-job"
    with rasterio.open(folder / "observations.tif") as src:
        assert np.array_equal(src.read(1), valid) and np.array_equal(src.read(2), wet)
        assert src.dtypes == ("uint16", "uint16")
    with rasterio.open(folder / "frequency.tif") as src:
        frequency = src.read(1)
        assert src.tags()["AQUAMASK_STYLE"] == "frequency" and src.nodata == 255
    # percent, rounded half up: wet in 2 of 6 -> 33, 2 of 5 -> 40, 3 of 5 -> 60
    expected = np.where(valid > 0, np.floor(100 * wet / np.maximum(valid, 1) + 0.5), 255)
    assert np.array_equal(frequency, expected)
    assert {0, 33, 40, 60, 100} <= set(np.unique(frequency).tolist())
    assert set(np.unique(valid[scenes.inside])) == {5, 6}, \
        "the cloud of d3 is five observations, not six"
    assert not valid[~scenes.inside].any(), "outside the box is no observation"
    stats = outputs["statistics"]
    # the grid's corners outside the box are no data, not "no observation" of the box
    assert stats["no_observation_area_km2"] == 0.0
    assert stats["valid_area_km2"] == pytest.approx(scenes.pixels() * PIXEL_KM2, rel=1e-3)
    assert stats["ever_wet_area_km2"] == pytest.approx((wet > 0).sum() * PIXEL_KM2, rel=1e-3)
    assert stats["min_observations"] == 5 and stats["max_observations"] == 6
    assert sum(c["area_km2"] for c in stats["classes"]) == pytest.approx(
        stats["ever_wet_area_km2"], rel=1e-6)
    assert outputs["layer"]["name"] == "water-freq-job"
    mapfile = view_text(settings)
    assert 'EXPRESSION ([pixel] > 75 AND [pixel] <= 100)' in mapfile
    publishing.unpublish("freq-job", settings)


def test_point_and_radius_masks_the_disc(scenes, tmp_path):
    settings = settings_for(tmp_path, scenes)
    west, south, east, north = scenes.bbox
    centre = [(west + east) / 2, (south + north) / 2]
    request = water_timeseries.parse_inputs(
        {"point": centre, "radius_m": 1500, "datetime": "2023-01-10", "method": "ndwi"},
        settings)
    outputs = run_series(request, settings, "disc", lambda pct, msg: None)
    row = outputs["timeseries"][0]
    assert row["status"] == "ok"
    # the disc's pixels are valid, the rest of its bounding grid is not
    assert row["valid_area_km2"] == pytest.approx(np.pi * 1.5 ** 2, rel=0.01)
    publishing.unpublish("disc", settings)


# -- inputs, before any job -----------------------------------------------------------------------
@pytest.mark.parametrize("change, error, message", [
    ({"bbox": None}, MissingInput, "give the place"),
    ({"point": [0.1, 38.1]}, InvalidInput, "give the place once"),
    ({"bbox": None, "point": [0.1, 38.1]}, MissingInput, "point needs radius_m"),
    ({"bbox": None, "point": [0.1, 38.1], "radius_m": 60_000}, InvalidInput, "radius_m must"),
    ({"bbox": None, "point": [200, 38.1], "radius_m": 100}, InvalidInput, "point: lon"),
    ({"radius_m": 10}, InvalidInput, "radius_m goes with point"),
    ({"datetime": "2023-13-01/2023-02-01"}, InvalidInput, "datetime: the start"),
    ({"datetime": None}, MissingInput, "'datetime' is required"),
    ({"datetime": "2010-01-01/2025-01-01"}, TooLarge, "max_date_span_days"),
    ({"min_valid_fraction": 1.5}, InvalidInput, "min_valid_fraction must be"),
    ({"max_cloud_cover": -1}, InvalidInput, "max_cloud_cover"),
    ({"method": "magic"}, InvalidInput, "method must be one of"),
    ({"source": "nowhere"}, InvalidInput, "source must be one of"),
    ({"colour": "blue"}, InvalidInput, "unknown input(s): colour"),
    ({"field_tolerance_days": 2}, InvalidInput, "field_tolerance_days goes with field_data"),
    ({"field_data": "date,value\n2023-01-01,3\n"}, InvalidInput,
     "field_data line 1 (header): missing column(s) 'unit'"),
])
def test_bad_timeseries_inputs(scenes, tmp_path, change, error, message):
    settings = settings_for(tmp_path, scenes, limits__max_date_span_days=3650)
    data = {k: v for k, v in {**inputs(scenes), **change}.items() if v is not None}
    with pytest.raises(error) as raised:
        water_timeseries.parse_inputs(data, settings)
    assert message in raised.value.message


def test_bad_change_inputs(scenes, tmp_path):
    settings = settings_for(tmp_path, scenes)
    place = {"bbox": scenes.bbox}
    with pytest.raises(InvalidInput, match="must end before after"):
        water_change.parse_inputs({**place, "before": "2023-02-01", "after": "2023-01-01"},
                                  settings)
    with pytest.raises(InvalidInput, match="must end before after"):
        water_change.parse_inputs({**place, "before": "2023-01-01/2023-02-10",
                                   "after": "2023-02-01/2023-03-01"}, settings)
    with pytest.raises(MissingInput, match="'after' is required"):
        water_change.parse_inputs({**place, "before": "2023-01-01"}, settings)
    with pytest.raises(InvalidInput, match="unknown input"):
        water_change.parse_inputs({**place, "before": "2023-01-01", "after": "2023-02-01",
                                   "min_valid_fraction": 0.3}, settings)


def test_every_request_of_a_series_is_checked_with_the_server_limits(scenes, tmp_path):
    settings = settings_for(tmp_path, scenes, monitoring__max_dates=3)
    request = water_frequency.parse_inputs(inputs(scenes), settings)
    with pytest.raises(TooLarge, match="at most 3 in one request"):
        run_frequency_of(request, settings, "too-many", lambda pct, msg: None)
    assert not list(settings.results_dir.glob("*too-many*"))
    nothing = water_frequency.parse_inputs(inputs(scenes, datetime="2020-01-01/2020-12-31"),
                                           settings)
    from aquamask.processes.errors import NoScene
    with pytest.raises(NoScene, match="2020-01-01T00:00:00Z/2020-12-31"):
        run_frequency_of(nothing, settings, "none", lambda pct, msg: None)


# -- the parallel runner -------------------------------------------------------------------------
def test_dates_run_in_parallel_but_never_more_than_configured():
    import threading
    import time

    lock, running, peak = threading.Lock(), [0], [0]

    def task(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return i * i

    done = []
    results = run_parallel([lambda i=i: task(i) for i in range(9)],
                           lambda i, r: done.append(i), scheduler="threads", workers=3)
    assert results == [i * i for i in range(9)] and sorted(done) == list(range(9))
    assert peak[0] == 3
    peak[0] = 0
    assert run_parallel([lambda i=i: task(i) for i in range(4)], lambda i, r: None,
                        scheduler="synchronous", workers=3) == [0, 1, 4, 9]
    assert peak[0] == 1


def test_the_scheduler_setting_is_checked(scenes, tmp_path):
    with pytest.raises(ValueError, match="monitoring.scheduler must be"):
        settings_for(tmp_path, scenes, monitoring__scheduler="processes")
    with pytest.raises(ValueError, match="monitoring.max_parallel_dates: input should be "
                                         "greater than or equal to 1"):
        settings_for(tmp_path, scenes, monitoring__max_parallel_dates=0)
    config = settings_for(tmp_path, scenes, monitoring__scheduler="tcp://127.0.0.1:8786")
    assert config.monitoring.scheduler == "tcp://127.0.0.1:8786"
