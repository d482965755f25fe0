import numpy as np

from aquamask.model.datasets import Sen1Floods11Dataset, chips128_split
from aquamask.model.evaluate import evaluate, format_table, write_worst_chips_png


def test_unet_beats_indices_on_the_validation_split(chips_dir, tmp_path):
    report = evaluate(chips_dir, "chips128", split="val")
    m = report["methods"]
    assert report["split"] == "val"
    assert sorted(int(c) for c in report["chips"]) == sorted(chips128_split()[1])
    for method in ("ndwi", "mndwi", "otsu-mndwi"):
        assert m["unet"]["iou"] > m[method]["iou"] + 0.05, (method, m)
    assert m["unet"]["iou"] >= 0.70
    for r in m.values():
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
        assert np.isclose(r["iou"], r["tp"] / (r["tp"] + r["fp"] + r["fn"]))
    table = format_table(report)
    assert table.count("\n| ") == 5 and "| unet |" in table
    png = write_worst_chips_png(report, tmp_path / "worst.png", n=2)
    assert png.stat().st_size > 0


def test_unet_beats_ndwi_on_the_spain_chip(spain_dir):
    report = evaluate(spain_dir, "sen1floods11")
    m = report["methods"]
    assert report["chips"] == ["Spain_7370579"] and report["split"] == "all"
    assert m["unet"]["iou"] > m["ndwi"]["iou"], m
    assert m["unet"]["iou"] > 0.676


def test_sen1floods11_reader_masks_nodata(spain_dir):
    bands, label = Sen1Floods11Dataset(spain_dir)[0]
    assert bands.shape == (6, 512, 512) and bands.dtype == np.float32
    assert set(np.unique(label)) <= {0, 1, 255}
    assert np.isnan(bands).any(axis=0)[label != 255].sum() == 0
    water = (label == 1).sum() / (label != 255).sum()
    assert 0.2 < water < 0.35


def test_per_chip_table_and_layout_scale():
    from aquamask.model.evaluate import layout_scale

    class M:
        scale = 2
    assert layout_scale("chips128", M()) == 1          # 30 m chips: already coarser than 20 m
    assert layout_scale("sen1floods11", M()) == 2
    M.scale = 1
    assert layout_scale("sen1floods11", M()) == 1 and layout_scale("chips128", None) == 1
    report = {"layout": "chips128", "split": "val", "chips": ["1", "2"], "valid_pixels": 10,
              "methods": {"ndwi": {"iou": .5, "precision": .5, "recall": .5, "f1": .5,
                                   "per_chip_iou": {"1": 0.25, "2": None}}}}
    table = format_table(report, per_chip=True)
    assert "| 1 | 0.250 |" in table and "| 2 | - |" in table
    assert "| mean per chip | 0.250 |" in table
