"""Training the water U-Net: seeded, reproducible, early-stopped on a fixed validation split.

    python -m aquamask.model.train ../shared/data/water-chips-128 --layout chips128
    aquamask train ../shared/data/water-chips-128 --layout chips128

The chips are surface reflectance at ~30 m while the scenes the server sees are often top of
atmosphere (L1C) at 10 m, so the augmentation simulates that shift: flips/rot90, zoom (1-3x
upsampling of a crop), global brightness, per-band gain, additive haze that is strongest in
blue, per-band offsets, pixel noise and no-data holes. Loss: BCE + soft Dice (class balance),
pixels labelled 255 ignored. After training the logit temperature is fitted on the validation
split (NLL) so that probability 0.5 means what it says.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from aquamask.model.datasets import (BANDS, IGNORE, Chips128Dataset, Sen1Floods11Dataset,
                                     chips128_ids, validation_split)
from aquamask.model.features import N_BANDS, network_input, raw_features, standardise
from aquamask.model.inference import DEFAULT_NAME, WEIGHTS_DIR
from aquamask.model.network import UNet

FORMAT = 1
# additive haze profile (fraction of the blue offset) for B02, B03, B04, B08, B11, B12:
# Rayleigh/aerosol path radiance falls steeply with wavelength.
HAZE_PROFILE = np.array([1.0, 0.65, 0.4, 0.15, 0.05, 0.03], dtype=np.float32)

Progress = Callable[[float, str], None]


# ----------------------------------------------------------------------------- data
def kfold_split(ids, folds: int, fold: int, seed: int = 0) -> tuple[list, list]:
    """(train, val) of fold ``fold`` (0-based) of ``folds``: a seeded shuffle of the sorted ids
    cut into ``folds`` near-equal parts, part ``fold`` being the validation part."""
    if not 0 <= fold < folds or folds < 2:
        raise ValueError(f"fold {fold} of {folds}")
    ids = sorted(ids)
    order = np.random.RandomState(seed).permutation(len(ids))
    val = sorted(ids[i] for i in np.array_split(order, folds)[fold])
    val_set = set(val)
    return [i for i in ids if i not in val_set], val


def _split(ids, folds: int, fold: int):
    return kfold_split(ids, folds, fold) if folds > 1 else validation_split(ids)


def _load(data_dir: Path, layout: str, folds: int = 0, fold: int = 0
          ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray],
                     dict]:
    if layout == "chips128":
        train_ids, val_ids = _split(chips128_ids(data_dir), folds, fold)
        tr, va = Chips128Dataset(data_dir, train_ids), Chips128Dataset(data_dir, val_ids)
    elif layout == "sen1floods11":
        names = Sen1Floods11Dataset(data_dir).names()
        train_ids, val_ids = _split(names, folds, fold)
        tr = Sen1Floods11Dataset(data_dir, train_ids)
        va = Sen1Floods11Dataset(data_dir, val_ids)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    if len(tr) == 0 or len(va) == 0:
        raise ValueError(f"{data_dir}: need at least 2 chips in layout {layout!r}")
    xt, yt = zip(*(tr[i] for i in range(len(tr))))
    xv, yv = zip(*(va[i] for i in range(len(va))))
    return list(xt), list(yt), list(xv), list(yv), {"train": list(train_ids),
                                                    "val": list(val_ids)}


def _normalisation(images: list[np.ndarray]) -> dict:
    sums = np.zeros(8)
    sq = np.zeros(8)
    n = np.zeros(8)
    for img in images:
        f = raw_features(torch.from_numpy(img)[None])[0].double().numpy().reshape(8, -1)
        ok = np.isfinite(f)
        sums += np.where(ok, f, 0).sum(1)
        sq += np.where(ok, f * f, 0).sum(1)
        n += ok.sum(1)
    mean = sums / np.maximum(n, 1)
    std = np.sqrt(np.maximum(sq / np.maximum(n, 1) - mean ** 2, 1e-8))
    return {"channels": list(BANDS) + ["NDWI", "MNDWI"],
            "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def _crop(img: np.ndarray, lab: np.ndarray, size: int, rng: np.random.RandomState):
    h, w = lab.shape
    if h <= size and w <= size:
        return img, lab
    r = rng.randint(0, h - size + 1) if h > size else 0
    c = rng.randint(0, w - size + 1) if w > size else 0
    return img[:, r:r + size, c:c + size], lab[r:r + size, c:c + size]


def _augment(img: np.ndarray, lab: np.ndarray, rng: np.random.RandomState
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample: geometry, zoom, then radiometry. Returns (6,H,W) float32, (H,W) int64."""
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(lab)).long()
    h, w = y.shape
    if rng.rand() < 0.5:                                   # zoom: 30 m chips look like 10 m
        s = rng.uniform(1.0, 3.0)
        ch, cw = max(8, int(round(h / s))), max(8, int(round(w / s)))
        r, c = rng.randint(0, h - ch + 1), rng.randint(0, w - cw + 1)
        xc = torch.nan_to_num(x[:, r:r + ch, c:c + cw], nan=0.0)
        x = F.interpolate(xc[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        y = F.interpolate(y[r:r + ch, c:c + cw][None, None].float(), size=(h, w),
                          mode="nearest")[0, 0].long()
    k = rng.randint(4)
    x, y = torch.rot90(x, k, (1, 2)), torch.rot90(y, k, (0, 1))
    if rng.rand() < 0.5:
        x, y = x.flip(2), y.flip(1)
    # radiometry (reflectance x 10000)
    gain = rng.uniform(0.8, 1.25) * rng.uniform(0.88, 1.12, N_BANDS)
    if rng.rand() < 0.5:
        # top of atmosphere vs surface: SWIR comes out darker relative to the visible bands
        # (water vapour absorption, no path radiance), which biases MNDWI towards "water"
        gain[4:] *= rng.uniform(0.65, 1.0)
    offset = rng.normal(0.0, 80.0, N_BANDS)
    if rng.rand() < 0.6:
        offset += rng.uniform(0.0, 1500.0) * HAZE_PROFILE
    x = x * torch.from_numpy(gain.astype(np.float32)).view(-1, 1, 1) \
        + torch.from_numpy(offset.astype(np.float32)).view(-1, 1, 1)
    noise = torch.from_numpy(rng.normal(0.0, 30.0, tuple(x.shape)).astype(np.float32))
    x = x + noise
    if rng.rand() < 0.1:                                   # a no-data hole
        hh, ww = rng.randint(8, h // 2 + 1), rng.randint(8, w // 2 + 1)
        r, c = rng.randint(0, h - hh + 1), rng.randint(0, w - ww + 1)
        x[:, r:r + hh, c:c + ww] = torch.nan
        y[r:r + hh, c:c + ww] = IGNORE
    return x.contiguous(), y.contiguous()


def _lovasz_hinge(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovasz hinge (Berman et al., CVPR 2018) over the flattened valid pixels of a batch:
    a convex surrogate of 1 - water IoU."""
    signs = 2 * target - 1
    errors = 1 - logits * signs
    errors_sorted, perm = torch.sort(errors, descending=True)
    gt = target[perm]
    gts = gt.sum()
    inter = gts - gt.cumsum(0)
    union = gts + (1 - gt).cumsum(0)
    jac = 1 - inter / union
    jac = torch.cat([jac[:1], jac[1:] - jac[:-1]])
    return torch.dot(F.relu(errors_sorted), jac)


def _loss(logits: torch.Tensor, y: torch.Tensor, kind: str = "bce-dice") -> torch.Tensor:
    valid = y != IGNORE
    if kind == "bce-lovasz":
        target = (y == 1).float()[valid]
        z = logits[valid]
        return F.binary_cross_entropy_with_logits(z, target) + _lovasz_hinge(z, target)
    if kind != "bce-dice":
        raise ValueError(f"unknown loss {kind!r}")
    target = (y == 1).float()
    bce = F.binary_cross_entropy_with_logits(logits[valid], target[valid])
    p = torch.sigmoid(logits) * valid
    t = target * valid
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return bce + dice


# ----------------------------------------------------------------------------- evaluation
def _val_logits(net: UNet, images, labels, norm) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of every valid validation pixel (one chip at a time: chips may
    differ in size, and this is what the batch statistics-free eval network sees anyway)."""
    net.eval()
    zs, ys = [], []
    with torch.inference_mode():
        for img, lab in zip(images, labels):
            z = net(network_input(img, norm["mean"], norm["std"]))[0, 0].numpy()
            valid = lab != IGNORE
            zs.append(z[valid])
            ys.append(lab[valid])
    return np.concatenate(zs), np.concatenate(ys)


def _iou(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = np.count_nonzero(pred & truth)
    union = np.count_nonzero(pred | truth)
    return float(inter / union) if union else 1.0


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the NLL of sigmoid(logits / T) (a grid search in log
    space, then a finer one around the best)."""
    z = torch.from_numpy(logits.astype(np.float64))
    y = torch.from_numpy((labels == 1).astype(np.float64))

    def nll(t: float) -> float:
        return float(F.binary_cross_entropy_with_logits(z / t, y))

    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 61))
    best = min(grid, key=nll)
    fine = np.linspace(best / 1.06, best * 1.06, 25)
    return float(min(fine, key=nll))


# ----------------------------------------------------------------------------- training
def _save_atomic(obj, path: Path, writer) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    writer(obj, tmp)
    os.replace(tmp, path)


def train(data_dir: Path, layout: str = "chips128", out_dir: Path = WEIGHTS_DIR, *,
          seed: int = 0, epochs: int = 24, batch_size: int = 16,
          progress: Progress | None = None, base_channels: int = 12, depth: int = 4,
          lr: float = 3e-3, patience: int = 20, crop: int | None = None,
          loss: str = "bce-dice", ema: float = 0.0,
          name: str = DEFAULT_NAME, version: str = "0.0.0", threads: int | None = None,
          max_train_chips: int | None = None, scale: int = 1, halo: int = 32,
          folds: int = 0, fold: int = 0) -> dict:
    """Train on ``data_dir`` (layout "chips128" or "sen1floods11"), write
    ``<out_dir>/<name>-<version>.pt`` and ``.metrics.json`` (atomically) and return the
    metrics. Same seed, data and thread count -> same weights and losses. The defaults are
    the recipe of the shipped default 1.1.0 (``aquamask train DIR`` reproduces its network
    on 2 threads); the default version 0.0.0 never shadows or overwrites shipped weights.
    ``scale`` and ``halo`` are stored for inference: the network resolution factor for 10 m
    input (1: full resolution; 2: the network sees 20 m, ~4x faster, see the model card;
    validation here runs on the chips as they are) and the context a caller should add around
    blocks."""
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        if threads:
            torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
        return _train(Path(data_dir), layout, Path(out_dir), seed=seed, epochs=epochs,
                      batch_size=batch_size, progress=progress or (lambda pct, msg: None),
                      base_channels=base_channels, depth=depth, lr=lr, patience=patience,
                      loss=loss, ema=ema,
                      crop=crop, name=name, version=version,
                      max_train_chips=max_train_chips, scale=scale, halo=halo,
                      folds=folds, fold=fold)
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1], warn_only=previous[2])


def _train(data_dir: Path, layout: str, out_dir: Path, *, seed: int, epochs: int,
           batch_size: int, progress: Progress, base_channels: int, depth: int, lr: float,
           patience: int, crop: int | None, name: str, version: str,
           loss: str = "bce-dice", ema: float = 0.0,
           max_train_chips: int | None, scale: int, halo: int, folds: int = 0,
           fold: int = 0) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    rng = np.random.RandomState(seed)
    started = time.time()

    progress(0, "reading chips")
    xt, yt, xv, yv, split = _load(data_dir, layout, folds, fold)
    if max_train_chips:
        xt, yt = xt[:max_train_chips], yt[:max_train_chips]
        split["train"] = split["train"][:max_train_chips]
    crop = crop or (128 if layout == "chips128" else 256)
    norm = _normalisation(xt)
    mean_t = torch.tensor(norm["mean"], dtype=torch.float32)
    std_t = torch.tensor(norm["std"], dtype=torch.float32)

    arch = {"in_channels": 8, "base_channels": base_channels, "depth": depth}
    net = UNet(**arch).to(memory_format=torch.channels_last)   # ~1.7x faster on CPU
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, -(-len(xt) // batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs,
                                                steps_per_epoch=steps_per_epoch,
                                                pct_start=0.1)
    history: list[dict] = []
    best = {"iou": -1.0, "epoch": -1, "state": None}
    # exponential moving average of the weights (ema > 0): validated and kept instead of the
    # raw weights; BatchNorm statistics are averaged the same way
    ema_net = None
    if ema > 0:
        ema_net = UNet(**arch).to(memory_format=torch.channels_last)
        ema_net.load_state_dict(net.state_dict())
    for epoch in range(epochs):
        net.train()
        order = rng.permutation(len(xt))
        total, count = 0.0, 0
        for b in range(steps_per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            pairs = [_augment(*_crop(xt[i], yt[i], crop, rng), rng) for i in idx]
            x = torch.stack([p[0] for p in pairs])
            y = torch.stack([p[1] for p in pairs])
            inp = standardise(raw_features(torch.where(
                torch.isnan(x).any(1, keepdim=True), torch.nan, x)), mean_t, std_t)
            loss_value = _loss(net(inp.contiguous(memory_format=torch.channels_last))[:, 0], y,
                               loss)
            opt.zero_grad()
            loss_value.backward()
            opt.step()
            sched.step()
            if ema_net is not None:
                with torch.no_grad():
                    for e, v in zip(ema_net.state_dict().values(), net.state_dict().values()):
                        if e.dtype.is_floating_point:
                            e.mul_(ema).add_(v, alpha=1 - ema)
                        else:
                            e.copy_(v)
            total += float(loss_value.detach()) * len(idx)
            count += len(idx)
        kept = ema_net if ema_net is not None else net
        z, lab = _val_logits(kept, xv, yv, norm)
        val_iou = _iou(z > 0, lab == 1)
        val_loss = float(F.binary_cross_entropy_with_logits(
            torch.from_numpy(z), torch.from_numpy((lab == 1).astype(np.float32))))
        history.append({"epoch": epoch + 1, "train_loss": total / count,
                        "val_bce": val_loss, "val_iou": val_iou,
                        "seconds": round(time.time() - started, 2)})
        if val_iou > best["iou"]:
            best = {"iou": val_iou, "epoch": epoch + 1,
                    "state": {k: v.detach().clone() for k, v in kept.state_dict().items()}}
        progress(100.0 * (epoch + 1) / (epochs + 1),
                 f"epoch {epoch + 1}/{epochs} loss {total / count:.4f} val IoU {val_iou:.4f}")
        if epoch + 1 - best["epoch"] >= patience:
            break

    net.load_state_dict(best["state"])
    z, lab = _val_logits(net, xv, yv, norm)
    temperature = fit_temperature(z, lab)
    p = 1 / (1 + np.exp(-z / temperature))
    val_iou = _iou(p > 0.5, lab == 1)
    seconds = time.time() - started
    metrics = {
        "name": name, "version": version, "layout": layout, "data_dir": str(data_dir),
        "seed": seed, "epochs_max": epochs, "epochs_run": len(history),
        "best_epoch": best["epoch"], "val_iou": val_iou, "temperature": temperature,
        "val_nll_calibrated": float(F.binary_cross_entropy_with_logits(
            torch.from_numpy(z.astype(np.float64)) / temperature,
            torch.from_numpy((lab == 1).astype(np.float64)))),
        "train_chips": len(xt), "val_chips": len(xv), "batch_size": batch_size,
        "folds": folds, "fold": fold,
        "lr": lr, "loss": loss, "ema": ema, "threads": torch.get_num_threads(),
        "architecture": arch,
        "train_seconds": round(seconds, 1), "history": history,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    blob = {
        "format": FORMAT, "name": name, "version": version, "architecture": arch,
        "bands": list(BANDS), "normalisation": norm, "temperature": temperature,
        "threshold": 0.5, "halo": halo, "tile": 1024, "overlap": 64, "scale": scale,
        "seed": seed,
        "layout": layout, "train_ids": split["train"], "val_ids": split["val"],
        "metrics": {"val_iou": val_iou, "best_epoch": best["epoch"],
                    "epochs_run": len(history)},
        "state_dict": {k: v.contiguous() for k, v in net.state_dict().items()},
    }
    weights = out_dir / f"{name}-{version}.pt"
    _save_atomic(blob, weights, torch.save)
    metrics["weights"] = str(weights)
    _save_atomic(metrics, out_dir / f"{name}-{version}.metrics.json",
                 lambda m, p: p.write_text(json.dumps(m, indent=1) + "\n"))
    progress(100, f"done: val IoU {val_iou:.4f} (epoch {best['epoch']})")
    return metrics


def cross_validate(data_dir: Path, layout: str = "chips128", out_dir: Path = Path("cv"), *,
                   folds: int = 5, version: str = "0.0.0", **kwargs) -> dict:
    """``folds``-fold cross-validation of a training recipe (``kwargs`` as for :func:`train`):
    one training per fold, each early-stopped on and scored on its held-out fold, written to
    ``out_dir/fold-K/``. Returns per-fold and mean/std of the validation IoU (``cv.json`` in
    ``out_dir``). For choosing hyper-parameters without tuning to the fixed val split; the
    numbers are slightly optimistic (the fold also picks the epoch and the temperature)."""
    out_dir = Path(out_dir)
    runs = []
    for k in range(folds):
        m = train(data_dir, layout, out_dir / f"fold-{k}", folds=folds, fold=k,
                  version=version, **kwargs)
        runs.append({"fold": k, "val_iou": m["val_iou"], "best_epoch": m["best_epoch"],
                     "train_seconds": m["train_seconds"]})
    ious = np.array([r["val_iou"] for r in runs])
    result = {"layout": layout, "folds": folds, "runs": runs, "mean_val_iou": float(ious.mean()),
              "std_val_iou": float(ious.std(ddof=1)) if folds > 1 else 0.0,
              "recipe": {k: v for k, v in kwargs.items() if k != "progress"}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cv.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--layout", default="chips128", choices=["chips128", "sen1floods11"])
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--version", default="0.0.0")
    ap.add_argument("--base-channels", type=int, default=12)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--patience", type=int, default=20)
    ap.add_argument("--scale", type=int, default=1,
                    help="network resolution factor stored for 10 m inference")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loss", default="bce-dice", choices=["bce-dice", "bce-lovasz"])
    ap.add_argument("--ema", type=float, default=0.0,
                    help="decay of an exponential moving average of the weights (0: off)")
    ap.add_argument("--folds", type=int, default=0,
                    help="K > 1: K-fold cross-validation into --out/fold-k instead of one run")
    args = ap.parse_args(argv)
    if args.folds > 1:
        r = cross_validate(args.data_dir, args.layout, args.out, folds=args.folds,
                           version=args.version, seed=args.seed, epochs=args.epochs,
                           batch_size=args.batch_size, base_channels=args.base_channels,
                           depth=args.depth, patience=args.patience, threads=args.threads,
                           loss=args.loss, ema=args.ema,
                           progress=lambda pct, msg: print(f"{pct:5.1f}% {msg}", flush=True))
        print(json.dumps(r, indent=1, default=str))
        return
    m = train(args.data_dir, args.layout, args.out, seed=args.seed, epochs=args.epochs,
              batch_size=args.batch_size, version=args.version,
              base_channels=args.base_channels, depth=args.depth, patience=args.patience,
              scale=args.scale, threads=args.threads, loss=args.loss, ema=args.ema,
              progress=lambda pct, msg: print(f"{pct:5.1f}% {msg}", flush=True))
    print(json.dumps({k: v for k, v in m.items() if k != "history"}, indent=1))


if __name__ == "__main__":
    main()
