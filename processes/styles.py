"""How each kind of result is drawn (the water mask, and the change and frequency rasters of the
monitoring processes), on the map and in the files themselves. The embedded engine's templates
(config/mapfile-layer.j2), the SLDs of GeoServer (config/styles/*.sld) and the viewer's legend
use these same colours (tests/processes/test_monitoring_styles.py checks it); a COG names its
style in a GDAL tag."""
from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from importlib.resources import as_file, files
from pathlib import Path

# One blue for the mapfile, the SLD (config/styles/water.sld) and the viewer legend.
WATER_RGB = (0, 112, 255)
WATER_HEX = "#0070ff"
# monitoring products name their style in a GDAL tag of the COG; each style's data type
# (config/mapfile-layer.j2 draws each; config/styles/<style>.sld is the same for GeoServer)
STYLE_TAG = "AQUAMASK_STYLE"
STYLE_DTYPES = {"water": "uint8", "change": "uint8", "frequency": "uint8"}
# the classes of each monitoring style: config/styles/change.sld and frequency.sld use the
# same colours (tests/processes/test_monitoring_styles.py checks it)
# gained and lost: the sky blue and orange of Okabe and Ito's palette, told apart with any
# colour vision (red and green are not)
CHANGE_CLASSES = (("Dry at both dates", 0, (237, 232, 208)),
                  ("Water gained", 1, (86, 180, 233)),
                  ("Water lost", 2, (230, 159, 0)),
                  ("Permanent water", 3, WATER_RGB),
                  ("No data at either date", 255, (160, 160, 160)))
# (label, low, high, colour): drawn where low < frequency (%) <= high; 0 (never wet) and 255
# (no valid observation) transparent
FREQUENCY_CLASSES = (("Water in up to 10 % of observations", 0, 10, (222, 235, 247)),
                     ("10-25 %", 10, 25, (158, 202, 225)),
                     ("25-50 %", 25, 50, (66, 146, 198)),
                     ("50-75 %", 50, 75, (33, 113, 181)),
                     ("75-100 %", 75, 100, (8, 48, 107)))
RANGE_LABELS = {"water": "water mask classes", "change": "water change classes",
                "frequency": "water frequency (%)"}
BAND_DESCRIPTIONS = {
    "water": "0 dry, 1 water, 255 no data",
    "change": "0 dry, 1 water gained, 2 water lost, 3 permanent water, 255 no data",
    "frequency": "percent of the valid observations that saw water (0-100), 255 none valid"}
STYLE_ABSTRACTS = {
    "change": "Water change between two dates: sky blue gained, orange lost, blue permanent "
              "water, sand dry at both, grey no data at either. WCS: 0 dry, 1 gained, 2 lost, "
              "3 permanent, 255 no data.",
    "frequency": "Water frequency: the percentage of the valid observations in which water "
                 "was seen, from pale (rarely) to dark blue (always); never wet and no valid "
                 "observation are transparent. WCS: 0-100 %, 255 no valid observation.",
}


# the input scene of a water detection, shown under its mask: the bands its COG holds
# (pipeline.products.write_scene_cog), each band's stretch in STRETCH_TAG, and the two views of
# it that are published (view: title, its red, green and blue bands)
SCENE_BANDS = ("B02", "B03", "B04", "B08", "B11")
STRETCH_TAG = "AQUAMASK_STRETCH"
SCENE_VIEWS = {"truecolor": ("True colour", ("B04", "B03", "B02")),
               "falsecolor": ("False colour (SWIR, NIR, red)", ("B11", "B08", "B04"))}
# the water probability beside the mask: drawn white (0) to the mask's blue (1), and answering
# GetFeatureInfo with the probability under a pixel
PROBABILITY_VIEW = "probability"

def raster_style(tags: dict[str, str]) -> str:
    """The style a COG asks for in its ``AQUAMASK_STYLE`` tag (monitoring products: ``change``,
    ``frequency``); a plain water mask has none."""
    style = tags.get(STYLE_TAG) or "water"
    if style not in STYLE_DTYPES:
        raise ValueError(f"unknown {STYLE_TAG} {style!r}: one of {', '.join(STYLE_DTYPES)}")
    return style


