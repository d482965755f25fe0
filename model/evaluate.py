"""Comparing the U-Nets with the index baselines: water IoU, precision, recall and F1 pooled over
every valid pixel (labels 255 / bands NaN excluded), plus per-chip IoU.

Methods (:data:`METHODS`): ``unet`` (the default model, ``WaterModel.predict`` >= its
threshold), ``unet-fast`` (the fast model, likewise), ``ndwi`` (NDWI > 0), ``mndwi``
(MNDWI > 0), ``otsu-mndwi`` (MNDWI > Otsu's threshold of the chip's MNDWI histogram, as
``indices.index_histogram`` / ``otsu_threshold_from_histogram`` give it for a whole scene).

Data: a chips128 split (``val``: the chips the weights were trained without; ``all``), every
Sen1Floods11 chip, or cross-validation (``cv``): every chip scored by the fold model of a
:func:`aquamask.model.train.cross_validate` folder that never saw it, with the pooled
out-of-fold temperature and threshold of its ``cv.json``. ``zoom`` upsamples chips (bilinear
bands, nearest labels) to mimic finer pixels: chips128 x 3 looks like 10 m input to the model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from aquamask.model.datasets import (
    IGNORE,
    Chips128Dataset,
    Sen1Floods11Dataset,
    chips128_ids,
    chips128_split,
)
from aquamask.model.indices import index_histogram, mndwi, ndwi, otsu_threshold_from_histogram

METHODS = ("unet", "unet-fast", "ndwi", "mndwi", "otsu-mndwi")
# the shipped model each model method loads by default
MODEL_METHODS = {"unet": "unet-s2-water", "unet-fast": "unet-s2-water-fast"}
_G, _N, _S = 1, 3, 4          # B03, B08, B11 in the six-band order
# A fixed, clear but hazy atmosphere (aerosol optical depth ~0.15 at 550 nm, sun zenith ~35
# degrees; round numbers of the order 6S gives) for B02, B03, B04, B08, B11, B12: top of
# atmosphere = path reflectance + transmittance x surface reflectance. ``toa=True`` turns the
# surface-reflectance chips into L1C-like ones with it: a check of the shift to L1C scenes that
# the training augmentation does not define.
TOA_PATH = np.array([0.070, 0.045, 0.030, 0.015, 0.004, 0.002], np.float32) * 10000
TOA_TRANSMITTANCE = np.array([0.78, 0.84, 0.87, 0.90, 0.90, 0.83], np.float32)
# ground resolution of each layout's chips (m)
LAYOUT_RESOLUTION_M = {"chips128": 30.0, "sen1floods11": 10.0}


def layout_scale(layout: str, model, zoom: int = 1) -> int:
    """The network scale for a layout's chips (upsampled ``zoom`` times): the model's own
    for 10 m input (``model.scale`` is meant for 10 m Sentinel-2), proportionally less for
    coarser input, and 1 for input at or coarser than the network resolution."""
    if model is None:
        return 1
    res = LAYOUT_RESOLUTION_M.get(layout, 10.0) / max(1, zoom)
    return max(1, int(round(model.scale * 10.0 / res))) if res < 10.0 * model.scale else 1


def otsu_mndwi(bands: np.ndarray) -> np.ndarray:
    """MNDWI > Otsu's threshold of its own histogram (the scene-level method on one array)."""
    index = mndwi(bands[_G], bands[_S])
    t = otsu_threshold_from_histogram(index_histogram(index))
    return index > t if np.isfinite(t) else np.zeros(index.shape, bool)


def predict_mask(method: str, bands: np.ndarray, model=None, scale: int | None = None,
                 refine: bool | None = None) -> np.ndarray:
    """Boolean water mask of ``method`` for (6, H, W) bands (NaN -> not water); ``scale``
    and ``refine`` as for ``WaterModel.predict``."""
    if method in MODEL_METHODS:
        return model.predict(bands, scale=scale, refine=refine) >= model.threshold
    if method == "ndwi":
        return ndwi(bands[_G], bands[_N]) > 0
    if method == "mndwi":
        return mndwi(bands[_G], bands[_S]) > 0
    if method == "otsu-mndwi":
        return otsu_mndwi(bands)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def _scores(tp: int, fp: int, fn: int) -> dict:
    def ratio(a, b):
        return float(a / b) if b else float("nan")
    p, r = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"iou": ratio(tp, tp + fp + fn), "precision": p, "recall": r,
            "f1": ratio(2 * tp, 2 * tp + fp + fn)}


