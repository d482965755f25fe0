"""Reflectance scaled 0-1 (a common export) reads as reflectance x 10000 for every method and
every input, and a scale that is neither is refused naming the scale expected (issue #18,
item 3): before, the U-Net found water in every pixel of a 0-1 image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from aquamask.processes.errors import InvalidInput
from aquamask.processes.pipeline import methods
from aquamask.processes.pipeline.flow import DetectionRequest, detect_to_file, run_detection
from aquamask.processes.pipeline.sources.query import PlaceQuery, parse_bbox
from aquamask.processes.pipeline.sources.raster import RasterSource
from aquamask.processes.pipeline.sources.scale import reflectance_factor
from aquamask.processes.settings import Settings
from aquamask.processes.storage.jobstore import JobStore
from aquamask.processes.types import no_progress
from tests.support.water_scenes import inner_box, uniform_scene


def rescaled_copy(source: Path, target: Path, factor: float) -> Path:
    """``source``'s bands times ``factor`` as float32 (its no data kept)."""
    with rasterio.open(source) as src:
        profile = dict(src.profile, dtype="float32")
        data = src.read().astype(np.float32)
        descriptions = src.descriptions
    nodata = data == profile["nodata"]
    data *= np.float32(factor)
    data[nodata] = profile["nodata"]
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(data)
        for i, name in enumerate(descriptions, start=1):
            dst.set_band_description(i, name)
    return target


def test_the_scale_is_told_from_the_values():
    rng = np.random.default_rng(1)
    digital = rng.uniform(50, 4000, (6, 64, 64)).astype(np.float32)
    assert reflectance_factor(digital, "x") == 1.0
    assert reflectance_factor(digital / 10000, "x") == 10000.0
    assert reflectance_factor(np.full((6, 4, 4), np.nan), "x") == 1.0  # nothing to tell by
    with pytest.raises(InvalidInput, match="reflectance x 10000") as err:
        reflectance_factor(digital / 100, "image.href: 'percent.tif'")
    assert err.value.message.startswith("image.href: 'percent.tif' holds reflectance up to 39")


@pytest.mark.parametrize("method", methods.names())
def test_reflectance_0_1_gives_the_mask_of_digital_numbers(method, demo_scene, tmp_path):
    settings = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path)})
    unit = rescaled_copy(demo_scene, tmp_path / "unit.tif", 1e-4)
    masks = {}
    for name, path in (("dn", demo_scene), ("unit", unit)):
        out = tmp_path / name / "mask.tif"
        stats = detect_to_file(str(path), out, settings, method=method,
                               with_probability=False).stats
        with rasterio.open(out) as src:
            masks[name] = (src.read(1), stats)
    (dn, dn_stats), (unit_classes, unit_stats) = masks["dn"], masks["unit"]
    assert 0.05 < dn_stats.water_fraction < 0.5
    assert np.mean(dn == unit_classes) > 0.999
    assert unit_stats.water_fraction == pytest.approx(dn_stats.water_fraction, abs=1e-3)


def test_a_percent_scaled_image_is_refused_before_a_job(demo_scene, tmp_path):
    rescaled_copy(demo_scene, tmp_path / "percent.tif", 1e-2)
    source = RasterSource(tmp_path, 10**8, ["https"])
    with pytest.raises(InvalidInput, match="neither scale aquamask reads"):
        source.check("percent.tif")


def test_a_place_scene_of_reflectance_0_1_is_read_as_digital_numbers(tmp_path):
    """A local dated GeoTIFF whose metadata says no scale: dry land stays dry for the U-Net."""
    uniform_scene(tmp_path / "scenes" / "land_2024-07-01.tif", surface="vegetation",
                  scale=1e-4)
    settings = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path)})
    settings.ensure_dirs()
    JobStore(settings.database_url)
    place = PlaceQuery(geometry=parse_bbox(inner_box()), start=None, end=None).as_dict()
    place["datetime"] = "2024-07-01"
    product = run_detection(DetectionRequest(method="unet", place=place, source="local",
                                             probability=False), settings, "land", no_progress)
    assert product.stats.valid_fraction == 1.0
    assert product.stats.water_fraction < 0.01
