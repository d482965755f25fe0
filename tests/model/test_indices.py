import numpy as np

from aquamask.model.indices import mndwi, ndwi, otsu_threshold


def test_ndwi_known_values():
    g = np.array([300.0, 100.0, 0.0, np.nan, 500.0], np.float32)
    n = np.array([100.0, 300.0, 0.0, 100.0, 500.0], np.float32)
    out = ndwi(g, n)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[[0, 1, 4]], [0.5, -0.5, 0.0], atol=1e-6)
    assert np.isnan(out[2]) and np.isnan(out[3])      # zero denominator, NaN input


def test_mndwi_known_values_2d():
    g = np.full((2, 3), 800, np.float32)
    s = np.array([[200, 800, 3200], [np.nan, 0, 1600]], np.float32)
    out = mndwi(g, s)
    assert out.shape == (2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], [0.6, 0.0, -0.6], atol=1e-6)
    assert np.isnan(out[1, 0])
    np.testing.assert_allclose(out[1, 1:], [1.0, -1 / 3], atol=1e-6)


def test_otsu_separates_two_modes_and_ignores_nan():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(-0.5, 0.05, 5000), rng.normal(0.4, 0.05, 2000),
                        [np.nan] * 100])
    t = otsu_threshold(v)
    assert -0.3 < t < 0.25
    assert np.isnan(otsu_threshold(np.array([np.nan, np.nan])))
    assert otsu_threshold(np.array([0.2, 0.2])) == 0.2


def test_block_histograms_add_up_to_the_scene_threshold():
    """The scene-level Otsu of a pipeline: histograms of blocks summed, one threshold."""
    from aquamask.model.indices import index_histogram, otsu_threshold_from_histogram
    rng = np.random.default_rng(1)
    scene = np.concatenate([rng.normal(-0.4, 0.08, 30000), rng.normal(0.3, 0.08, 10000)])
    rng.shuffle(scene)
    scene = scene.reshape(200, 200).astype(np.float32)
    scene[:5] = np.nan
    blocks = [scene[r:r + 64, c:c + 64] for r in range(0, 200, 64) for c in range(0, 200, 64)]
    total = sum(index_histogram(b) for b in blocks)
    np.testing.assert_array_equal(total, index_histogram(scene))
    assert total.sum() == np.isfinite(scene).sum()
    t = otsu_threshold_from_histogram(total)
    assert -0.2 < t < 0.1
    assert abs(t - otsu_threshold(scene)) < 0.02          # the same cut as on the array
    assert np.isnan(otsu_threshold_from_histogram(np.zeros(512)))


def test_threshold_probability_is_one_half_at_the_threshold():
    from aquamask.model.indices import threshold_probability
    i = np.array([-1.0, -0.2, 0.1, 0.1001, 1.0, np.nan], np.float32)
    p = threshold_probability(i, 0.1)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p[[0, 2, 4]], [0.0, 0.5, 1.0], atol=1e-6)
    assert p[1] < 0.5 < p[3] and np.isnan(p[5])
    np.testing.assert_array_equal(threshold_probability(i, -0.3)[:5] >= 0.5, i[:5] >= -0.3)
