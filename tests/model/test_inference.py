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
