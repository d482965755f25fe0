"""Streaming detection: block-wise, pipelined output equals the whole-scene computation."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from aquamask.model.indices import mndwi
from aquamask.processes.pipeline.detection import detect
from aquamask.processes.pipeline.methods import index_probability
from aquamask.processes.pipeline.sources.raster import RasterSource


@pytest.fixture
def scene(demo_scene):
    scene = RasterSource(demo_scene.parent, 10**8, []).read(demo_scene.name)
    yield scene
    scene.close()


def test_blocks_and_threads_change_nothing(scene, tmp_path):
    progress: list[float] = []
    timings: dict[str, float] = {}
    mask = detect(scene, "mndwi", 0.5, tmp_path / "w", block=200,
                  progress=lambda pct, msg: progress.append(pct), stage_seconds=timings)
    whole = scene.read(Window(0, 0, scene.width, scene.height))
    expected = index_probability(mndwi(whole[1], whole[4]))
    with rasterio.open(mask.path) as classes, rasterio.open(mask.probability_path) as prob:
        assert np.allclose(prob.read(1), expected, equal_nan=True)
        got = classes.read(1)
    assert np.array_equal(got == 255, np.isnan(expected))
    assert np.array_equal(got == 1, expected >= 0.5)
    assert mask.stats.water_pixels == int((expected >= 0.5).sum())
    assert mask.stats.valid_pixels == int(np.isfinite(expected).sum())
    # 10 m UTM pixels 100 km off the central meridian: 100.055 m² each
    assert mask.stats.water_area_km2 == pytest.approx(mask.stats.water_pixels * 100.055e-6,
                                                      rel=1e-4)
    assert progress == sorted(progress) and progress[-1] == 100 and len(progress) == 9
    assert set(timings) == {"read", "predict", "write"} and all(v >= 0 for v in timings.values())


def test_an_error_in_the_middle_stops_the_stream_and_surfaces(scene, tmp_path):
    calls = []

    def failing_progress(pct, msg):
        calls.append(pct)
        if len(calls) == 3:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        detect(scene, "ndwi", 0.5, tmp_path / "w", block=128, progress=failing_progress)
    assert len(calls) == 3


def test_without_probability_only_the_classes_are_written(scene, tmp_path):
    with_p = detect(scene, "ndwi", 0.5, tmp_path / "a")
    without = detect(scene, "ndwi", 0.5, tmp_path / "b", with_probability=False)
    assert without.probability_path is None
    assert not (tmp_path / "b" / "probability.tif").exists()
    with rasterio.open(with_p.path) as a, rasterio.open(without.path) as b:
        assert np.array_equal(a.read(1), b.read(1))
    assert without.stats == with_p.stats
