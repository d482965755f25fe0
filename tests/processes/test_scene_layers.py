"""What a viewer shows with a water mask: the input scene's display bands written beside the
mask, published as a true colour and a false colour layer of the mask's job (same owner and
visibility, removed with it) drawn stretched from each band's 2-98 % range, and the water
probability as a layer answering GetFeatureInfo."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from aquamask.processes.pipeline.products import SCENE_FILE, write_scene_cog
from aquamask.processes.publishing import service as publishing
from aquamask.processes.styles import SCENE_BANDS, STRETCH_TAG
from aquamask.processes.types import Scene
from tests.support.mapserver import (
    ALICE,
    BOB,
    GRIDS,
    SIZE,
    WATER,
    WATER_PIXEL,
    coverage_ids,
    layer_names,
    make_product,
    ows_app,
    png_rgba,
    write_mask_cog,
)

JOB = "5c1d2e3f-4a5b-4c6d-8e7f-901a2b3c4d5e"
# reflectance x 10000 of the left (A) and right (B) halves; the bottom rows are no data
HALVES = {"B02": (500, 3000), "B03": (500, 3000), "B04": (3000, 500), "B08": (500, 3000),
          "B11": (3000, 500), "B12": (1000, 1000)}
NODATA_ROWS = slice(224, SIZE)
# what each view draws of each half: its red, green, blue bands stretched to 0-255
EXPECTED = {"truecolor": ((255, 0, 0), (0, 255, 255)),
            "falsecolor": ((255, 0, 255), (0, 255, 0))}


def scene_of(crs: str = "EPSG:32630") -> Scene:
    bands = tuple(HALVES)
    data = np.empty((len(bands), SIZE, SIZE), np.float32)
    for i, band in enumerate(bands):
        data[i, :, :SIZE // 2], data[i, :, SIZE // 2:] = HALVES[band]
    data[:, NODATA_ROWS, :] = np.nan

    def read(window):
        (r0, r1), (c0, c1) = window.toranges()
        return data[:, r0:r1, c0:c1]

    profile = {"width": SIZE, "height": SIZE, "crs": crs, "transform": GRIDS[crs]}
    return Scene(href="scene.tif", profile=profile, bands=bands, read=read)


def write_probability(path, crs: str = "EPSG:32630"):
    """0.9 on the mask's water, 0.1 elsewhere."""
    probability = np.full((SIZE, SIZE), 0.1, np.float32)
    probability[WATER] = 0.9
    with rasterio.open(path, "w", driver="GTiff", width=SIZE, height=SIZE, count=1,
                       dtype="float32", crs=crs, transform=GRIDS[crs]) as dst:
        dst.write(probability, 1)
    return path


@pytest.fixture
def published(catalogue, tmp_path):
    """Alice's water detection job with its mask, scene and probability published."""
    mask = write_mask_cog(tmp_path / "product" / "mask.tif")
    catalogue.publish(mask, JOB, owner=ALICE)
    product = make_product(mask, JOB, title="Water detection (test)")
    product.scene_cog = write_scene_cog(scene_of(), mask.path.parent)
    product.probability_cog = write_probability(mask.path.parent / "probability.tif")
    names = publishing.publish_views(product, catalogue.settings)
    return mask, names


def test_the_scene_cog_holds_the_display_bands_and_their_stretch(tmp_path):
    path = write_scene_cog(scene_of(), tmp_path)
    assert path == tmp_path / SCENE_FILE and not (tmp_path / "scene.raw.tif").exists()
    with rasterio.open(path) as src:
        assert src.descriptions == SCENE_BANDS and src.dtypes[0] == "uint16"
        assert src.nodata == 0
        b04 = src.read(SCENE_BANDS.index("B04") + 1)
        stretch = json.loads(src.tags()[STRETCH_TAG])
    assert b04[0, 0] == 3000 and b04[0, SIZE - 1] == 500 and (b04[NODATA_ROWS] == 0).all()
    assert stretch["B04"] == pytest.approx([500, 3000]) and set(stretch) == set(SCENE_BANDS)


def bbox_query(mask) -> str:
    left, bottom, right, top = mask.bounds
    return f"CRS=EPSG:32630&BBOX={left},{bottom},{right},{top}&WIDTH={SIZE}&HEIGHT={SIZE}"