def _load_model(weights, precision: str | None):
    from aquamask.model.inference import WaterModel
    return WaterModel.load(weights, device="cpu", precision=precision)


def _cv_models(cv_dir: Path, precision: str | None) -> list:
    """The fold models of a cross-validation folder, with its out-of-fold calibration (and
    the default refinement where the folds were trained without one)."""
    from aquamask.model.refine import DEFAULT_REFINE
    cv = json.loads((Path(cv_dir) / "cv.json").read_text())
    models = []
    for fold in sorted(Path(cv_dir).glob("fold-*"), key=lambda p: int(p.name.split("-")[1])):
        (weights,) = fold.glob("*.pt")
        m = _load_model(weights, precision)
        m.temperature, m.threshold = float(cv["temperature"]), float(cv["threshold"])
        m.refine = m.refine or dict(DEFAULT_REFINE)
        models.append(m)
    if len(models) != cv["folds"]:
        raise ValueError(f"{cv_dir}: {len(models)} fold models for {cv['folds']} folds")
    return models


def to_toa(bands: np.ndarray) -> np.ndarray:
    """Surface reflectance x 10000 (6, H, W) -> top of atmosphere through :data:`TOA_PATH`
    and :data:`TOA_TRANSMITTANCE` (NaN kept)."""
    return (TOA_PATH[:, None, None] + TOA_TRANSMITTANCE[:, None, None] * bands).astype(
        np.float32)


def _zoom(bands: np.ndarray, label: np.ndarray, zoom: int) -> tuple[np.ndarray, np.ndarray]:
    import torch
    import torch.nn.functional as F
    if zoom == 1:
        return bands, label
    x = F.interpolate(torch.from_numpy(bands)[None], scale_factor=zoom, mode="bilinear",
                      align_corners=False)[0].numpy()
    return x, np.repeat(np.repeat(label, zoom, 0), zoom, 1)


def _units(data_dir: Path, layout: str, split: str, methods: list[str], weights: dict,
           cv: dict, precision: str | None) -> tuple[list, str, dict]:
    """[(dataset, {method: model})], the split's name and one model per method (for the
    report): which chips each model scores."""
    cv = {m: d for m, d in cv.items() if d is not None and m in methods}
    if cv:
        if layout != "chips128":
            raise ValueError("cross-validation folders are of the chips128 layout")
        fold_models = {m: _cv_models(d, precision) for m, d in cv.items()}
        n = {len(v) for v in fold_models.values()}
        if len(n) != 1:
            raise ValueError(f"cross-validation folders with different fold counts: {cv}")
        units = []
        for k in range(n.pop()):
            ids = {tuple(int(i) for i in v[k].meta["val_ids"]) for v in fold_models.values()}
            if len(ids) != 1:
                raise ValueError("cross-validation folders with different folds")
            units.append((Chips128Dataset(data_dir, list(ids.pop())),
                          {m: v[k] for m, v in fold_models.items()}))
        fixed = {m: _load_model(weights.get(m) or MODEL_METHODS[m], precision)
                 for m in methods if m in MODEL_METHODS and m not in cv}
        for _, models in units:
            models.update(fixed)
        return units, "cv", {m: units[0][1][m] for m in units[0][1]}
    models = {m: _load_model(weights.get(m) or MODEL_METHODS[m], precision)
              for m in methods if m in MODEL_METHODS}
    if layout == "sen1floods11":
        return [(Sen1Floods11Dataset(data_dir), models)], "all", models
    if layout != "chips128":
        raise ValueError(f"unknown layout {layout!r}")
    if split == "all":
        return [(Chips128Dataset(data_dir), models)], "all", models
    if split != "val":
        raise ValueError(f"unknown split {split!r}; expected 'val' or 'all'")
    val = None
    for name, model in models.items():
        if model.meta.get("layout", "chips128") != "chips128":
            continue
        if "val_ids" in model.meta and not model.meta["val_ids"]:
            raise ValueError(f"{name}: {model.name} {model.version} was trained on every chip; "
                             "score it out of fold (a cross-validation folder) or on split "
                             "'all' (chips it trained on)")
        val = val or model.meta.get("val_ids")
    if not val:
        val = chips128_split(data_dir)[1]
    available = set(chips128_ids(data_dir))
    return ([(Chips128Dataset(data_dir, [int(i) for i in val if int(i) in available]),
              models)], "val", models)


