"""The `aquamask` command line, run as a user runs it (a subprocess)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import rasterio
from rio_cogeo.cogeo import cog_validate

from aquamask.processes.demo import demo_truth


def aquamask(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aquamask.server.cli", *args],
                          capture_output=True, text=True, timeout=300)


def test_detect_writes_a_mask_cog_and_shows_progress(demo_scene, tmp_path):
    out = tmp_path / "out" / "mask.tif"
    result = aquamask("detect", str(demo_scene), "--out", str(out), "--method", "mndwi")
    assert result.returncode == 0, result.stderr
    assert "100%" in result.stderr, "a progress bar reaches 100 %"
    assert "water:" in result.stdout and "km²" in result.stdout
    assert cog_validate(str(out), quiet=True)[0]
    assert out.with_suffix(".probability.tif").exists()
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
    assert "error:" in result.stderr and "cannot be read as a raster" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m.tif").exists()
    result = aquamask("detect", str(bad), "--out", str(tmp_path / "m.tif"), "--threshold", "3")
    assert result.returncode == 2 and "Traceback" not in result.stderr
