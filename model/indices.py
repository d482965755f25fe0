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


# fixed bins over the whole range of a normalised difference, so that histograms of blocks add up
INDEX_BINS = 512
INDEX_RANGE = (-1.0, 1.0)


def index_histogram(index: np.ndarray, bins: int = INDEX_BINS) -> np.ndarray:
    """Counts (``bins``,) int64 of the finite values of a normalised difference index over
    :data:`INDEX_RANGE` (values outside are clipped into the end bins). Histograms of the
    blocks of a scene add up to the scene's: accumulate them, then
    :func:`otsu_threshold_from_histogram`."""
    v = np.asarray(index, dtype=np.float32).ravel()
    v = np.clip(v[np.isfinite(v)], *INDEX_RANGE)
    return np.histogram(v, bins=bins, range=INDEX_RANGE)[0].astype(np.int64)


def otsu_threshold_from_histogram(counts: np.ndarray, edges: np.ndarray | None = None
                                  ) -> float:
    """Otsu's threshold of a histogram (``counts`` per bin, ``edges`` its bin edges; default
    :data:`INDEX_BINS` bins over :data:`INDEX_RANGE`): the cut that maximises the
    between-class variance. NaN for an empty histogram; the edge above the only occupied
    bin when all values share one bin. Empty bins between two well separated modes give a
    plateau of equal maxima: the middle of it is taken rather than its first cut."""
    hist = np.asarray(counts, dtype=np.float64)
    if edges is None:
        edges = np.linspace(*INDEX_RANGE, hist.size + 1)
    total = hist.sum()
    if total == 0:
        return float("nan")
    occupied = np.flatnonzero(hist)
    if occupied.size == 1:
        return float(edges[occupied[0] + 1])
    centers = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist)                               # pixels at or below each cut
    w1 = total - w0                                    # pixels above
    s0 = np.cumsum(hist * centers)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    between[(w0 == 0) | (w1 == 0)] = -1
    best = np.flatnonzero(between >= between.max() * (1 - 1e-12))
    return float((edges[best[0] + 1] + edges[best[-1] + 1]) / 2.0)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (NaN and inf ignored), over a ``bins``-bin histogram of
    their own range. Written with numpy by hand because scikit-image (``threshold_otsu``) is
    not a dependency of aquamask and a histogram search is not worth one. Returns NaN when
    there are no finite values, and the value itself when all values are equal."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan")
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    return otsu_threshold_from_histogram(hist, edges)


def threshold_probability(index: np.ndarray, threshold: float) -> np.ndarray:
    """A normalised difference index in [-1, 1] mapped onto a [0, 1] score that is 0.5 at
    ``threshold`` (linear on each side, 0 at -1, 1 at +1), so that a probability cut of 0.5
    gives ``index > threshold``: how a scene-level index threshold (e.g. Otsu's of the whole
    scene) fits a pipeline that thresholds a probability. float32, NaN kept."""
    i = np.asarray(index, dtype=np.float32)
    t = float(np.clip(threshold, -0.999, 0.999))
    below = 0.5 * (i + 1.0) / (t + 1.0)
    above = 0.5 + 0.5 * (i - t) / (1.0 - t)
    return np.clip(np.where(i <= t, below, above), 0.0, 1.0).astype(np.float32)
