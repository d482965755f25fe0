"""The `aquamask` command line, run as a user runs it (a subprocess)."""
from __future__ import annotations

import os
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
    with rasterio.open(out) as mask:
        classes = mask.read(1)
    truth = demo_truth()
    assert np.array_equal(classes == 255, truth == 255)
    water, label = classes == 1, truth == 1
    assert (water & label).sum() / (water | label).sum() > 0.95
    assert not list(out.parent.glob(".aquamask-*")), "no work files left behind"


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
