"""The guided refinement: 30 m probabilities, 10 m edges."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aquamask.model.refine import guided_upsample, masked_mean_pool, refine_numpy

LAND = np.array([600, 850, 950, 2600, 2100, 1300], np.float32)
WATER = np.array([450, 600, 400, 200, 90, 60], np.float32)


def scene(water: np.ndarray, seed: int = 0) -> np.ndarray:
    bands = np.where(water[None], WATER[:, None, None], LAND[:, None, None])
    noise = np.random.default_rng(seed).normal(0, 30, bands.shape)
    return (bands + noise).astype(np.float32)


def coarse_fraction(water: np.ndarray, scale: int) -> np.ndarray:
    """What a calibrated network at the coarse resolution says: the water fraction of each
    cell."""
    return masked_mean_pool(torch.from_numpy(water[None].astype(np.float32)), scale)[0][0].numpy()


def bilinear(prob: np.ndarray, scale: int, shape) -> np.ndarray:
    up = F.interpolate(torch.from_numpy(prob)[None, None], scale_factor=scale, mode="bilinear",
                       align_corners=False)[0, 0].numpy()
    return up[:shape[0], :shape[1]]


@pytest.mark.parametrize("guides", [("mndwi",), ("ndwi",), ("ndwi", "mndwi")])
def test_a_one_pixel_river_is_kept_where_bilinear_upsampling_loses_it(guides):
    water = np.zeros((96, 96), bool)
    water[:, 40] = True                                 # a 1-px river (10 m) ...
    water[10:31, 60:81] = True                          # ... and a pond with sharp corners
    bands, prob = scene(water), coarse_fraction(water, 3)
    refined = refine_numpy(prob, bands, 3, guides, radius=1, eps=0.01) >= 0.5
    assert refined[:, 40].mean() > 0.95
    assert np.count_nonzero(refined & ~water) == 0
    assert (refined & water).sum() / (refined | water).sum() > 0.98
    plain = bilinear(prob, 3, water.shape) >= 0.5
    assert plain[:, 40].mean() < 0.05                   # a third of a cell: gone
    assert (plain & water).sum() / (plain | water).sum() < 0.85


def test_edges_follow_the_guide_not_the_cells():
    """An edge in the middle of 3x3 cells: the refined mask puts it on the right pixel."""
    water = np.zeros((60, 60), bool)
    water[:, :31] = True                                # edge at column 31 (31 = 10*3 + 1)
    refined = refine_numpy(coarse_fraction(water, 3), scene(water), 3, radius=1) >= 0.5
    np.testing.assert_array_equal(refined, water)


def test_uniform_windows_keep_the_coarse_probability():
    guide = torch.rand(1, 60, 60) * 0.01                # no structure to follow
    coarse = masked_mean_pool(guide, 3)[0]
    prob = torch.full((20, 20), 0.3)
    out = guided_upsample(prob, coarse, guide, 3, radius=1, eps=0.01)
    assert out.shape == (60, 60)
    assert torch.allclose(out, torch.full_like(out, 0.3), atol=0.01)


def test_nodata_in_nodata_out_and_finite_elsewhere():
    water = np.zeros((50, 47), bool)
    water[5:20, 5:30] = True
    bands = scene(water)
    bands[:, 30:36, 10:20] = np.nan
    bands[4, 2, 2] = np.nan
    out = refine_numpy(coarse_fraction(water, 3), bands, 3)
    nodata = np.isnan(bands).any(0)
    assert out.shape == water.shape
    np.testing.assert_array_equal(np.isnan(out), nodata)
    assert ((out[~nodata] >= 0) & (out[~nodata] <= 1)).all()
