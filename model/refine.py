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

import numpy as np
import torch
import torch.nn.functional as F

GUIDES = ("ndwi", "mndwi")
# the refinement new weights carry (``refine`` in the weights file): both indices as the guide,
# 3 x 3 coarse cells per window, ridge 0.01 (windows whose guide varies by less than ~0.1 keep
# the network's probability)
DEFAULT_REFINE = {"guides": ["ndwi", "mndwi"], "radius": 1, "eps": 0.01}
# B03, B08, B11 in the six-band order of the model
_GREEN, _NIR, _SWIR1 = 1, 3, 4


def guide_bands(bands: torch.Tensor, guides: tuple[str, ...]) -> torch.Tensor:
    """(k, H, W) guide images from (6, H, W) reflectance: NDWI (B03, B08) and/or MNDWI
    (B03, B11) in [-1, 1], NaN where the inputs are NaN or both are 0."""
    g = bands[_GREEN].clamp(min=0)
    out = []
    for name in guides:
        if name not in GUIDES:
            raise ValueError(f"unknown guide {name!r}; expected {GUIDES}")
        other = bands[_NIR if name == "ndwi" else _SWIR1].clamp(min=0)
        out.append((g - other) / (g + other))       # 0/0 -> NaN: treated as no data
    return torch.stack(out)


def masked_mean_pool(x: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale`` x ``scale`` means of (C, H, W) ignoring NaN (ceil mode: a partial last cell is
    the mean of what it covers), and the fraction of valid pixels of each cell."""
    nan = torch.isnan(x)
    if not bool(nan.any()):
        pooled = F.avg_pool2d(x[None], scale, ceil_mode=True)[0]
        return pooled, torch.ones_like(pooled[:1])
    valid = (~nan).to(x.dtype)
    num = F.avg_pool2d(torch.where(nan, 0.0, x)[None], scale, ceil_mode=True)[0]
    den = F.avg_pool2d(valid[None], scale, ceil_mode=True)[0]
    return torch.where(den > 0, num / den.clamp(min=1e-6), torch.nan), den


def _box(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window of (C, h, w), the window cut at the borders."""
    return F.avg_pool2d(x[None], 2 * radius + 1, stride=1, padding=radius,
                        count_include_pad=False)[0]


def guided_coefficients(guide: torch.Tensor, prob: torch.Tensor, radius: int, eps: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients (a (k, h, w), b (h, w)) of the windowed linear fit ``prob ~ a . guide + b``
    at the coarse resolution, already averaged over the windows (the guided filter's second
    box pass). ``guide`` (k, h, w) and ``prob`` (h, w) must be finite (fill no data first);
    ``eps`` is the ridge on the guide's covariance."""
    k = guide.shape[0]
    mean_i = _box(guide, radius)
    mean_p = _box(prob[None], radius)[0]
    cov_ip = _box(guide * prob[None], radius) - mean_i * mean_p[None]
    if k == 1:
        var_i = _box(guide * guide, radius) - mean_i * mean_i
        a = cov_ip / (var_i + eps)
    else:
        pairs = torch.stack([guide[i] * guide[j] for i in range(k) for j in range(k)])
        cov_ii = (_box(pairs, radius) - torch.stack(
            [mean_i[i] * mean_i[j] for i in range(k) for j in range(k)]))
        cov_ii = cov_ii.reshape(k, k, *guide.shape[1:]).permute(2, 3, 0, 1)
        cov_ii = cov_ii + eps * torch.eye(k, dtype=guide.dtype)
        a = torch.linalg.solve(cov_ii, cov_ip.permute(1, 2, 0)[..., None])[..., 0]
        a = a.permute(2, 0, 1)
    b = mean_p - (a * mean_i).sum(0)
    return _box(a, radius), _box(b[None], radius)[0]


def guided_upsample(prob: torch.Tensor, guide_coarse: torch.Tensor, guide_fine: torch.Tensor,
                    scale: int, radius: int = 2, eps: float = 0.01) -> torch.Tensor:
    """Probability (H, W) at full resolution from the coarse probability (h, w) and the guide
    at both resolutions ((k, h, w) its ``scale`` x ``scale`` means, (k, H, W)): the fast
    guided filter. No-data cells of the coarse guide take the window's mean guide (so they do
    not pull the fit); no-data pixels of the fine guide get the bilinear probability."""
    h, w = guide_fine.shape[-2:]
    bad = torch.isnan(guide_coarse)
    if bool(bad.any()):
        fill = torch.nan_to_num(guide_coarse.nanmean(dim=(1, 2), keepdim=True), nan=0.0)
        guide_coarse = torch.where(bad, fill, guide_coarse)
    a, b = guided_coefficients(guide_coarse, prob, radius, eps)
    up = F.interpolate(torch.cat([a, b[None]])[None], scale_factor=scale, mode="bilinear",
                       align_corners=False)[0, :, :h, :w]
    q = up[-1] + (up[:-1] * guide_fine).sum(0) if a.shape[0] > 1 else \
        torch.addcmul(up[1], up[0], guide_fine[0])
    bad_fine = torch.isnan(q)
    if bool(bad_fine.any()):
        plain = F.interpolate(prob[None, None], scale_factor=scale, mode="bilinear",
                              align_corners=False)[0, 0, :h, :w]
        q = torch.where(bad_fine, plain, q)
    return q.clamp_(0.0, 1.0)


def refine_numpy(prob_coarse: np.ndarray, bands_fine: np.ndarray, scale: int,
                 guides: tuple[str, ...] = ("mndwi",), radius: int = 2, eps: float = 0.01
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
