"""Reading the image a user points at: band layouts, the data-root rule, no-data handling."""
from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from aquamask.processes.constants import DETECTION_BANDS
from aquamask.processes.errors import Forbidden, InvalidInput, TooLarge
from aquamask.processes.pipeline.sources.raster import (
    SENTINEL2_13,
    RasterSource,
    band_indexes,
    canonical_band,
    read_window,
)


def write_raster(path, count, descriptions=None, crs="EPSG:32630", size=16, nodata=0):
    data = (np.arange(count)[:, None, None] * 100 + 500
            + np.zeros((count, size, size))).astype(np.int16)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=count,
                       dtype="int16", crs=crs, nodata=nodata,
                       transform=from_origin(0, size * 10, 10, 10)) as dst:
        dst.write(data)
        for i, name in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, name)
    return path


@pytest.mark.parametrize("name,expected", [("B2", "B02"), ("b02", "B02"), ("B8a", "B8A"),
                                           ("B11", "B11"), ("red", None), ("B", None)])
def test_canonical_band_names(name, expected):
    assert canonical_band(name) == expected


def test_thirteen_band_sentinel2_layout_by_count():
    assert band_indexes((None,) * 13, 13) == [2, 3, 4, 8, 12, 13]


def test_six_band_layout_by_count():
    assert band_indexes((None,) * 6, 6) == [1, 2, 3, 4, 5, 6]


def test_descriptions_win_over_count():
    shuffled = ("B12", "B11", "B08", "B04", "B03", "B02", "B01")
    assert band_indexes(shuffled, 7) == [6, 5, 4, 3, 2, 1]


def test_user_mapping_and_its_errors():
    mapping = {b: i + 2 for i, b in enumerate(DETECTION_BANDS)}
    assert band_indexes((None,) * 8, 8, mapping) == [2, 3, 4, 5, 6, 7]
    with pytest.raises(InvalidInput, match="B12"):
        band_indexes((None,) * 6, 6, dict(mapping, B12=9))


def test_unknown_layout_says_what_to_do():
    with pytest.raises(InvalidInput, match="4 bands.*bands"):
        band_indexes((None,) * 4, 4)


def test_reads_detection_bands_of_a_13_band_stack(tmp_path):
    write_raster(tmp_path / "s2.tif", 13, SENTINEL2_13)
    scene = RasterSource(tmp_path, 10**6, ["https"]).read("s2.tif")
    bands = scene.read(Window(0, 0, 4, 4))
    assert bands.shape == (6, 4, 4)
    # values are 500 + 100 * (0-based band index): B02 is band 2, B11 band 12, B12 band 13
    assert bands[:, 0, 0].tolist() == [600, 700, 800, 1200, 1600, 1700]
    assert scene.sha256 and len(scene.sha256) == 64
    scene.close()


def test_paths_outside_the_data_root_are_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = write_raster(tmp_path / "secret.tif", 6)
    os.symlink(outside, root / "link.tif")
    source = RasterSource(root, 10**6, ["https"])
    for href in ("../secret.tif", str(outside), "link.tif", "file:///etc/passwd"):
        with pytest.raises(Forbidden, match="outside the data root"):
            source.read(href)


def test_missing_unreadable_and_unsupported_inputs(tmp_path):
    (tmp_path / "junk.tif").write_text("not a raster")
    source = RasterSource(tmp_path, 10**6, ["https"])
    with pytest.raises(InvalidInput, match="no such file"):
        source.read("nope.tif")
    with pytest.raises(InvalidInput, match="cannot be read as a raster"):
        source.read("junk.tif")
    with pytest.raises(InvalidInput, match="unsupported scheme"):
        source.read("ftp://example.org/a.tif")
    with pytest.raises(Forbidden, match="scheme 'http'"):
        source.read("http://example.org/a.tif")


def test_limits_and_georeferencing_are_checked(tmp_path):
    write_raster(tmp_path / "big.tif", 6, size=64)
    with pytest.raises(TooLarge, match="4,096 pixels"):
        RasterSource(tmp_path, 1000, []).read("big.tif")
    write_raster(tmp_path / "nocrs.tif", 6, crs=None)
    with pytest.raises(InvalidInput, match="no coordinate reference system"):
        RasterSource(tmp_path, 10**6, []).read("nocrs.tif")


def test_read_window_pads_outside_and_masks_nodata(tmp_path):
    path = write_raster(tmp_path / "a.tif", 6, size=8)
    with rasterio.open(path, "r+") as ds:
        ds.write(np.zeros((1, 1), np.int16), 3, window=Window(0, 0, 1, 1))  # B04 no data
    with rasterio.open(path) as ds:
        out = read_window(ds, [1, 2, 3, 4, 5, 6], Window(-2, -2, 6, 6), ds.nodata)
    assert out.shape == (6, 6, 6)
    assert np.isnan(out[:, :2, :]).all() and np.isnan(out[:, :, :2]).all()
    assert np.isnan(out[:, 2, 2]).all(), "one missing band makes the pixel no data in all"
    assert np.isfinite(out[:, 3:, 3:]).all()
