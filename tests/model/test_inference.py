import hashlib

import numpy as np
import pytest
import torch

from aquamask.model.inference import (
    WEIGHTS_DIR,
    WaterModel,
    default_weights,
    resolve_weights,
    select_device,
    shipped_models,
)
from tests.model.conftest import synthetic_scene


@pytest.fixture(scope="module")
def model() -> WaterModel:
    return WaterModel.load(device="cpu")


@pytest.mark.parametrize("name", shipped_models())
def test_shipped_weights_load_with_weights_only_and_sha256(name):
    path = default_weights(name)
    assert path.stat().st_size < 5 * 1024 * 1024
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert blob["format"] == 1
    for key in ("name", "version", "architecture", "bands", "normalisation", "temperature",
                "threshold", "seed", "val_ids", "metrics", "state_dict"):
        assert key in blob, key
    m = WaterModel.load(name, device="cpu")
    assert m.path == path and m.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.name == f"{m.name}-{m.version}.pt" and m.name == name
    assert m.bands == ("B02", "B03", "B04", "B08", "B11", "B12")
    assert len(m.version.split(".")) == 3
    assert 0 < m.threshold < 1 and m.halo > 0 and m.temperature > 0
    # the cut the server applies by default is the calibrated one the weights carry
    assert (m.threshold, m.temperature) == (blob["threshold"], blob["temperature"])


def test_the_default_model_runs_at_the_input_s_resolution_with_the_cv_calibration(model):
    """The default runs the network on the scene's own pixels (docs/model.md: why not at 30 m
    by default), carries the guided refinement for callers that ask a coarser scale, and cuts
    at the out-of-fold IoU-best threshold of its recipe's cross-validation."""
    assert model.scale == 1 and model.refine and set(model.refine["guides"]) <= {"ndwi",
                                                                                "mndwi"}
    cv = model.meta["metrics"]
    assert cv["threshold"] == model.threshold and cv["temperature"] == model.temperature
    assert model.meta["val_ids"] == [] and len(model.meta["train_ids"]) == 244


def test_models_load_by_name_version_or_path():
    assert resolve_weights(None) == default_weights()
    assert WaterModel.load("unet-s2-water", device="cpu").path == default_weights()
    old = WaterModel.load("unet-s2-water-1.1.0", device="cpu")
    assert old.version == "1.1.0" and old.path == WEIGHTS_DIR / "unet-s2-water-1.1.0.pt"
    assert resolve_weights("unet-s2-water-1.1.0.pt") == old.path
    assert resolve_weights(old.path) == old.path
    with pytest.raises(FileNotFoundError):
        WaterModel.load("no-such-model", device="cpu")


def test_device_selection_falls_back_to_cpu(monkeypatch):
    assert select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device(None) == torch.device("cpu")
    assert select_device("auto") == torch.device("cpu")
    assert select_device("cuda") == torch.device("cpu")
    with pytest.raises(ValueError):
        select_device("tpu")


@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (37, 200), (130, 70), (513, 40)])
def test_predict_any_size(model, h, w):
    bands, _ = synthetic_scene(max(h, 32), max(w, 32), seed=h * w)
    out = model.predict(bands[:, :h, :w])
    assert out.shape == (h, w) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_predict_finds_synthetic_water(model):
    bands, water = synthetic_scene(256, 256, seed=1)
    pred = model.predict(bands) >= model.threshold
    iou = (pred & water).sum() / (pred | water).sum()
    assert iou > 0.8


def test_predict_wrong_band_count_is_an_error(model):
    with pytest.raises(ValueError):
        model.predict(np.zeros((4, 10, 10), np.float32))


def test_nan_in_nan_out_and_nowhere_else(model):
    bands, _ = synthetic_scene(300, 280, seed=2)
    bands[:, 50:120, 60:90] = np.nan          # a hole in every band
    bands[3, 200, 10] = np.nan                 # one band missing at one pixel
    bands[:, :, 270:] = np.nan                 # a no-data edge
    out = model.predict(bands)
    expected = np.isnan(bands).any(axis=0)
    np.testing.assert_array_equal(np.isnan(out), expected)
    assert (out[~expected] >= 0).all() and (out[~expected] <= 1).all()
    assert np.isnan(model.predict(np.full((6, 20, 20), np.nan, np.float32))).all()


