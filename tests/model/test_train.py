import json

import numpy as np
import pytest
import torch

from aquamask.model.inference import WaterModel
from aquamask.model.train import train


def _tiny_dataset(chips_dir, dest, n=10):
    (dest / "images").mkdir(parents=True)
    (dest / "labels").mkdir()
    ids = sorted(int(p.stem) for p in (chips_dir / "images").glob("*.tif"))[:n]
    for i in ids:
        (dest / "images" / f"{i}.tif").symlink_to(chips_dir / "images" / f"{i}.tif")
        (dest / "labels" / f"{i}.png").symlink_to(chips_dir / "labels" / f"{i}.png")
    return dest


def test_tiny_training_is_reproducible_and_writes_metrics(chips_dir, tmp_path):
    data = _tiny_dataset(chips_dir, tmp_path / "data")
    kwargs = dict(seed=3, epochs=2, batch_size=4, base_channels=4, depth=2, version="0.0.1")
    seen = []
    a = train(data, "chips128", tmp_path / "a", progress=lambda p, m: seen.append(p), **kwargs)
    b = train(data, "chips128", tmp_path / "b", **kwargs)

    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert a["val_iou"] == b["val_iou"] and a["temperature"] == b["temperature"]
    wa = torch.load(tmp_path / "a" / "unet-s2-water-0.0.1.pt", weights_only=True)
    wb = torch.load(tmp_path / "b" / "unet-s2-water-0.0.1.pt", weights_only=True)
    assert wa["state_dict"].keys() == wb["state_dict"].keys()
    for k in wa["state_dict"]:
        assert torch.equal(wa["state_dict"][k], wb["state_dict"][k]), k
    assert wa["train_ids"] and wa["val_ids"] and not set(wa["train_ids"]) & set(wa["val_ids"])

    metrics = json.loads((tmp_path / "a" / "unet-s2-water-0.0.1.metrics.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["best_epoch"] in (1, 2)
    assert {"train_loss", "val_iou", "epoch"} <= set(metrics["history"][0])
    assert metrics["train_seconds"] > 0
    assert seen and seen[-1] == 100 and seen == sorted(seen)
    assert not list((tmp_path / "a").glob(".*tmp*"))              # atomic writes cleaned up

    model = WaterModel.load(tmp_path / "a" / "unet-s2-water-0.0.1.pt", device="cpu")
    assert model.version == "0.0.1" and model.predict(
        torch.rand(6, 40, 40).numpy() * 3000).shape == (40, 40)


def test_kfold_split_partitions_the_ids():
    from aquamask.model.train import kfold_split
    ids = list(range(23))
    vals = []
    for k in range(4):
        tr, va = kfold_split(ids, 4, k)
        assert sorted(tr + va) == ids and not set(tr) & set(va)
        vals += va
    assert sorted(vals) == ids
    assert kfold_split(ids, 4, 1) == kfold_split(ids, 4, 1)


def test_cross_validation_runs_every_fold(chips_dir, tmp_path):
    from aquamask.model.train import cross_validate
    data = _tiny_dataset(chips_dir, tmp_path / "data", n=6)
    r = cross_validate(data, "chips128", tmp_path / "cv", folds=2, epochs=1, batch_size=4,
                       base_channels=4, depth=2, seed=1)
    assert [x["fold"] for x in r["runs"]] == [0, 1]
    assert 0 <= r["mean_val_iou"] <= 1 and (tmp_path / "cv" / "cv.json").exists()
    assert (tmp_path / "cv" / "fold-1" / "unet-s2-water-0.0.0.pt").exists()
    # the out-of-fold calibration: a temperature and the IoU-best threshold of the grid
    assert r["temperature"] > 0 and 0.2 <= r["threshold"] <= 0.8
    assert len(r["threshold_nested_iou"]) == 2
    assert len(r["mean_val_iou_per_epoch"]) == 1
    # evaluate scores every chip once, by the fold model that did not train on it
    from aquamask.model.evaluate import evaluate
    report = evaluate(data, "chips128", ["unet", "ndwi"], cv=tmp_path / "cv")
    assert report["split"] == "cv" and sorted(report["chips"]) == sorted(
        p.stem for p in (data / "images").glob("*.tif"))
    assert report["models"]["unet"]["threshold"] == r["threshold"]


def test_one_command_training_on_the_sen1floods11_layout(tmp_path):
    """The dataset's own folders (S2Hand/ + LabelHand/, 13-band int16, label -1 = no data),
    written from synthetic scenes: ``train(..., "sen1floods11")`` reads and trains on them."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from tests.model.conftest import synthetic_scene
    root = tmp_path / "HandLabeled"
    (root / "S2Hand").mkdir(parents=True)
    (root / "LabelHand").mkdir()
    for k in range(5):
        bands, water = synthetic_scene(96, 96, seed=20 + k)
        full = np.full((13, 96, 96), 1000, np.int16)
        full[[1, 2, 3, 7, 11, 12]] = bands.astype(np.int16)
        full[:, :4, :4] = 0                                   # source no data
        label = water.astype(np.int16)
        label[-6:, :] = -1
        profile = dict(driver="GTiff", width=96, height=96, crs="EPSG:4326",
                       transform=from_origin(0, 1, 1e-4, 1e-4))
        with rasterio.open(root / "S2Hand" / f"C{k}_S2Hand.tif", "w", count=13,
                           dtype="int16", nodata=0, **profile) as ds:
            ds.write(full)
        with rasterio.open(root / "LabelHand" / f"C{k}_LabelHand.tif", "w", count=1,
                           dtype="int16", **profile) as ds:
            ds.write(label[None])
    m = train(tmp_path, "sen1floods11", tmp_path / "out", epochs=1, batch_size=2,
              base_channels=4, depth=2, crop=64, version="0.0.2")
    assert m["layout"] == "sen1floods11" and m["train_chips"] == 4 and m["val_chips"] == 1
    w = torch.load(tmp_path / "out" / "unet-s2-water-0.0.2.pt", weights_only=True)
    assert all(name.startswith("C") for name in w["train_ids"] + w["val_ids"])


def test_lovasz_loss_is_zero_for_confident_correct_logits_and_ignores_label_255():
    from aquamask.model.train import _loss
    y = torch.tensor([[[1, 0], [255, 1]]])
    good = torch.tensor([[[5.0, -5.0], [-9.0, 5.0]]])
    bad = -good
    assert float(_loss(good, y, "bce-lovasz")) < 0.02
    assert float(_loss(bad, y, "bce-lovasz")) > 5.0
    # the ignored pixel's logit does not matter
    other = good.clone()
    other[0, 1, 0] = 9.0
    assert torch.equal(_loss(good, y, "bce-lovasz"), _loss(other, y, "bce-lovasz"))


def test_ema_and_lovasz_options_train_reproducibly(chips_dir, tmp_path):
    data = _tiny_dataset(chips_dir, tmp_path / "data")
    kwargs = dict(seed=1, epochs=2, batch_size=4, base_channels=4, depth=2, version="0.0.1",
                  loss="bce-lovasz", ema=0.9)
    a = train(data, "chips128", tmp_path / "a", **kwargs)
    b = train(data, "chips128", tmp_path / "b", **kwargs)
    assert a["val_iou"] == b["val_iou"] and a["loss"] == "bce-lovasz" and a["ema"] == 0.9
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def test_coarse_batches_average_bands_and_turn_labels_into_water_fractions():
    """Scale-aware training: a 3x coarser view of a batch, as the network sees a 10 m scene
    at 30 m, with the water fraction of each cell as the target."""
    from aquamask.model.train import _loss, coarsen
    x = torch.arange(2 * 6 * 7 * 8, dtype=torch.float32).reshape(2, 6, 7, 8)
    x[0, :, :3, :3] = float("nan")                                # a whole cell of no data
    x[1, 2, 4, 4] = float("nan")                                  # one pixel of one band
    y = torch.zeros(2, 7, 8, dtype=torch.long)
    y[:, :, 0] = 1                                                # a 1-px river
    y[0, :3, :3] = 255
    y[1, 6, :] = 255                                              # the last row ignored
    xc, frac = coarsen(x, y, 3)
    assert xc.shape == (2, 6, 3, 3) and frac.shape == (2, 3, 3)
    assert torch.isnan(xc[0, :, 0, 0]).all() and torch.isnan(frac[0, 0, 0])
    assert torch.isclose(xc[1, 2, 1, 1], x[1, 2, 3:6, 3:6].nanmean())
    assert torch.isclose(xc[1, 0, 2, 2], x[1, 0, 6:, 6:].mean())   # a partial corner cell
    np.testing.assert_allclose(frac[1, :2, 0].numpy(), [1 / 3, 1 / 3], rtol=1e-6)
    assert (frac[1, :2, 1:] == 0).all() and torch.isnan(frac[1, 2]).all()  # all ignored
    assert torch.isclose(frac[0, 1, 0], torch.tensor(1 / 3))
    # the loss takes fractions (NaN ignored) as it takes labels (255 ignored)
    assert torch.isfinite(_loss(torch.zeros(2, 3, 3), frac))
    hard = torch.where(y == 255, torch.nan, y.float())
    assert torch.isclose(_loss(torch.ones(2, 7, 8), hard), _loss(torch.ones(2, 7, 8), y))


def test_training_on_every_chip_takes_the_cross_validated_calibration(chips_dir, tmp_path):
    """The shipped way: every chip trained on, the temperature and threshold from the
    out-of-fold predictions of cross-validation; WaterModel cuts at that threshold."""
    data = _tiny_dataset(chips_dir, tmp_path / "data", n=4)
    refine = {"guides": ["ndwi", "mndwi"], "radius": 1, "eps": 0.01}
    m = train(data, "chips128", tmp_path / "w", epochs=1, batch_size=4, base_channels=4,
              depth=2, holdout=False, select="last", scale=3, refine=refine,
              calibration={"temperature": 1.7, "threshold": 0.38}, version="0.0.3")
    assert m["train_chips"] == 4 and m["val_chips"] == 0 and m["val_iou"] is None
    model = WaterModel.load(tmp_path / "w" / "unet-s2-water-0.0.3.pt", device="cpu")
    assert model.threshold == 0.38 and model.temperature == 1.7
    assert model.scale == 3 and model.refine == refine and model.meta["val_ids"] == []
    with pytest.raises(ValueError):
        train(data, "chips128", tmp_path / "x", epochs=1, holdout=False, select="best")
