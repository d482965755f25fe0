"""The monitoring styles: change classes and graduated frequency, drawn by the real MapServer
through /ows from COGs that name their style (AQUAMASK_STYLE), and the SLDs GeoServer would use
with the same colours."""
from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from importlib.resources import files

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from aquamask.processes.pipeline.products import to_cog
from aquamask.processes.publishing import service as publishing
from aquamask.processes.styles import CHANGE_CLASSES, FREQUENCY_CLASSES
from aquamask.processes.types import MaskStats, Product
from tests.support.mapserver import catalogue_at, ows_app, png_rgba

SLD = "{http://www.opengis.net/sld}"
SIZE = 200
TRANSFORM = from_origin(500000.0, 4800000.0, 10.0, 10.0)
# five columns of 40 px: one change class each
CHANGE_VALUES = (0, 1, 2, 3, 255)
# five columns: one per frequency class (its upper bound, 1 % above the one before), and rows
# of 255 (no valid observation) and of 0 (never wet)
FREQUENCY_VALUES = (10, 25, 26, 75, 76)


def _hex(rgb) -> str:
    return "#" + "".join(f"{v:02x}" for v in rgb)


def entries(name: str) -> list[dict[str, str]]:
    root = ET.fromstring((files("aquamask.config") / "styles" / name).read_text())
    return [e.attrib for e in root.iter(f"{SLD}ColorMapEntry")]


def test_the_slds_use_the_mapfile_colours():
    change = {e["quantity"]: e["color"].lower() for e in entries("change.sld")}
    assert change == {str(value): _hex(rgb) for _, value, rgb in CHANGE_CLASSES}
    frequency = entries("frequency.sld")
    assert frequency[0]["opacity"] == "0"
    assert [e["color"].lower() for e in frequency[1:-1]] == \
        [_hex(rgb) for *_, rgb in FREQUENCY_CLASSES]
    # intervals [previous, quantity) on whole percentages: (low, high] is [low + .5, high + .5)
    assert [float(e["quantity"]) for e in frequency[:-1]] == \
        [0.5] + [high + 0.5 for _, _, high, _ in FREQUENCY_CLASSES]
    assert frequency[-1]["opacity"] == "0" and float(frequency[-1]["quantity"]) > 255


def _write(path, array, dtype, nodata, style):
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_suffix(".raw.tif")
    with rasterio.open(raw, "w", driver="GTiff", width=SIZE, height=SIZE, count=1,
                       dtype=dtype, crs="EPSG:32630", transform=TRANSFORM, nodata=nodata) as dst:
        dst.write(array.astype(dtype), 1)
        dst.update_tags(AQUAMASK_STYLE=style)
    to_cog(raw, path, nodata=nodata, resampling="nearest")
    raw.unlink()
    return path


def _product(path, product_id):
    with rasterio.open(path) as src:
        from rasterio.warp import transform_bounds
        bbox = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    return Product(id=product_id, directory=path.parent, mask_cog=path,
                   stac_item=path.parent / "item.json", stats=MaskStats(0, 0, 0, 0.0, 0.0),
                   bbox_wgs84=bbox, crs="EPSG:32630")


@pytest.fixture
def published(tmp_path):
    catalogue = catalogue_at(tmp_path / "home")
    change = np.repeat(np.array(CHANGE_VALUES, np.uint8), SIZE // 5)[None, :].repeat(SIZE, 0)
    frequency = np.repeat(np.array(FREQUENCY_VALUES, np.uint8), SIZE // 5)[None, :] \
        .repeat(SIZE, 0)
    frequency[150:, :] = 255
    frequency[120:150, :] = 0
    for product in (_product(_write(tmp_path / "c" / "change.tif", change, "uint8", 255,
                                    "change"), "change-1"),
                    _product(_write(tmp_path / "f" / "frequency.tif", frequency, "uint8", 255,
                                    "frequency"), "freq-1")):
        catalogue.add_job(product.id)
        publishing.publish_embedded(product, catalogue.settings)
    return catalogue


def getmap(client, layer):
    minx, maxy = TRANSFORM.c, TRANSFORM.f
    bbox = f"{minx},{maxy - SIZE * 10},{minx + SIZE * 10},{maxy}"
    response = client.get(f"/ows?SERVICE=WMS&VERSION=1.3.0&REQUEST=GetMap&LAYERS={layer}"
                          f"&STYLES=&CRS=EPSG:32630&BBOX={bbox}&WIDTH={SIZE}&HEIGHT={SIZE}"
                          "&FORMAT=image/png&TRANSPARENT=TRUE")
    assert response.status_code == 200, response.data[:500]
    return png_rgba(response.data)


def test_change_classes_are_drawn_in_their_colours(published):
    image = getmap(ows_app(published).test_client(), "water-change-1")
    for column, (_, value, rgb) in enumerate(CHANGE_CLASSES):
        assert CHANGE_VALUES[column] == value
        pixel = image[100, column * 40 + 20]
        assert tuple(pixel[:3]) == rgb and pixel[3] == 255, (value, pixel)


def test_frequency_is_graduated_and_no_observation_transparent(published):
    image = getmap(ows_app(published).test_client(), "water-freq-1")
    for column, (*_, rgb) in enumerate(FREQUENCY_CLASSES):
        pixel = image[50, column * 40 + 20]
        assert tuple(pixel[:3]) == rgb and pixel[3] == 255, (FREQUENCY_VALUES[column], pixel)
    assert (image[175, :, 3] == 0).all(), "no valid observation is transparent"
    assert (image[135, :, 3] == 0).all(), "never wet is transparent"


def test_frequency_coverage_keeps_the_percentages(published):
    response = ows_app(published).test_client().get(
        "/ows?SERVICE=WCS&VERSION=2.0.1&REQUEST=GetCoverage&COVERAGEID=water-freq-1"
        "&FORMAT=image/tiff")
    assert response.status_code == 200, response.data[:500]
    with rasterio.open(io.BytesIO(response.data)) as src:
        data = src.read(1)
        assert src.dtypes[0] == "uint8" and src.nodata == 255
    assert list(data[50, 20::40]) == list(FREQUENCY_VALUES) and (data[175] == 255).all()


def test_a_cog_of_an_unknown_style_is_refused(tmp_path):
    catalogue = catalogue_at(tmp_path / "home")
    catalogue.add_job("odd")
    path = _write(tmp_path / "x.tif", np.zeros((SIZE, SIZE)), "uint8", 255, "sparkles")
    with pytest.raises(ValueError, match="unknown AQUAMASK_STYLE 'sparkles'"):
        publishing.publish_embedded(_product(path, "odd"), catalogue.settings)
    wrong = _write(tmp_path / "y.tif", np.zeros((SIZE, SIZE)), "float32", -1, "frequency")
    with pytest.raises(ValueError, match="not a uint8 frequency raster"):
        publishing.publish_embedded(_product(wrong, "odd"), catalogue.settings)
    assert catalogue.names() == []
