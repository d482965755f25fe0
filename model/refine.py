"""Edges at 10 m for a network that sees 30 m: a fast guided filter (He & Sun, 2015,
arXiv:1505.00996) with the water indices as the guide.

The network runs on the scene averaged over ``scale`` x ``scale`` pixels (the resolution it was
trained at) and gives a water probability per coarse cell. In a window of coarse cells the
probability is fitted as a linear function of the guide (NDWI and/or MNDWI averaged over each
cell): ``p ~ a . I + b``. For mixed cells this is linear unmixing (a cell a third covered by
a river has a third of its probability and a guide a third of the way between land and water),
so the same ``a, b`` applied to the guide at full resolution put the water where the guide says
it is: a 1-pixel river inside a cell, a field's edge. Where the window holds one class only
(``var(I) << eps``), ``a ~ 0`` and the probability is kept as it is.

All window statistics are computed at the coarse resolution; only the bilinear upsampling of
``a, b`` and ``a . I + b`` run at full resolution.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

GUIDES = ("ndwi", "mndwi")
# the refinement new weights carry (``refine`` in the weights file): both indices as the guide,
# 3 x 3 coarse cells per window, ridge 0.01 (windows whose guide varies by less than ~0.1 keep
# the network's probability)
DEFAULT_REFINE: dict[str, Any] = {"guides": ["ndwi", "mndwi"], "radius": 1, "eps": 0.01}
# B03, B08, B11 in the six-band order of the model
_GREEN, _NIR, _SWIR1 = 1, 3, 4


def guide_bands(bands: torch.Tensor, guides: Sequence[str]) -> torch.Tensor:
    """(k, H, W) guide images from (6, H, W) reflectance: NDWI (B03, B08) and/or MNDWI
    (B03, B11) in [-1, 1]; 0 where both bands are 0, NaN where an input is NaN."""
    g = bands[_GREEN].clamp(min=0)
    out = torch.empty((len(guides),) + tuple(bands.shape[1:]), dtype=bands.dtype)
    for i, name in enumerate(guides):
        if name not in GUIDES:
            raise ValueError(f"unknown guide {name!r}; expected {GUIDES}")
        other = bands[_NIR if name == "ndwi" else _SWIR1].clamp(min=0)
        torch.div(g - other, (g + other).clamp_(min=1e-6), out=out[i])
    return out


def cell_mean(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Means of (C, H, W) over ``scale`` x ``scale`` cells, (C, ceil(H/s), ceil(W/s)); a
    partial last row or column of cells is the mean of what it covers (NaN propagates).
    A strided convolution per channel: several times faster than ``avg_pool2d`` on the CPU."""
    c, hh, ww = x.shape
    h, w = hh // scale, ww // scale
    out = torch.empty((c, -(-hh // scale), -(-ww // scale)), dtype=x.dtype)
    if h and w:
        kernel = torch.full((1, 1, scale, scale), 1.0 / scale ** 2, dtype=x.dtype)
        for i in range(c):
            out[i, :h, :w] = F.conv2d(x[i][None, None], kernel, stride=scale)[0, 0]
    if hh % scale:                                   # the last, partial row of cells
        out[:, h, :] = F.avg_pool2d(x[None, :, h * scale:], (hh - h * scale, scale),
                                    ceil_mode=True)[0, :, 0]
    if ww % scale:                                   # the last, partial column (and corner)
        out[:, :, w] = F.avg_pool2d(x[None, :, :, w * scale:], (scale, ww - w * scale),
                                    ceil_mode=True)[0, :, :, 0]
    return out


def masked_mean_pool(x: torch.Tensor, scale: int, has_nan: bool | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale`` x ``scale`` means of (C, H, W) ignoring NaN (ceil mode: a partial last cell is
    the mean of what it covers), and the fraction of valid pixels of each cell (1, h, w).
    ``has_nan``: whether ``x`` holds NaN, when the caller knows (saves a pass)."""
    if has_nan is None:
        has_nan = bool(torch.isnan(x.sum()))
    if not has_nan:
        pooled = cell_mean(x, scale)
        return pooled, torch.ones_like(pooled[:1])
    nan = torch.isnan(x)
    num = cell_mean(torch.where(nan, 0.0, x), scale)
    den = cell_mean((~nan).to(x.dtype), scale)
    return torch.where(den > 0, num / den.clamp(min=1e-6), torch.nan), den[:1]


def _box(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window of (C, h, w), the window cut at the borders."""
    return F.avg_pool2d(x[None], 2 * radius + 1, stride=1, padding=radius,
                        count_include_pad=False)[0]


def guided_coefficients(guide: torch.Tensor, prob: torch.Tensor, radius: int, eps: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients (a (k, h, w), b (h, w)) of the windowed linear fit ``prob ~ a . guide + b``
    at the coarse resolution, already averaged over the windows (the guided filter's second
    box pass). ``guide`` (k, h, w), k 1 or 2, and ``prob`` (h, w) must be finite (fill no data
    first); ``eps`` is the ridge on the guide's covariance."""
    k = guide.shape[0]
    if k not in (1, 2):
        raise ValueError(f"{k} guides: 1 or 2 supported")
    stats = _box(torch.cat([guide, prob[None], guide * prob[None], guide * guide,
                            (guide[:1] * guide[1:])]), radius)
    mean_i, mean_p = stats[:k], stats[k]
    cov_ip = stats[k + 1:2 * k + 1] - mean_i * mean_p
    var = stats[2 * k + 1:3 * k + 1] - mean_i * mean_i + eps
    if k == 1:
        a = cov_ip / var
    else:                                            # 2 x 2 ridge regression, closed form
        cov_12 = stats[3 * k + 1] - mean_i[0] * mean_i[1]
        det = var[0] * var[1] - cov_12 * cov_12
        a = torch.stack([var[1] * cov_ip[0] - cov_12 * cov_ip[1],
                         var[0] * cov_ip[1] - cov_12 * cov_ip[0]]) / det
    b = mean_p - (a * mean_i).sum(0)
    coef = _box(torch.cat([a, b[None]]), radius)
    return coef[:k], coef[k]


def guided_upsample(prob: torch.Tensor, guide_coarse: torch.Tensor, guide_fine: torch.Tensor,
                    scale: int, radius: int = 1, eps: float = 0.01,
                    has_nan: bool | None = None) -> torch.Tensor:
    """Probability (H, W) at full resolution from the coarse probability (h, w) and the guide
    at both resolutions ((k, h, w) its ``scale`` x ``scale`` means, (k, H, W)): the fast
    guided filter. No-data cells of the coarse guide take the mean guide (so they do not pull
    the fit); no-data pixels of the fine guide get NaN. ``has_nan``: whether the fine guide
    holds NaN, when the caller knows."""
    h, w = guide_fine.shape[-2:]
    bad = torch.isnan(guide_coarse)
    if bool(bad.any()):
        fill = torch.nan_to_num(guide_coarse.nanmean(dim=(1, 2), keepdim=True), nan=0.0)
        guide_coarse = torch.where(bad, fill, guide_coarse)
    a, b = guided_coefficients(guide_coarse, prob, radius, eps)
    # bilinear upsampling of the coefficients, channels-last (~2x faster on the CPU)
    coef = torch.cat([a, b[None]])[None].contiguous(memory_format=torch.channels_last)
    up = F.interpolate(coef, scale_factor=scale, mode="bilinear", align_corners=False)[0]
    q = up[-1, :h, :w].contiguous()
    for i in range(a.shape[0]):
        q.addcmul_(up[i, :h, :w], guide_fine[i])
    return q.clamp_(0.0, 1.0)


def refine_numpy(prob_coarse: np.ndarray, bands_fine: np.ndarray, scale: int,
                 guides: Sequence[str] = tuple(DEFAULT_REFINE["guides"]),
                 radius: int = DEFAULT_REFINE["radius"], eps: float = DEFAULT_REFINE["eps"]
                 ) -> np.ndarray:
    """:func:`guided_upsample` over numpy arrays: coarse probability (h, w) of a network that
    saw ``bands_fine`` (6, H, W reflectance, NaN no data) averaged over ``scale`` x ``scale``
    cells -> probability (H, W) float32, NaN where any band is NaN."""
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(bands_fine, dtype=np.float32))
        nodata = torch.isnan(x).any(0)
        guide = guide_bands(x, guides)
        coarse, _ = masked_mean_pool(guide, scale)
        prob = torch.nan_to_num(torch.from_numpy(np.asarray(prob_coarse, np.float32)), nan=0.0)
        q = guided_upsample(prob, coarse, guide, scale, radius, eps)
        return torch.where(nodata, torch.nan, q).numpy()
