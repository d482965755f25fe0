"""Streaming detection: block-wise, pipelined output equals the whole-scene computation."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from aquamask.model.indices import index_histogram, mndwi, otsu_threshold_from_histogram
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


def test_otsu_mndwi_thresholds_every_block_at_the_whole_scenes_otsu(scene, tmp_path):
    mask = detect(scene, "otsu-mndwi", 0.5, tmp_path / "w", block=200)
    whole = scene.read(Window(0, 0, scene.width, scene.height))
    index = mndwi(whole[1], whole[4])
    t = otsu_threshold_from_histogram(index_histogram(index))
    assert -0.5 < t < 0.5                                 # the demo scene is bimodal
    with rasterio.open(mask.path) as classes:
        got = classes.read(1)
    assert np.array_equal(got == 1, index >= t)
    assert np.array_equal(got == 255, np.isnan(index))


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
    assert not (tmp_path / "b" / "probability.raw.tif").exists()
    with rasterio.open(with_p.path) as a, rasterio.open(without.path) as b:
        assert np.array_equal(a.read(1), b.read(1))
    assert without.stats == with_p.stats


@pytest.mark.parametrize("in_memory", [True, False])
def test_only_the_cogs_reach_the_disk_and_the_rasters_in_between_are_freed(
        scene, tmp_path, monkeypatch, in_memory):
    """#17: the detection's rasters stay in memory when they fit (a full tile's do), so each
    COG is the one file written; larger scenes use the work folder. Either way they are gone
    once the COGs exist, also after a failure."""
    from rasterio.shutil import exists
    from rio_cogeo.cogeo import cog_validate

    from aquamask.processes.pipeline import detection
    from aquamask.processes.pipeline.products import write_cogs

    if not in_memory:
        monkeypatch.setattr(detection, "IN_MEMORY_BYTES", 0)
    work = tmp_path / "w"
    mask = detect(scene, "ndwi", 0.5, work)
    assert str(mask.path).startswith("/vsimem/") == in_memory
    written_before = sorted(p.name for p in work.iterdir())
    assert written_before == ([] if in_memory else ["classes.raw.tif", "probability.raw.tif"])
    mask_cog, probability_cog = write_cogs(mask, work)
    assert cog_validate(str(mask_cog))[0] and cog_validate(str(probability_cog))[0]
    assert not exists(str(mask.path)) and not exists(str(mask.probability_path))
    assert sorted(p.name for p in work.iterdir()) == ["mask.tif", "probability.tif"]

    def failing(pct, msg):
        if pct > 50:
            raise RuntimeError("dismissed")

    folders = []
    real = detection.intermediate_folder
    monkeypatch.setattr(detection, "intermediate_folder",
                        lambda *a: folders.append(real(*a)) or folders[-1])
    with pytest.raises(RuntimeError):
        detect(scene, "ndwi", 0.5, tmp_path / "x", block=128, progress=failing)
    assert not exists(str(folders[0] / "classes.raw.tif"))


def test_reads_run_below_the_prediction_s_priority(scene, tmp_path):
    """The reader thread yields the cores to the model's threads (Linux per-thread niceness)."""
    import dataclasses
    import os
    import threading

    seen: list[int] = []
    read = scene.read

    def noting_read(window):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return read(window)

    here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    detect(dataclasses.replace(scene, read=noting_read), "ndwi", 0.5, tmp_path / "w",
           with_probability=False)
    assert seen and all(nice > here for nice in seen), (here, seen)


def test_unet_cuts_at_the_models_calibrated_threshold_when_asked_for_0_5():
    from aquamask.processes.pipeline import methods
    from tests.model.conftest import synthetic_scene
    model = methods.load_model(None, "cpu")
    assert model.threshold != 0.5                        # 2.0.0's out-of-fold cut
    bands = synthetic_scene(96, 96)[0]
    shifted = methods.get("unet").predictor(model)[0](bands)
    raw = model.predict(bands)
    assert np.array_equal(np.isnan(shifted), np.isnan(raw))
    near = np.abs(raw - model.threshold) < 1e-5          # float rounding at the cut itself
    assert np.array_equal((shifted >= 0.5)[~near], (raw >= model.threshold)[~near])
    assert np.all(np.diff(shifted.ravel()[np.argsort(raw.ravel())]) >= -1e-6)  # monotone