# -- the files' own styling, for desktop GIS users (QGIS, ArcGIS, GDAL) ------------------------
CLEAR = (0, 0, 0, 0)
WATER_CLASSES = (("Dry", 0, CLEAR), ("Water", 1, (*WATER_RGB, 255)), ("No data", 255, CLEAR))


def classes(style: str) -> tuple[tuple[str, int, tuple[int, int, int, int]], ...]:
    """The (label, value, RGBA) of each value a ``water`` or ``change`` raster holds."""
    if style == "water":
        return WATER_CLASSES
    if style == "change":
        return tuple((label, value, (*rgb, 255)) for label, value, rgb in CHANGE_CLASSES)
    raise ValueError(f"the {style} style has ranges, not classes")


def colormap(style: str) -> dict[int, tuple[int, int, int, int]]:
    """The colour table of a raster of ``style``. A GeoTIFF stores no alpha in its palette:
    transparent entries come out black there, so each file has a .qml beside it that keeps
    them transparent (QGIS loads it with the file)."""
    if style != "frequency":
        return {value: rgba for _, value, rgba in classes(style)}
    table = {value: CLEAR for value in range(256)}
    for _, low, high, rgb in FREQUENCY_CLASSES:
        for value in range(low + 1, high + 1):
            table[value] = (*rgb, 255)
    return table


def _hex(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb[:3])


def _qml(style: str) -> ET.ElementTree:
    """A QGIS layer style: the classes as a paletted renderer, the frequency as a discrete
    pseudocolour ramp; transparent where the SLD is."""
    root = ET.Element("qgis", version="3.28.0", styleCategories="Symbology")
    pipe = ET.SubElement(root, "pipe")
    if style == "frequency":
        renderer = ET.SubElement(pipe, "rasterrenderer", type="singlebandpseudocolor", band="1",
                                 opacity="1", alphaBand="-1", classificationMin="0",
                                 classificationMax="100")
        shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader",
                               colorRampType="DISCRETE", classificationMode="1", clip="0")
        ET.SubElement(shader, "item", value="0", color="#000000", alpha="0",
                      label="Never water")
        for label, _, high, rgb in FREQUENCY_CLASSES:
            ET.SubElement(shader, "item", value=str(high), color=_hex(rgb), alpha="255",
                          label=label)
    else:
        renderer = ET.SubElement(pipe, "rasterrenderer", type="paletted", band="1",
                                 opacity="1", alphaBand="-1")
        palette = ET.SubElement(renderer, "colorPalette")
        for label, value, rgba in classes(style):
            ET.SubElement(palette, "paletteEntry", value=str(value), color=_hex(rgba),
                          alpha=str(rgba[3]), label=label)
    return ET.ElementTree(root)


def _pam(style: str) -> ET.ElementTree:
    """GDAL's auxiliary metadata (PAM, ``<file>.aux.xml``, read with the file by GDAL and
    QGIS): the class names as the band's category names."""
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    names = {value: label for label, value, _ in classes(style)}
    categories = ET.SubElement(band, "CategoryNames")
    for value in range(max(names) + 1):  # a category's index is its value
        ET.SubElement(categories, "Category").text = names.get(value, "")
    return ET.ElementTree(root)


def style_files(cog_name: str, style: str) -> dict[str, str]:
    """The names ``write_style_files`` writes beside the COG ``cog_name``, with media types
    (a process's result files)."""
    stem = cog_name.rsplit(".", 1)[0]
    names = {f"{stem}.qml": "application/xml", f"{stem}.sld": "application/vnd.ogc.sld+xml"}
    if style != "frequency":
        names[f"{cog_name}.aux.xml"] = "application/xml"
    return names


def write_style_files(cog: Path, style: str) -> list[Path]:
    """Beside the COG ``cog``: its QGIS style (``<stem>.qml``), its SLD (``<stem>.sld``, the
    one GeoServer uses) and, for classes, their names (``<name>.aux.xml``). The paths."""
    written = [cog.with_suffix(".qml"), cog.with_suffix(".sld")]
    _qml(style).write(written[0], encoding="UTF-8", xml_declaration=True)
    with as_file(files("aquamask.config") / "styles" / f"{style}.sld") as sld:
        shutil.copyfile(sld, written[1])
    if style != "frequency":
        written.append(cog.with_name(cog.name + ".aux.xml"))
        _pam(style).write(written[2], encoding="UTF-8")
    return written
