"""How each kind of result is drawn: the water mask, and the change and frequency rasters of the
monitoring processes. The embedded engine's templates (config/mapfile-layer.j2), the SLDs of
GeoServer (config/styles/*.sld) and the viewer's legend use these same colours
(tests/processes/test_monitoring_styles.py checks it); a COG names its style in a GDAL tag."""
from __future__ import annotations

# One blue for the mapfile, the SLD (config/styles/water.sld) and the viewer legend.
WATER_RGB = (0, 112, 255)
WATER_HEX = "#0070ff"
# monitoring products name their style in a GDAL tag of the COG; each style's data type
# (config/mapfile-layer.j2 draws each; config/styles/<style>.sld is the same for GeoServer)
STYLE_TAG = "AQUAMASK_STYLE"
STYLE_DTYPES = {"water": "uint8", "change": "uint8", "frequency": "uint8"}
# the classes of each monitoring style: config/styles/change.sld and frequency.sld use the
# same colours (tests/processes/test_monitoring_styles.py checks it)
CHANGE_CLASSES = (("Dry at both dates", 0, (237, 232, 208)),
                  ("Water gained", 1, (26, 152, 80)),
                  ("Water lost", 2, (215, 48, 39)),
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
    "change": "Water change between two dates: green gained, red lost, blue permanent water, "
              "sand dry at both, grey no data at either. WCS: 0 dry, 1 gained, 2 lost, "
              "3 permanent, 255 no data.",
    "frequency": "Water frequency: the percentage of the valid observations in which water "
                 "was seen, from pale (rarely) to dark blue (always); never wet and no valid "
                 "observation are transparent. WCS: 0-100 %, 255 no valid observation.",
}


def raster_style(tags: dict[str, str]) -> str:
    """The style a COG asks for in its ``AQUAMASK_STYLE`` tag (monitoring products: ``change``,
    ``frequency``); a plain water mask has none."""
    style = tags.get(STYLE_TAG) or "water"
    if style not in STYLE_DTYPES:
        raise ValueError(f"unknown {STYLE_TAG} {style!r}: one of {', '.join(STYLE_DTYPES)}")
    return style