def default_methods(fast: bool = False) -> list[str]:
    """Every method whose model is shipped (``unet-fast`` also with ``fast``: weights given)."""
    from aquamask.model.inference import shipped_models
    shipped = set(shipped_models())
    return [m for m in METHODS if m not in MODEL_METHODS or MODEL_METHODS[m] in shipped
            or (m == "unet-fast" and fast)]


def evaluate(data_dir: Path, layout: str, methods: Sequence[str] | None = None, *,
             weights: Path | str | None = None, fast_weights: Path | str | None = None,
             split: str = "val", scale: int | None = None, precision: str | None = None,
             cv: Path | None = None, cv_fast: Path | None = None, zoom: int = 1,
             refine: bool | None = None, toa: bool = False,
             progress: Callable[[float, str], None] | None = None) -> dict:
    """Scores of every method on the chips of ``layout`` (chips128: the validation split the
    ``unet`` weights were trained without, all chips, or out-of-fold with ``cv``/``cv_fast``
    (cross-validation folders of the unet/unet-fast recipes); sen1floods11: every chip).
    ``methods``: default :func:`default_methods`.
    ``weights``/``fast_weights``: the models of ``unet``/``unet-fast`` (a file or a shipped
    name; default: the newest shipped). ``scale``: the network scale (default: by the
    layout's resolution and ``zoom``, see :func:`layout_scale`); ``precision``: "fp32" or
    "bf16" (default: the model's own choice for this machine); ``refine``: False for
    bilinear upsampling instead of the weights' guided refinement (when the scale is > 1);
    ``toa``: score the chips turned into top-of-atmosphere reflectance (:func:`to_toa`)."""
    progress = progress or (lambda pct, msg: None)
    methods = list(methods or default_methods(bool(fast_weights or cv_fast)))
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; expected one of {METHODS}")
    data_dir = Path(data_dir)
    units, split, models = _units(data_dir, layout, split, methods,
                                  {"unet": weights, "unet-fast": fast_weights},
                                  {"unet": cv, "unet-fast": cv_fast}, precision)
    total = sum(len(ds) for ds, _ in units)
    if total == 0:
        raise ValueError(f"no chips found in {data_dir} (layout {layout})")
    counts = {m: np.zeros(3, dtype=np.int64) for m in methods}
    per_chip: dict[str, dict[str, float | None]] = {m: {} for m in methods}
    names: list[str] = []
    valid_px = 0
    scales = {m: scale or layout_scale(layout, mod, zoom) for m, mod in models.items()}
    for ds, unit_models in units:
        for i, name in enumerate(ds.names()):
            bands, label = ds[i]
            bands, label = _zoom(bands, label, zoom)
            if toa:
                bands = to_toa(bands)
            valid = label != IGNORE
            truth = label == 1
            valid_px += int(valid.sum())
            names.append(name)
            for m in methods:
                pred = predict_mask(m, bands, unit_models.get(m), scales.get(m), refine)
                tp = int(np.count_nonzero(pred & truth & valid))
                fp = int(np.count_nonzero(pred & ~truth & valid))
                fn = int(np.count_nonzero(~pred & truth & valid))
                counts[m] += (tp, fp, fn)
                per_chip[m][name] = float(tp / (tp + fp + fn)) if tp + fp + fn else None
            progress(100.0 * len(names) / total, f"chip {name} ({len(names)}/{total})")
    results = {}
    for m in methods:
        tp, fp, fn = (int(v) for v in counts[m])
        results[m] = {**_scores(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn,
                      "per_chip_iou": per_chip[m]}
    report: dict[str, Any] = {
        "data_dir": str(data_dir), "layout": layout, "split": split, "zoom": zoom,
        "refine": refine, "toa": toa, "chips": names, "valid_pixels": valid_px, "methods": results,
        "models": {m: {"path": str(mod.path), **mod.info(), "scale": scales[m]}
                   for m, mod in models.items()}}
    if "unet" in report["models"]:
        report["model"] = report["models"]["unet"]          # the report's earlier key
    return report


def format_table(report: dict, per_chip: bool = False) -> str:
    """A markdown table, one row per method (pooled over pixels), then, with ``per_chip``,
    the IoU of every chip per method and the mean of the per-chip IoUs."""
    models = report.get("models") or ({"unet": report["model"]} if report.get("model") else {})
    about = "".join(f"; {m} = {v['name']} {v['version']}, scale {v.get('scale')}, "
                    f"{v.get('precision')}" for m, v in models.items())
    zoom = f", zoom x{report['zoom']}" if report.get("zoom", 1) != 1 else ""
    zoom += ", no refinement" if report.get("refine") is False else ""
    zoom += ", as top of atmosphere" if report.get("toa") else ""
    lines = [f"{report['layout']} ({report['split']}, {len(report['chips'])} chips{zoom}, "
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


# ----------------------------------------------------------------------------- pictures
def _rgb(bands: np.ndarray) -> np.ndarray:
    rgb = np.nan_to_num(bands[[2, 1, 0]], nan=0.0).transpose(1, 2, 0)
    hi = np.percentile(rgb, 98) or 1.0
    return (np.clip(rgb / hi, 0, 1) * 255).astype(np.uint8)


# agreement colours: true water, false water (red), missed water (blue), dry, no data
_TP, _FP, _FN, _TN, _NA = (255, 255, 255), (230, 40, 40), (40, 120, 255), (0, 0, 0), (90,) * 3


def agreement_rgb(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: white where pred and label say water, red for false water, blue for
    missed water, black for agreed dry, grey where the label has no data."""
    truth, valid = label == 1, label != IGNORE
    out = np.zeros(label.shape + (3,), np.uint8)
    for mask, colour in ((pred & truth, _TP), (pred & ~truth, _FP), (~pred & truth, _FN),
                         (~pred & ~truth, _TN), (~valid, _NA)):
        out[mask] = colour
    return out


def _caption(img: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw
    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    draw.rectangle((0, 0, 8 + 7 * len(text), 16), fill=(0, 0, 0))
    draw.text((4, 2), text, fill=(255, 255, 0))
    return np.asarray(pil)


def write_masks_png(data_dir: Path, layout: str, report: dict, path: Path,
                    chip: str | None = None, precision: str | None = None) -> Path:
    """A PNG of one chip (default: the report's first): RGB, the label, then each method's
    mask coloured by agreement with the label (:func:`agreement_rgb`), captioned with its
    IoU; two rows when there are more than three panels."""
    from PIL import Image

    chip = chip or report["chips"][0]
    ds = (Chips128Dataset(data_dir, [int(chip)]) if layout == "chips128"
          else Sen1Floods11Dataset(data_dir, [chip]))
    bands, label = _zoom(*ds[0], report.get("zoom", 1))
    models = {m: _load_model(v["path"], precision) for m, v in report.get("models", {}).items()}
    for m, v in report.get("models", {}).items():
        models[m].temperature, models[m].threshold = v["temperature"], v["threshold"]
    lab = np.where(label == IGNORE, 90, label.astype(np.uint8) * 255).astype(np.uint8)
    panels = [_caption(_rgb(bands), f"{chip} RGB"),
              _caption(np.repeat(lab[..., None], 3, 2), "label")]
    for m, r in report["methods"].items():
        scale = report.get("models", {}).get(m, {}).get("scale")
        pred = predict_mask(m, bands, models.get(m), scale, report.get("refine"))
        iou = r["per_chip_iou"].get(chip)
        panels.append(_caption(agreement_rgb(pred, label),
                               f"{m} IoU {iou:.3f}" if iou is not None else m))
    cols = (len(panels) + 1) // 2 if len(panels) > 3 else len(panels)
    blank = np.full_like(panels[0], 255)
    panels += [blank] * (-len(panels) % cols)
    pad = lambda p: np.pad(p, ((0, 4), (0, 4), (0, 0)), constant_values=255)  # noqa: E731
    rows = [np.concatenate([pad(p) for p in panels[i:i + cols]], axis=1)
            for i in range(0, len(panels), cols)]
    path = Path(path)
    # a 64-colour palette keeps the picture a few hundred KB (the RGB panel dithers slightly)
    Image.fromarray(np.concatenate(rows, axis=0)).quantize(64).save(path, optimize=True)
    return path


def write_worst_chips_png(report: dict, path: Path, n: int = 6,
                          method: str | None = None) -> Path:
    """A PNG of the ``n`` chips where ``method`` (default: unet if evaluated, else the first)
    scored the lowest IoU: one row per chip, columns RGB / label / prediction."""
    from PIL import Image

    method = method or ("unet" if "unet" in report["methods"] else next(iter(report["methods"])))
    scores = report["methods"][method]["per_chip_iou"]
    worst = sorted((v, k) for k, v in scores.items() if v is not None)[:n]
    info = report.get("models", {}).get(method, {})
    model = _load_model(info["path"], None) if method in MODEL_METHODS else None
    root = Path(report["data_dir"])
    ds: Chips128Dataset | Sen1Floods11Dataset
    if report["layout"] == "chips128":
        ds = Chips128Dataset(root, [int(k) for _, k in worst])
    else:
        ds = Sen1Floods11Dataset(root, [k for _, k in worst])
    rows = []
    for i in range(len(ds)):
        bands, label = _zoom(*ds[i], report.get("zoom", 1))
        pred = predict_mask(method, bands, model, info.get("scale"), report.get("refine"))
        lab = np.where(label == IGNORE, 128, label * 255).astype(np.uint8)
        panels = [_rgb(bands), np.repeat(lab[..., None], 3, 2), agreement_rgb(pred, label)]
        rows.append(np.concatenate(panels, axis=1))
    if not rows:
        raise ValueError("no chips to draw")
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rows]
    path = Path(path)
    # a 64-colour palette keeps the picture a few hundred KB (the RGB panel dithers slightly)
    Image.fromarray(np.concatenate(rows, axis=0)).quantize(64).save(path, optimize=True)
    return path


def main(argv: list[str] | None = None) -> None:
    """``python -m aquamask.model.evaluate DATA_DIR --layout L [--method M ...] [--cv DIR]
    [--per-chip] [--worst-png P] [--masks-png P]`` (``aquamask evaluate`` covers the common
    options)."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--layout", required=True, choices=["chips128", "sen1floods11"])
    ap.add_argument("--method", dest="methods", action="append", choices=METHODS,
                    help="repeatable; default: every method with a model present")
    ap.add_argument("--split", default="val", choices=["val", "all"])
    ap.add_argument("--weights", help="the unet model (file or shipped name)")
    ap.add_argument("--fast-weights", help="the unet-fast model (file or shipped name)")
    ap.add_argument("--cv", type=Path, help="cross-validation folder of the unet recipe")
    ap.add_argument("--cv-fast", type=Path, help="cross-validation folder of unet-fast")
    ap.add_argument("--zoom", type=int, default=1, help="upsample the chips this many times")
    ap.add_argument("--scale", type=int, help="network scale (default: by layout and zoom)")
    ap.add_argument("--precision", choices=["fp32", "bf16"])
    ap.add_argument("--no-refine", dest="refine", action="store_false", default=None,
                    help="bilinear upsampling instead of the guided refinement")
    ap.add_argument("--toa", action="store_true",
                    help="turn the chips into top-of-atmosphere reflectance (to_toa)")
    ap.add_argument("--per-chip", action="store_true", help="add the per-chip IoU table")
    ap.add_argument("--worst-png", type=Path, help="PNG of the worst chips")
    ap.add_argument("--masks-png", type=Path,
                    help="PNG of one chip's masks beside its label (--chip, default the first)")
    ap.add_argument("--chip", help="the chip of --masks-png")
    ap.add_argument("--json", type=Path, help="write the full report here")
    args = ap.parse_args(argv)
    report = evaluate(args.data_dir, args.layout, args.methods, weights=args.weights,
                      fast_weights=args.fast_weights, split=args.split, scale=args.scale,
                      precision=args.precision, cv=args.cv, cv_fast=args.cv_fast,
                      zoom=args.zoom, refine=args.refine, toa=args.toa)
    print(format_table(report, per_chip=args.per_chip))
    if args.worst_png:
        print(f"wrote {write_worst_chips_png(report, args.worst_png)}")
    if args.masks_png:
        path = write_masks_png(args.data_dir, args.layout, report, args.masks_png, args.chip,
                               args.precision)
        print(f"wrote {path}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
