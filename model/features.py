"""Network inputs from the six spectral bands: shared by training and inference so the two can
never drift apart.

Channels: B02, B03, B04, B08, B11, B12 as reflectance (x 10000 -> [0, 1]-ish, clipped to
[-0.05, 1.5]), then NDWI (B03, B08) and MNDWI (B03, B11) clipped to [-1, 1]. The result is
standardised with a per-channel mean/std stored with the weights, and NaN (no data) is set to 0
(the channel mean) after standardisation; the caller masks the output there.
"""
from __future__ import annotations

import numpy as np
import torch

N_BANDS = 6
N_FEATURES = 8
SCALE = 10000.0
CLIP = (-0.05, 1.5)
GREEN, NIR, SWIR1 = 1, 3, 4


def _nd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    den = a + b
    ok = den.abs() > 1e-3
    out = torch.where(ok, (a - b) / torch.where(ok, den, torch.ones_like(den)),
                      torch.zeros_like(den))
    return out.clamp(-1.0, 1.0)


def raw_features(bands: torch.Tensor) -> torch.Tensor:
    """(N, 6, H, W) reflectance x 10000 -> (N, 8, H, W) unstandardised features (NaN kept)."""
    refl = (bands / SCALE).clamp(*CLIP)          # clamp keeps NaN as NaN
    g, n, s = refl[:, GREEN], refl[:, NIR], refl[:, SWIR1]
    # indices from the clipped reflectances; clip the raw inputs at 0 first so that slightly
    # negative surface reflectance (dark water) does not flip the sign of the index.
    g0, n0, s0 = g.clamp(min=0), n.clamp(min=0), s.clamp(min=0)
    return torch.cat([refl, _nd(g0, n0)[:, None], _nd(g0, s0)[:, None]], dim=1)


def standardise(features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = (features - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def network_input(bands: np.ndarray | torch.Tensor, mean, std) -> torch.Tensor:
    """Bands (N, 6, H, W) or (6, H, W) reflectance x 10000 -> standardised (N, 8, H, W)."""
    x = torch.as_tensor(bands, dtype=torch.float32)
    if x.ndim == 3:
        x = x[None]
    if x.shape[1] != N_BANDS:
        raise ValueError(f"expected {N_BANDS} bands, got {x.shape[1]}")
    # a pixel with any band missing is no data in every channel
    x = torch.where(torch.isnan(x).any(dim=1, keepdim=True), torch.nan, x)
    return standardise(raw_features(x), torch.as_tensor(mean, dtype=torch.float32),
                       torch.as_tensor(std, dtype=torch.float32))
