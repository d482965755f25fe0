"""Small things a hydrologist trips on (issue #18, item 13): a series' failure repeats the
cloud limit asked; the change palette is told apart with any colour vision; label rasters are
not offered as scenes."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from flask import Flask
from rasterio.transform import from_origin

from aquamask.processes.demo import make_demo_library, make_demo_scene
from aquamask.processes.errors import NoScene
from aquamask.processes.monitoring.dates import find_dates
from aquamask.processes.ogc import water_timeseries
from aquamask.processes.pipeline.sources import place_source
from aquamask.processes.settings import Settings
from aquamask.processes.styles import CHANGE_CLASSES
from aquamask.server.viewer import viewer_blueprint


def test_a_series_without_scenes_repeats_the_cloud_limit_asked(tmp_path):
    settings = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path)})
    make_demo_library(place_source(settings).root)
    request = water_timeseries.parse_inputs(
        {"bbox": [10.0, 50.0, 10.05, 50.05], "datetime": "2024-05-01/2024-06-30",
         "max_cloud_cover": 40}, settings)
    seen = []
    with pytest.raises(NoScene, match="cloud cover at most 40 %"):
        find_dates(request, settings, place_source(settings), lambda p, m: seen.append(m))
    assert "at most 40 %" in seen[0]


def _relative_luminance(rgb) -> float:
    def channel(c):
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _deuteranope(rgb) -> np.ndarray:
    """How a person without green cones sees a colour (Viénot, Brettel and Mollon 1999, on
    linear RGB)."""
    linear = np.array([((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb])
    sim = np.array([[0.29275, 0.70725, 0.0], [0.29275, 0.70725, 0.0],
                    [-0.02234, 0.02234, 1.0]])
    return sim @ linear


def test_gained_and_lost_water_differ_for_colour_blind_eyes():
    colours = {label: rgb for label, _, rgb in CHANGE_CLASSES}
    gained, lost = colours["Water gained"], colours["Water lost"]
    # red against green collapses to nearly one colour for a deuteranope; these stay apart
    assert np.abs(_deuteranope(gained) - _deuteranope(lost)).max() > 0.3
    assert abs(_relative_luminance(gained) - _relative_luminance(lost)) < 0.5  # both visible


def test_label_rasters_are_not_listed_as_scenes(tmp_path):
    settings = Settings.load(environ={"AQUAMASK__HOME": str(tmp_path)})
    settings.ensure_dirs()
    make_demo_scene(settings.data_root / "Spain_S2Hand.tif", size=32)
    with rasterio.open(settings.data_root / "Spain_LabelHand.tif", "w", driver="GTiff",
                       width=32, height=32, count=1, dtype="int16", crs="EPSG:32630",
                       transform=from_origin(600000, 4220000, 10, 10)) as label:
        label.write(np.ones((1, 32, 32), np.int16))
    app = Flask("viewer-test")
    app.register_blueprint(viewer_blueprint(settings))
    scenes = app.test_client().get("/viewer/api/scenes").get_json()["scenes"]
    assert [s["href"] for s in scenes] == ["Spain_S2Hand.tif"]