@pytest.mark.parametrize("view", list(EXPECTED))
def test_the_scene_layers_draw_the_scene_stretched(catalogue, published, view):
    mask, names = published
    assert names == [f"water-{JOB}--truecolor", f"water-{JOB}--falsecolor",
                     f"water-{JOB}--probability"]
    client = ows_app(catalogue, ALICE).test_client()
    response = client.get(
        f"/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS=water-{JOB}--{view}&STYLES="
        f"&{bbox_query(mask)}&FORMAT=image/png&TRANSPARENT=TRUE")
    assert response.status_code == 200, response.data[:500]
    image = png_rgba(response.data)
    left, right = EXPECTED[view]
    assert tuple(image[32, 32]) == pytest.approx((*left, 255), abs=3)
    assert tuple(image[32, SIZE - 32]) == pytest.approx((*right, 255), abs=3)
    assert image[240, 64, 3] == 0  # no data is transparent


def test_the_probability_layer_draws_and_answers_the_probability(catalogue, published):
    mask, _ = published
    client = ows_app(catalogue, ALICE).test_client()
    layer = f"water-{JOB}--probability"
    image = png_rgba(client.get(
        f"/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS={layer}&STYLES="
        f"&{bbox_query(mask)}&FORMAT=image/png&TRANSPARENT=TRUE").data)
    row, col = WATER_PIXEL
    # white (0) to the mask's blue (1): 0.9 is nearly blue, 0.1 nearly white
    assert tuple(image[row, col]) == pytest.approx((26, 126, 255, 255), abs=3)
    assert tuple(image[16, 16]) == pytest.approx((230, 240, 255, 255), abs=3)
    response = client.get(
        f"/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetFeatureInfo&LAYERS={layer}"
        f"&QUERY_LAYERS={layer}&STYLES=&{bbox_query(mask)}&I={col}&J={row}"
        "&INFO_FORMAT=application/json&FORMAT=image/png")
    assert response.status_code == 200, response.data
    (feature,) = json.loads(response.data)["features"]
    assert float(feature["properties"]["value_0"]) == pytest.approx(0.9)


def test_the_scene_layers_are_listed_with_titles_for_their_owner_only(catalogue, published):
    _, names = published
    caps = "/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetCapabilities"
    listed = ows_app(catalogue, ALICE).test_client().get(caps).data
    assert set(names) <= set(layer_names(listed))
    assert b"True colour: Water detection (test)" in listed
    assert b"False colour (SWIR, NIR, red): Water detection (test)" in listed
    # pictures, not data: no WCS coverage
    wcs = ows_app(catalogue, ALICE).test_client().get(
        "/ows?SERVICE=WCS&VERSION=2.0.1&REQUEST=GetCapabilities").data
    assert coverage_ids(wcs) == [f"water-{JOB}"]
    bob = ows_app(catalogue, BOB).test_client()
    assert not set(names) & set(layer_names(bob.get(caps).data))
    mask, _ = published
    response = bob.get(
        f"/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS={names[0]}&STYLES="
        f"&{bbox_query(mask)}&FORMAT=image/png")
    assert b"LayerNotDefined" in response.data


def test_the_scene_layers_are_removed_with_their_job(catalogue, published):
    _, names = published
    assert set(names) <= set(catalogue.names())
    catalogue.unpublish(JOB)
    assert catalogue.names() == []


@pytest.mark.parametrize("cap, published", [(10**8, True), (100, False)])
def test_the_scene_is_written_only_up_to_its_pixel_cap(tmp_path, demo_scene, cap, published):
    """``detection.scene_layers_max_pixels``: a whole tile's display COG costs tens of seconds,
    so larger scenes get their mask without the scene views."""
    import shutil

    from aquamask.processes.ogc.water_detection import parse_inputs
    from aquamask.processes.pipeline.flow import run_detection
    from aquamask.processes.settings import Settings
    from aquamask.processes.storage.jobstore import JobStore
    from aquamask.processes.types import no_progress

    settings = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path),
                                      "AQUAMASK__DETECTION__SCENE_LAYERS_MAX_PIXELS": str(cap)})
    settings.ensure_dirs()
    JobStore(settings.database_url)
    shutil.copy(demo_scene, settings.data_root / "scene.tif")
    product = run_detection(parse_inputs({"image": {"href": "scene.tif"}, "method": "ndwi"},
                                         settings), settings, f"cap-{cap}", no_progress)
    assert (product.scene_cog is not None) is published
    assert (product.directory / SCENE_FILE).exists() is published
