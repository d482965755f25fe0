"""Output files styled for desktop GIS (issue #18, item 8): colour tables in the mask, change and
frequency COGs, class names GDAL reads, a .qml and an .sld beside each product."""
from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from aquamask.processes.monitoring.rasters import change_raster, frequency_rasters
from aquamask.processes.ogc.outputs import MASK_RESULT_FILES
from aquamask.processes.ogc.water_detection import parse_inputs
from aquamask.processes.pipeline.blocks import gtiff_profile
from aquamask.processes.pipeline.flow import run_detection
from aquamask.processes.pipeline.products import to_cog
from aquamask.processes.settings import Settings
from aquamask.processes.storage.jobstore import JobStore
from aquamask.processes.styles import CHANGE_CLASSES, FREQUENCY_CLASSES
from aquamask.processes.types import no_progress

GDALINFO = shutil.which("gdalinfo")


def qml_entries(path) -> dict[str, dict[str, str]]:
    root = ET.parse(path).getroot()
    return {e.get("label"): e.attrib for e in root.iter() if e.tag in ("paletteEntry", "item")}


def category_names(path) -> list[str]:
    """The band's category names as GDAL reads them (the file and its .aux.xml)."""
    if GDALINFO is None:
        pytest.skip("gdalinfo is absent: GDAL's own reading of the class names is not checked")
    info = subprocess.run([GDALINFO, "-json", str(path)], capture_output=True, text=True,
                          check=True, timeout=60)
    return json.loads(info.stdout)["bands"][0].get("categories", [])


@pytest.fixture
def product(tmp_path, demo_scene):
    settings = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path)})
    settings.ensure_dirs()
    JobStore(settings.database_url)
    shutil.copy(demo_scene, settings.data_root / "scene.tif")
    return run_detection(parse_inputs({"image": {"href": "scene.tif"}, "method": "ndwi"},
                                      settings), settings, "styled", no_progress)


def test_the_mask_carries_its_colours_and_class_names(product):
    folder = product.directory
    with rasterio.open(product.mask_cog) as mask:
        table = mask.colormap(1)
    assert table[1] == (0, 112, 255, 255)
    # GeoTIFF palettes have no alpha: the .qml QGIS loads with the file keeps dry land and no
    # data transparent (no black land)
    entries = qml_entries(folder / "mask.qml")
    assert entries["Water"]["color"] == "#0070ff" and entries["Water"]["alpha"] == "255"
    assert entries["Dry"]["alpha"] == "0" and entries["No data"]["alpha"] == "0"
    names = category_names(product.mask_cog)
    assert names[0] == "Dry" and names[1] == "Water" and names[255] == "No data"
    sld = ET.parse(folder / "mask.sld").getroot()
    colours = {e.get("quantity"): (e.get("color"), e.get("opacity"))
               for e in sld.iter("{http://www.opengis.net/sld}ColorMapEntry")}
    assert colours == {"0": ("#000000", "0"), "1": ("#0070ff", "1"), "255": ("#000000", "0")}
    # served beside the mask, and listed in its STAC item
    assert {"mask.qml", "mask.sld", "mask.tif.aux.xml"} <= set(MASK_RESULT_FILES)
    assets = json.loads(product.stac_item.read_text())["assets"]
    assert {a["href"] for a in assets.values()} >= {"./mask.qml", "./mask.sld",
                                                   "./mask.tif.aux.xml"}


def masks(tmp_path):
    profile = {"width": 4, "height": 1, "crs": "EPSG:32630",
               "transform": from_origin(600000, 4220000, 10, 10)}
    paths = []
    for name, row in (("before.tif", [0, 0, 1, 1]), ("after.tif", [0, 1, 0, 1])):
        with rasterio.open(tmp_path / name, "w", **gtiff_profile(profile, "uint8", 255)) as dst:
            dst.write(np.array([row], np.uint8), 1)
        paths.append(tmp_path / name)
    return paths, profile


def test_change_and_frequency_cogs_have_colour_tables_and_styles(tmp_path):
    from aquamask.processes.styles import write_style_files

    (before, after), profile = masks(tmp_path)
    change_raster(before, after, tmp_path / "change.raw.tif")
    change = to_cog(tmp_path / "change.raw.tif", tmp_path / "change.tif", nodata=255,
                    resampling="mode")
    write_style_files(change, "change")
    with rasterio.open(change) as cog:
        table = cog.colormap(1)
    for _, value, rgb in CHANGE_CLASSES:
        assert table[value][:3] == rgb
    assert category_names(change)[:4] == [label for label, *_ in CHANGE_CLASSES[:4]]
    assert set(qml_entries(tmp_path / "change.qml")) == {c[0] for c in CHANGE_CLASSES}

    profile["crs"] = rasterio.crs.CRS.from_string(profile["crs"])
    frequency_rasters([before, after], profile, tmp_path / "frequency.raw.tif",
                      tmp_path / "observations.tif")
    frequency = to_cog(tmp_path / "frequency.raw.tif", tmp_path / "frequency.tif", nodata=255,
                       resampling="nearest")
    write_style_files(frequency, "frequency")
    with rasterio.open(frequency) as cog:
        table = cog.colormap(1)
    assert table[50][:3] == FREQUENCY_CLASSES[2][3] and table[100][:3] == FREQUENCY_CLASSES[4][3]
    entries = qml_entries(tmp_path / "frequency.qml")
    assert entries["Never water"]["alpha"] == "0"
    assert entries["75-100 %"]["value"] == "100"
    assert (tmp_path / "frequency.sld").read_text().count("ColorMapEntry") >= 6
