"""Pixel areas on the ellipsoid, for projected and geographic grids."""
from __future__ import annotations

import numpy as np
from affine import Affine
from pyproj import CRS, Geod
from rasterio.windows import Window

from aquamask.processes.pipeline.areas import pixel_areas_km2


def test_utm_pixels_carry_the_scale_factor():
    # 10 m pixels 100 km east of the UTM 30N central meridian: true area = 100 m² / k²
    areas = pixel_areas_km2(Affine(10, 0, 600000, 0, -10, 4220000),
                            CRS.from_epsg(32630).to_wkt(), Window(0, 0, 100, 50))
    assert areas.shape == (50, 100)
    assert np.allclose(areas * 1e6, 100.055, atol=0.01)


def test_geographic_grid_matches_the_geodesic_area_of_its_footprint():
    res = 8.983152841195215e-05
    west, north, n = -0.78, 38.13, 512
    areas = pixel_areas_km2(Affine(res, 0, west, 0, -res, north), CRS.from_epsg(4326).to_wkt(),
                            Window(0, 0, n, n))
    east, south = west + n * res, north - n * res
    truth, _ = Geod(ellps="WGS84").polygon_area_perimeter(
        [west, east, east, west], [north, north, south, south])
    assert abs(areas.sum() - abs(truth) / 1e6) / (abs(truth) / 1e6) < 1e-4
    # pixels shrink towards the pole: the top row is smaller than the bottom row
    assert areas[0].mean() < areas[-1].mean()


def test_window_offsets_are_honoured():
    transform = Affine(9e-5, 0, 0, 0, -9e-5, 80)  # 10 m pixels, far north
    wkt = CRS.from_epsg(4326).to_wkt()
    whole = pixel_areas_km2(transform, wkt, Window(0, 0, 64, 300))
    part = pixel_areas_km2(transform, wkt, Window(0, 200, 64, 100))
    assert np.allclose(whole[200:], part, rtol=2e-4)


def test_cells_across_the_antimeridian_keep_their_area():
    res = 9e-5
    west = 180.0 - 32 * res  # the window's cells straddle 180°
    across = pixel_areas_km2(Affine(res, 0, west, 0, -res, 10.0), CRS.from_epsg(4326).to_wkt(),
                             Window(0, 0, 64, 64))
    inside = pixel_areas_km2(Affine(res, 0, 10.0, 0, -res, 10.0), CRS.from_epsg(4326).to_wkt(),
                             Window(0, 0, 64, 64))
    assert np.allclose(across, inside, rtol=1e-9)
