"""Fixtures of the model room's tests: where the shared data is, and a synthetic scene."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def shared_data() -> Path:
    """$AQUAMASK_SHARED_DATA, else the shared/data folder beside the checkout (../shared/data),
    else one inside it."""
    env = os.environ.get("AQUAMASK_SHARED_DATA")
    if env:
        return Path(env)
    for cand in (REPO.parent / "shared" / "data", REPO / "shared" / "data"):
        if cand.exists():
            return cand
    return REPO.parent / "shared" / "data"


SHARED = shared_data()
CHIPS = SHARED / "water-chips-128"
SPAIN_DIR = SHARED / "sen1floods11-sample"


@pytest.fixture
def chips_dir() -> Path:
    if not (CHIPS / "images").is_dir():
        pytest.skip(f"water-chips-128 absent at {CHIPS}; set AQUAMASK_SHARED_DATA to the "
                    "shared data folder")
    return CHIPS


@pytest.fixture
def spain_dir() -> Path:
    if not (SPAIN_DIR / "Spain_7370579_S2Hand.tif").exists():
        pytest.skip(f"Sen1Floods11 sample absent at {SPAIN_DIR}; set AQUAMASK_SHARED_DATA to "
                    "the shared data folder")
    return SPAIN_DIR


def synthetic_scene(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(6, h, w) float32 reflectance x 10000 of land with smooth water bodies, and the mask."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(h // 32 + 2, w // 32 + 2))
    yy = np.linspace(0, coarse.shape[0] - 1.001, h)
    xx = np.linspace(0, coarse.shape[1] - 1.001, w)
    y0, x0 = yy.astype(int), xx.astype(int)
    fy, fx = (yy - y0)[:, None], (xx - x0)[None, :]
    field = (coarse[y0][:, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1][:, x0] * fy * (1 - fx)
             + coarse[y0][:, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1][:, x0 + 1] * fy * fx)
    water = field > 0.6
    land = np.array([600, 850, 950, 2600, 2100, 1300], np.float32)
    wet = np.array([450, 600, 400, 200, 90, 60], np.float32)
    bands = np.where(water[None], wet[:, None, None], land[:, None, None])
    bands = bands * rng.uniform(0.9, 1.1, (1, h, w)) + rng.normal(0, 40, (6, h, w))
    return bands.astype(np.float32), water
