"""The `aquamask` command line, run as a user runs it (a subprocess)."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import rasterio
from rio_cogeo.cogeo import cog_validate

from aquamask.processes.demo import demo_truth


def aquamask(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aquamask.server.cli", *args],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env} if env else None)


def test_detect_writes_a_mask_cog_and_shows_progress(demo_scene, tmp_path):
    out = tmp_path / "out" / "mask.tif"
    result = aquamask("detect", str(demo_scene), "--out", str(out), "--method", "mndwi")
    assert result.returncode == 0, result.stderr
    assert "100%" in result.stderr, "a progress bar reaches 100 %"
    assert "water:" in result.stdout and "km²" in result.stdout
    assert cog_validate(str(out), quiet=True)[0]
    assert out.with_suffix(".probability.tif").exists()
    # the STAC item beside the mask: its assets are the files written, its statistics those told
    item = json.loads((out.parent / "mask.item.json").read_text())
    assert item["type"] == "Feature" and item["id"] == "mask"
    assert {k: a["href"] for k, a in item["assets"].items()} == {
        "mask": "./mask.tif", "probability": "./mask.probability.tif",
        "qgis_style": "./mask.qml", "sld": "./mask.sld", "gdal_metadata": "./mask.tif.aux.xml"}
    assert all((out.parent / a["href"]).is_file() for a in item["assets"].values())
    assert f"{item['properties']['aquamask:water_area_km2']:.4f} km²" in result.stdout
    assert item["properties"]["aquamask:lineage"]["input"]["href"] == str(demo_scene.resolve())
    assert "mask.item.json" in result.stdout
    with rasterio.open(out) as mask:
        classes = mask.read(1)
    truth = demo_truth()
    assert np.array_equal(classes == 255, truth == 255)
    water, label = classes == 1, truth == 1
    assert (water & label).sum() / (water | label).sum() > 0.95
    assert not list(out.parent.glob(".aquamask-*")), "no work files left behind"


def detected_iou(scene, out, *args: str) -> float:
    """Water IoU of `aquamask detect SCENE --out OUT ARGS` against the demo scene's truth."""
    result = aquamask("detect", str(scene), "--out", str(out), "--no-probability", *args)
    assert result.returncode == 0, result.stderr
    with rasterio.open(out) as mask:
        water = mask.read(1) == 1
    label = demo_truth() == 1
    return (water & label).sum() / (water | label).sum()


def test_detect_with_the_scenes_own_otsu_threshold(demo_scene, tmp_path):
    assert detected_iou(demo_scene, tmp_path / "m.tif", "--method", "otsu-mndwi") > 0.9


def test_detect_with_the_users_own_weights(demo_scene, tmp_path):
    from aquamask.model.inference import WEIGHTS_DIR
    mine = tmp_path / "my-model.pt"                     # as `aquamask train --out` writes
    mine.write_bytes((WEIGHTS_DIR / "unet-s2-water-1.1.0.pt").read_bytes())
    assert detected_iou(demo_scene, tmp_path / "m.tif", "--weights", str(mine)) > 0.8


