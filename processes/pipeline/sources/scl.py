"""Sentinel-2 L2A Scene Classification (SCL): which pixels are fit to look for water in.

Classes (ESA, Level-2A product definition): 0 no data, 1 saturated or defective, 2 dark area
pixels (topographic shadow), 3 cloud shadows, 4 vegetation, 5 not vegetated, 6 water,
7 unclassified, 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus,
11 snow or ice.

Each pixel gets a rank: 0 no data, 1 unfit (cloud, cloud shadow, cirrus, saturated), 2 usable
but doubtful (dark area, unclassified, snow), 3 clear (vegetation, bare, water). Detection sees
only ranks 2 and 3 (the rest is NaN, so the mask says 255); a mosaic keeps, pixel by pixel, the
scene with the highest rank (the least cloudy scene first among equals).
"""
from __future__ import annotations

import numpy as np

NO_DATA, SATURATED, DARK, CLOUD_SHADOW, VEGETATION, NOT_VEGETATED, WATER, UNCLASSIFIED, \
    CLOUD_MEDIUM, CLOUD_HIGH, CIRRUS, SNOW = range(12)
INVALID_CLASSES = (NO_DATA, SATURATED, CLOUD_SHADOW, CLOUD_MEDIUM, CLOUD_HIGH, CIRRUS)

RANK_NONE, RANK_UNFIT, RANK_DOUBTFUL, RANK_CLEAR = 0, 1, 2, 3
USABLE = RANK_DOUBTFUL
_RANKS = np.zeros(256, np.uint8)  # classes beyond 11 (not in the spec) count as no data
_RANKS[[SATURATED, CLOUD_SHADOW, CLOUD_MEDIUM, CLOUD_HIGH, CIRRUS]] = RANK_UNFIT
_RANKS[[DARK, UNCLASSIFIED, SNOW]] = RANK_DOUBTFUL
_RANKS[[VEGETATION, NOT_VEGETATED, WATER]] = RANK_CLEAR


def rank(scl: np.ndarray) -> np.ndarray:
    """The rank of each SCL class (uint8 array of the same shape)."""
    return _RANKS[np.clip(scl, 0, 255).astype(np.uint8)]


def invalid(scl: np.ndarray) -> np.ndarray:
    """True where the SCL class marks cloud, cloud shadow, cirrus, saturation or no data."""
    return rank(scl) < USABLE