def _halves(m: WaterModel, bands: np.ndarray, mid: int) -> np.ndarray:
    """The scene predicted as a top and a bottom block, each read with ``halo`` pixels of
    context (as the pipeline does), cropped and stacked."""
    halo = m.halo
    return np.concatenate([m.predict(bands[:, :mid + halo])[:mid],
                           m.predict(bands[:, mid - halo:])[halo:]])


def _agree(a: np.ndarray, b: np.ndarray, threshold: float, flips: float = 0.002) -> None:
    diff = np.abs(a - b)
    assert diff.mean() < 0.005
    assert np.mean(diff > 0.1) < 0.002
    assert ((a >= threshold) != (b >= threshold)).mean() < flips


def test_larger_than_a_tile_matches_halves_with_halo(model):
    """The seam test: a 1100 x 600 scene (several tiles at scale 1) predicted whole and as
    two blocks with halo agree. At scale 3 the network's cells follow each block's origin:
    where the bottom block starts on the scene's 3 px grid the blocks agree with the whole as
    closely as at scale 1; off the grid about 0.2 % of pixels (near the threshold) flip."""
    bands, _ = synthetic_scene(1100, 600, seed=3)
    whole = model.predict(bands)
    on_grid = 548 + (model.halo - 548) % model.scale      # mid - halo on the cell grid
    _agree(_halves(model, bands, on_grid), whole, model.threshold)
    _agree(_halves(model, bands, on_grid + 1), whole, model.threshold, flips=0.005)


@pytest.mark.parametrize("scale", [1, 3])
def test_seams_with_halo_at_each_scale(scale):
    m = WaterModel.load(device="cpu", precision="fp32")
    m.scale, m.tile = scale, 96                          # small tiles: several per block
    bands, _ = synthetic_scene(700, 300, seed=5)
    mid = 348 + (m.halo - 348) % scale
    _agree(_halves(m, bands, mid), m.predict(bands), m.threshold)


