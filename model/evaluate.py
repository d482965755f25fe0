"""Comparing the U-Net with the index baselines: water IoU, precision, recall and F1 pooled over
every valid pixel (labels 255 / bands NaN excluded), plus per-chip IoU.

Methods: ``unet`` (``WaterModel.predict`` >= its threshold), ``ndwi`` (NDWI > 0), ``mndwi``
(MNDWI > 0), ``otsu-mndwi`` (MNDWI > its Otsu threshold, computed per chip).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from aquamask.model.datasets import (IGNORE, Chips128Dataset, Sen1Floods11Dataset,
                                     chips128_ids, chips128_split)
from aquamask.model.indices import mndwi, ndwi, otsu_threshold

METHODS = ("unet", "ndwi", "mndwi", "otsu-mndwi")
_G, _N, _S = 1, 3, 4          # B03, B08, B11 in the six-band order


def _dataset(data_dir: Path, layout: str, split: str, model):
    if layout == "sen1floods11":
        return Sen1Floods11Dataset(data_dir), "all"
    if layout != "chips128":
        raise ValueError(f"unknown layout {layout!r}")
    if split == "all":
        return Chips128Dataset(data_dir), "all"
    if split != "val":
        raise ValueError(f"unknown split {split!r}; expected 'val' or 'all'")
    val = None
    if model is not None and model.meta.get("layout", "chips128") == "chips128":
        val = model.meta.get("val_ids")
    if val is None:
        val = chips128_split(data_dir)[1]
    available = set(chips128_ids(data_dir))
    return Chips128Dataset(data_dir, [int(i) for i in val if int(i) in available]), "val"


# ground resolution of each layout's chips (m): the network runs at 20 m at most coarse
# (``WaterModel.scale`` is meant for 10 m Sentinel-2 input), so 30 m chips are seen at scale 1
LAYOUT_RESOLUTION_M = {"chips128": 30.0, "sen1floods11": 10.0}


def layout_scale(layout: str, model) -> int:
    """The network scale to use for a layout's chips: the model's own for 10 m data, 1 for
    data that is already at or coarser than the network resolution (10 m x scale)."""
    if model is None:
        return 1
    res = LAYOUT_RESOLUTION_M.get(layout, 10.0)
    return max(1, int(round(model.scale * 10.0 / res))) if res < 10.0 * model.scale else 1


def predict_mask(method: str, bands: np.ndarray, model=None, scale: int | None = None
                 ) -> np.ndarray:
    """Boolean water mask of ``method`` for (6, H, W) bands (NaN -> not water)."""
    if method == "unet":
        return model.predict(bands, scale=scale) >= model.threshold
    if method == "ndwi":
        return ndwi(bands[_G], bands[_N]) > 0
    if method == "mndwi":
        return mndwi(bands[_G], bands[_S]) > 0
    if method == "otsu-mndwi":
        index = mndwi(bands[_G], bands[_S])
        t = otsu_threshold(index)
        return index > t if np.isfinite(t) else np.zeros(index.shape, bool)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def _scores(tp: int, fp: int, fn: int) -> dict:
    def ratio(a, b):
        return float(a / b) if b else float("nan")
    p, r = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"iou": ratio(tp, tp + fp + fn), "precision": p, "recall": r,
            "f1": ratio(2 * tp, 2 * tp + fp + fn)}


def evaluate(data_dir: Path, layout: str, methods: Sequence[str] = METHODS, *,
             weights: Path | None = None, split: str = "val", scale: int | None = None,
             precision: str | None = None,
             progress: Callable[[float, str], None] | None = None) -> dict:
    """Scores of every method on the chips of ``layout`` (chips128: the validation split the
    weights were trained without, or all chips; sen1floods11: every chip). ``scale``: the
    network scale (default: by the layout's resolution, see ``layout_scale``); ``precision``:
    "fp32" or "bf16" (default: the model's own choice for this machine)."""
    progress = progress or (lambda pct, msg: None)
    methods = list(methods)
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; expected one of {METHODS}")
    model = None
    if "unet" in methods or (layout == "chips128" and split == "val"):
        from aquamask.model.inference import WaterModel
        try:
            model = WaterModel.load(weights, precision=precision)
        except FileNotFoundError:
            if "unet" in methods:
                raise
    if scale is None:
        scale = layout_scale(layout, model)
    data_dir = Path(data_dir)
    ds, split = _dataset(data_dir, layout, split, model)
    if len(ds) == 0:
        raise ValueError(f"no chips found in {data_dir} (layout {layout})")
    names = ds.names()
    counts = {m: np.zeros(3, dtype=np.int64) for m in methods}
    per_chip: dict[str, dict[str, float | None]] = {m: {} for m in methods}
    valid_px = 0
    for i in range(len(ds)):
        bands, label = ds[i]
        valid = label != IGNORE
        truth = label == 1
        valid_px += int(valid.sum())
        for m in methods:
            pred = predict_mask(m, bands, model, scale)
            tp = int(np.count_nonzero(pred & truth & valid))
            fp = int(np.count_nonzero(pred & ~truth & valid))
            fn = int(np.count_nonzero(~pred & truth & valid))
            counts[m] += (tp, fp, fn)
            per_chip[m][names[i]] = float(tp / (tp + fp + fn)) if tp + fp + fn else None
        progress(100.0 * (i + 1) / len(ds), f"chip {names[i]} ({i + 1}/{len(ds)})")
    results = {}
    for m in methods:
        tp, fp, fn = (int(v) for v in counts[m])
        results[m] = {**_scores(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn,
                      "per_chip_iou": per_chip[m]}
    report = {"data_dir": str(data_dir), "layout": layout, "split": split,
              "chips": names, "valid_pixels": valid_px, "methods": results}
    if model is not None:
        report["model"] = {"path": str(model.path), **model.info(), "scale": scale}
    return report


def format_table(report: dict, per_chip: bool = False) -> str:
    """A markdown table, one row per method (pooled over pixels), then, with ``per_chip``,
    the IoU of every chip per method and the mean of the per-chip IoUs."""
    model = report.get("model")
    about = (f"; unet = {model['name']} {model['version']}, scale {model.get('scale')}, "
             f"{model.get('precision')}" if model else "")
    lines = [f"{report['layout']} ({report['split']}, {len(report['chips'])} chips, "
             f"{report['valid_pixels']:,} valid px{about})", "",
             "| method | IoU | precision | recall | F1 |", "|---|---:|---:|---:|---:|"]
    for m, r in report["methods"].items():
        lines.append(f"| {m} | {r['iou']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} "
                     f"| {r['f1']:.3f} |")
    if per_chip:
        methods = list(report["methods"])
        lines += ["", "| chip | " + " | ".join(methods) + " |",
                  "|---|" + "---:|" * len(methods)]

        def cell(v):
            return "-" if v is None else f"{v:.3f}"
        for chip in report["chips"]:
            lines.append(f"| {chip} | " + " | ".join(
                cell(report["methods"][m]["per_chip_iou"].get(chip)) for m in methods) + " |")
        means = []
        for m in methods:
            vals = [v for v in report["methods"][m]["per_chip_iou"].values() if v is not None]
            means.append(f"{np.mean(vals):.3f}" if vals else "-")
        lines.append("| mean per chip | " + " | ".join(means) + " |")
    return "\n".join(lines)


def _rgb(bands: np.ndarray) -> np.ndarray:
    rgb = np.nan_to_num(bands[[2, 1, 0]], nan=0.0).transpose(1, 2, 0)
    hi = np.percentile(rgb, 98) or 1.0
    return (np.clip(rgb / hi, 0, 1) * 255).astype(np.uint8)


def write_worst_chips_png(report: dict, path: Path, n: int = 6,
                          method: str | None = None) -> Path:
    """A PNG of the ``n`` chips where ``method`` (default: unet if evaluated, else the first)
    scored the lowest IoU: one row per chip, columns RGB / label / prediction."""
    from PIL import Image

    method = method or ("unet" if "unet" in report["methods"] else next(iter(report["methods"])))
    scores = report["methods"][method]["per_chip_iou"]
    worst = sorted((v, k) for k, v in scores.items() if v is not None)[:n]
    model = None
    if method == "unet":
        from aquamask.model.inference import WaterModel
        model = WaterModel.load(report.get("model", {}).get("path"))
    scale = report.get("model", {}).get("scale")
    root = Path(report["data_dir"])
    if report["layout"] == "chips128":
        ds = Chips128Dataset(root, [int(k) for _, k in worst])
    else:
        ds = Sen1Floods11Dataset(root, [k for _, k in worst])
    rows = []
    for i in range(len(ds)):
        bands, label = ds[i]
        pred = predict_mask(method, bands, model, scale)
        lab = np.where(label == IGNORE, 128, label * 255).astype(np.uint8)
        panels = [_rgb(bands), np.repeat(lab[..., None], 3, 2),
                  np.repeat((pred * 255).astype(np.uint8)[..., None], 3, 2)]
        rows.append(np.concatenate(panels, axis=1))
    if not rows:
        raise ValueError("no chips to draw")
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows]
    path = Path(path)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


def main(argv: list[str] | None = None) -> None:
    """``python -m aquamask.model.evaluate DATA_DIR --layout L [--per-chip] [--worst-png P]``
    (``aquamask evaluate`` is the same without ``--per-chip``, ``--scale``, ``--precision``)."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--layout", required=True, choices=["chips128", "sen1floods11"])
    ap.add_argument("--method", dest="methods", action="append", choices=METHODS)
    ap.add_argument("--split", default="val", choices=["val", "all"])
    ap.add_argument("--weights", type=Path)
    ap.add_argument("--scale", type=int, help="network scale (default: by layout)")
    ap.add_argument("--precision", choices=["fp32", "bf16"])
    ap.add_argument("--per-chip", action="store_true", help="add the per-chip IoU table")
    ap.add_argument("--worst-png", type=Path, help="PNG of the worst chips")
    ap.add_argument("--json", type=Path, help="write the full report here")
    args = ap.parse_args(argv)
    report = evaluate(args.data_dir, args.layout, args.methods or METHODS, weights=args.weights,
                      split=args.split, scale=args.scale, precision=args.precision)
    print(format_table(report, per_chip=args.per_chip))
    if args.worst_png:
        print(f"wrote {write_worst_chips_png(report, args.worst_png)}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
