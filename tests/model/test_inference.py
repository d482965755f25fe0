import hashlib

import numpy as np
import pytest
import torch

from aquamask.model.inference import WaterModel, default_weights, select_device
from tests.model.conftest import synthetic_scene


@pytest.fixture(scope="module")
def model() -> WaterModel:
    return WaterModel.load(device="cpu")


def test_shipped_weights_load_with_weights_only_and_sha256(model):
    path = default_weights()
    assert path.stat().st_size < 5 * 1024 * 1024
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert blob["format"] == 1
    for key in ("name", "version", "architecture", "bands", "normalisation", "temperature",
                "threshold", "seed", "val_ids", "metrics", "state_dict"):
        assert key in blob, key
    assert model.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.name == f"{model.name}-{model.version}.pt"
    assert model.bands == ("B02", "B03", "B04", "B08", "B11", "B12")
    assert len(model.version.split(".")) == 3
    assert 0 < model.threshold < 1 and model.halo > 0 and model.temperature > 0


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


def test_larger_than_a_tile_matches_halves_with_halo(model):
    """The seam test: a 1100 x 600 scene (several tiles) predicted whole, and as a top and a
    bottom block each read with ``halo`` pixels of context (as the pipeline does), agree."""
    bands, _ = synthetic_scene(1100, 600, seed=3)
    whole = model.predict(bands)
    halo, mid = model.halo, 550
    top = model.predict(bands[:, :mid + halo])[:mid]
    bottom = model.predict(bands[:, mid - halo:])[halo:]
    halves = np.concatenate([top, bottom])
    diff = np.abs(halves - whole)
    assert diff.mean() < 0.005
    assert np.mean(diff > 0.1) < 0.002
    assert ((halves >= 0.5) != (whole >= 0.5)).mean() < 0.002


@pytest.mark.parametrize("scale", [1, 2])
def test_seams_with_halo_at_each_scale(scale):
    m = WaterModel.load(device="cpu", precision="fp32")
    m.scale, m.tile = scale, 256                         # small tiles: several per block
    bands, _ = synthetic_scene(700, 300, seed=5)
    whole = m.predict(bands)
    halo, mid = m.halo, 350
    halves = np.concatenate([m.predict(bands[:, :mid + halo])[:mid],
                             m.predict(bands[:, mid - halo:])[halo:]])
    diff = np.abs(halves - whole)
    assert diff.mean() < 0.005 and np.mean(diff > 0.1) < 0.002
    assert ((halves >= 0.5) != (whole >= 0.5)).mean() < 0.002


def test_half_resolution_nodata_and_odd_sizes():
    m = WaterModel.load(device="cpu", precision="fp32")
    m.scale = 2
    bands, water = synthetic_scene(301, 257, seed=6)
    bands[:, 11, 13] = np.nan                            # a lone no-data pixel in a 2x2 cell
    bands[:, 100:140, 50:91] = np.nan
    out = m.predict(bands)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(bands).any(axis=0))
    pred = out >= m.threshold
    assert (pred & water).sum() / (pred | water).sum() > 0.8
    assert m.predict(bands, scale=1).shape == out.shape


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


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_old_weights_still_load(version):
    from aquamask.model.inference import WEIGHTS_DIR
    m = WaterModel.load(WEIGHTS_DIR / f"unet-s2-water-{version}.pt", device="cpu")
    assert m.version == version and m.scale == 1
    assert m.predict(synthetic_scene(64, 64)[0]).shape == (64, 64)


def test_gpu_choices_are_made_at_run_time(monkeypatch):
    from aquamask.model.inference import autocast_dtype
    assert autocast_dtype(torch.device("cpu")) == torch.bfloat16
    assert autocast_dtype(torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device(None) == torch.device("cuda")
    assert select_device("cuda:1") == torch.device("cuda:1")
