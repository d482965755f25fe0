"""Spectral water indices and Otsu's threshold, in plain numpy.

Inputs are reflectance arrays (any scale, as long as both bands share it) with NaN for no data.
"""
from __future__ import annotations

import numpy as np


def _normalised_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    num = a - b
    den = a + b
    out = np.full(np.broadcast(a, b).shape, np.nan, dtype=np.float32)
    ok = np.isfinite(num) & np.isfinite(den) & (den != 0)
    np.divide(num, den, out=out, where=ok)
    return out


def ndwi(green: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """McFeeters' NDWI = (green - NIR) / (green + NIR); float32, NaN where an input is NaN or
    the denominator is 0."""
    return _normalised_difference(green, nir)


def mndwi(green: np.ndarray, swir1: np.ndarray) -> np.ndarray:
    """Xu's modified NDWI = (green - SWIR1) / (green + SWIR1); float32, NaN where an input is
    NaN or the denominator is 0."""
    return _normalised_difference(green, swir1)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (NaN and inf ignored): the cut that maximises the
    between-class variance of a ``bins``-bin histogram.

    Written with numpy by hand because scikit-image (``threshold_otsu``) is not a dependency of
    aquamask and a 15-line histogram search is not worth one. Returns NaN when there are no
    finite values, and the value itself when all values are equal.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist).astype(np.float64)            # pixels at or below each cut
    w1 = w0[-1] - w0                                   # pixels above
    s0 = np.cumsum(hist * centers)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    between[(w0 == 0) | (w1 == 0)] = -1
    # empty bins between two well separated modes give a plateau of equal maxima: take the
    # middle of it rather than its first cut
    best = np.flatnonzero(between >= between.max() * (1 - 1e-12))
    i_lo, i_hi = int(best[0]), int(best[-1])
    return float((edges[i_lo + 1] + edges[i_hi + 1]) / 2.0)