@pytest.mark.parametrize("scale", [2, 3])
def test_coarse_scales_nodata_and_odd_sizes(scale):
    m = WaterModel.load(device="cpu", precision="fp32")
    m.scale = scale
    bands, water = synthetic_scene(301, 257, seed=6)
    bands[:, 11, 13] = np.nan                            # a lone no-data pixel in a cell
    bands[:, 100:140, 50:91] = np.nan
    out = m.predict(bands)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(bands).any(axis=0))
    pred = out >= m.threshold
    assert (pred & water).sum() / (pred | water).sum() > 0.8
    assert m.predict(bands, scale=1).shape == out.shape
    assert m.network_features(bands).shape[-2:] == (-(-301 // scale), -(-257 // scale))


def test_edges_at_10_m_follow_the_guide(model):
    """A 10 m scene: a 40 m river and a pond with sharp corners. The network at 30 m finds
    them; the guided refinement puts their edges on the right pixels, where bilinear
    upsampling of the 30 m logits blurs them into false water around every edge."""
    land = np.array([600, 850, 950, 2600, 2100, 1300], np.float32)
    wet = np.array([450, 600, 400, 200, 90, 60], np.float32)
    water = np.zeros((192, 192), bool)
    water[:, 91:95] = True
    water[40:100, 130:170] = True
    rng = np.random.default_rng(0)
    bands = np.where(water[None], wet[:, None, None], land[:, None, None])
    bands = (bands * rng.uniform(0.9, 1.1, (1, 192, 192)) + rng.normal(0, 40, (6, 192, 192)))
    bands = bands.astype(np.float32)
    refined = model.predict(bands, scale=3) >= model.threshold
    plain = model.predict(bands, scale=3, refine=False) >= model.threshold
    assert refined[:, 91:95].mean() > 0.9
    false_refined, false_plain = (refined & ~water).sum(), (plain & ~water).sum()
    assert false_refined < false_plain / 3, (false_refined, false_plain)
    assert (refined & water).sum() / (refined | water).sum() > 0.9


def test_torchscript_export_gives_the_eager_mask(tmp_path):
    eager = WaterModel.load(device="cpu", precision="fp32", engine="eager")
    assert WaterModel.load(device="cpu", precision="fp32").engine == "torchscript"
    scripted = WaterModel.load(device="cpu", precision="fp32", engine="torchscript")
    bands, _ = synthetic_scene(300, 270, seed=7)        # not a multiple of the U-Net's 8
    p_eager, p_script = eager.predict(bands), scripted.predict(bands)
    np.testing.assert_allclose(p_script, p_eager, atol=1e-4)
    np.testing.assert_array_equal(p_script >= 0.5, p_eager >= 0.5)
    path = tmp_path / "net.pt"
    eager.export_torchscript(path)
    loaded = torch.jit.load(str(path))
    x = torch.randn(1, eager.net.in_channels, 64, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(loaded(x).numpy(), eager.net(x).numpy(), atol=1e-4)


def test_bf16_autocast_agrees_with_fp32():
    bands, _ = synthetic_scene(256, 256, seed=8)
    p32 = WaterModel.load(device="cpu", precision="fp32").predict(bands)
    p16 = WaterModel.load(device="cpu", precision="bf16").predict(bands)
    assert np.abs(p16 - p32).max() < 0.1
    assert ((p16 >= 0.5) != (p32 >= 0.5)).mean() < 0.005


def test_precision_choice_and_env_override(monkeypatch):
    monkeypatch.setenv("AQUAMASK_MODEL_PRECISION", "fp32")
    assert WaterModel.load(device="cpu").precision == "fp32"
    monkeypatch.delenv("AQUAMASK_MODEL_PRECISION")
    from aquamask.model import inference
    monkeypatch.setattr(inference, "cpu_bf16_supported", lambda: False)
    assert WaterModel.load(device="cpu").precision == "fp32"
    monkeypatch.setattr(inference, "cpu_bf16_supported", lambda: True)
    assert WaterModel.load(device="cpu").precision == "bf16"
    with pytest.raises(ValueError):
        WaterModel.load(device="cpu", precision="int4")


def test_models_are_found_by_name_only(tmp_path):
    from aquamask.model.inference import find_model
    assert find_model(None) == find_model("unet-s2-water") == default_weights()
    assert find_model("unet-s2-water-1.1.0") == WEIGHTS_DIR / "unet-s2-water-1.1.0.pt"
    (tmp_path / "lake-0.1.0.pt").write_bytes(b"")
    (tmp_path / "lake-0.2.0.pt").write_bytes(b"")
    assert find_model("lake", tmp_path) == tmp_path / "lake-0.2.0.pt"
    with pytest.raises(LookupError, match="no model"):
        find_model("lake")                              # not shipped, and no folder given
    for path in ("../weights/unet-s2-water", "/etc/passwd", "a/b", ".hidden"):
        with pytest.raises(LookupError, match="not a model name"):
            find_model(path, tmp_path)


def test_old_weights_still_load():
    # 1.1.0 predates scale and refine: they default to the network at full resolution
    m = WaterModel.load(WEIGHTS_DIR / "unet-s2-water-1.1.0.pt", device="cpu")
    assert m.version == "1.1.0" and m.scale == 1 and m.refine is None
    assert m.predict(synthetic_scene(64, 64)[0]).shape == (64, 64)


def test_gpu_choices_are_made_at_run_time(monkeypatch):
    from aquamask.model.inference import autocast_dtype
    assert autocast_dtype(torch.device("cpu")) == torch.bfloat16
    assert autocast_dtype(torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device(None) == torch.device("cuda")
    assert select_device("cuda:1") == torch.device("cuda:1")