def test_detect_refuses_a_bad_weights_file_in_one_line(demo_scene, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("not weights")
    for args in (["--weights", str(bad)], ["--weights", str(tmp_path / "missing.pt")],
                 ["--weights", str(bad), "--method", "ndwi"]):
        result = aquamask("detect", str(demo_scene), "--out", str(tmp_path / "m.tif"), *args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: --weights") and "Traceback" not in result.stderr
    assert not (tmp_path / "m.tif").exists()


def test_detect_reports_bad_input_without_a_traceback(tmp_path):
    bad = tmp_path / "not-a-raster.tif"
    bad.write_text("hello")
    result = aquamask("detect", str(bad), "--out", str(tmp_path / "m.tif"), "--method", "ndwi")
    assert result.returncode == 2
    assert f"error: IMAGE: '{bad}' cannot be read as a raster" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m.tif").exists()
    # the CLI's words: the file as given, no server input names or data root, and no bar of a
    # detection that never started
    missing = aquamask("detect", "nowhere.tif", "--out", str(tmp_path / "m.tif"))
    assert missing.returncode == 2
    assert missing.stderr == "error: IMAGE: no such file 'nowhere.tif'\n"
    for result in (aquamask("detect", str(bad), "--out", str(tmp_path / "m.tif")),
                   aquamask("detect", "ftp://example.org/x.tif", "--out", str(tmp_path / "m.tif"))):
        assert result.returncode == 2
        assert "image.href" not in result.stderr and "data root" not in result.stderr
        assert "%|" not in result.stderr, result.stderr
    result = aquamask("detect", str(bad), "--out", str(tmp_path / "m.tif"), "--threshold", "3")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_demo_and_serve_on_a_busy_port_fail_with_the_cause_and_the_port_hint(tmp_path):
    with socket.socket() as other:  # another program's server on the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        env = {"AQUAMASK__HOME": str(tmp_path)}
        for args in (["demo", "--port", str(port), "--exit"], ["serve", "--port", str(port)]):
            result = aquamask(*args, env=env)
            assert result.returncode == 2, (args, result.stdout, result.stderr)
            assert f"cannot listen on 127.0.0.1:{port}: another program listens on it" \
                in result.stderr and "--port" in result.stderr, result.stderr
            assert "server up" not in result.stdout and "Traceback" not in result.stderr


def test_an_image_without_a_crs_is_refused_without_rasterio_warnings(demo_scene, tmp_path):
    plain = tmp_path / "plain.tif"
    with rasterio.open(demo_scene) as src:
        profile = {k: v for k, v in src.profile.items() if k not in ("crs", "transform")}
        with rasterio.open(plain, "w", **profile) as dst:
            dst.write(src.read())
    result = aquamask("detect", str(plain), "--out", str(tmp_path / "m.tif"), "--method", "ndwi")
    assert result.returncode == 2
    assert result.stderr == (f"error: IMAGE: '{plain}' has no coordinate reference system; "
                             "water areas and map layers need a georeferenced image\n")


def test_demo_sets_up_a_dated_library_and_its_job_bar_advances_once_per_update(tmp_path):
    home = tmp_path / "home"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"AQUAMASK__HOME": str(home)}
    result = aquamask("demo", "--port", str(port), "--exit", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"dated demo scenes for place and date searches: {home / 'scenes'}" in result.stdout
    # each update drawn once (tqdm writes a line per draw, ending in \r when not a terminal)
    lines = [line for line in re.split(r"[\r\n]+", result.stderr)
             if line.startswith("water-detection job:")]
    percents = [int(re.match(r"water-detection job:\s+(\d+)%", line).group(1))
                for line in lines]
    assert percents[-1] == 100 and percents == sorted(percents), lines
    assert any(0 < p < 100 for p in percents), lines  # it advances, not 1 % then done
    assert all(a != b for a, b in zip(lines, lines[1:])), lines

    # the library is there for a place and date search, which lists what --help says
    search = aquamask("search", "--bbox=-1.84,38.08,-1.82,38.10",
                      "--datetime", "2024-05-01/2024-06-30", env=env)
    assert search.returncode == 0, search.stderr
    header, *rows = search.stdout.splitlines()
    assert header.split() == ["date", "(UTC)", "cloud", "%", "id"]
    assert [re.search(r"\d{4}-\d\d-\d\d", row).group() for row in rows] == [
        "2024-06-12", "2024-05-10"]
    helped = aquamask("search", "--help").stdout
    assert "date, cloud cover and id" in " ".join(helped.split())
    assert "coverage" not in helped.split("--")[0].replace("cover the place", "")


def test_publish_keeps_the_jobs_server_and_unpublish_says_what_it_removed(demo_scene,
                                                                          tmp_path):
    from aquamask.processes.jobs.reconcile import import_result
    from aquamask.processes.ogc.water_detection import parse_inputs
    from aquamask.processes.pipeline.flow import run_detection
    from aquamask.processes.settings import Settings
    from aquamask.processes.storage.jobstore import JobStore
    from aquamask.processes.types import no_progress

    env = {"AQUAMASK__HOME": str(tmp_path)}
    settings = Settings.load(environ={**env, "AQUAMASK__SERVER__URL": "http://127.0.0.1:5123"})
    settings.ensure_dirs()
    JobStore(settings.database_url)  # the database a server creates at start
    (settings.data_root / "scene.tif").write_bytes(demo_scene.read_bytes())
    run_detection(parse_inputs({"image": {"href": "scene.tif"}, "method": "ndwi"}, settings),
                  settings, "j5123", no_progress)
    import_result("j5123", settings)  # the job, made by a server on port 5123

    published = aquamask("publish", "j5123", env=env)
    assert published.returncode == 0, published.stderr
    layer = json.loads(published.stdout)
    urls = [v for k, v in layer.items() if isinstance(v, str) and v.startswith("http")]
    assert urls and all(u.startswith("http://127.0.0.1:5123/") for u in urls), layer
    removed = aquamask("unpublish", "j5123", env=env)
    assert removed.returncode == 0, removed.stderr
    views = [f"{layer['name']}--{view}" for view in ("falsecolor", "probability", "truecolor")]
    # the mask's layer and the views published with it (the scene, the probability)
    assert json.loads(removed.stdout) == {"job": "j5123", "removed": [layer["name"], *views]}
    again = aquamask("unpublish", "j5123", env=env)
    assert json.loads(again.stdout) == {"job": "j5123", "removed": []}
    assert "job j5123 had no published layer" in again.stderr
